package router

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// image is one image of the agent: its router, given what the previous
// image handed over, and then serving the control socket. A reload test
// runs several, one after another, on one listening socket.
type image struct {
	r    *Router
	stop context.CancelFunc
	done chan error
}

func restore(ev *events, handed []ServiceInfo) *image {
	r := New(ev.add, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.Restore(handed)
	return &image{r: r, done: make(chan error, 1)}
}

func (im *image) serve(l net.Listener) *image {
	ctx, cancel := context.WithCancel(context.Background())
	im.stop = cancel
	go func() { im.done <- im.r.Serve(ctx, l) }()
	return im
}

// reload does what the agent does before exec: Handover, then the end of
// Serve's context. The socket must stay listening at path. It returns what
// was handed over, carried as JSON (as in the agent's state file), and the
// listener the next image serves on: l itself, or else a duplicate of its
// fd with l closed (as exec leaves it).
func (im *image) reload(t *testing.T, l net.Listener, path string, dup bool) ([]ServiceInfo, net.Listener) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	state, err := json.Marshal(im.r.Handover(ctx))
	if err != nil {
		t.Fatal(err)
	}
	var handed []ServiceInfo
	if err := json.Unmarshal(state, &handed); err != nil {
		t.Fatal(err)
	}
	im.stop()
	if err := <-im.done; err != nil {
		t.Fatalf("serve after a handover: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the control socket's path after a handover: %v %v", fi, err)
	}
	if !dup {
		return handed, l
	}
	f, err := l.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	next, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // the agent never closes it: exec does
	l.Close()
	return handed, next
}

// watch polls the current image's services until stopped, and counts the
// polls that did not list name.
type watch struct {
	cur    atomic.Pointer[Router]
	polls  atomic.Int64
	missed atomic.Int64
	stop   func()
}

func watchFor(t *testing.T, r *Router, name string) *watch {
	w := &watch{}
	w.cur.Store(r)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
			w.polls.Add(1)
			if !strings.Contains(names(w.cur.Load().Services()), name) {
				w.missed.Add(1)
			}
		}
	})
	w.stop = sync.OnceFunc(func() { close(done); wg.Wait() })
	t.Cleanup(w.stop)
	return w
}

func names(list []ServiceInfo) string {
	var b strings.Builder
	for _, s := range list {
		b.WriteString(s.Name + " ")
	}
	return b.String()
}

func listen(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func echo(_ context.Context, p []byte) ([]byte, error) { return append([]byte("echo: "), p...), nil }

// keep runs KeepRegistered for the test's life, logging to the test's output.
func keep(t *testing.T, path, name string, handle Handler) {
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { ended <- KeepRegistered(ctx, path, name, 50*time.Millisecond, handle, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ended; !errors.Is(err, context.Canceled) {
			t.Errorf("KeepRegistered ended with %v", err)
		}
	})
}

// callInGap calls name on the next image before it serves: the call must
// wait for the service to register again. The function returned checks that
// it was answered then.
func callInGap(t *testing.T, next *Router, name, payload string) (answered func()) {
	t.Helper()
	answer := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := next.Call(ctx, name, []byte(payload))
		if err != nil {
			out = []byte(err.Error())
		}
		answer <- string(out)
	}()
	time.Sleep(5 * time.Millisecond)
	select {
	case got := <-answer:
		t.Fatalf("a call before the service was back returned at once: %q", got)
	default:
	}
	return func() {
		t.Helper()
		if got := <-answer; got != "echo: "+payload {
			t.Fatalf("the call made during the reload: %q", got)
		}
	}
}

// TestReloadKeepsRegistration reloads the router under a registered
// service as the agent does: the service is listed throughout (reconnecting
// in the gap), a call made in the gap is answered once it is back, it keeps
// its registration time, and no event is raised for it but the first.
func TestReloadKeepsRegistration(t *testing.T) {
	l, path := listen(t)
	ev := &events{}
	a := restore(ev, nil).serve(l)
	keep(t, path, "store", echo)
	testenv.WaitFor(t, 5*time.Second, func() bool { return len(a.r.Services()) == 1 }, func() string { return "not registered" })
	since := a.r.Services()[0].Since
	w := watchFor(t, a.r, "store")

	handed, l := a.reload(t, l, path, true)
	if len(handed) != 1 || handed[0].Name != "store" || !handed[0].Reconnecting || handed[0].Interval != 50*time.Millisecond {
		t.Fatalf("handed over: %+v", handed)
	}
	if _, err := a.r.Call(context.Background(), "store", nil); err == nil || !strings.Contains(err.Error(), "the agent is reloading") {
		t.Errorf("a call to the old image: %v", err)
	}
	b := restore(ev, handed)
	w.cur.Store(b.r)
	if s := b.r.Services(); len(s) != 1 || !s[0].Reconnecting {
		t.Errorf("restored: %+v", s)
	}
	answered := callInGap(t, b.r, "store", "in the gap")
	b.serve(l)
	defer func() { b.stop(); <-b.done }()
	answered()
	w.stop()

	s := b.r.Services()
	if len(s) != 1 || s[0].Reconnecting || !s[0].Since.Equal(since) {
		t.Errorf("after the reload: %+v (registered %v)", s, since)
	}
	if n := w.missed.Load(); n > 0 {
		t.Errorf("missing from the services in %d of %d polls", n, w.polls.Load())
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.list) != 1 || ev.list[0].New != "registered" {
		t.Errorf("events: %+v", ev.list)
	}
}

// TestFiftyReloads hands the socket over fifty times in a row, to the same
// listener and to a duplicate of its fd by turns: the service stays listed
// throughout, each image answers a call made before it served, and the only
// event is the first registration.
func TestFiftyReloads(t *testing.T) {
	l, path := listen(t)
	ev := &events{}
	im := restore(ev, nil).serve(l)
	keep(t, path, "store", echo)
	testenv.WaitFor(t, 5*time.Second, func() bool { return len(im.r.Services()) == 1 }, func() string { return "not registered" })
	w := watchFor(t, im.r, "store")
	for i := range 50 {
		var handed []ServiceInfo
		handed, l = im.reload(t, l, path, i%2 == 1)
		im = restore(ev, handed)
		w.cur.Store(im.r)
		answered := callInGap(t, im.r, "store", "reload")
		im.serve(l)
		answered()
	}
	w.stop()
	im.stop()
	<-im.done
	if n := w.missed.Load(); n > 0 {
		t.Errorf("missing from the services in %d of %d polls", n, w.polls.Load())
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.list) != 2 || ev.list[0].New != "registered" || !strings.Contains(ev.list[1].Message, "the agent stopped") {
		t.Errorf("events: %+v", ev.list)
	}
}

// TestHandoverAnswersCallsInFlight: a call the service is answering when
// the hand-over begins gets its reply; one still unanswered when
// Handover's context ends fails, saying the agent is reloading, and so does
// one made meanwhile.
func TestHandoverAnswersCallsInFlight(t *testing.T) {
	l, path := listen(t)
	a := restore(&events{}, nil).serve(l)
	started := make(chan string, 2)
	keep(t, path, "store", func(ctx context.Context, p []byte) ([]byte, error) {
		started <- string(p)
		if string(p) == "slow" {
			time.Sleep(300 * time.Millisecond)
			return []byte("done"), nil
		}
		<-ctx.Done() // "stuck": until its connection ends
		return nil, ctx.Err()
	})
	testenv.WaitFor(t, 5*time.Second, func() bool { return len(a.r.Services()) == 1 }, func() string { return "not registered" })
	answers := make(chan string, 2)
	for _, p := range []string{"slow", "stuck"} {
		go func() {
			out, err := a.r.Call(context.Background(), "store", []byte(p))
			if err != nil {
				out = []byte(err.Error())
			}
			answers <- p + ": " + string(out)
		}()
		<-started
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	a.r.Handover(ctx)
	if d := time.Since(start); d < time.Second || d > 2*time.Second {
		t.Errorf("Handover took %v with a call unanswered, bound 1s", d)
	}
	got := []string{<-answers, <-answers}
	slices.Sort(got)
	if got[0] != "slow: done" || got[1] != "stuck: service store: the agent is reloading; call again" {
		t.Errorf("calls in flight: %q", got)
	}
	if _, err := a.r.Call(context.Background(), "store", nil); err == nil || !strings.Contains(err.Error(), "the agent is reloading") {
		t.Errorf("a call after the hand-over: %v", err)
	}
	a.stop()
	<-a.done
}

// TestRestoredServiceNotBack: a restored service that does not register
// again is given up after its grace (three intervals or the router's
// least, whichever is longer) with an event, and a call waiting for it fails
// as not registered; one still away when the agent stops is deregistered
// with that reason; one that no registration could have, or listed twice,
// is not restored.
func TestRestoredServiceNotBack(t *testing.T) {
	l, _ := listen(t)
	ev := &events{}
	r := New(ev.add, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.grace = 200 * time.Millisecond
	start := time.Now()
	r.Restore([]ServiceInfo{{Name: "gone", Interval: 20 * time.Millisecond}, {Name: "slow", Interval: time.Minute},
		{Name: "../x", Interval: time.Second}, {Name: "gone", Interval: time.Minute}})
	if got := names(r.Services()); got != "gone slow " {
		t.Fatalf("restored: %q", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.Serve(ctx, l) }()
	_, err := r.Call(context.Background(), "gone", nil)
	if d := time.Since(start); !errors.Is(err, ErrNotRegistered) || d < 200*time.Millisecond {
		t.Errorf("a call waiting for a service not back: %v after %v", err, d)
	}
	testenv.WaitFor(t, 2*time.Second, func() bool { return ev.has("gone", "deregistered") }, func() string { return "no event" })
	ctxCall, cancelCall := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelCall()
	if _, err := r.Call(ctxCall, "slow", nil); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "reconnecting") {
		t.Errorf("a call whose deadline ends first: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var got []string
	for _, e := range ev.list {
		got = append(got, e.New+": "+e.Message)
	}
	want := []string{"deregistered: service gone deregistered: it did not register again within 200ms of the agent's reload",
		"deregistered: service slow deregistered: the agent stopped"}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
