package uplink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

// Options configure the uplink.
type Options struct {
	Brokers            []string // tried in order: tcp://, ssl://, ws://, wss://
	Node               string   // the client id and the <node> topic level
	TopicPrefix        string
	Username, Password string
	CAFile             string // verifies the broker; empty: the system's roots
	CertFile, KeyFile  string // this node's client certificate
	Keepalive          time.Duration
	ConnectTimeout     time.Duration
	PublishTimeout     time.Duration
	MaxBackoff         time.Duration // longest wait between connect attempts; zero means 1 min
	FlushInterval      time.Duration // how often collected batches become one message
	MaxMessage         int           // bytes; a flush larger than this is split
	InFlight           int           // publishes awaiting PUBACK; zero means 32
	Spool              *spool.Spool
	Seq                *seqfile.Counter
	// Stamp turns a time.Now reading into the time a message carries, and
	// says whether the clock was unsynced (below the time floor); nil
	// trusts the clock.
	Stamp func(time.Time) (time.Time, bool)
	// Instance is random per start of the process; every envelope carries it.
	Instance string
	Log      *slog.Logger
	// OnCommand receives each well-formed request from the command topic, and
	// each offer from the update topic, on
	// the uplink's goroutine: it must not block, and reports whether it took
	// the request. A request is acknowledged to the broker only once taken,
	// so one that was not (the agent is quiescing for a reload), or never
	// reached OnCommand (it stopped or handed over first), is delivered again
	// to the node's next session.
	OnCommand func(telemetry.Envelope) bool
}

// Status is the uplink as /status shows it.
type Status struct {
	State          string    `json:"state"` // connecting, connected, disconnected, stopped, handed over
	Since          time.Time `json:"since"` // when State began
	Broker         string    `json:"broker,omitempty"`
	ConnectedSince time.Time `json:"connected_since,omitzero"`
	LastAck        time.Time `json:"last_ack,omitzero"`
	// HeartbeatAcked is when the broker last acknowledged a heartbeat (an
	// upgrade's health check waits for one).
	HeartbeatAcked time.Time `json:"heartbeat_acked,omitzero"`
	Published      uint64    `json:"published"` // records acknowledged by the broker
	Malformed      uint64    `json:"malformed"` // messages received that did not decode
	EncodeErrors   uint64    `json:"encode_errors"`
	// Escaped counts the strings that were not valid UTF-8 when they reached
	// the encoder, which escaped them (telemetry.Encoder.Escaped): each is a
	// name some reader let through unescaped, a bug; the message still went.
	Escaped uint64 `json:"escaped"`
	// TLSError says why the TLS files could not be reloaded for the last
	// connection attempt (the previous ones were used).
	TLSError string      `json:"tls_error,omitempty"`
	Spool    spool.Stats `json:"spool"`
}

// Uplink is the node's MQTT session. It implements collectors.Sink: what the
// collectors produce is encoded, numbered and queued in the spool, and
// published from there with QoS 1; a record leaves the spool only on its PUBACK.
type Uplink struct {
	opts   Options
	client mqtt.Client
	log    *slog.Logger

	wake      chan struct{}      // something was queued
	lost      chan error         // the connection dropped
	inbound   chan mqtt.Message  // from paho's handler to Run, not yet acknowledged
	results   chan publishResult // PUBACKs and timeouts
	handovers chan handover      // from Handover to Run

	mu             sync.Mutex
	pending        []telemetry.Batch // collected since the last flush
	enc            telemetry.Encoder
	sizer          telemetry.Encoder // measures candidate messages in flush, which Run owns
	state          string
	broker         string
	connectedSince time.Time
	stateSince     time.Time
	lastAck        time.Time
	heartbeatSeq   uint64 // the last heartbeat queued
	heartbeatAcked time.Time
	tlsErr         error
	handedOver     bool // by Handover: Batch flushes at once, Run no longer does

	lateFlush sync.Mutex // serializes flushes once handed over (Run's are Run's own)

	published, malformed, encodeErrors atomic.Uint64
}

type publishResult struct {
	seq uint64
	err error
}

// handover is Handover's request to Run.
type handover struct {
	ctx     context.Context
	back    time.Duration
	version string
	done    chan error
}

// validClientID reports why id cannot be an MQTT client id and topic level.
func validClientID(id string) error {
	if id == "" || strings.ContainsAny(id, "+#/\x00") {
		return fmt.Errorf("node id %q cannot be an MQTT client id or topic level (no '+', '#', '/' or empty)", id)
	}
	return nil
}

// New prepares the session; Run connects.
func New(opts Options) (*Uplink, error) {
	if err := validClientID(opts.Node); err != nil {
		return nil, err
	}
	if opts.InFlight <= 0 {
		opts.InFlight = 32
	}
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = 64 << 10
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 10 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Stamp == nil {
		opts.Stamp = func(t time.Time) (time.Time, bool) { return t, false }
	}
	u := &Uplink{
		opts: opts, log: opts.Log, state: "connecting", stateSince: time.Now(),
		wake: make(chan struct{}, 1), lost: make(chan error, 1),
		inbound: make(chan mqtt.Message, 64), results: make(chan publishResult, opts.InFlight),
		handovers: make(chan handover),
	}
	co := mqtt.NewClientOptions()
	for _, b := range opts.Brokers {
		co.AddBroker(b)
	}
	// Commands are acknowledged by Run once handed on (see Options.OnCommand).
	co.SetClientID(opts.Node).SetCleanSession(false).SetOrderMatters(false).SetStore(nullStore{}).
		SetAutoReconnect(false).SetConnectRetry(false).SetResumeSubs(false).SetAutoAckDisabled(true).
		SetKeepAlive(opts.Keepalive).SetConnectTimeout(opts.ConnectTimeout).SetWriteTimeout(opts.PublishTimeout).
		SetUsername(opts.Username).SetPassword(opts.Password)
	if tlsConf, err := tlsConfig(opts); err != nil {
		return nil, &TLSFilesError{err}
	} else if tlsConf != nil {
		co.SetTLSConfig(tlsConf)
		// Files are read again before every connection attempt, so a
		// renewed certificate is used without a restart; if they cannot be
		// read then, the last good ones are.
		co.SetConnectionAttemptHandler(func(_ *url.URL, last *tls.Config) *tls.Config {
			conf, err := tlsConfig(opts)
			u.mu.Lock()
			u.tlsErr = err
			u.mu.Unlock()
			if err != nil {
				u.log.Warn("TLS files unreadable; connecting with the ones read before", "err", err)
				return last
			}
			return conf
		})
	}
	will, err := u.envelope(telemetry.KindState, telemetry.State{State: "offline"})
	if err != nil {
		return nil, err
	}
	co.SetBinaryWill(u.topic("state"), will, 1, true)
	co.SetOnConnectHandler(u.onConnect)
	co.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		select {
		case u.lost <- err:
		default:
		}
	})
	u.client = mqtt.NewClient(co)
	// The route exists before any connection: the broker delivers the
	// commands it kept for the session right after CONNACK, before the
	// connect handler has run.
	u.client.AddRoute(u.topic("cmd"), u.receive)
	u.client.AddRoute(u.topic("update"), u.receive)
	return u, nil
}

// TLSFilesError is returned by New when TLS is configured and its files
// cannot be read at start: without them the node could never reach its
// broker, so the agent should not start.
type TLSFilesError struct{ Err error }

func (e *TLSFilesError) Error() string {
	return "TLS is configured but its files cannot be read at start (the node could never reach its broker): " + e.Err.Error()
}

func (e *TLSFilesError) Unwrap() error { return e.Err }

// CheckTLS reports why the TLS files opts names cannot be used, as New
// would find at a start: nil when they can, or when TLS is not configured.
func CheckTLS(opts Options) error {
	_, err := tlsConfig(opts)
	return err
}

func tlsConfig(o Options) (*tls.Config, error) {
	if o.CAFile == "" && o.CertFile == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("uplink.ca_file: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("uplink.ca_file %s holds no PEM certificate", o.CAFile)
		}
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("uplink.cert_file/key_file: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

func (u *Uplink) topic(suffix string) string {
	return u.opts.TopicPrefix + "/" + u.opts.Node + "/" + suffix
}

// envelope encodes an ephemeral message (state) with a fresh sequence number.
func (u *Uplink) envelope(kind telemetry.Kind, body any) ([]byte, error) {
	h := u.header(kind, 0, u.stamps())
	u.mu.Lock()
	defer u.mu.Unlock()
	data, err := u.enc.Encode(h, body)
	return append([]byte(nil), data...), err
}

// header numbers (seq 0 takes a new number) and stamps a message made now
// whose body's times were stamped by st.
func (u *Uplink) header(kind telemetry.Kind, seq uint64, st *stamps) telemetry.Header {
	if seq == 0 {
		seq = u.opts.Seq.Next()
	}
	t := st.at(time.Now())
	return telemetry.Header{Node: u.opts.Node, Seq: seq, Time: t, Kind: kind, Unsynced: st.unsynced, Instance: u.opts.Instance}
}

// stamps places the times of one message on the time floor, and remembers
// whether any was unsynced: then the whole message says so.
type stamps struct {
	stamp    func(time.Time) (time.Time, bool)
	unsynced bool
}

func (u *Uplink) stamps() *stamps { return &stamps{stamp: u.opts.Stamp} }

// at is the time the message carries for t, a time.Now reading.
func (s *stamps) at(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	t, unsynced := s.stamp(t)
	s.unsynced = s.unsynced || unsynced
	return t
}

// onConnect runs on paho's goroutine: it subscribes (the route is New's)
// and announces the node without waiting for either, so it never blocks paho.
func (u *Uplink) onConnect(c mqtt.Client) {
	c.SubscribeMultiple(map[string]byte{u.topic("cmd"): 1, u.topic("update"): 1}, nil)
	if online, err := u.envelope(telemetry.KindState, telemetry.State{State: "online"}); err == nil {
		c.Publish(u.topic("state"), 1, true, online)
	}
}

// receive takes a message on the command topic from paho, for Run, which
// acknowledges it once handed on.
func (u *Uplink) receive(_ mqtt.Client, m mqtt.Message) {
	select {
	case u.inbound <- m:
	default:
		u.malformed.Add(1) // Run is behind: refuse rather than block paho
		m.Ack()
	}
}

// Batch implements collectors.Sink: batches wait for the next flush, which
// stamps them; once Handover has begun they go to the spool at once.
func (u *Uplink) Batch(b telemetry.Batch) {
	u.mu.Lock()
	u.pending = append(u.pending, b)
	late := u.handedOver
	u.mu.Unlock()
	if late {
		u.lateFlush.Lock()
		u.flush()
		u.lateFlush.Unlock()
	}
}

// Event implements collectors.Sink: events are queued at once.
func (u *Uplink) Event(e telemetry.Event) {
	st := u.stamps()
	e.Time = st.at(e.Time)
	u.queue("event", telemetry.KindEvent, 0, e, st)
}

// Heartbeat implements collectors.Sink; the heartbeat's own number is its
// envelope's.
func (u *Uplink) Heartbeat(h telemetry.Heartbeat) {
	st := u.stamps()
	h.Time, h.LastCollect = st.at(h.Time), st.at(h.LastCollect)
	u.mu.Lock()
	u.heartbeatSeq = h.Seq
	u.mu.Unlock()
	u.queue("heartbeat", telemetry.KindHeartbeat, h.Seq, h, st)
}

// queue encodes a message whose times st stamped and puts it in the spool.
// seq 0 takes a new one.
func (u *Uplink) queue(suffix string, kind telemetry.Kind, seq uint64, body any, st *stamps) {
	h := u.header(kind, seq, st)
	u.mu.Lock()
	data, err := u.enc.Encode(h, body)
	if err == nil {
		err = u.opts.Spool.Put(h.Seq, spool.Record{Topic: suffix, Payload: append([]byte(nil), data...), Queued: time.Now().Unix()})
	}
	u.mu.Unlock()
	if err != nil {
		u.encodeErrors.Add(1)
		u.log.Error("message not queued", "kind", kind, "seq", h.Seq, "err", err)
		return
	}
	u.poke()
}

func (u *Uplink) poke() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// flush turns the batches collected since the last flush into telemetry
// messages of at most MaxMessage bytes each: as many batches per message as
// fit, and a batch too large on its own split by its points.
func (u *Uplink) flush() {
	u.mu.Lock()
	pending := u.pending
	u.pending = nil
	u.mu.Unlock()
	var pieces []telemetry.Batch
	for _, b := range pending {
		pieces = append(pieces, u.split(b)...)
	}
	for len(pieces) > 0 {
		n := 1
		if u.size(pieces) <= u.opts.MaxMessage { // the usual flush: one message
			n = len(pieces)
		}
		for n < len(pieces) && u.size(pieces[:n+1]) <= u.opts.MaxMessage {
			n++
		}
		st := u.stamps()
		for i := range pieces[:n] {
			pieces[i].Time = st.at(pieces[i].Time)
		}
		u.queue("telemetry", telemetry.KindBatch, 0, pieces[:n], st)
		pieces = pieces[n:]
	}
}

func (u *Uplink) split(b telemetry.Batch) []telemetry.Batch {
	if len(b.Points) < 2 || u.size([]telemetry.Batch{b}) <= u.opts.MaxMessage {
		return []telemetry.Batch{b}
	}
	half := len(b.Points) / 2
	first, second := b, b
	first.Points, second.Points = b.Points[:half], b.Points[half:]
	return append(u.split(first), u.split(second)...)
}

// size is the encoded size of one message holding batches.
func (u *Uplink) size(batches []telemetry.Batch) int {
	return len(u.sizer.EncodeBatches(telemetry.Header{Node: u.opts.Node, Seq: 1 << 62, Time: time.Now(), Kind: telemetry.KindBatch}, batches))
}

// Run keeps the session until ctx is cancelled or Handover ends it: connects
// with backoff, publishes from the spool within the in-flight window, spills
// to flash while the broker is away or not acknowledging, and hands each
// request from the command topic to OnCommand. When ctx is cancelled it
// flushes, sends what is queued for up to 2 s, says offline (clean) and
// closes the spool, which writes what is left to flash and syncs it. After
// Handover it returns nil at once, the spool left open.
func (u *Uplink) Run(ctx context.Context) error {
	flush := time.NewTicker(u.opts.FlushInterval)
	defer flush.Stop()
	inflight := 0
	backoff := min(time.Second, u.opts.MaxBackoff)
	var retry <-chan time.Time = time.After(0)
	connected := false
	done := ctx.Done()
	var grace <-chan time.Time // set once stopping: how long the last records may take
	for {
		if grace != nil && (!connected || (inflight == 0 && u.opts.Spool.Stats().Depth() == 0)) {
			return u.stop(connected)
		}
		select {
		case <-done:
			// Send what is queued while the broker still listens, briefly;
			// what does not make it waits in the spool for the next start.
			u.flush()
			done, grace = nil, time.After(2*time.Second)
		case <-grace:
			return u.stop(connected)
		case <-retry:
			retry = nil
			if u.connect() {
				connected, backoff, inflight = true, min(time.Second, u.opts.MaxBackoff), 0
				u.opts.Spool.Requeue()
				u.opts.Spool.Resume()
				u.poke()
				continue
			}
			u.spill("broker unreachable") // disconnected: nothing waits in memory
			// Exponential, with jitter, never beyond MaxBackoff: a fleet
			// coming back after a broker outage spreads its reconnects.
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, u.opts.MaxBackoff)
			retry = time.After(wait)
		case err := <-u.lost:
			if !connected {
				continue
			}
			connected = false
			u.setState("disconnected", "")
			u.log.Warn("connection to broker lost", "err", err)
			u.spill("connection lost")
			retry = time.After(rand.N(time.Second))
		case <-flush.C:
			u.flush()
		case r := <-u.results:
			inflight--
			if r.err != nil {
				u.log.Warn("publish not acknowledged; reconnecting", "seq", r.seq, "err", r.err)
				if connected {
					u.spill("publish unacknowledged")
					u.client.Disconnect(0)
					connected = false
					u.setState("disconnected", "")
					retry = time.After(rand.N(time.Second))
				}
				continue
			}
			u.acked(r.seq)
		case <-u.wake:
		case m := <-u.inbound:
			if u.command(m.Topic(), m.Payload()) {
				m.Ack()
			}
		case h := <-u.handovers:
			h.done <- u.handOver(h, connected, inflight)
			return nil
		}
		for connected && inflight < u.opts.InFlight {
			seq, rec, ok, err := u.opts.Spool.Next()
			if err != nil {
				u.log.Error("spool record unreadable; dropped", "err", err)
				continue
			}
			if !ok {
				break
			}
			inflight++
			tok := u.client.Publish(u.topic(rec.Topic), 1, false, rec.Payload)
			go func(seq uint64) {
				err := errors.New("no PUBACK within publish_timeout")
				if tok.WaitTimeout(u.opts.PublishTimeout) {
					err = tok.Error()
				}
				u.results <- publishResult{seq: seq, err: err}
			}(seq)
		}
	}
}

// acked removes a record the broker acknowledged from the spool.
func (u *Uplink) acked(seq uint64) {
	u.opts.Spool.Ack(seq)
	u.published.Add(1)
	u.mu.Lock()
	u.lastAck = time.Now()
	if seq == u.heartbeatSeq {
		u.heartbeatAcked = u.lastAck
	}
	u.mu.Unlock()
}

func (u *Uplink) spill(why string) {
	if st := u.opts.Spool.Stats(); !st.Persisting {
		u.log.Info("spooling to flash", "why", why, "records", st.Depth())
	}
	if err := u.opts.Spool.Spill(); err != nil {
		u.log.Error("spool", "err", err)
	}
}

// connect makes one attempt over the configured brokers.
func (u *Uplink) connect() bool {
	tok := u.client.Connect()
	if !tok.WaitTimeout(u.opts.ConnectTimeout + time.Second) {
		u.log.Warn("broker connect timed out", "brokers", u.opts.Brokers)
		return false
	}
	if err := tok.Error(); err != nil {
		u.log.Warn("broker connect failed", "brokers", u.opts.Brokers, "err", err)
		return false
	}
	broker := ""
	if r := u.client.OptionsReader(); len(r.Servers()) > 0 {
		broker = r.Servers()[0].String()
	}
	u.setState("connected", broker)
	u.log.Info("connected to broker", "broker", broker)
	return true
}

func (u *Uplink) setState(state, broker string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state != state {
		u.state, u.stateSince = state, time.Now()
	}
	if state == "connected" {
		u.broker, u.connectedSince = broker, time.Now()
	}
}

// stop says offline (clean) while still connected, then lets the spool
// write what is in memory to flash.
func (u *Uplink) stop(connected bool) error {
	if connected {
		if off, err := u.envelope(telemetry.KindState, telemetry.State{State: "offline", Clean: true}); err == nil {
			u.client.Publish(u.topic("state"), 1, true, off).WaitTimeout(time.Second)
		}
		u.client.Disconnect(250)
	}
	u.setState("stopped", "")
	return u.opts.Spool.Close()
}

// Handover ends the session so that the agent can execute a new image of
// itself in the same process (an upgrade or a reload) without the controller
// taking the node for lost. Run must be running; it returns nil once the
// hand-over is done. In order:
//
//   - No request from the command topic goes to OnCommand any more. Those
//     received and not handed on are not acknowledged, so the broker delivers
//     them again, with those published meanwhile, to the node's next session:
//     the new image's (the session keeps its subscription).
//   - The batches collected so far are flushed into the spool.
//   - The spool writes every record it holds in memory to its files on flash
//     and fsyncs them (Sync), where the new image finds them when it opens
//     the spool (or the agent init starts again, should this process be
//     killed from here on).
//   - The publishes in flight get their PUBACKs, within ctx (each reports
//     within PublishTimeout); a record that is not acknowledged stays in the
//     spool, and the new image sends it again.
//   - The node says "upgrading" (retained, QoS 1) with back, within how long
//     it expects to be online again (in whole seconds, rounded up; zero or
//     less says nothing), and version, the version the new image runs (empty
//     when not known), and waits for the PUBACK within ctx and
//     PublishTimeout.
//   - It disconnects cleanly, which makes the broker drop the last will:
//     nothing says offline. The new image connects and says online.
//
// On return no goroutine of the uplink uses the spool. It is not closed, as
// the process runs on until the exec: events, heartbeats and results queued
// after Handover go to flash, for the new image to send (call the spool's
// Sync once more just before the exec: its fsync timer dies with the
// process), and so do batches: from the start of the hand-over each goes to
// the spool as Batch is called, so a producer may run on through it (the
// agent's StatsD server does, so that its socket is read meanwhile) and
// flush its last batch after. The error says what did not happen (the
// broker was not reachable, the state was not acknowledged, flash could not
// take records, which the end of this process loses); the session is over
// either way. If ctx ends before Run takes the request, nothing is done and
// the error says so.
func (u *Uplink) Handover(ctx context.Context, back time.Duration, version string) error {
	h := handover{ctx: ctx, back: back, version: version, done: make(chan error, 1)}
	select {
	case u.handovers <- h:
		return <-h.done
	case <-ctx.Done():
		return fmt.Errorf("hand-over not started (is Run running?): %w", ctx.Err())
	}
}

// handOver does Handover's work on Run's goroutine; connected and inflight
// are Run's.
func (u *Uplink) handOver(h handover, connected bool, inflight int) error {
	u.mu.Lock()
	u.handedOver = true
	u.mu.Unlock()
	u.lateFlush.Lock()
	u.flush()
	u.lateFlush.Unlock()
	var errs []error
	// On flash before waiting for the broker: a broker slow to acknowledge
	// keeps the hand-over waiting up to ctx, and the process may be killed
	// meanwhile. Records acknowledged after this leave their segment as
	// usual; one whose PUBACK never comes is sent again by the new image.
	if err := u.opts.Spool.Sync(); err != nil {
		errs = append(errs, fmt.Errorf("%w: the end of this process loses them", err))
	}
	if connected {
		if err := u.settle(h.ctx, inflight); err != nil {
			connected = false
			errs = append(errs, err)
		}
	}
	st := u.opts.Spool.Stats()
	if connected {
		if err := u.sayUpgrading(h); err != nil {
			errs = append(errs, err)
		}
		u.client.Disconnect(uint(u.opts.PublishTimeout.Milliseconds()))
	} else {
		errs = append(errs, errors.New("not connected to the broker: the controller was not told"))
	}
	u.setState("handed over", "")
	u.log.Info("session handed over", "back", h.back, "version", h.version, "spooled", st.Depth())
	return errors.Join(errs...)
}

// settle waits within ctx for the PUBACKs of the publishes in flight.
func (u *Uplink) settle(ctx context.Context, inflight int) error {
	for ; inflight > 0; inflight-- {
		select {
		case r := <-u.results:
			if r.err == nil {
				u.acked(r.seq)
			}
		case err := <-u.lost:
			return fmt.Errorf("connection to the broker lost: %w", err)
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// sayUpgrading publishes the retained upgrading state and waits for its
// PUBACK within h.ctx and PublishTimeout.
func (u *Uplink) sayUpgrading(h handover) error {
	st := telemetry.State{State: "upgrading", NextVersion: h.version}
	if h.back > 0 {
		st.BackSec = uint32(min((h.back+time.Second-1)/time.Second, math.MaxUint32))
	}
	payload, err := u.envelope(telemetry.KindState, st)
	if err != nil {
		return fmt.Errorf("upgrading state: %w", err)
	}
	tok := u.client.Publish(u.topic("state"), 1, true, payload)
	timeout := time.NewTimer(u.opts.PublishTimeout)
	defer timeout.Stop()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("upgrading state not acknowledged: %w", err)
		}
		return nil
	case <-timeout.C:
		return errors.New("upgrading state not acknowledged within publish_timeout")
	case <-h.ctx.Done():
		return fmt.Errorf("upgrading state not acknowledged: %w", h.ctx.Err())
	}
}

// Result implements the dispatcher's output: a command's result is queued
// like any telemetry, so results produced while the broker is away wait in
// the spool.
func (u *Uplink) Result(r telemetry.CommandResult) {
	st := u.stamps()
	r.Started = st.at(r.Started)
	u.queue("cmd/result", telemetry.KindCommandResult, 0, r, st)
}

// UpdateStatus queues an upgrade's status like any telemetry: one made
// just before a hand-over reaches the controller from the spool.
func (u *Uplink) UpdateStatus(s telemetry.UpdateStatus) {
	u.queue("update/status", telemetry.KindUpdateStatus, 0, s, u.stamps())
}

// command handles a message on the command or the update topic: one that
// does not decode, or is not of the topic's kind, is counted and reported
// as an event; a request or an offer goes to OnCommand. It reports whether
// the message may be acknowledged (a malformed one may: it would be
// refused again).
func (u *Uplink) command(topic string, payload []byte) bool {
	want, what := telemetry.KindCommand, "command"
	if topic == u.topic("update") {
		want, what = telemetry.KindUpdateOffer, "update offer"
	}
	env, err := telemetry.Decode(payload)
	if err == nil && env.Kind != want {
		err = fmt.Errorf("a %s on the %s topic", env.Kind, what)
	}
	if err != nil {
		u.malformed.Add(1)
		u.log.Warn("malformed message on the "+what+" topic", "err", err, "bytes", len(payload))
		u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Warning, Kind: "uplink", Subject: topic,
			New: "malformed", Message: "refused a malformed " + what + ": " + text.EscapeString(err.Error())})
		return true
	}
	return u.opts.OnCommand == nil || u.opts.OnCommand(env)
}

// Status returns the session's figures.
func (u *Uplink) Status() Status {
	u.mu.Lock()
	st := Status{State: u.state, Since: u.stateSince, Broker: u.broker, ConnectedSince: u.connectedSince, LastAck: u.lastAck,
		HeartbeatAcked: u.heartbeatAcked,
		Escaped:        u.enc.Escaped()}
	if u.tlsErr != nil {
		st.TLSError = u.tlsErr.Error()
	}
	u.mu.Unlock()
	if st.State != "connected" {
		st.Broker, st.ConnectedSince = "", time.Time{}
	}
	st.Published, st.Malformed, st.EncodeErrors = u.published.Load(), u.malformed.Load(), u.encodeErrors.Load()
	st.Spool = u.opts.Spool.Stats()
	return st
}
