package uplink

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

// newUplink makes node-a's uplink with short intervals; tweak adjusts the
// options further.
func newUplink(t *testing.T, broker string, dir string, tweak ...func(*Options)) (*Uplink, *spool.Spool) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool"), FsyncInterval: 50 * time.Millisecond, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := seqfile.Open(filepath.Join(dir, "seq"), 100, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Brokers: []string{broker}, Node: "node-a", TopicPrefix: "edge", Keepalive: 2 * time.Second,
		ConnectTimeout: time.Second, PublishTimeout: 2 * time.Second, FlushInterval: 100 * time.Millisecond,
		MaxBackoff: 2 * time.Second, Spool: sp, Seq: seq, Log: log}
	for _, f := range tweak {
		f(&opts)
	}
	u, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return u, sp
}

// TestNothingLostAcrossBrokerRestart publishes events at 50/s while the real
// broker is stopped for two minutes and started again: every sequence number
// arrives at the controller side, and the spool ends empty.
func TestNothingLostAcrossBrokerRestart(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	ctl := testenv.Subscribe(t, m.URL)
	u, sp := newUplink(t, m.URL, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	testenv.WaitFor(t, 5*time.Second, func() bool { return u.Status().State == "connected" }, func() string { return u.Status().State })

	const (
		rate   = 50 // events per second
		before = 5 * rate
		outage = 120 * rate
		total  = before + outage + 5*rate
	)
	go func() {
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := range total {
			<-tick.C
			u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "load", New: "n", Message: "event"})
			switch i {
			case before:
				m.Stop()
			case before + outage:
				m.Start()
			}
		}
	}()
	testenv.WaitFor(t, 4*time.Minute, func() bool { return len(ctl.Received().Seqs) >= total }, func() string {
		return "controller saw " + itoa(len(ctl.Received().Seqs)) + " of " + itoa(total) + "; uplink " + u.Status().State
	})
	st := u.Status()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := ctl.Received()
	if got.Bad != 0 || got.Kinds[telemetry.KindEvent] < total {
		t.Errorf("bad %d, kinds %v", got.Bad, got.Kinds)
	}
	if st.Spool.Dropped != 0 {
		t.Errorf("spool dropped %d", st.Spool.Dropped)
	}
	dups := 0
	for _, n := range got.Seqs {
		dups += n - 1
	}
	t.Logf("%d events, %d delivered twice (de-duplicated by seq), spool after: %+v", total, dups, sp.Stats())
	if len(got.States) == 0 || got.States[0] != "online" {
		t.Errorf("state messages %v, want online first", got.States)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func run(t *testing.T, u *Uplink) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// TestMalformedCommandIsCountedAndReported publishes garbage and a message
// of the wrong kind on the node's command topic: each is counted and
// reported as an event, and the session carries on.
func TestMalformedCommandIsCountedAndReported(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	ctl := testenv.Subscribe(t, m.URL)
	u, _ := newUplink(t, m.URL, t.TempDir())
	run(t, u)
	testenv.WaitFor(t, 5*time.Second, func() bool { return u.Status().State == "connected" }, func() string { return u.Status().State })
	time.Sleep(200 * time.Millisecond) // the subscription is made in the connect handler

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL).SetClientID("attacker"))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	var e telemetry.Encoder
	wrongKind, _ := e.Encode(telemetry.Header{Node: "node-a", Seq: 1, Time: time.Now(), Kind: telemetry.KindState}, telemetry.State{State: "offline"})
	for _, p := range [][]byte{{0xff, 0xfe, 0x00}, append([]byte(nil), wrongKind...)} {
		pub.Publish("edge/node-a/cmd", 1, false, p).WaitTimeout(5 * time.Second)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return u.Status().Malformed == 2 },
		func() string { return "malformed " + itoa(int(u.Status().Malformed)) })
	testenv.WaitFor(t, 5*time.Second, func() bool { return ctl.Received().Kinds[telemetry.KindEvent] == 2 },
		func() string { return "no error events reached the controller" })
	// Still alive: a new event goes through.
	u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "after", New: "n", Message: "m"})
	testenv.WaitFor(t, 5*time.Second, func() bool { return ctl.Received().Kinds[telemetry.KindEvent] == 3 },
		func() string { return "session stopped after malformed input" })
	if st := u.Status(); st.State != "connected" {
		t.Errorf("state %s", st.State)
	}
}

// TestFullSpoolDropCountReachesController fills a 1 MiB spool while the
// broker is down; once it is back, the heartbeat the controller receives
// carries the dropped count, and the newest records arrive.
func TestFullSpoolDropCountReachesController(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	ctl := testenv.Subscribe(t, m.URL)
	m.Stop()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool"), MaxBytes: 1 << 20, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := seqfile.Open(filepath.Join(dir, "seq"), 1000, time.Now)
	u, err := New(Options{Brokers: []string{m.URL}, Node: "node-a", TopicPrefix: "edge", Keepalive: 2 * time.Second,
		ConnectTimeout: 500 * time.Millisecond, PublishTimeout: 2 * time.Second, Spool: sp, Seq: seq, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	testenv.WaitFor(t, 5*time.Second, func() bool { return sp.Stats().Persisting }, func() string { return "not spooling" })
	msg := string(make([]byte, 1000))
	for range 3000 { // about 3 MiB into 1 MiB
		u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "flood", New: "n", Message: msg})
	}
	st := sp.Stats()
	if st.Dropped == 0 {
		t.Fatalf("nothing dropped: %+v", st)
	}
	hbSeq := seq.Next()
	u.Heartbeat(telemetry.Heartbeat{Node: "node-a", Seq: hbSeq, Time: time.Now(), Health: telemetry.Healthy,
		SpoolDepth: uint64(st.Depth()), Dropped: st.Dropped})
	m.Start()
	testenv.WaitFor(t, 30*time.Second, func() bool { return ctl.Received().Has(hbSeq) },
		func() string { return "heartbeat never arrived" })
	testenv.WaitFor(t, 30*time.Second, func() bool { return sp.Stats().Depth() == 0 }, func() string { return "backlog not drained" })
	got := ctl.Received()
	if d := got.Heartbeats[hbSeq].Dropped; d != st.Dropped {
		t.Errorf("heartbeat carried dropped %d, want %d", d, st.Dropped)
	}
	if n := uint64(got.Kinds[telemetry.KindEvent]); n+st.Dropped != 3000 {
		t.Errorf("%d events arrived and %d were dropped; want 3000 together", n, st.Dropped)
	}
	t.Logf("3000 events of 1 KB into a 1 MiB spool: %d dropped (oldest first), %d delivered", st.Dropped, got.Kinds[telemetry.KindEvent])
}

func TestClientIDMustBeATopicLevel(t *testing.T) {
	for _, id := range []string{"", "a/b", "node+", "#"} {
		if _, err := New(Options{Node: id}); err == nil {
			t.Errorf("node id %q accepted as a client id", id)
		}
	}
}

// TestFlushSplitsAtMaxMessage flushes more points than fit one message:
// every message stays within the cap and together they carry every point.
func TestFlushSplitsAtMaxMessage(t *testing.T) {
	u, sp := newUplink(t, "tcp://127.0.0.1:1", t.TempDir(), func(o *Options) { o.MaxMessage = 4 << 10 })
	var want int
	for b := range 5 {
		batch := telemetry.Batch{Source: "s" + strconv.Itoa(b), Time: time.Unix(1763700000, 0)}
		for i := range 200 {
			batch.Points = append(batch.Points, telemetry.Point{Name: "metric.number." + strconv.Itoa(i), Value: float64(i) + 0.5,
				Tags: map[string]string{"device": "dev" + strconv.Itoa(i%7)}})
		}
		want += len(batch.Points)
		u.Batch(batch)
	}
	u.flush()
	got, messages := 0, 0
	for _, rec := range drain(t, sp) {
		messages++
		if len(rec.Payload) > 4<<10 {
			t.Errorf("message %d is %d bytes, over the 4 KiB cap", messages, len(rec.Payload))
		}
		env, err := telemetry.Decode(rec.Payload)
		if err != nil {
			t.Fatal(err)
		}
		batches, err := env.DecodeBatches()
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range batches {
			got += len(b.Points)
		}
	}
	if got != want || messages < 2 {
		t.Errorf("%d points in %d messages, want %d points split over several", got, messages, want)
	}
	t.Logf("%d points in %d messages of at most 4 KiB", got, messages)
}

// TestTextThatIsNotIsEscapedAndCounted queues, through the uplink's sink
// methods, a batch, an event, a heartbeat and a command result holding bytes
// that are not UTF-8 (no reader escaped them): the spool holds messages the
// controller takes, and Status counts what the encoder escaped.
func TestTextThatIsNotIsEscapedAndCounted(t *testing.T) {
	u, sp := newUplink(t, "tcp://127.0.0.1:1", t.TempDir())
	now := time.Now()
	u.Batch(telemetry.Batch{Source: "statsd", Time: now, Points: []telemetry.Point{
		{Name: "app.\xff", Value: 1, Tags: map[string]string{"k\xfe": "v\xfd"}}}})
	u.flush()
	u.Event(telemetry.Event{Time: now, Severity: telemetry.Warning, Kind: "link", Subject: "eth\xff", New: "down", Message: "eth\xff down"})
	u.Heartbeat(telemetry.Heartbeat{Node: "node-a", Seq: 1000, Time: now, Health: telemetry.Degraded, Why: "disk sd\xff failing"})
	u.Result(telemetry.CommandResult{ID: "r1", Status: telemetry.StatusFailed, Reason: "open /data/\xff: no such file"})
	f := controller.NewFleet(controller.Options{})
	records := drain(t, sp)
	for _, rec := range records {
		if err := f.Handle("edge/node-a/"+rec.Topic, rec.Payload, now); err != nil {
			t.Errorf("%s refused: %v", rec.Topic, err)
		}
	}
	if st := u.Status(); len(records) != 4 || st.Escaped != 7 {
		t.Errorf("%d messages, %d strings escaped; want 4 and 7", len(records), st.Escaped)
	}
}

// drain takes every record out of the spool.
func drain(t *testing.T, sp *spool.Spool) []spool.Record {
	t.Helper()
	var out []spool.Record
	for {
		_, rec, ok, err := sp.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return out
		}
		out = append(out, rec)
	}
}
