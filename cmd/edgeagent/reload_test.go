package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/ipv4"

	"github.com/seed69aca190/edgeagent/agent/router"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// The reload under load and during work (issue 12, items 7 and 8): a real
// agent process, a real mosquitto, real signals, and on the other side of
// the broker a controller that decodes with telemetry's own decoder and
// counts every message once (by sequence number, as the controller
// de-duplicates).

// TestReloadUnderLoad sends StatsD counters at 20,000 datagrams/s and opens
// HTTP connections to the status endpoint without pause while 50 reloads,
// SIGUSR1 and `edgeagent reload` in turn, follow one another, each sent as
// soon as the image before is ready. Then: no HTTP connection refused or
// reset, the counter total at the broker equal to what was sent, no
// datagram dropped by the socket (nor a kernel RcvbufErrors increase), the
// same pid throughout, as many descriptors after the 50th reload as after
// the 1st, never "offline" at the broker, and a local service registered
// throughout (no deregistration, its registration time unchanged).
func TestReloadUnderLoad(t *testing.T) {
	const (
		reloads = 50
		rate    = 20000 // datagrams a second
	)
	broker := testenv.StartMosquitto(t, "")
	ag := startLiveAgent(t, broker.URL, "")
	tap := tapFleet(t, broker.URL, ag.node)
	ag.waitConnected(t)
	svc := startService(t, ag.socket, "store")
	svc.waitRegistrations(t, 1)
	registered := tap.service(t, ag, "store")
	testenv.WaitFor(t, 10*time.Second, func() bool { return tap.heartbeats() > 0 },
		func() string { return "no heartbeat at the controller\n" + ag.log.String() })

	udpBefore, err := nic.ReadUDPStats("/proc")
	if err != nil {
		t.Fatal(err)
	}
	load := sendStatsD(t, ag.statsd, "reload.load", rate)
	probe := probeHTTP(t, ag.http)
	testenv.WaitFor(t, 10*time.Second, func() bool { return tap.counter("reload.load") > 0 },
		func() string { return "no StatsD counter at the controller\n" + ag.tail() })

	var fdsFirst []string
	started := time.Now()
	for i := 1; i <= reloads; i++ {
		before := ag.generation(t)
		if i%2 == 1 {
			ag.signalReload(t)
		} else {
			ag.commandReload(t)
		}
		if g := ag.generation(t); g != before+1 {
			t.Fatalf("reload %d: image %d after %d", i, g, before)
		}
		if i == 1 || i == reloads {
			// Counted with no HTTP request open, the new session and the
			// service's connection made.
			fds := probe.paused(func() []string {
				ag.waitConnected(t)
				tap.service(t, ag, "store")
				return ag.fds(t)
			})
			if i == 1 {
				fdsFirst = fds
			} else if len(fds) != len(fdsFirst) {
				t.Errorf("%d descriptors after reload 1, %d after reload %d\nafter 1:  %s\nafter %d: %s",
					len(fdsFirst), len(fds), i, strings.Join(fdsFirst, " "), i, strings.Join(fds, " "))
			}
		}
	}
	took := time.Since(started)
	time.Sleep(300 * time.Millisecond) // the last image under load a moment too
	sent := load.stop()
	requests, failures := probe.stop()
	t.Logf("%d reloads in %v under %d datagrams/s: %d datagrams sent, %d HTTP requests", reloads, took.Round(time.Millisecond),
		rate, sent, requests)

	if len(failures) > 0 {
		t.Errorf("%d of %d HTTP requests failed, the first: %s", len(failures), requests, strings.Join(failures[:min(5, len(failures))], "; "))
	}
	var got float64
	testenv.WaitFor(t, 20*time.Second, func() bool {
		got = tap.counter("reload.load")
		return got >= float64(sent)
	}, func() string {
		return fmt.Sprintf("the broker has %v of the %d counted; socket drops %d\n%s", got, sent, ag.socketDrops(t), ag.tail())
	})
	time.Sleep(1500 * time.Millisecond) // a flush more: nothing counted twice either
	if got = tap.counter("reload.load"); got != float64(sent) {
		t.Errorf("the broker counted %v, %d sent", got, sent)
	}
	if d := ag.socketDrops(t); d != 0 {
		t.Errorf("the StatsD socket dropped %d datagrams", d)
	}
	udpAfter, err := nic.ReadUDPStats("/proc")
	if err != nil {
		t.Fatal(err)
	}
	// RcvbufErrors is the whole machine's (this network namespace's): a
	// datagram any socket dropped for a full buffer counts. The socket's own
	// drops (above) are this test's alone; this checks the kernel agrees.
	t.Logf("kernel UDP RcvbufErrors %d → %d", udpBefore.RcvbufErrors, udpAfter.RcvbufErrors)
	if udpAfter.RcvbufErrors != udpBefore.RcvbufErrors {
		t.Errorf("RcvbufErrors grew by %d", udpAfter.RcvbufErrors-udpBefore.RcvbufErrors)
	}

	gaps := ag.unreadGaps()
	t.Logf("StatsD socket unread during a reload (agent's log): %s", summarize(gaps))
	if len(gaps) != reloads {
		t.Errorf("%d unread gaps logged, want %d", len(gaps), reloads)
	}

	// Each session numbers its last will, which a clean hand-over never
	// sends: one hole a session, none from the reloads themselves.
	if lo, hi, holes := tap.holes(); holes > reloads+1 {
		t.Errorf("sequence numbers %d to %d: %d never arrived over %d sessions", lo, hi, holes, reloads+1)
	}
	states := tap.states()
	if slices.Contains(states, "offline") {
		t.Errorf("the node was said offline: states %v", states)
	}
	if !slices.Contains(states, "upgrading") {
		t.Errorf("the node was never upgrading: states %v", states)
	}
	if ev := tap.events(func(e telemetry.Event) bool { return e.Kind == "service" && e.New != "registered" }); len(ev) > 0 {
		t.Errorf("service events at the controller: %+v", ev)
	}
	if strings.Contains(ag.log.String(), "service deregistered") {
		t.Errorf("the agent deregistered a service:\n%s", ag.tail())
	}
	if now := tap.service(t, ag, "store"); !now.Since.Equal(registered.Since) {
		t.Errorf("the service registered %v is now registered since %v", registered.Since, now.Since)
	}
	if reply := tap.exec(t, ag.node, "service.call", "store", "still there"); reply.Status != telemetry.StatusOK ||
		string(reply.Stdout.Data) != "store: still there\n" {
		t.Errorf("service.call after the reloads: %+v", reply)
	}
	if pid := ag.lockPID(t); pid != ag.cmd.Process.Pid {
		t.Errorf("edgeagent.lock names pid %d, the agent is %d", pid, ag.cmd.Process.Pid)
	}
	ag.stop(t)
}

// TestReloadDuringWork reloads the agent while it is busy in each way that
// could lose or repeat something:
//
//   - a plugin runs: the reload waits for it; it ran once, and its result
//     arrives once;
//   - requests wait in the dispatcher's queue (concurrency 1), more arrive
//     while it quiesces and after: each runs exactly once and is answered
//     once (those taken by the old image, those left with the broker by
//     the next);
//   - the broker is down: the hand-over says the controller was not told,
//     the spool crosses the exec and drains once the broker is back, and
//     the StatsD counter total at the controller is what was sent;
//   - events are held by the rate limit: the held one (the subject's last
//     state) arrives at the reload, with the ones it superseded counted.
func TestReloadDuringWork(t *testing.T) {
	broker := testenv.StartMosquitto(t, "")
	// slow ARG SECONDS: appends ARG to a file (each run), sleeps, answers.
	slow := func(t *testing.T, a *liveAgent) (runs func() []string) {
		ran := filepath.Join(a.dir, "ran")
		script := "#!/bin/sh\necho \"$1\" >> " + ran + "\nsleep \"$2\"\necho \"done $1\"\n"
		if err := os.WriteFile(filepath.Join(a.plugins, "slow"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return func() []string {
			data, _ := os.ReadFile(ran)
			return strings.Fields(string(data))
		}
	}

	t.Run("plugin running", func(t *testing.T) {
		ag := startLiveAgent(t, broker.URL, "")
		runs := slow(t, ag)
		tap := tapFleet(t, broker.URL, ag.node)
		ag.waitConnected(t)
		id := tap.send(t, ag.node, "slow", "one", "1.5")
		testenv.WaitFor(t, 10*time.Second, func() bool { return len(runs()) == 1 }, func() string { return "the plugin did not start" })
		ag.signalReload(t) // the reload waits for it
		r := tap.result(t, id)
		if r.Status != telemetry.StatusOK || string(r.Stdout.Data) != "done one\n" {
			t.Errorf("result %+v", r)
		}
		time.Sleep(1500 * time.Millisecond)
		if n := tap.resultCount(id); n != 1 || !slices.Equal(runs(), []string{"one"}) {
			t.Errorf("%d results, runs %v; want one of each", n, runs())
		}
	})

	t.Run("commands queued", func(t *testing.T) {
		ag := startLiveAgent(t, broker.URL, "commands:\n  concurrency: 1\n  queue: 16\n")
		runs := slow(t, ag)
		tap := tapFleet(t, broker.URL, ag.node)
		ag.waitConnected(t)
		var ids, want []string
		send := func(n int) {
			for range n {
				arg := strconv.Itoa(len(want))
				ids = append(ids, tap.send(t, ag.node, "slow", arg, "0.2"))
				want = append(want, arg)
			}
		}
		send(6) // one runs, five wait in the dispatcher's queue
		testenv.WaitFor(t, 10*time.Second, func() bool { return len(runs()) == 1 }, func() string { return "no plugin started" })
		before := ag.generation(t)
		syscall.Kill(ag.cmd.Process.Pid, syscall.SIGUSR1)
		send(4) // while it quiesces: left with the broker for the next image
		ag.waitGeneration(t, before+1)
		send(2) // to the new image
		for _, id := range ids {
			if r := tap.result(t, id); r.Status != telemetry.StatusOK {
				t.Errorf("request %s: %+v", id, r)
			}
		}
		time.Sleep(1500 * time.Millisecond)
		got := runs()
		slices.SortFunc(got, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
		if !slices.Equal(got, want) {
			t.Errorf("runs %v, want each of %v once", got, want)
		}
		for _, id := range ids {
			if n := tap.resultCount(id); n != 1 {
				t.Errorf("request %s answered %d times", id, n)
			}
		}
		if !strings.Contains(ag.log.String(), `msg="reloading: exec"`) {
			t.Errorf("no reload:\n%s", ag.tail())
		}
	})

	t.Run("broker down", func(t *testing.T) {
		ag := startLiveAgent(t, broker.URL, "")
		tap := tapFleet(t, broker.URL, ag.node)
		ag.waitConnected(t)
		broker.Stop()
		load := sendStatsD(t, ag.statsd, "outage.load", 2000)
		time.Sleep(2500 * time.Millisecond) // flushes and heartbeats go to the spool
		ag.commandReload(t)
		time.Sleep(1500 * time.Millisecond)
		sent := load.stop()
		spooled := ag.status(t).Uplink.Spool
		if spooled.Memory+spooled.Disk == 0 {
			t.Errorf("nothing in the spool after the reload without a broker: %+v", spooled)
		}
		if !strings.Contains(ag.log.String(), "not connected to the broker") {
			t.Errorf("the hand-over without a broker is not logged:\n%s", ag.tail())
		}
		broker.Start()
		var got float64
		testenv.WaitFor(t, 30*time.Second, func() bool {
			got = tap.counter("outage.load")
			return got >= float64(sent)
		}, func() string { return fmt.Sprintf("the broker has %v of the %d counted\n%s", got, sent, ag.tail()) })
		testenv.WaitFor(t, 10*time.Second, func() bool {
			s := ag.status(t).Uplink.Spool
			return s.Memory+s.Disk+s.InFlight == 0
		}, func() string { return fmt.Sprintf("spool not drained: %+v", ag.status(t).Uplink.Spool) })
		time.Sleep(1500 * time.Millisecond)
		if got = tap.counter("outage.load"); got != float64(sent) {
			t.Errorf("the broker counted %v, %d sent", got, sent)
		}
		if s := ag.status(t).Uplink.Spool; s.Dropped != 0 {
			t.Errorf("spool dropped %d", s.Dropped)
		}
		// The broker going away left the node offline at the controller
		// (that is no reload's doing); the agent, back, says online.
		testenv.WaitFor(t, 10*time.Second, func() bool { s := tap.states(); return s[len(s)-1] == "online" },
			func() string { return fmt.Sprintf("states %v", tap.states()) })
	})

	t.Run("events held", func(t *testing.T) {
		ag := startLiveAgent(t, broker.URL, "events:\n  burst: 2\n  rate_limit: 10m\n")
		tap := tapFleet(t, broker.URL, ag.node)
		ag.waitConnected(t)
		// A service that comes and goes: an event at each, about one subject.
		count := func(msg string) int {
			return len(regexp.MustCompile(`msg="`+msg+`" .*service=flappy`).FindAllString(ag.log.String(), -1))
		}
		for i := 1; i <= 4; i++ {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- router.Register(ctx, ag.socket, "flappy", time.Second, func(context.Context, []byte) ([]byte, error) { return nil, nil })
			}()
			testenv.WaitFor(t, 5*time.Second, func() bool { return count("service registered") == i },
				func() string { return "flappy not registered\n" + ag.tail() })
			cancel()
			<-done
			testenv.WaitFor(t, 5*time.Second, func() bool { return count("service deregistered") == i },
				func() string { return "flappy not deregistered\n" + ag.tail() })
		}
		flappy := func(e telemetry.Event) bool { return e.Kind == "service" && e.Subject == "flappy" }
		testenv.WaitFor(t, 10*time.Second, func() bool { return len(tap.events(flappy)) == 2 },
			func() string { return fmt.Sprintf("events %+v", tap.events(flappy)) })
		time.Sleep(1500 * time.Millisecond)
		if ev := tap.events(flappy); len(ev) != 2 {
			t.Fatalf("before the reload, want the burst of 2 events, got %+v", ev)
		}
		ag.signalReload(t)
		testenv.WaitFor(t, 10*time.Second, func() bool { return len(tap.events(flappy)) == 3 },
			func() string {
				return fmt.Sprintf("the held event did not arrive: %+v\n%s", tap.events(flappy), ag.tail())
			})
		last := tap.events(flappy)[2]
		if last.New != "deregistered" || last.Suppressed != 5 {
			t.Errorf("the held event: %+v; want the last (deregistered) with the 5 before it counted", last)
		}
	})
}

// TestReloadStopped: SIGTERM while a reload waits for a running plugin
// (which may take up to commands.max_timeout) is not waited out: the agent
// stops the plugin, answers its request, says offline (clean) and exits 0,
// with no new image exec'd.
func TestReloadStopped(t *testing.T) {
	broker := testenv.StartMosquitto(t, "")
	ag := startLiveAgent(t, broker.URL, "")
	ran := filepath.Join(ag.dir, "ran")
	script := "#!/bin/sh\necho run >> " + ran + "\nsleep 60\necho done\n"
	if err := os.WriteFile(filepath.Join(ag.plugins, "slow"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	tap := tapFleet(t, broker.URL, ag.node)
	ag.waitConnected(t)
	id := tap.send(t, ag.node, "slow")
	testenv.WaitFor(t, 10*time.Second, func() bool { _, err := os.Stat(ran); return err == nil },
		func() string { return "the plugin did not start\n" + ag.tail() })
	if err := ag.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(ag.log.String(), `msg="reloading: quiescing"`) },
		func() string { return "no reload began\n" + ag.tail() })
	time.Sleep(300 * time.Millisecond) // waiting for the plugin
	began := time.Now()
	ag.stop(t) // SIGTERM; exit 0 within 15 s, the plugin would take 60
	t.Logf("stopped %v after SIGTERM", time.Since(began).Round(time.Millisecond))
	log := ag.log.String()
	if strings.Contains(log, `msg="reloading: exec"`) || strings.Count(log, `msg="edgeagent started"`) != 1 {
		t.Errorf("a new image ran after SIGTERM:\n%s", ag.tail())
	}
	if !strings.Contains(log, `msg="edgeagent stopped"`) {
		t.Errorf("no clean stop logged:\n%s", ag.tail())
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { s, clean := tap.lastState(); return s == "offline" && clean },
		func() string { return fmt.Sprintf("not offline (clean) at the controller: states %v", tap.states()) })
	if r := tap.result(t, id); r.Status == telemetry.StatusOK {
		t.Errorf("the plugin stopped with the agent, yet its result is %+v", r)
	}
	time.Sleep(500 * time.Millisecond)
	if n := tap.resultCount(id); n != 1 {
		t.Errorf("request answered %d times", n)
	}
}

// TestReloadLockHeld: `edgeagent reload` signals the pid in edgeagent.lock
// only while the state directory's lock is held (after a crash the pid may
// be an unrelated process's), and leaves the lock free when it is not.
func TestReloadLockHeld(t *testing.T) {
	dir := t.TempDir()
	if err := lockHeld(dir); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("nobody holds %s: %v", dir, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// Taken as the agent takes it: lockHeld released its try.
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the lock was left held: %v", err)
	}
	if err := lockHeld(dir); err != nil {
		t.Errorf("held: %v", err)
	}
	// A stale edgeagent.lock naming a live process that is no agent (SIGUSR1
	// would end it).
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { other.Wait(); close(exited) }()
	t.Cleanup(func() { other.Process.Kill(); <-exited })
	os.WriteFile(filepath.Join(dir, "edgeagent.lock"), fmt.Appendf(nil, "%d\n0\n\n", other.Process.Pid), 0o640)
	syscall.Flock(int(d.Fd()), syscall.LOCK_UN)
	out, err := exec.Command(binary, "reload", "--state-dir", dir, "--timeout", "1s").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "not running") {
		t.Errorf("reload with a stale lock file: %v, %s", err, out)
	}
	select {
	case <-exited:
		t.Errorf("the process the stale lock file names was signalled: %v", other.ProcessState)
	case <-time.After(200 * time.Millisecond):
	}
}

// liveAgent is an edgeagent process run by a reload test.
type liveAgent struct {
	cmd                 *exec.Cmd
	log                 *testenv.Buffer
	node, dir, config   string
	http, statsd        string
	socket, state, lock string
	plugins             string
}

// liveConfig is the base configuration: every interval short, and the
// collectors that read this machine on, so the uplink carries traffic.
const liveConfig = `node:
  id: %s
paths:
  state_dir: %s
  plugin_dir: %s
uplink:
  brokers: [%s]
  flush_interval: 1s
  keepalive: 5s
heartbeat:
  interval: 1s
http:
  listen: %s
statsd:
  listen: %s
  flush_interval: 1s
collect:
  host: 1s
  disk: 1s
  net: 1s
  tunnel: 0s
  smart: 0s
  agent: 1s
`

// startLiveAgent runs the agent with liveConfig and extra (whole top-level
// sections replaced) until the test ends.
func startLiveAgent(t testing.TB, broker, extra string) *liveAgent {
	t.Helper()
	dir := t.TempDir()
	a := &liveAgent{dir: dir, node: fmt.Sprintf("reload-%d", rand.Uint32()), http: testenv.FreePort(t),
		state: filepath.Join(dir, "state"), log: &testenv.Buffer{}}
	a.statsd = freeUDP(t)
	a.socket = filepath.Join(a.state, "control.sock")
	a.lock = filepath.Join(a.state, "edgeagent.lock")
	a.config = filepath.Join(dir, "config.yaml")
	a.plugins = filepath.Join(dir, "plugins")
	if err := os.Mkdir(a.plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := mergeYAML(fmt.Sprintf(liveConfig, a.node, a.state, a.plugins, broker, a.http, a.statsd), extra)
	if err := os.WriteFile(a.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(binary, "run", "--config", a.config)
	a.cmd.Stderr = a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		a.cmd.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.tail())
		}
	})
	a.waitGeneration(t, 0)
	return a
}

// freeUDP returns a loopback address whose UDP port was free a moment ago.
func freeUDP(t testing.TB) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// tail is the end of the agent's log.
func (a *liveAgent) tail() string {
	log := a.log.String()
	return log[max(0, len(log)-8000):]
}

// generation is the image the agent runs, from edgeagent.lock.
func (a *liveAgent) generation(t testing.TB) int {
	t.Helper()
	lf, err := readLockFile(a.lock)
	if err != nil {
		t.Fatalf("%v\n%s", err, a.tail())
	}
	return lf.generation
}

func (a *liveAgent) lockPID(t testing.TB) int {
	t.Helper()
	lf, err := readLockFile(a.lock)
	if err != nil {
		t.Fatalf("%v\n%s", err, a.tail())
	}
	return lf.pid
}

// waitGeneration waits until image gen is ready (edgeagent.lock says so).
func (a *liveAgent) waitGeneration(t testing.TB, gen int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		lf, err := readLockFile(a.lock)
		if err == nil && lf.generation >= gen {
			if lf.pid != a.cmd.Process.Pid {
				t.Fatalf("edgeagent.lock names pid %d, the agent is %d", lf.pid, a.cmd.Process.Pid)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %d not ready within 20s (lock: %+v, %v)\n%s", gen, lf, err, a.tail())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// signalReload sends SIGUSR1 and waits for the next image.
func (a *liveAgent) signalReload(t testing.TB) {
	t.Helper()
	gen := a.generation(t)
	if err := a.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	a.waitGeneration(t, gen+1)
}

// commandReload runs `edgeagent reload`, which waits for the next image.
func (a *liveAgent) commandReload(t testing.TB) {
	t.Helper()
	out, err := exec.Command(binary, "reload", "--config", a.config).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), fmt.Sprintf("reloaded: pid %d, image ", a.cmd.Process.Pid)) {
		t.Fatalf("edgeagent reload: %v, %q\n%s", err, out, a.tail())
	}
}

// agentStatus is what the tests read of /status.
type agentStatus struct {
	Uplink struct {
		State string
		Spool struct {
			Memory, Disk, InFlight int
			Dropped                uint64
		}
	}
}

func (a *liveAgent) status(t testing.TB) agentStatus {
	t.Helper()
	var st agentStatus
	c := http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + a.http + "/status")
	if err != nil {
		t.Fatalf("/status: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return st
}

// waitConnected waits until the uplink is connected.
func (a *liveAgent) waitConnected(t testing.TB) {
	t.Helper()
	testenv.WaitFor(t, 15*time.Second, func() bool { return a.status(t).Uplink.State == "connected" },
		func() string { return "uplink not connected\n" + a.tail() })
}

// fds lists the agent's descriptors (what each points to, numbers aside),
// once two readings 100 ms apart agree.
func (a *liveAgent) fds(t testing.TB) []string {
	t.Helper()
	read := func() []string {
		dir := fmt.Sprintf("/proc/%d/fd", a.cmd.Process.Pid)
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			target, _ := os.Readlink(filepath.Join(dir, e.Name()))
			out = append(out, regexp.MustCompile(`\[\d+\]`).ReplaceAllString(target, ""))
		}
		slices.Sort(out)
		return out
	}
	last := read()
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		now := read()
		if slices.Equal(now, last) {
			return now
		}
		last = now
	}
	return last
}

// socketDrops reads the StatsD socket's drop counter from /proc/net/udp.
func (a *liveAgent) socketDrops(t testing.TB) uint64 {
	t.Helper()
	_, port, _ := net.SplitHostPort(a.statsd)
	p, _ := strconv.Atoi(port)
	local := fmt.Sprintf("0100007F:%04X", p)
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 12 && fields[1] == local {
			d, _ := strconv.ParseUint(fields[len(fields)-1], 10, 64)
			return d
		}
	}
	t.Fatalf("no UDP socket on %s in /proc/net/udp", a.statsd)
	return 0
}

var unreadLine = regexp.MustCompile(`msg="statsd socket read again after the hand-over".* unread=(\S+)`)

// unreadGaps are the unread times the agent logged, one per reload: from
// the last datagram one image read to the first the next read.
func (a *liveAgent) unreadGaps() []time.Duration {
	var out []time.Duration
	for _, m := range unreadLine.FindAllStringSubmatch(a.log.String(), -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// stop ends the agent with SIGTERM and checks it exits cleanly.
func (a *liveAgent) stop(t testing.TB) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("agent exit: %v\n%s", err, a.tail())
		}
	case <-time.After(15 * time.Second):
		t.Errorf("agent did not stop within 15s\n%s", a.tail())
	}
}

// summarize gives the median, 99th percentile and maximum of ds.
func summarize(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("n=%d p50 %v, p99 %v, max %v", len(s), at(0.5).Round(10*time.Microsecond),
		at(0.99).Round(10*time.Microsecond), s[len(s)-1].Round(10*time.Microsecond))
}

// service is examples/service run by a test.
type service struct {
	cmd *exec.Cmd
	log *testenv.Buffer
}

// serviceBinary is examples/service, built once.
var serviceBinary = sync.OnceValues(func() (string, error) {
	path := filepath.Join(filepath.Dir(binary), "service")
	out, err := exec.Command("go", "build", "-o", path, "../../examples/service").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build examples/service: %v\n%s", err, out)
	}
	return path, nil
})

func startService(t testing.TB, socket, name string) *service {
	t.Helper()
	bin, err := serviceBinary()
	if err != nil {
		t.Fatal(err)
	}
	s := &service{cmd: exec.Command(bin, "--socket", socket, "--name", name, "--interval", "1s"), log: &testenv.Buffer{}}
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	return s
}

// waitRegistrations waits until the service has registered n times.
func (s *service) waitRegistrations(t testing.TB, n int) {
	t.Helper()
	testenv.WaitFor(t, 15*time.Second, func() bool { return strings.Count(s.log.String(), "registered with the agent") >= n },
		func() string { return fmt.Sprintf("service not registered %d times:\n%s", n, s.log.String()) })
}

// fleetTap is the controller's side for a reload test: a persistent MQTT
// session on the node's topics that decodes every message with the
// controller's decoder, counts each sequence number once, and sends
// requests as the controller does.
type fleetTap struct {
	client mqtt.Client
	node   string

	mu       sync.Mutex
	seen     map[uint64]bool
	numbers  map[uint64]bool // every sequence number, states' too
	state    []string
	clean    []bool // each state's Clean
	event    []telemetry.Event
	results  map[string][]telemetry.CommandResult
	counters map[string]float64 // StatsD counters (metric_type counter), summed
	beats    int
	bad      []string

	enc telemetry.Encoder
	seq uint64
}

func tapFleet(t testing.TB, broker, node string) *fleetTap {
	t.Helper()
	f := &fleetTap{node: node, seen: map[uint64]bool{}, numbers: map[uint64]bool{}, results: map[string][]telemetry.CommandResult{},
		counters: map[string]float64{}, seq: uint64(time.Now().UnixMilli()) << 10}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID("tap-" + node).SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetOrderMatters(true)
	subscribed := make(chan error, 1)
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		tok := c.Subscribe("edge/"+node+"/#", 1, f.record)
		go func() {
			tok.WaitTimeout(5 * time.Second)
			select {
			case subscribed <- tok.Error():
			default:
			}
		}()
	})
	f.client = mqtt.NewClient(opts)
	if tok := f.client.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("controller connect: %v", tok.Error())
	}
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("controller subscribe: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("controller: no SUBACK within 10s")
	}
	t.Cleanup(func() {
		f.client.Disconnect(100)
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.bad) > 0 {
			t.Errorf("messages the controller's decoder refused: %v", f.bad)
		}
	})
	return f
}

func (f *fleetTap) record(_ mqtt.Client, m mqtt.Message) {
	env, err := telemetry.Decode(m.Payload())
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.bad = append(f.bad, m.Topic()+": "+err.Error())
		return
	}
	if env.Kind != telemetry.KindCommand {
		f.numbers[env.Seq] = true
	}
	switch env.Kind {
	case telemetry.KindCommand: // our own requests
		return
	case telemetry.KindState:
		var st telemetry.State
		if err := env.DecodeBody(&st); err != nil {
			f.bad = append(f.bad, err.Error())
		}
		f.state = append(f.state, st.State)
		f.clean = append(f.clean, st.Clean)
		return
	}
	if f.seen[env.Seq] { // delivered again: processed once
		return
	}
	f.seen[env.Seq] = true
	var err2 error
	switch env.Kind {
	case telemetry.KindBatch:
		var batches []telemetry.Batch
		batches, err2 = env.DecodeBatches()
		for _, b := range batches {
			for _, p := range b.Points {
				if b.Source == "statsd" && p.Tags["metric_type"] == "counter" {
					f.counters[p.Name] += p.Value
				}
			}
		}
	case telemetry.KindHeartbeat:
		f.beats++
	case telemetry.KindEvent:
		var e telemetry.Event
		if err2 = env.DecodeBody(&e); err2 == nil {
			f.event = append(f.event, e)
		}
	case telemetry.KindCommandResult:
		var r telemetry.CommandResult
		if err2 = env.DecodeBody(&r); err2 == nil {
			f.results[r.ID] = append(f.results[r.ID], r)
		}
	}
	if err2 != nil {
		f.bad = append(f.bad, err2.Error())
	}
}

func (f *fleetTap) counter(name string) float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counters[name]
}

// holes counts the sequence numbers between the lowest and the highest
// seen that never arrived.
func (f *fleetTap) holes() (lowest, highest uint64, holes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lowest = ^uint64(0)
	for n := range f.numbers {
		lowest, highest = min(lowest, n), max(highest, n)
	}
	return lowest, highest, int(highest-lowest+1) - len(f.numbers)
}

func (f *fleetTap) heartbeats() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.beats
}

func (f *fleetTap) states() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.state)
}

// lastState is the last state the node published and whether it was a
// clean one ("" before any).
func (f *fleetTap) lastState() (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.state) == 0 {
		return "", false
	}
	return f.state[len(f.state)-1], f.clean[len(f.clean)-1]
}

func (f *fleetTap) events(match func(telemetry.Event) bool) []telemetry.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []telemetry.Event
	for _, e := range f.event {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

func (f *fleetTap) resultCount(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.results[id])
}

// send publishes a request as controller.Ingest.Send does and returns its id.
func (f *fleetTap) send(t testing.TB, node, name string, args ...string) string {
	t.Helper()
	f.mu.Lock()
	f.seq++
	id := fmt.Sprintf("req-%d", f.seq)
	now := time.Now()
	data, err := f.enc.Encode(telemetry.Header{Node: node, Seq: f.seq, Time: now, Kind: telemetry.KindCommand},
		telemetry.Command{ID: id, Node: node, Name: name, Args: args, IssuedAt: now, ExpiresAt: now.Add(time.Minute)})
	payload := slices.Clone(data)
	f.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if tok := f.client.Publish("edge/"+node+"/cmd", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish request: %v", tok.Error())
	}
	return id
}

// result waits for the answer to request id.
func (f *fleetTap) result(t testing.TB, id string) telemetry.CommandResult {
	t.Helper()
	testenv.WaitFor(t, 20*time.Second, func() bool { return f.resultCount(id) > 0 },
		func() string { return "no result for " + id })
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.results[id][0]
}

// exec sends a request and waits for its result.
func (f *fleetTap) exec(t testing.TB, node, name string, args ...string) telemetry.CommandResult {
	t.Helper()
	return f.result(t, f.send(t, node, name, args...))
}

// service asks the agent for its services (the built-in) and returns name.
func (f *fleetTap) service(t testing.TB, a *liveAgent, name string) router.ServiceInfo {
	t.Helper()
	var found router.ServiceInfo
	testenv.WaitFor(t, 15*time.Second, func() bool {
		r := f.exec(t, a.node, "services")
		var list []router.ServiceInfo
		json.Unmarshal(r.Stdout.Data, &list)
		for _, s := range list {
			if s.Name == name && !s.Reconnecting {
				found = s
				return true
			}
		}
		return false
	}, func() string { return name + " not registered\n" + a.tail() })
	return found
}

// statsdLoad sends one counter, one increment per datagram, at a steady
// rate, in batches of sendmmsg every millisecond.
type statsdLoad struct {
	sent   atomic.Uint64
	errs   atomic.Uint64
	cancel context.CancelFunc
	done   chan struct{}
}

func sendStatsD(t testing.TB, addr, name string, rate int) *statsdLoad {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc := ipv4.NewPacketConn(conn)
	ctx, cancel := context.WithCancel(context.Background())
	l := &statsdLoad{cancel: cancel, done: make(chan struct{})}
	payload := []byte(name + ":1|c")
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i] = ipv4.Message{Buffers: [][]byte{payload}, Addr: dst}
	}
	go func() {
		defer close(l.done)
		defer conn.Close()
		start := time.Now()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			due := int64(time.Since(start).Seconds()*float64(rate)) - int64(l.sent.Load())
			for due > 0 && ctx.Err() == nil {
				n, err := pc.WriteBatch(msgs[:min(due, int64(len(msgs)))], 0)
				if err != nil {
					l.errs.Add(1)
					break
				}
				l.sent.Add(uint64(n))
				due -= int64(n)
			}
		}
	}()
	t.Cleanup(func() { l.stop() })
	return l
}

// stop ends the load and returns how many datagrams were sent.
func (l *statsdLoad) stop() uint64 {
	l.cancel()
	<-l.done
	return l.sent.Load()
}

// httpProbe sends GET /healthz without pause, each on a new connection,
// and keeps every failure (refused, reset, EOF, a status other than 200).
type httpProbe struct {
	mu       sync.Mutex // held by each request; pause takes it
	requests atomic.Uint64
	failures []string
	slowest  time.Duration
	cancel   context.CancelFunc
	done     chan struct{}
}

func probeHTTP(t testing.TB, addr string) *httpProbe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &httpProbe{cancel: cancel, done: make(chan struct{})}
	client := http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			p.mu.Lock()
			began := time.Now()
			resp, err := client.Get("http://" + addr + "/healthz")
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = errors.New(resp.Status)
				}
			}
			p.slowest = max(p.slowest, time.Since(began))
			if err != nil {
				p.failures = append(p.failures, err.Error())
			}
			p.requests.Add(1)
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

// paused runs f while no request is open.
func (p *httpProbe) paused(f func() []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return f()
}

// stop ends the probe and returns how many requests it made and the
// failures.
func (p *httpProbe) stop() (uint64, []string) {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests.Load(), slices.Clone(p.failures)
}
