package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
	"github.com/seed69aca190/edgeagent/telemetry"
)

type events struct {
	mu   sync.Mutex
	list []telemetry.Event
}

func (e *events) add(ev telemetry.Event) { e.mu.Lock(); e.list = append(e.list, ev); e.mu.Unlock() }
func (e *events) has(subject, state string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.list {
		if ev.Subject == subject && ev.New == state {
			return true
		}
	}
	return false
}

func serve(t *testing.T) (*Router, string, *events) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	r := New(ev.add, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, path, ev
}

func TestRegisterCallAndLoss(t *testing.T) {
	r, path, ev := serve(t)
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan error, 1)
	go func() {
		ended <- Register(ctx, path, "store", 50*time.Millisecond, func(_ context.Context, p []byte) ([]byte, error) {
			if string(p) == "fail" {
				return nil, errors.New("cannot")
			}
			return append([]byte("echo: "), p...), nil
		})
	}()
	testenv.WaitFor(t, 5*time.Second, func() bool { return len(r.Services()) == 1 }, func() string { return "not registered" })
	out, err := r.Call(context.Background(), "store", []byte("hello"))
	if err != nil || string(out) != "echo: hello" {
		t.Fatalf("call: %q %v", out, err)
	}
	if _, err := r.Call(context.Background(), "store", []byte("fail")); err == nil || !strings.Contains(err.Error(), "cannot") {
		t.Fatalf("failing call: %v", err)
	}
	if _, err := r.Call(context.Background(), "nobody", nil); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("unregistered: %v", err)
	}
	// A second registration under the same name is refused while the first lives.
	if err := Register(context.Background(), path, "store", time.Second, nil); err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Fatalf("duplicate: %v", err)
	}
	// Heartbeats keep it registered well past three intervals.
	time.Sleep(300 * time.Millisecond)
	if len(r.Services()) != 1 || r.Services()[0].Calls != 2 {
		t.Fatalf("services %+v", r.Services())
	}
	cancel()
	<-ended
	testenv.WaitFor(t, 2*time.Second, func() bool { return ev.has("store", "deregistered") }, func() string { return "no event" })
}

// TestSilentServiceIsDeregistered registers by hand and then says nothing:
// three intervals later the service is gone, with an event naming why.
func TestSilentServiceIsDeregistered(t *testing.T) {
	r, path, ev := serve(t)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeFrame(c, &Frame{Type: "register", Service: "hung", IntervalMs: 50})
	if f, err := readFrame(c); err != nil || f.Type != "ok" {
		t.Fatalf("register: %+v %v", f, err)
	}
	start := time.Now()
	testenv.WaitFor(t, 2*time.Second, func() bool { return len(r.Services()) == 0 }, func() string { return "still registered" })
	if d := time.Since(start); d < 140*time.Millisecond {
		t.Errorf("deregistered after %v, before three intervals", d)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	last := ev.list[len(ev.list)-1]
	if last.New != "deregistered" || !strings.Contains(last.Message, "missed three heartbeats") {
		t.Errorf("event %+v", last)
	}
}

func TestBadRegistrations(t *testing.T) {
	_, path, _ := serve(t)
	for _, tc := range []struct {
		f    Frame
		want string
	}{
		{Frame{Type: "heartbeat"}, "register first"},
		{Frame{Type: "register", Service: "../x", IntervalMs: 100}, "not a service name"},
		{Frame{Type: "register", Service: "x", IntervalMs: 0}, "interval_ms 0"},
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		writeFrame(c, &tc.f)
		f, err := readFrame(c)
		c.Close()
		if err != nil || f.Type != "error" || !strings.Contains(f.Error, tc.want) {
			t.Errorf("%+v: %+v %v, want error %q", tc.f, f, err, tc.want)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	var b strings.Builder
	writeFrame(&b, &Frame{Type: "call", ID: "1", Payload: []byte("x")})
	f.Add([]byte(b.String()))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := readFrame(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		var out strings.Builder
		if err := writeFrame(&out, &fr); err != nil {
			t.Fatal(err)
		}
		again, err := readFrame(strings.NewReader(out.String()))
		if err != nil || again.Type != fr.Type || again.ID != fr.ID || string(again.Payload) != string(fr.Payload) {
			t.Fatalf("round trip: %+v / %+v / %v", fr, again, err)
		}
	})
}

// TestServiceWordsAreText has local services speak random bytes: names to
// register under (refused, never reported), an error in reply to a call,
// and a malformed frame that ends the registration. The call's error and
// every event are text: the controller takes them without the encoder's
// help.
func TestServiceWordsAreText(t *testing.T) {
	r, path, ev := serve(t)
	rnd := rand.New(rand.NewPCG(3, 3))
	for i := range 20 {
		junk := wiretest.Junk(rnd, 1+rnd.IntN(16), "")
		if err := Register(context.Background(), path, junk, time.Second, nil); err == nil {
			t.Fatalf("registered as %q", junk)
		}
		name := fmt.Sprint("svc", i)
		ctx, cancel := context.WithCancel(context.Background())
		go Register(ctx, path, name, time.Second, func(context.Context, []byte) ([]byte, error) { return nil, errors.New(junk) })
		testenv.WaitFor(t, 5*time.Second, func() bool { return ev.has(name, "registered") }, func() string { return "not registered" })
		_, err := r.Call(context.Background(), name, nil)
		if err == nil {
			t.Fatal("the failing call succeeded")
		}
		cancel()
		testenv.WaitFor(t, 5*time.Second, func() bool { return ev.has(name, "deregistered") }, func() string { return "not deregistered" })
		if n := wiretest.Send(t, telemetry.KindCommandResult, telemetry.CommandResult{ID: "c", Status: telemetry.StatusFailed,
			Reason: err.Error()}); n > 0 {
			t.Fatalf("the call's error is not text: %q", err)
		}

		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		writeFrame(c, &Frame{Type: "register", Service: name, IntervalMs: 1000})
		readFrame(c)
		c.Write(append([]byte{0, 0, 0, byte(len(junk))}, junk...)) // a frame that is not MessagePack
		testenv.WaitFor(t, 5*time.Second, func() bool { return len(r.Services()) == 0 }, func() string { return "still registered" })
		c.Close()
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.list {
		if n := wiretest.Send(t, telemetry.KindEvent, e); n > 0 {
			t.Fatalf("event not text: %s", wiretest.InvalidText(e))
		}
	}
}
