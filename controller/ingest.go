package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// IngestOptions configure the controller's MQTT client.
type IngestOptions struct {
	Broker   string // URL
	ClientID string
	// Share, when set, subscribes through $share/<Share>/… so that several
	// controllers split the ingest of a clustered broker.
	Share       string
	TopicPrefix string
	Fleet       *Fleet
	Log         *slog.Logger
}

// kinds the controller ingests: everything a node publishes.
var ingestTopics = []string{"telemetry", "heartbeat", "event", "state", "cmd/result", "update/status"}

// Ingest is the controller's MQTT client: it feeds the fleet from the
// broker and publishes requests to nodes.
type Ingest struct {
	o      IngestOptions
	client mqtt.Client
	in     chan message

	mu  sync.Mutex
	enc telemetry.Encoder
	seq uint64
}

type message struct {
	topic   string
	payload []byte
}

// NewIngest prepares the client; Run connects.
func NewIngest(o IngestOptions) *Ingest {
	in := &Ingest{o: o, in: make(chan message, 1024),
		// The controller's own numbers: start from the clock, so a restarted
		// controller never reuses one.
		seq: uint64(time.Now().UnixMilli()) << 10}
	in.client = mqtt.NewClient(in.options())
	return in
}

func (g *Ingest) options() *mqtt.ClientOptions {
	o, in := g.o, g.in
	opts := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(o.ClientID).SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(10 * time.Second).SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).SetOrderMatters(false)
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		filters := map[string]byte{}
		for _, k := range ingestTopics {
			f := o.TopicPrefix + "/+/" + k
			if o.Share != "" {
				f = "$share/" + o.Share + "/" + f
			}
			filters[f] = 1
		}
		c.SubscribeMultiple(filters, func(_ mqtt.Client, m mqtt.Message) {
			select {
			case in <- message{m.Topic(), m.Payload()}:
			default:
				o.Log.Warn("ingest queue full; message dropped", "topic", m.Topic())
			}
		})
		o.Log.Info("controller subscribed", "broker", o.Broker)
	})
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) { o.Log.Warn("broker connection lost", "err", err) })
	return opts
}

// Run feeds the fleet until ctx is cancelled, and checks heartbeat deadlines
// every second. The paho handler only queues; decoding happens here, so a
// slow message never stalls the client.
func (g *Ingest) Run(ctx context.Context) error {
	g.client.Connect() // retries in the background until it connects
	defer g.client.Disconnect(250)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-g.in:
			g.refused(g.o.Fleet.Handle(m.topic, m.payload, time.Now()))
		case now := <-tick.C:
			g.o.Fleet.Check(now)
		}
	}
}

// refused logs a refusal Handle returned: a warning, or at debug level one
// folded into a later event, so a flood of bad messages floods no log.
func (g *Ingest) refused(err error) {
	var r *Refusal
	if !errors.As(err, &r) {
		return
	}
	level := slog.LevelWarn
	if r.Folded {
		level = slog.LevelDebug
	}
	g.o.Log.Log(context.Background(), level, "message refused", "reason", r.Reason, "node", r.Node, "topic", r.Topic,
		"seq", r.Seq, "err", r.Err)
}

// Send publishes a request to its node with QoS 1.
func (g *Ingest) Send(c telemetry.Command) error {
	g.mu.Lock()
	g.seq++
	data, err := g.enc.Encode(telemetry.Header{Node: c.Node, Seq: g.seq, Time: time.Now(), Kind: telemetry.KindCommand}, c)
	payload := append([]byte(nil), data...)
	g.mu.Unlock()
	if err != nil {
		return err
	}
	tok := g.client.Publish(g.o.TopicPrefix+"/"+c.Node+"/cmd", 1, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("broker did not acknowledge the request within 10s")
	}
	return tok.Error()
}

// ExecRequest asks for a command to be run on a node (POST /api/exec).
type ExecRequest struct {
	Node       string   `json:"node"`
	Name       string   `json:"name"`
	Args       []string `json:"args,omitempty"`
	TimeoutSec uint32   `json:"timeout_sec,omitempty"`
}

// API serves the fleet view as JSON, and runs commands:
//
//	GET  /api/nodes                       every node
//	GET  /api/events?after=ID&wait=30s    events newer than ID, waiting up to wait for one
//	POST /api/exec                        an ExecRequest; answers with the node's CommandResult
//	GET  /api/stats                       the controller's own counters
func API(f *Fleet, g *Ingest) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, f.Stats())
	})
	mux.HandleFunc("POST /api/exec", func(w http.ResponseWriter, r *http.Request) {
		var req ExecRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil || req.Node == "" || req.Name == "" {
			http.Error(w, "want JSON with node and name (and args, timeout_sec)", http.StatusBadRequest)
			return
		}
		timeout := time.Duration(req.TimeoutSec) * time.Second
		if timeout == 0 {
			timeout = time.Minute
		}
		id := make([]byte, 12)
		rand.Read(id)
		now := time.Now()
		c := telemetry.Command{ID: hex.EncodeToString(id), Node: req.Node, Name: req.Name, Args: req.Args,
			IssuedAt: now, ExpiresAt: now.Add(timeout + time.Minute), TimeoutSec: req.TimeoutSec}
		result, done := f.Expect(c.ID)
		defer done()
		if err := g.Send(c); err != nil {
			http.Error(w, "send: "+err.Error(), http.StatusBadGateway)
			return
		}
		select {
		case res := <-result:
			writeJSON(w, res)
		case <-time.After(timeout + 30*time.Second):
			http.Error(w, fmt.Sprintf("no result from %s within %s (request %s)", req.Node, timeout+30*time.Second, c.ID), http.StatusGatewayTimeout)
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("GET /api/nodes", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, f.Nodes())
	})
	mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		after, err := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		if err != nil && r.URL.Query().Has("after") {
			http.Error(w, "after: want an event id", http.StatusBadRequest)
			return
		}
		wait, err := time.ParseDuration(r.URL.Query().Get("wait"))
		if err != nil && r.URL.Query().Has("wait") {
			http.Error(w, "wait: want a duration such as 30s", http.StatusBadRequest)
			return
		}
		events, changed := f.Events(after)
		if len(events) == 0 && wait > 0 {
			select {
			case <-changed:
				events, _ = f.Events(after)
			case <-time.After(min(wait, time.Minute)):
			case <-r.Context().Done():
			}
		}
		writeJSON(w, events)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		fmt.Fprintln(w, err)
	}
}
