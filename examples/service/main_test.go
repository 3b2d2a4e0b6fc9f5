package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/agent/router"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(ev telemetry.Event) {
	e.mu.Lock()
	e.list = append(e.list, ev.Message)
	e.mu.Unlock()
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.list, "\n")
}

// agentImage is one image of the agent: its router, given what the previous
// image handed over, and then serving the control socket.
type agentImage struct {
	r    *router.Router
	stop context.CancelFunc
	done chan error
}

func restore(ev *events, handed []router.ServiceInfo) *agentImage {
	r := router.New(ev.add, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.Restore(handed)
	return &agentImage{r: r, done: make(chan error, 1)}
}

func (im *agentImage) serve(l net.Listener) {
	ctx, cancel := context.WithCancel(context.Background())
	im.stop = cancel
	go func() { im.done <- im.r.Serve(ctx, l) }()
}

// reload hands the image over as the agent does before exec, and returns
// what it handed over.
func (im *agentImage) reload(t *testing.T) []router.ServiceInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	handed := im.r.Handover(ctx)
	im.stop()
	if err := <-im.done; err != nil {
		t.Fatal(err)
	}
	return handed
}

// call calls the service store, in the background: read the answer or the
// error from the channel.
func call(r *router.Router, payload string) <-chan string {
	answer := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := r.Call(ctx, "store", []byte(payload))
		if err != nil {
			out = []byte(err.Error())
		}
		answer <- string(out)
	}()
	return answer
}

// TestReloads runs the built example against an agent that reloads twice,
// each time calling the service before the new image serves. The first
// time the example registers again by itself: the call is answered, the
// process has not exited and no event is raised. The second time it is
// killed (SIGKILL) in the gap: five seconds later it is deregistered with an
// event saying why, and the call fails.
func TestReloads(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "service")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ev := &events{}
	a := restore(ev, nil)
	a.serve(l)
	svc := exec.Command(bin, "--socket", path, "--name", "store", "--interval", "100ms")
	var log testenv.Buffer
	svc.Stdout, svc.Stderr = &log, &log
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { svc.Wait(); close(exited) }()
	defer func() { svc.Process.Kill(); <-exited }()
	testenv.WaitFor(t, 10*time.Second, func() bool { return len(a.r.Services()) == 1 }, log.String)
	if got := <-call(a.r, "hello"); got != "store: hello\n" {
		t.Fatalf("call: %q", got)
	}

	b := restore(ev, a.reload(t))
	if s := b.r.Services(); len(s) != 1 || !s[0].Reconnecting {
		t.Errorf("services before the new image serves: %+v", s)
	}
	answer := call(b.r, "again")
	b.serve(l)
	if got := <-answer; got != "store: again\n" {
		t.Errorf("the call made in the reload's gap: %q\n%s", got, log.String())
	}
	select {
	case <-exited:
		t.Fatalf("the example exited at the reload (%v):\n%s", svc.ProcessState, log.String())
	default:
	}

	start := time.Now()
	c := restore(ev, b.reload(t))
	svc.Process.Kill()
	<-exited
	answer = call(c.r, "anyone?")
	c.serve(l)
	defer func() { c.stop(); <-c.done }()
	if got := <-answer; !strings.Contains(got, `service "store" is not registered`) {
		t.Errorf("the call made in the gap to the killed service: %q", got)
	}
	if d := time.Since(start); d < 5*time.Second || d > 7*time.Second {
		t.Errorf("the killed service was given up after %v, want 5s", d)
	}
	want := "service store registered (heartbeat every 100ms)\n" +
		"service store deregistered: it did not register again within 5s of the agent's reload"
	testenv.WaitFor(t, 2*time.Second, func() bool { return ev.String() == want }, func() string {
		return fmt.Sprintf("events:\n%s\nwant\n%s", ev, want)
	})
	if !strings.Contains(log.String(), "connection to the agent ended; registering again") {
		t.Errorf("the example's log:\n%s", log.String())
	}
}
