package collectors

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// fn is a collector made of a function, to drive the scheduler in tests.
type fn struct {
	name string
	runs atomic.Int64
	f    func(ctx context.Context, r *Report) error
}

func (c *fn) Name() string { return c.name }
func (c *fn) Collect(ctx context.Context, r *Report) error {
	c.runs.Add(1)
	return c.f(ctx, r)
}

func start(t *testing.T, s *Scheduler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestStuckCollectorDelaysNobody runs a collector that hangs past its
// timeout, ignoring cancellation (a hung statfs does), beside a fast one.
func TestStuckCollectorDelaysNobody(t *testing.T) {
	rec := &recorder{}
	s := New(Options{Sink: rec, Log: quiet()})
	release := make(chan struct{})
	defer close(release)
	stuck := &fn{name: "stuck", f: func(ctx context.Context, r *Report) error { <-release; return nil }}
	fast := &fn{name: "fast", f: func(ctx context.Context, r *Report) error { r.Add("fast.value", 1); return nil }}
	s.Add(stuck, 40*time.Millisecond, 20*time.Millisecond)
	s.Add(fast, 20*time.Millisecond, 0)
	start(t, s)

	testenv.WaitFor(t, 5*time.Second, func() bool { return fast.runs.Load() >= 10 },
		func() string { return "fast collector ran too rarely while the other hung" })
	st := s.Status()
	if !st[0].Stuck || !strings.Contains(st[0].LastError, "timed out after 20ms") || st[0].Skipped == 0 {
		t.Errorf("stuck status = %+v", st[0])
	}
	if stuck.runs.Load() != 1 {
		t.Errorf("stuck collector started %d times; runs must never overlap", stuck.runs.Load())
	}
	if h, why := s.Health(); h != telemetry.Degraded || !strings.Contains(why, "stuck stuck") {
		t.Errorf("health %s (%s), want degraded naming the stuck collector", h, why)
	}
	testenv.WaitFor(t, time.Second, func() bool { return len(rec.eventsOf("collector")) == 1 }, rec.String)
	if e := rec.eventsOf("collector")[0]; e.Subject != "stuck" || e.New != "failing" {
		t.Errorf("event %+v", e)
	}
}

func TestCollectNowKeepsSchedule(t *testing.T) {
	rec := &recorder{}
	s := New(Options{Sink: rec, Log: quiet()})
	c := &fn{name: "slow-interval", f: func(ctx context.Context, r *Report) error { return nil }}
	s.Add(c, time.Hour, 0)
	start(t, s)
	// The first scheduled run comes within the ±5 % jitter: up to 3 minutes.
	for i := 1; i <= 3; i++ {
		if err := s.CollectNow("slow-interval"); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 2*time.Second, func() bool { return c.runs.Load() >= int64(i) },
			func() string { return "collect now did not run the collector" })
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.CollectNow("nope"); err == nil || !strings.Contains(err.Error(), "[nope]") {
		t.Errorf("unknown collector: %v", err)
	}
}

func TestFailuresAreSentWithTheirData(t *testing.T) {
	rec := &recorder{}
	s := New(Options{Sink: rec, Log: quiet(), Exclude: []string{"*.secret"}})
	var fail atomic.Bool
	fail.Store(true)
	c := &fn{name: "partial", f: func(ctx context.Context, r *Report) error {
		r.Add("partial.value", 1)
		r.Add("partial.secret", 2)
		if fail.Load() {
			return errors.New("one source unreadable")
		}
		return nil
	}}
	s.Add(c, 20*time.Millisecond, 0)
	start(t, s)
	testenv.WaitFor(t, 2*time.Second, func() bool { return len(rec.eventsOf("collector")) == 1 }, rec.String)
	fail.Store(false)
	testenv.WaitFor(t, 2*time.Second, func() bool { return len(rec.eventsOf("collector")) == 2 }, rec.String)
	if e := rec.eventsOf("collector")[1]; e.New != "ok" {
		t.Errorf("recovery event %+v", e)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, b := range rec.batches {
		if len(b.Points) != 1 || b.Points[0].Name != "partial.value" {
			t.Fatalf("batch %+v: want partial.value only (the excluded one filtered)", b)
		}
	}
}

func TestLimiterHoldsAndDeliversTheLatest(t *testing.T) {
	l := newLimiter(2, time.Minute)
	now := time.Unix(1000, 0)
	ev := func(state string) telemetry.Event {
		return telemetry.Event{Kind: "link", Subject: "eth0", New: state}
	}
	for i, state := range []string{"down", "up"} { // a burst of 2 passes
		if _, ok := l.offer(ev(state), now); !ok {
			t.Fatalf("event %d held within the burst", i)
		}
	}
	for _, state := range []string{"down", "up", "down"} {
		if _, ok := l.offer(ev(state), now); ok {
			t.Fatal("event beyond the burst passed")
		}
	}
	if other, ok := l.offer(telemetry.Event{Kind: "link", Subject: "eth1", New: "down"}, now); !ok || other.Suppressed != 0 {
		t.Fatal("another subject was limited")
	}
	if got := l.due(now.Add(10 * time.Second)); len(got) != 0 {
		t.Fatalf("delivered before a token: %+v", got)
	}
	got := l.due(now.Add(time.Minute))
	if len(got) != 1 || got[0].New != "down" || got[0].Suppressed != 2 {
		t.Fatalf("due = %+v, want the latest (down) with 2 suppressed", got)
	}
	if l.dropped() != 2 {
		t.Errorf("dropped = %d, want 2", l.dropped())
	}
}

func TestFilter(t *testing.T) {
	f := filter{include: []string{"disk.*", "host.*"}, exclude: []string{"*.p99", "host.temperature*"}}
	for name, want := range map[string]bool{
		"disk.read_iops": true, "disk.lat.p99": false, "host.load1": true,
		"host.temperature_celsius": false, "net.up": false,
	} {
		if f.keep(name) != want {
			t.Errorf("keep(%s) = %v, want %v", name, !want, want)
		}
	}
}

// failingWatcher's first watch fails (its source is not there yet); the
// next one watches until cancelled.
type failingWatcher struct {
	fn
	calls atomic.Int32
}

func (w *failingWatcher) Watch(ctx context.Context, emit func(telemetry.Event)) error {
	if w.calls.Add(1) == 1 {
		return errors.New("open netlink: protocol not supported")
	}
	<-ctx.Done()
	return nil
}

// TestFailedWatchIsReportedAndRestarted: a watch that fails is in the
// collector's status until a new one, started a second later, holds.
func TestFailedWatchIsReportedAndRestarted(t *testing.T) {
	s := New(Options{Sink: &recorder{}, Log: quiet()})
	w := &failingWatcher{fn: fn{name: "net", f: func(context.Context, *Report) error { return nil }}}
	s.Add(w, time.Hour, 0)
	start(t, s)
	testenv.WaitFor(t, 5*time.Second, func() bool { return s.Status()[0].WatchError != "" },
		func() string { return "the failed watch is not in the status" })
	testenv.WaitFor(t, 5*time.Second, func() bool { return w.calls.Load() == 2 && s.Status()[0].WatchError == "" },
		func() string { return fmt.Sprintf("not restarted: %d calls, %+v", w.calls.Load(), s.Status()[0]) })
}

// TestReleaseHeldSendsTheFinalStates: before the process is replaced, the
// events the limit holds back leave at once, each subject's latest with
// its count, and none twice.
func TestReleaseHeldSendsTheFinalStates(t *testing.T) {
	rec := &recorder{}
	s := New(Options{Sink: rec, EventBurst: 1, EventEvery: time.Hour, Log: quiet()})
	for _, state := range []string{"down", "up", "down"} {
		s.Event(telemetry.Event{Kind: "link", Subject: "eth0", New: state})
	}
	if n := len(rec.eventsOf("link")); n != 1 {
		t.Fatalf("%d events passed the limit of 1", n)
	}
	s.ReleaseHeld()
	s.ReleaseHeld()
	got := rec.eventsOf("link")
	if len(got) != 2 || got[1].New != "down" || got[1].Suppressed != 1 {
		t.Fatalf("events %+v, want the held latest (down, 1 suppressed) once", got)
	}
}
