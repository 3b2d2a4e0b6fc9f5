package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
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

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// The kill tests run the real agent against a real mosquitto, reload it,
// SIGKILL it at one step of the reload, start it again as init would (the
// same command line, the same state directory), reload it once more, stop
// it, and count at a controller-side subscriber what the agent had accepted.
//
// Accepted means what the agent took from someone who will not send it
// again:
//
//   - a StatsD datagram once the agent has read it from its socket (its
//     /status counts it). A datagram still queued in the socket when the
//     last process holding it is killed was never read: the kernel drops it
//     with the socket, as it drops one that arrives while no agent listens.
//   - a request from the command topic once the agent has acknowledged it
//     to the broker (taken). One it left with the broker is not accepted:
//     the broker delivers it to the next session.
//   - an event or a telemetry record once queued in the spool.
//
// What the agent accepted reaches the controller exactly once (de-duplicated
// by instance and sequence number, as the controller does), or, for
// records, is counted in the spool's dropped, with one exception that a
// SIGKILL brings at any time, reload or not: what exists only in the
// process's memory. That is StatsD's current window (read since its last
// flush, statsd.flush_interval), batches waiting for the uplink's flush
// (uplink.flush_interval) and, while the broker acknowledges, records
// awaiting their PUBACK (the spool keeps those in memory: "memory first",
// docs/uplink.md). A kill while the agent runs as usual (the quiescing step
// is that, commands aside) may lose those; the test bounds it by time. Once
// the uplink's hand-over has begun, every batch goes to the spool on flash
// as it is made, and what the old image may lose is only StatsD's window:
// what it read after its last flush (StatsD reads on through the uplink's
// hand-over and stops after it, docs/reload.md; the test finds that flush
// in the log).
//
// The steps, and how each kill is placed (the log is at debug level; the
// kill is sent from the writer that receives the log line):
//
//   - quiescing: a plugin runs (six seconds) and a second request waits
//     behind it, so the quiesce, which lets requests taken finish, lasts;
//     the kill comes 2.5 s after "reloading: quiescing".
//   - flushing: the broker is paused (SIGSTOP) with a publish in flight, so
//     the uplink's hand-over waits for its PUBACK; the kill comes 1 s after
//     "reloading: quiescing", before "session handed over".
//   - flushed: at once on "session handed over". Before "reloading: exec"
//     lie StatsD's last flush and the hand-over file's and the spool's
//     fsyncs (1 to 3 ms here), so the kill lands there or in the exec;
//     either way before the new image runs (its runtime starts 5 ms or more
//     later), which the test checks.
//   - exec'd: at once on the new image's "edgeagent started": it lands in
//     the new image's start, mostly before it is ready (edgeagent.lock
//     names image 1 once it is).
//   - before ready: the broker is paused at once on "session handed over",
//     so the new image cannot reach the controller; the kill comes at once
//     on the new image's first heartbeat, queued and not delivered (the
//     image runs and may have marked itself ready).
//
// Each step's log says where the kill landed: the last lines the killed
// process wrote, whether the hand-over was written, and whether a new image
// was ready; the hand-over file must be there when it was written and no
// new image got ready to take it.
func TestReloadKilledAtEachStep(t *testing.T) {
	for _, step := range killSteps {
		t.Run(step.name, func(t *testing.T) { runKillStep(t, step) })
	}
}

type killStep struct {
	name string
	kill func(r *killRig)
	// live: the killed image was running as usual (its StatsD reading, its
	// uplink publishing): what it held only in memory may be lost, bounded
	// by time (see above).
	live bool
	// clean: the killed image's session had ended cleanly (upgrading said,
	// DISCONNECT sent), so no last will says offline before the restart.
	clean bool
}

var killSteps = []killStep{
	{name: "quiescing", live: true, kill: func(r *killRig) {
		r.sleeper("6")
		r.sleeper("1") // taken, waiting behind the first (concurrency 1)
		time.Sleep(300 * time.Millisecond)
		r.proc.killAfter(`msg="reloading: quiescing"`, 2500*time.Millisecond)
		r.reload()
		r.proc.waitLine(`msg="reloading: quiescing"`)
		r.request("ping") // left with the broker by the quiescing agent
		r.waitKilled()
		r.landed(`msg="session handed over"`, false)
	}},
	{name: "flushing", kill: func(r *killRig) {
		r.mq.Pause()
		r.paused = true
		time.Sleep(1500 * time.Millisecond) // a heartbeat or a flush is in flight, unacknowledged
		r.proc.killAfter(`msg="reloading: quiescing"`, time.Second)
		r.reload()
		r.waitKilled()
		r.landed(`msg="session handed over"`, false)
	}},
	{name: "flushed", clean: true, kill: func(r *killRig) {
		r.proc.killAfter(`msg="session handed over"`, 0)
		r.reload()
		r.waitKilled()
		r.landed(`generation=1`, false)
	}},
	{name: "exec'd", clean: true, kill: func(r *killRig) {
		r.proc.killAfter(`msg="edgeagent started".* generation=1`, 0)
		r.reload()
		r.waitKilled()
		r.landed(`msg="edgeagent started".* generation=1`, true)
	}},
	{name: "before ready", kill: func(r *killRig) {
		r.proc.onLine(`msg="session handed over"`, func(string) { r.mq.Pause() })
		r.paused = true
		r.proc.killAfter(`msg="edgeagent started".* generation=1(?s:.*)msg=heartbeat`, 0)
		r.reload()
		r.waitKilled()
		r.landed(`msg="edgeagent started".* generation=1`, true)
	}},
}

func runKillStep(t *testing.T, step killStep) {
	r := newKillRig(t)
	began := time.Now()
	r.proc = r.start()
	r.waitNewInstance(nil)

	r.accept()
	r.udp.setPhase("b")
	reloadAt := time.Now()
	step.kill(r)
	killedIn := r.proc.killedAt().Sub(reloadAt)
	r.udp.setPhase("")
	r.handoverLeft()
	if r.paused {
		r.mq.Resume()
	}

	backIn, secondIn := r.restartAndReload()
	r.check(step)
	t.Logf("killed %v after the reload began; restarted agent at the controller in %v; second reload took %v; step %v",
		killedIn.Round(time.Millisecond), backIn.Round(time.Millisecond), secondIn.Round(time.Millisecond),
		time.Since(began).Round(100*time.Millisecond))
}

// accept has the agent accept, before the reload: StatsD counters and a
// gauge (read, as its /status says), a request (answered), an event (a
// malformed request refused).
func (r *killRig) accept() {
	r.udp.send("kg.level:42|g")
	r.udp.setPhase("a")
	r.request("ping")
	r.malformed()
	time.Sleep(time.Second)
	r.udp.setPhase("")
	r.waitRead()
}

// restartAndReload starts the agent again as init would (the same command
// line and state directory) after the agent died, has it accept more,
// reloads it with StatsD sent throughout (this reload must work), and
// stops it. It returns how long the restarted agent took to reach the
// controller, and the second reload.
func (r *killRig) restartAndReload() (backIn, secondIn time.Duration) {
	t := r.t
	t.Helper()
	restartAt := time.Now()
	known := r.tap.instances()
	r.proc = r.start()
	r.waitNewInstance(known)
	backIn = time.Since(restartAt)
	r.udp.setPhase("c")
	r.udp.send("kg.level:+1|g")
	r.request("ping")
	time.Sleep(1500 * time.Millisecond)

	r.udp.setPhase("d")
	reloaded := time.Now()
	known = r.tap.instances()
	if out, code := r.reloadWait(); code != 0 || !strings.Contains(out, fmt.Sprintf("reloaded: pid %d, image 1", r.proc.cmd.Process.Pid)) {
		t.Fatalf("second reload: exit %d: %s\nlog:\n%s", code, out, r.proc.log.String())
	}
	secondIn = time.Since(reloaded)
	r.waitNewInstance(known)
	r.request("ping")
	time.Sleep(1200 * time.Millisecond)
	r.udp.setPhase("")
	r.waitResults()
	r.stop()
	return backIn, secondIn
}

// killRig is one kill test's world.
type killRig struct {
	t      *testing.T
	dir    string
	cfg    string
	node   string
	http   string
	mq     *testenv.Mosquitto
	tap    *killTap
	udp    *killSender
	bin    string      // the agent's binary, as init runs it
	proc   *killProc   // the agent process now
	procs  []*killProc // every one started, in order
	paused bool        // the step paused the broker
	// handedOver: the kill left a hand-over, which the agent init starts
	// again takes (with the StatsD gauges).
	handedOver bool

	reloads []*killReload
	sent    map[string]string // request id → name, every request sent
	killed  *killProc
}

const killConfig = `node:
  id: %s
log:
  level: debug
paths:
  state_dir: %s
  plugin_dir: %s
uplink:
  brokers: [%s]
  flush_interval: 200ms
  connect_timeout: 1s
  publish_timeout: 5s
  max_backoff: 1s
heartbeat:
  interval: 1s
statsd:
  listen: %s
  flush_interval: 1s
http:
  listen: %s
collect:
  host: 0s
  disk: 0s
  net: 0s
  tunnel: 0s
  process: 0s
  smart: 0s
  agent: 0s
commands:
  concurrency: 1
`

// killSleeper is a plugin: sleeper SECONDS MARKER writes its pid to
// MARKER, sleeps, and answers.
const killSleeper = "#!/bin/sh\necho $$ >\"$2\"\nsleep \"$1\"\necho \"slept $1\"\n"

func newKillRig(t *testing.T) *killRig {
	t.Helper()
	r := &killRig{t: t, dir: t.TempDir(), node: "kill-node", http: testenv.FreePort(t), sent: map[string]string{}, bin: binary}
	plugins := filepath.Join(r.dir, "plugins")
	if err := os.Mkdir(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plugins, "sleeper"), []byte(killSleeper), 0o755); err != nil {
		t.Fatal(err)
	}
	r.mq = testenv.StartMosquitto(t, "")
	r.tap = tapKilled(t, r.mq.URL, r.node)
	udp := freeUDP(t)
	r.cfg = filepath.Join(r.dir, "config.yaml")
	conf := fmt.Sprintf(killConfig, r.node, filepath.Join(r.dir, "state"), plugins, r.mq.URL, udp, r.http)
	if err := os.WriteFile(r.cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	r.udp = sendKillDatagrams(t, udp)
	t.Cleanup(r.killPlugins)
	return r
}

// start runs the agent as init does and waits for its log to say so.
func (r *killRig) start() *killProc {
	r.t.Helper()
	p := &killProc{t: r.t, exited: make(chan struct{})}
	p.cmd = exec.Command(r.bin, "run", "--config", r.cfg)
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	r.t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	r.procs = append(r.procs, p)
	p.waitLine(`msg="edgeagent started"`)
	return p
}

// reload runs 'edgeagent reload' in the background.
func (r *killRig) reload() *killReload {
	rl := &killReload{done: make(chan struct{})}
	rl.cmd = exec.Command(binary, "reload", "--config", r.cfg, "--timeout", "60s")
	rl.cmd.Stdout, rl.cmd.Stderr = &rl.out, &rl.out
	if err := rl.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func() { rl.cmd.Wait(); close(rl.done) }()
	r.reloads = append(r.reloads, rl)
	return rl
}

// reloadWait runs 'edgeagent reload' and returns its output and exit code.
func (r *killRig) reloadWait() (string, int) {
	rl := r.reload()
	<-rl.done
	return rl.out.String(), rl.cmd.ProcessState.ExitCode()
}

type killReload struct {
	cmd  *exec.Cmd
	out  testenv.Buffer
	done chan struct{}
}

// waitExit waits for the agent to exit by itself with code, and for
// 'edgeagent reload' to say it is gone.
func (r *killRig) waitExit(code int) {
	r.t.Helper()
	p := r.proc
	select {
	case <-p.exited:
		p.killedNs.Store(time.Now().UnixNano())
	case <-time.After(30 * time.Second):
		r.t.Fatalf("the agent did not exit within 30s; log:\n%s", p.log.String())
	}
	if got := p.cmd.ProcessState.ExitCode(); got != code {
		r.t.Errorf("agent exited %d, want %d; log:\n%s", got, code, p.log.String())
	}
	r.killed = p
	rl := r.reloads[len(r.reloads)-1]
	<-rl.done
	if code, out := rl.cmd.ProcessState.ExitCode(), rl.out.String(); code != 1 || !strings.Contains(out, "is gone") {
		r.t.Errorf("'edgeagent reload' of an agent whose new image exited: exit %d, %q; want 1, gone", code, out)
	}
}

// waitKilled waits for the agent to die of the step's SIGKILL, and for
// 'edgeagent reload' to say it is gone.
func (r *killRig) waitKilled() {
	r.t.Helper()
	p := r.proc
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		r.t.Fatalf("the agent was not killed within 30s; log:\n%s", p.log.String())
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		r.t.Fatalf("agent ended with %v, not SIGKILL; log:\n%s", p.cmd.ProcessState, p.log.String())
	}
	r.killed = p
	rl := r.reloads[len(r.reloads)-1]
	select {
	case <-rl.done:
	case <-time.After(10 * time.Second):
		r.t.Fatal("'edgeagent reload' still waits for an agent that was killed")
	}
	// It says the agent is gone, unless it saw the new image ready first.
	out, code := rl.out.String(), rl.cmd.ProcessState.ExitCode()
	if !(code == 1 && strings.Contains(out, "is gone")) && !(code == 0 && strings.Contains(out, "image 1")) {
		r.t.Errorf("'edgeagent reload' of an agent killed during it: exit %d, %q; want 1, gone", code, out)
	}
}

// landed checks where the kill landed: after the trigger line, past or
// (past false) before the line pattern names, and logs the killed
// process's last lines.
func (r *killRig) landed(pattern string, past bool) {
	r.t.Helper()
	log := r.killed.log.String()
	lines := strings.Split(strings.TrimSpace(log), "\n")
	r.t.Logf("the killed process's last lines:\n%s", strings.Join(lines[max(0, len(lines)-4):], "\n"))
	if regexp.MustCompile(pattern).MatchString(log) != past {
		r.t.Errorf("the kill did not land where the step wants it (%q seen: %v, want %v)", pattern, !past, past)
	}
}

// handoverLeft looks at what the kill left in the state directory: the
// hand-over must be there when it was written ("reloading: exec" is logged
// after it) and no new image got ready (edgeagent.lock still names image
// 0). Once one is ready it removes it, right after writing the lock file:
// a kill between the two leaves it, for the restart to take, which is as
// good.
func (r *killRig) handoverLeft() {
	r.t.Helper()
	state := filepath.Join(r.dir, "state")
	_, err := os.Stat(filepath.Join(state, "handover.json"))
	r.handedOver = err == nil
	lock, _ := os.ReadFile(filepath.Join(state, "edgeagent.lock"))
	lines := strings.Split(string(lock), "\n")
	ready := len(lines) > 1 && lines[1] == "1"
	written := strings.Contains(r.killed.log.String(), `msg="reloading: exec"`)
	r.t.Logf("after the kill: hand-over written %v, new image ready %v, handover.json left %v", written, ready, r.handedOver)
	if written && !ready && !r.handedOver {
		r.t.Errorf("handover.json gone, yet no new image got ready to take it")
	}
}

// sleeper sends a request for the sleeper plugin and, for one that should
// run now, waits until it runs.
func (r *killRig) sleeper(seconds string) {
	r.t.Helper()
	marker := filepath.Join(r.dir, fmt.Sprintf("sleeper-%d.pid", len(r.sent)))
	r.request("sleeper", seconds, marker)
	if len(r.plugins()) == 0 {
		testenv.WaitFor(r.t, 10*time.Second, func() bool { _, err := os.Stat(marker); return err == nil },
			func() string { return "the sleeper plugin did not start:\n" + r.proc.log.String() })
	}
}

// plugins returns the process groups of the sleeper plugins that started.
func (r *killRig) plugins() []int {
	var out []int
	files, _ := filepath.Glob(filepath.Join(r.dir, "sleeper-*.pid"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// killPlugins ends what a killed agent left running (see the report).
func (r *killRig) killPlugins() {
	for _, pgid := range r.plugins() {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

func (r *killRig) request(name string, args ...string) string {
	r.t.Helper()
	id := r.tap.send(r.t, name, args...)
	r.sent[id] = name
	return id
}

// malformed sends garbage on the command topic: the agent refuses it with
// an event.
func (r *killRig) malformed() {
	r.t.Helper()
	if tok := r.tap.client.Publish("edge/"+r.node+"/cmd", 1, false, []byte("not cbor")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		r.t.Fatalf("publish: %v", tok.Error())
	}
}

// waitRead waits until the running agent has read every datagram sent to
// it since it started (its /status).
func (r *killRig) waitRead() {
	r.t.Helper()
	want := r.udp.count()
	var got uint64
	testenv.WaitFor(r.t, 10*time.Second, func() bool {
		got = r.statsdRead()
		return got >= want
	}, func() string { return fmt.Sprintf("the agent read %d of %d datagrams", got, want) })
}

func (r *killRig) statsdRead() uint64 {
	resp, err := http.Get("http://" + r.http + "/status")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var st struct {
		StatsD struct{ Datagrams uint64 } `json:"statsd"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	return st.StatsD.Datagrams
}

// waitNewInstance waits until a heartbeat of a process image not among
// known reaches the controller.
func (r *killRig) waitNewInstance(known []string) {
	r.t.Helper()
	testenv.WaitFor(r.t, 20*time.Second, func() bool { return len(r.tap.instances()) > len(known) },
		func() string {
			return "no heartbeat of the new image at the controller; /status:\n" + r.status() + "\nlog:\n" + r.proc.log.String()
		})
}

// status returns the running agent's /status.
func (r *killRig) status() string {
	resp, err := http.Get("http://" + r.http + "/status")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

// waitResults waits, for up to 20 s, until every request sent has a
// result; check reports those that have none.
func (r *killRig) waitResults() {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		missing := false
		for id := range r.sent {
			missing = missing || len(r.tap.resultsOf(id)) == 0
		}
		if !missing {
			return
		}
	}
}

// stop ends the agent as init's stop does; it must exit 0.
func (r *killRig) stop() {
	r.t.Helper()
	r.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.proc.exited:
	case <-time.After(20 * time.Second):
		r.t.Fatalf("agent did not stop within 20s of SIGTERM; log:\n%s", r.proc.log.String())
	}
	if code := r.proc.cmd.ProcessState.ExitCode(); code != 0 {
		r.t.Fatalf("agent stop: exit %d; log:\n%s", code, r.proc.log.String())
	}
	// What the clean stop flushed reaches the controller.
	time.Sleep(300 * time.Millisecond)
}

// check counts at the controller what the agent had accepted.
func (r *killRig) check(step killStep) {
	t := r.t
	got := r.tap.counters()
	var dup []string
	for name, n := range got {
		if n > 1 {
			dup = append(dup, fmt.Sprintf("%s×%d", name, n))
		}
	}
	if len(dup) > 0 {
		t.Errorf("StatsD counts reached the controller more than once (under distinct sequence numbers): %v", dup)
	}
	// What the killed process may have lost: what was only in its memory
	// (see the top). While its uplink published as usual, that is what
	// was read up to the StatsD and uplink flush intervals and a PUBACK
	// before the kill; once the uplink's hand-over began, a batch goes to
	// the spool (on flash) as StatsD flushes it, so only what StatsD read
	// after its last flush that the log shows (the log line follows the
	// spool's write), with a margin for reading.
	killed := r.killed.killedAt() // or, when nothing killed it, when it exited
	cutoff := lastStatsDFlush(r.killed.log.String()).Add(-250 * time.Millisecond)
	if step.live {
		cutoff = killed.Add(-(time.Second + 200*time.Millisecond + time.Second))
	}
	for _, phase := range []string{"a", "b", "c", "d"} {
		var lost, early []killDatagram
		sent := r.udp.sentIn(phase)
		for _, d := range sent {
			if got[d.name] == 0 {
				lost = append(lost, d)
				if phase == "c" || phase == "d" || d.at.Before(cutoff) {
					early = append(early, d)
				}
			}
		}
		if len(early) > 0 {
			t.Errorf("phase %s: %d of %d datagrams were lost that the agent had read and flushed, or that no kill touched (first %s, sent %v before the kill)",
				phase, len(early), len(sent), early[0].name, killed.Sub(early[0].at).Round(time.Millisecond))
		}
		if phase == "a" || phase == "b" {
			// Lost with the killed process's StatsD window or its uplink's
			// memory, or queued in the socket and dropped with it.
			t.Logf("phase %s (%s): %d datagrams sent, %d reached the controller, %d did not (%s)", phase,
				map[string]string{"a": "read before the reload", "b": "during the reload, up to the kill"}[phase],
				len(sent), len(sent)-len(lost), len(lost), spanBefore(lost, killed))
		}
	}

	// Every request taken has exactly one result; those left with the
	// broker are run by the next agent.
	for id, name := range r.sent {
		res := r.tap.resultsOf(id)
		if len(res) != 1 {
			t.Errorf("request %s (%s): %d results, want exactly one: %+v", id, name, len(res), res)
			continue
		}
		t.Logf("request %s (%s): %s %s", id, name, res[0].Status, res[0].Reason)
	}
	if n := r.tap.eventsLike("refused a malformed command"); n != 1 {
		t.Errorf("the malformed request's event reached the controller %d times, want once", n)
	}

	// Sequence numbers keep rising across the kill, the restart and the
	// reload, and none is used by two images.
	var beats []uint64
	for _, p := range r.procs {
		beats = append(beats, seqs(p.log.String())...)
	}
	for i := 1; i < len(beats); i++ {
		if beats[i] <= beats[i-1] {
			t.Errorf("heartbeat sequence went from %d to %d: %v", beats[i-1], beats[i], beats)
			break
		}
	}
	if reused := r.tap.reused(); len(reused) > 0 {
		t.Errorf("sequence numbers sent by two process images: %v", reused)
	}

	// The spool dropped nothing; the hand-over file was taken and removed.
	state := filepath.Join(r.dir, "state")
	if data, err := os.ReadFile(filepath.Join(state, "spool", "dropped")); err == nil && strings.TrimSpace(string(data)) != "0" {
		t.Errorf("the spool dropped records: %s", data)
	}
	if _, err := os.Stat(filepath.Join(state, "handover.json")); err == nil {
		t.Errorf("handover.json left in the state directory after a clean stop")
	}

	// The gauge: +1 applies to the value clients built up when the kill
	// left a hand-over, which the agent init started took.
	level, _ := r.tap.gauge("kg.level")
	switch {
	case r.handedOver && level != 43:
		t.Errorf("gauge kg.level = %v after +1, want 43: the restarted agent did not take the gauges handed over", level)
	case !r.handedOver && level != 1:
		t.Errorf("gauge kg.level = %v after +1; want 1, as the kill left no hand-over", level)
	case !r.handedOver:
		t.Logf("gauge kg.level = %v after +1: the kill left no hand-over, and a crash loses the gauges' memory", level)
	}

	states := r.tap.states()
	t.Logf("states at the controller: %v", states)
	if step.clean {
		// upgrading, then online again: the killed image's session had ended
		// cleanly, so nothing said offline.
		if i := slices.Index(states, "upgrading"); i < 0 || i+1 >= len(states) || states[i+1] != "online" {
			t.Errorf("states %v: want upgrading followed by online (no offline between)", states)
		}
	}
	if t.Failed() {
		for i, p := range r.procs {
			t.Logf("log of process %d:\n%s", i, p.log.String())
		}
	}
}

var statsdFlushLine = regexp.MustCompile(`(?m)^time=(\S+) level=DEBUG msg=batch component=telemetry source=statsd `)

// lastStatsDFlush returns when the StatsD server last flushed a batch, as
// a process's log says; the zero time when it never did.
func lastStatsDFlush(log string) time.Time {
	var last time.Time
	for _, m := range statsdFlushLine.FindAllStringSubmatch(log, -1) {
		if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
			last = at
		}
	}
	return last
}

// spanBefore says when the datagrams were sent, before at.
func spanBefore(ds []killDatagram, at time.Time) string {
	if len(ds) == 0 {
		return "none lost"
	}
	return fmt.Sprintf("sent from %v to %v before the kill", at.Sub(ds[0].at).Round(time.Millisecond),
		at.Sub(ds[len(ds)-1].at).Round(time.Millisecond))
}

// killProc is one agent process started as init does, whose log can
// trigger a SIGKILL from the writer that receives the line.
type killProc struct {
	t        *testing.T
	cmd      *exec.Cmd
	log      killLog
	exited   chan struct{}
	killedNs atomic.Int64 // when SIGKILL was sent, unix nanoseconds
}

func (p *killProc) killedAt() time.Time { return time.Unix(0, p.killedNs.Load()) }

// onLine calls do with the first line matching pattern (it may span
// lines: it is matched against the whole log), from the log's writer.
func (p *killProc) onLine(pattern string, do func(line string)) {
	p.log.watch(regexp.MustCompile(pattern), do)
}

// killAfter sends SIGKILL delay after the log matches pattern; at once
// (from the writer) when delay is zero.
func (p *killProc) killAfter(pattern string, delay time.Duration) {
	kill := func() {
		p.killedNs.Store(time.Now().UnixNano())
		syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
	}
	p.onLine(pattern, func(string) {
		if delay == 0 {
			kill()
			return
		}
		time.AfterFunc(delay, kill)
	})
}

func (p *killProc) waitLine(pattern string) {
	p.t.Helper()
	re := regexp.MustCompile(pattern)
	testenv.WaitFor(p.t, 20*time.Second, func() bool { return re.MatchString(p.log.String()) },
		func() string { return "no " + pattern + " in the log:\n" + p.log.String() })
}

// killLog is a process's log; watchers see each line as it is written.
type killLog struct {
	mu       sync.Mutex
	text     bytes.Buffer
	lineEnd  int // the text up to here is whole lines already watched
	watchers []*killWatcher
}

type killWatcher struct {
	re    *regexp.Regexp
	do    func(string)
	fired bool
}

func (l *killLog) watch(re *regexp.Regexp, do func(string)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.watchers = append(l.watchers, &killWatcher{re: re, do: do})
}

func (l *killLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.text.Write(b)
	if i := bytes.LastIndexByte(l.text.Bytes(), '\n'); i >= l.lineEnd {
		l.lineEnd = i + 1
		whole := l.text.Bytes()[:l.lineEnd]
		for _, w := range l.watchers {
			if !w.fired && w.re.Match(whole) {
				w.fired = true
				w.do(string(whole))
			}
		}
	}
	return len(b), nil
}

func (l *killLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.text.String()
}

// killSender sends StatsD counters, each datagram a counter of its own
// (kt.PHASE.N), every 10 ms while a phase is set, and remembers when.
type killSender struct {
	conn net.Conn

	mu    sync.Mutex
	phase string
	sent  []killDatagram
	stop  chan struct{}
	done  chan struct{}
}

type killDatagram struct {
	name, phase string
	at          time.Time
}

func sendKillDatagrams(t *testing.T, addr string) *killSender {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &killSender{conn: conn, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		n := 0
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			s.mu.Lock()
			if s.phase != "" {
				name := fmt.Sprintf("kt.%s.%d", s.phase, n)
				n++
				s.write(name+":1|c", name, s.phase)
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(s.stop); <-s.done; conn.Close() })
	return s
}

func (s *killSender) setPhase(p string) {
	s.mu.Lock()
	s.phase = p
	s.mu.Unlock()
}

// send sends one datagram of the test's own (a gauge), counted as sent.
func (s *killSender) send(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.write(line, line, "")
}

// write sends a datagram and records it as sent. A write can fail with the
// error an earlier datagram met (ECONNREFUSED: no agent listened then);
// this one was not sent, so it is sent again.
func (s *killSender) write(line, name, phase string) {
	for range 2 {
		if _, err := s.conn.Write([]byte(line)); err == nil {
			s.sent = append(s.sent, killDatagram{name: name, phase: phase, at: time.Now()})
			return
		}
	}
}

func (s *killSender) count() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.sent))
}

func (s *killSender) sentIn(phase string) []killDatagram {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []killDatagram
	for _, d := range s.sent {
		if d.phase == phase {
			out = append(out, d)
		}
	}
	return out
}

// killTap is the controller's side: a persistent session on the node's
// topics that processes each (instance, sequence number) once, as the
// controller does, and sends requests.
type killTap struct {
	client mqtt.Client
	node   string

	mu       sync.Mutex
	seen     map[uint64]string // sequence number → the instance that sent it
	reuse    []string
	instance map[string]bool // images heard from (heartbeats)
	state    []string
	results  map[string][]telemetry.CommandResult
	counts   map[string]int     // StatsD counter name → messages it was in
	gauges   map[string]float64 // the value in the message numbered last
	gaugeSeq map[string]uint64
	events   []telemetry.Event
	bad      []string
	enc      telemetry.Encoder
	seq      uint64
}

func tapKilled(t *testing.T, broker, node string) *killTap {
	t.Helper()
	k := &killTap{node: node, seen: map[uint64]string{}, instance: map[string]bool{},
		results: map[string][]telemetry.CommandResult{}, counts: map[string]int{}, gauges: map[string]float64{},
		gaugeSeq: map[string]uint64{},
		seq:      uint64(time.Now().UnixMilli()) << 10}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID("kill-tap-" + node).SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetOrderMatters(true)
	k.client = mqtt.NewClient(opts)
	if tok := k.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("controller connect: %v", tok.Error())
	}
	if tok := k.client.Subscribe("edge/"+node+"/#", 1, k.record); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("controller subscribe: %v", tok.Error())
	}
	t.Cleanup(func() {
		k.client.Disconnect(100)
		k.mu.Lock()
		defer k.mu.Unlock()
		if len(k.bad) > 0 {
			t.Errorf("messages the controller's decoder refused: %v", k.bad)
		}
	})
	return k
}

func (k *killTap) record(_ mqtt.Client, m mqtt.Message) {
	if strings.HasSuffix(m.Topic(), "/cmd") { // our own requests
		return
	}
	env, err := telemetry.Decode(m.Payload())
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.bad = append(k.bad, m.Topic()+": "+err.Error())
		return
	}
	if inst, ok := k.seen[env.Seq]; ok {
		if inst != env.Instance {
			k.reuse = append(k.reuse, fmt.Sprintf("%d by %s and %s", env.Seq, inst, env.Instance))
		}
		return // delivered again: processed once
	}
	k.seen[env.Seq] = env.Instance
	switch env.Kind {
	case telemetry.KindState:
		var st telemetry.State
		err = env.DecodeBody(&st)
		k.state = append(k.state, st.State)
	case telemetry.KindHeartbeat:
		k.instance[env.Instance] = true
	case telemetry.KindBatch:
		var batches []telemetry.Batch
		batches, err = env.DecodeBatches()
		for _, b := range batches {
			for _, p := range b.Points {
				switch {
				case b.Source != "statsd":
				case p.Tags["metric_type"] == "counter":
					k.counts[p.Name]++
				case p.Tags["metric_type"] == "gauge" && env.Seq > k.gaugeSeq[p.Name]:
					k.gauges[p.Name], k.gaugeSeq[p.Name] = p.Value, env.Seq
				}
			}
		}
	case telemetry.KindEvent:
		var e telemetry.Event
		if err = env.DecodeBody(&e); err == nil {
			k.events = append(k.events, e)
		}
	case telemetry.KindCommandResult:
		var res telemetry.CommandResult
		if err = env.DecodeBody(&res); err == nil {
			k.results[res.ID] = append(k.results[res.ID], res)
		}
	}
	if err != nil {
		k.bad = append(k.bad, m.Topic()+": "+err.Error())
	}
}

// send publishes a request as controller.Ingest.Send does and returns its id.
func (k *killTap) send(t *testing.T, name string, args ...string) string {
	t.Helper()
	k.mu.Lock()
	k.seq++
	id := fmt.Sprintf("kill-%d", k.seq)
	now := time.Now()
	data, err := k.enc.Encode(telemetry.Header{Node: k.node, Seq: k.seq, Time: now, Kind: telemetry.KindCommand},
		telemetry.Command{ID: id, Node: k.node, Name: name, Args: args, IssuedAt: now, ExpiresAt: now.Add(10 * time.Minute)})
	payload := slices.Clone(data)
	k.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if tok := k.client.Publish("edge/"+k.node+"/cmd", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish request: %v", tok.Error())
	}
	return id
}

func (k *killTap) instances() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Collect(maps.Keys(k.instance))
}

func (k *killTap) resultsOf(id string) []telemetry.CommandResult {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.results[id])
}

func (k *killTap) counters() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.counts)
}

func (k *killTap) gauge(name string) (float64, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.gauges[name]
	return v, ok
}

func (k *killTap) eventsLike(msg string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, e := range k.events {
		if strings.Contains(e.Message, msg) {
			n++
		}
	}
	return n
}

func (k *killTap) states() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.state)
}

func (k *killTap) reused() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.reuse)
}

// TestReloadNewImageCannotStart: the binary on disk is replaced by one that
// cannot start (it exits at once; execve refuses it, after the descriptors
// were moved, which the handoff answers with exit 75), and the agent is
// reloaded: the process exits, 'edgeagent reload' says it is gone. Init
// starts the good binary again, which finds everything the old image had
// accepted (the spool synced, handover.json written and not yet taken, the
// sequence file, the command cache), and a reload of it works.
func TestReloadNewImageCannotStart(t *testing.T) {
	for _, c := range []struct {
		name, image string
		exit        int
	}{
		{"it exits at once", "#!/bin/sh\nexit 1\n", 1},
		{"execve refuses it", "not a program\n", 75},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newKillRig(t)
			r.bin = filepath.Join(r.dir, "bin", "edgeagent")
			if err := os.Mkdir(filepath.Dir(r.bin), 0o755); err != nil {
				t.Fatal(err)
			}
			good, err := os.ReadFile(binary)
			if err != nil {
				t.Fatal(err)
			}
			install := func(data []byte) { // as an upgrade does: a new file renamed over the path
				if err := os.WriteFile(r.bin+".new", data, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(r.bin+".new", r.bin); err != nil {
					t.Fatal(err)
				}
			}
			install(good)
			r.proc = r.start()
			r.waitNewInstance(nil)
			r.accept()

			install([]byte(c.image))
			r.udp.setPhase("b")
			r.reload()
			r.waitExit(c.exit)
			r.udp.setPhase("")
			r.handoverLeft()
			if !r.handedOver {
				t.Errorf("no handover.json after a new image that never started")
			}

			install(good)
			backIn, secondIn := r.restartAndReload()
			r.check(killStep{name: c.name, clean: true})
			t.Logf("restarted agent at the controller in %v; the reload after took %v", backIn.Round(time.Millisecond),
				secondIn.Round(time.Millisecond))
		})
	}
}

// TestReloadRefusesWhatCannotStart: a configuration that passes 'config
// check' but stops the agent at its start (a CA file that is not there; an
// id file that cannot be read) would take the node down with a reload; the
// reload is refused instead (exit 2, the reason from edgeagent.lock), and the
// agent runs on, the same pid and image, and reloads once the file is right.
func TestReloadRefusesWhatCannotStart(t *testing.T) {
	r := newKillRig(t)
	r.proc = r.start()
	r.waitNewInstance(nil)
	good, err := os.ReadFile(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(good), "  max_backoff: 1s\n", "  max_backoff: 1s\n  ca_file: "+filepath.Join(r.dir, "ca.pem")+"\n", 1)
	badPath := filepath.Join(r.dir, "bad.yaml")
	if err := os.WriteFile(badPath, []byte(strings.Replace(bad, filepath.Join(r.dir, "state"), filepath.Join(r.dir, "other"), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _, code := edgeagent(t, r.dir, "config", "check", badPath); code != 0 || out != "ok\n" {
		t.Fatalf("config check: exit %d, %q; the test wants a configuration that checks", code, out)
	}
	if _, errOut, code := edgeagent(t, r.dir, "run", "--config", badPath); code != 2 || !strings.Contains(errOut, "uplink.ca_file") {
		t.Fatalf("run: exit %d, %q; the test wants a configuration the agent cannot start with", code, errOut)
	}

	if err := os.WriteFile(r.cfg, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := r.reloadWait()
	if code != 2 || !strings.Contains(out, "reload refused") || !strings.Contains(out, "uplink.ca_file") {
		t.Errorf("reload with it: exit %d, %q; want 2, refused, naming uplink.ca_file", code, out)
	}
	select {
	case <-r.proc.exited:
		t.Fatalf("the agent exited:\n%s", r.proc.log.String())
	default:
	}
	if strings.Contains(r.proc.log.String(), "reloading: quiescing") {
		t.Errorf("the agent quiesced for a reload it should have refused:\n%s", r.proc.log.String())
	}
	if err := os.WriteFile(r.cfg, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := r.reloadWait(); code != 0 || !strings.Contains(out, fmt.Sprintf("reloaded: pid %d, image 1", r.proc.cmd.Process.Pid)) {
		t.Errorf("reload once the configuration is right: exit %d, %q", code, out)
	}
	r.stop()
}
