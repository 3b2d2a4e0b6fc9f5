package uplink

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

// controllerSide subscribes to everything under edge/ with a persistent
// session, so the broker keeps its messages across a restart, and counts
// what arrives by (kind, seq).
type controllerSide struct {
	mu    sync.Mutex
	seen  map[uint64]int // seq → times received
	kinds map[telemetry.Kind]int
	state []string
	bad   int
}

func subscribe(t *testing.T, broker string) *controllerSide {
	t.Helper()
	c := &controllerSide{seen: map[uint64]int{}, kinds: map[telemetry.Kind]int{}}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID("test-controller").SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond)
	opts.SetOnConnectHandler(func(cl mqtt.Client) {
		cl.Subscribe("edge/#", 1, func(_ mqtt.Client, m mqtt.Message) {
			env, err := telemetry.Decode(m.Payload())
			c.mu.Lock()
			defer c.mu.Unlock()
			if err != nil {
				c.bad++
				return
			}
			if env.Kind == telemetry.KindState {
				var st telemetry.State
				env.DecodeBody(&st)
				c.state = append(c.state, st.State)
				return
			}
			c.seen[env.Seq]++
			c.kinds[env.Kind]++
		})
	})
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("controller connect: %v", tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return c
}

func (c *controllerSide) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func newUplink(t *testing.T, broker string, dir string) (*Uplink, *spool.Spool) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool"), FsyncInterval: 50 * time.Millisecond, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := seqfile.Open(filepath.Join(dir, "seq"), 100)
	if err != nil {
		t.Fatal(err)
	}
	u, err := New(Options{Brokers: []string{broker}, Node: "node-a", TopicPrefix: "edge", Keepalive: 2 * time.Second,
		ConnectTimeout: time.Second, PublishTimeout: 2 * time.Second, FlushInterval: 100 * time.Millisecond,
		Spool: sp, Seq: seq, Log: log})
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
	ctl := subscribe(t, m.URL)
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
	testenv.WaitFor(t, 4*time.Minute, func() bool { return ctl.count() >= total }, func() string {
		return "controller saw " + itoa(ctl.count()) + " of " + itoa(total) + "; uplink " + u.Status().State
	})
	st := u.Status()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctl.mu.Lock()
	defer ctl.mu.Unlock()
	if ctl.bad != 0 || ctl.kinds[telemetry.KindEvent] < total {
		t.Errorf("bad %d, kinds %v", ctl.bad, ctl.kinds)
	}
	if st.Spool.Dropped != 0 {
		t.Errorf("spool dropped %d", st.Spool.Dropped)
	}
	dups := 0
	for _, n := range ctl.seen {
		dups += n - 1
	}
	t.Logf("%d events, %d delivered twice (de-duplicated by seq), spool after: %+v", total, dups, sp.Stats())
	if len(ctl.state) == 0 || ctl.state[0] != "online" {
		t.Errorf("state messages %v, want online first", ctl.state)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
