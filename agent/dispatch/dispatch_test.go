package dispatch

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
	"github.com/seed69aca190/edgeagent/telemetry"
)

type harness struct {
	t       *testing.T
	d       *Dispatcher
	plugins string
	cache   string
	mu      sync.Mutex
	results map[string][]telemetry.CommandResult
	cancel  func()
}

func newHarness(t *testing.T, plugins, cache string) *harness {
	return newHarnessAt(t, plugins, cache, time.Now)
}

// newHarnessAt judges expiry by now, as the agent's time floor gives it.
func newHarnessAt(t *testing.T, plugins, cache string, now func() time.Time) *harness {
	t.Helper()
	h := &harness{t: t, plugins: plugins, cache: cache, results: map[string][]telemetry.CommandResult{}}
	d := New(Options{Node: "node-a", PluginDir: plugins, CacheDir: cache, DefaultTimeout: 5 * time.Second, Now: now,
		Builtins: map[string]Builtin{"ping": func(context.Context, []string) ([]byte, error) { return []byte("pong\n"), nil }},
		Result: func(r telemetry.CommandResult) {
			h.mu.Lock()
			h.results[r.ID] = append(h.results[r.ID], r)
			h.mu.Unlock()
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h.d = d
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	h.cancel = func() { cancel(); <-done }
	t.Cleanup(h.cancel)
	return h
}

func pluginDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func plugin(t *testing.T, dir, name, script string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// send encodes a request as the controller would and hands it over.
func (h *harness) send(c telemetry.Command) {
	h.t.Helper()
	h.d.Handle(envelope(h.t, c))
}

// envelope encodes a request as the controller would.
func envelope(t testing.TB, c telemetry.Command) telemetry.Envelope {
	t.Helper()
	if c.Node == "" {
		c.Node = "node-a"
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt, c.ExpiresAt = time.Now(), time.Now().Add(time.Minute)
	}
	var e telemetry.Encoder
	data, err := e.Encode(telemetry.Header{Node: "controller", Seq: 1, Time: time.Now(), Kind: telemetry.KindCommand}, c)
	if err != nil {
		t.Fatal(err)
	}
	env, err := telemetry.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// wait returns the n-th result for id.
func (h *harness) wait(id string, n int) telemetry.CommandResult {
	h.t.Helper()
	var res telemetry.CommandResult
	testenv.WaitFor(h.t, 20*time.Second, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.results[id]) >= n {
			res = h.results[id][n-1]
			return true
		}
		return false
	}, func() string { return fmt.Sprintf("no result %d for %q", n, id) })
	return res
}

func TestArgumentsArePassedLiterally(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "show", `for a in "$@"; do printf '[%s]\n' "$a"; done; pwd; env | sort`)
	h := newHarness(t, dir, t.TempDir())
	args := []string{"a; touch /tmp/edgetest-pwned", "$(id)", "`id`", "two words", "'quoted'", "*"}
	h.send(telemetry.Command{ID: "args", Name: "show", Args: args})
	res := h.wait("args", 1)
	want := ""
	for _, a := range args {
		want += "[" + a + "]\n"
	}
	env := append(slices.Clone(pluginEnv), "PWD="+dir) // the shell adds PWD; nothing of the agent's
	slices.Sort(env)
	want += dir + "\n" + strings.Join(env, "\n") + "\n"
	if res.Status != telemetry.StatusOK || string(res.Stdout.Data) != want {
		t.Errorf("result %s %q\ngot  %q\nwant %q", res.Status, res.Reason, res.Stdout.Data, want)
	}
	if _, err := os.Stat("/tmp/edgetest-pwned"); err == nil {
		os.Remove("/tmp/edgetest-pwned")
		t.Error("an argument was run by a shell")
	}
}

func TestEachIDRunsOnceAcrossRestart(t *testing.T) {
	dir := pluginDir(t)
	count := filepath.Join(t.TempDir(), "runs")
	plugin(t, dir, "count", `echo run >> "$1"; sleep 0.3; echo done`)
	cache := t.TempDir()
	h := newHarness(t, dir, cache)
	h.send(telemetry.Command{ID: "once", Name: "count", Args: []string{count}})
	h.send(telemetry.Command{ID: "once", Name: "count", Args: []string{count}}) // QoS 1 redelivery while running
	first := h.wait("once", 1)
	h.send(telemetry.Command{ID: "once", Name: "count", Args: []string{count}}) // replay after it finished
	second := h.wait("once", 2)
	h.cancel()

	h2 := newHarness(t, dir, cache) // the agent restarted (or was upgraded)
	h2.send(telemetry.Command{ID: "once", Name: "count", Args: []string{count}})
	third := h2.wait("once", 1)

	data, _ := os.ReadFile(count)
	if runs := strings.Count(string(data), "run"); runs != 1 {
		t.Fatalf("the plugin ran %d times for one id", runs)
	}
	if first.Status != telemetry.StatusOK || first.Cached || !second.Cached || !third.Cached ||
		string(third.Stdout.Data) != "done\n" {
		t.Errorf("results %+v / %+v / %+v", first, second, third)
	}
}

func TestRefusals(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "ok", "echo fine")
	h := newHarness(t, dir, t.TempDir())
	for _, tc := range []struct {
		c    telemetry.Command
		want string
	}{
		{telemetry.Command{ID: "expired", Name: "ok", IssuedAt: time.Now().Add(-time.Hour), ExpiresAt: time.Now().Add(-time.Minute)}, "expired"},
		{telemetry.Command{ID: "other", Node: "node-b", Name: "ok"}, `request for node "node-b" refused by node "node-a"`},
		{telemetry.Command{ID: "unknown", Name: "nope"}, `no plugin or built-in named "nope"`},
		{telemetry.Command{ID: "slash", Name: "../../bin/sh"}, "is not a plugin name"},
		{telemetry.Command{ID: "abs", Name: "/bin/sh"}, "is not a plugin name"},
		{telemetry.Command{ID: "dotdot", Name: ".."}, "is not a plugin name"},
		{telemetry.Command{ID: "meta", Name: "ok;id"}, "is not a plugin name"},
		{telemetry.Command{ID: "subst", Name: "$(id)"}, "is not a plugin name"},
		{telemetry.Command{ID: "long-timeout", Name: "ok", TimeoutSec: 100000}, "exceeds the node's limit"},
	} {
		h.send(tc.c)
		res := h.wait(tc.c.ID, 1)
		if res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, tc.want) {
			t.Errorf("%s: %s %q, want refused with %q", tc.c.ID, res.Status, res.Reason, tc.want)
		}
	}
	// A body that does not decode as a request still gets an answer.
	var e telemetry.Encoder
	data, _ := e.Encode(telemetry.Header{Node: "controller", Seq: 1, Time: time.Now(), Kind: telemetry.KindCommand}, map[string]int{"garbage": 1})
	env, _ := telemetry.Decode(data)
	h.d.Handle(env)
	if res := h.wait("", 1); res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, "malformed") {
		t.Errorf("malformed: %+v", res)
	}
	if h.d.Refused() != 10 {
		t.Errorf("refused %d, want 10", h.d.Refused())
	}
}

func TestUnsafePermissionsAreRefused(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "open", "echo hi")
	os.Chmod(filepath.Join(dir, "open"), 0o757)
	plugin(t, dir, "link-target", "echo hi")
	os.Symlink("/bin/true", filepath.Join(dir, "link"))
	h := newHarness(t, dir, t.TempDir())
	h.send(telemetry.Command{ID: "ww", Name: "open"})
	if res := h.wait("ww", 1); res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, "writable by group or others") {
		t.Errorf("world-writable plugin: %+v", res)
	}
	h.send(telemetry.Command{ID: "ln", Name: "link"})
	if res := h.wait("ln", 1); res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, "not a regular file") {
		t.Errorf("symlink: %+v", res)
	}
	os.Chmod(dir, 0o777)
	h.send(telemetry.Command{ID: "wwdir", Name: "link-target"})
	if res := h.wait("wwdir", 1); res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, "plugin directory") {
		t.Errorf("world-writable directory: %+v", res)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func readPID(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestNothingOutlivesItsDeadline: a plugin that hangs is killed at its
// deadline, and one that leaves a grandchild behind loses it when it exits.
func TestNothingOutlivesItsDeadline(t *testing.T) {
	dir := pluginDir(t)
	tmp := t.TempDir()
	plugin(t, dir, "hang", `echo $$ > "$1"; trap '' TERM; sleep 1000`) // ignores SIGTERM: needs SIGKILL
	plugin(t, dir, "fork", `sleep 1000 & echo $! > "$1"; echo forked`)
	h := newHarness(t, dir, t.TempDir())

	start := time.Now()
	h.send(telemetry.Command{ID: "hang", Name: "hang", Args: []string{filepath.Join(tmp, "hang.pid")}, TimeoutSec: 1})
	res := h.wait("hang", 1)
	if res.Status != telemetry.StatusTimedOut || time.Since(start) > 1*time.Second+killGrace+2*time.Second {
		t.Errorf("hang: %+v after %v", res, time.Since(start))
	}
	if pid := readPID(t, filepath.Join(tmp, "hang.pid")); alive(pid) {
		t.Errorf("hanging plugin %d still alive after its deadline", pid)
	}

	h.send(telemetry.Command{ID: "fork", Name: "fork", Args: []string{filepath.Join(tmp, "fork.pid")}})
	res = h.wait("fork", 1)
	if res.Status != telemetry.StatusOK || string(res.Stdout.Data) != "forked\n" {
		t.Errorf("fork: %+v", res)
	}
	pid := readPID(t, filepath.Join(tmp, "fork.pid"))
	testenv.WaitFor(t, 2*time.Second, func() bool { return !alive(pid) }, func() string { return "grandchild outlived the plugin" })
}

// TestHugeOutputIsCapped runs a plugin that writes 1 GiB: the result keeps
// the first 64 KiB, flagged, with the true total, and the agent's memory
// stays bounded.
func TestHugeOutputIsCapped(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "flood", `head -c 1073741824 /dev/zero; echo oops >&2`)
	h := newHarness(t, dir, t.TempDir())
	h.send(telemetry.Command{ID: "flood", Name: "flood", TimeoutSec: 60})
	res := h.wait("flood", 1)
	if res.Status != telemetry.StatusOK || len(res.Stdout.Data) != 64<<10 || !res.Stdout.Truncated || res.Stdout.Total != 1<<30 ||
		string(res.Stderr.Data) != "oops\n" || res.Stderr.Truncated {
		t.Errorf("flood: status %s, stdout %d bytes (truncated %v, total %d), stderr %q",
			res.Status, len(res.Stdout.Data), res.Stdout.Truncated, res.Stdout.Total, res.Stderr.Data)
	}
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			t.Logf("test process peak RSS after piping 1 GiB: %s", strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")))
		}
	}
}

// TestHundredAtOnce sends 100 requests at once: up to 4 run, 16 wait, the
// rest are refused (not dropped); every accepted id runs exactly once.
func TestHundredAtOnce(t *testing.T) {
	dir := pluginDir(t)
	runs := t.TempDir()
	plugin(t, dir, "work", `echo x >> "$1/$2"; sleep 0.2`)
	h := newHarness(t, dir, t.TempDir())
	for i := range 100 {
		id := "req-" + strconv.Itoa(i)
		h.send(telemetry.Command{ID: id, Name: "work", Args: []string{runs, id}})
	}
	ok, refused := 0, 0
	for i := range 100 {
		res := h.wait("req-"+strconv.Itoa(i), 1)
		switch res.Status {
		case telemetry.StatusOK:
			ok++
		case telemetry.StatusRefused:
			refused++
			if !strings.Contains(res.Reason, "busy") {
				t.Errorf("refused for %q", res.Reason)
			}
		default:
			t.Errorf("req-%d: %+v", i, res)
		}
	}
	entries, _ := os.ReadDir(runs)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(runs, e.Name()))
		if string(data) != "x\n" {
			t.Errorf("%s ran %d times", e.Name(), strings.Count(string(data), "x"))
		}
	}
	// 16 wait in the queue, and up to 4 more were already taken by a worker.
	if ok+refused != 100 || ok < 16 || ok > 20 || len(entries) != ok {
		t.Errorf("%d ok, %d refused, %d ran; want every request answered, 16 to 20 run", ok, refused, len(entries))
	}
	t.Logf("100 at once: %d ran, %d refused as busy", ok, refused)
}

func TestInterruptedRequestIsNotRerun(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "slow", "sleep 1000")
	cache := t.TempDir()
	// As if the previous agent died while the request ran.
	d := &Dispatcher{opts: Options{CacheDir: cache}}
	if err := os.WriteFile(d.marker("lost"), []byte("lost\n0\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	h2 := newHarness(t, dir, cache)
	res := h2.wait("lost", 1)
	if res.Status != telemetry.StatusFailed || !strings.Contains(res.Reason, "not run again") {
		t.Fatalf("%+v", res)
	}
	h2.send(telemetry.Command{ID: "lost", Name: "slow"})
	if res := h2.wait("lost", 2); !res.Cached {
		t.Fatalf("repeat after restart: %+v", res)
	}
}

// TestTakenRequestsAreAnsweredAfterACrash: every request Handle took is
// marked before Handle returns (before the broker has its
// acknowledgement), so an agent that starts after one that died with
// requests running and queued answers each exactly once: those that ran
// failed and are not run again, the one that waited is refused (it never
// ran; the controller may send it again).
func TestTakenRequestsAreAnsweredAfterACrash(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "slow", "sleep 1000")
	cache := t.TempDir()
	h1 := newHarness(t, dir, cache)
	for i := range 5 { // four run, one waits
		id := fmt.Sprintf("r%d", i)
		h1.send(telemetry.Command{ID: id, Name: "slow"})
		if _, err := os.Stat(h1.d.marker(id)); err != nil {
			t.Fatalf("%s: not marked when Handle returned: %v", id, err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, func() bool {
		started := 0
		for i := range 5 {
			data, _ := os.ReadFile(h1.d.marker(fmt.Sprintf("r%d", i)))
			if !strings.HasSuffix(string(data), "\n"+queued+"\n") {
				started++
			}
		}
		return started == 4
	}, func() string { return "four requests did not start" })
	// The agent dies (h1 is left as it is, its plugins running until the
	// test ends); the next one opens the same cache.
	h2 := newHarness(t, dir, cache)
	ran, waited := 0, 0
	for i := range 5 {
		res := h2.wait(fmt.Sprintf("r%d", i), 1)
		switch {
		case res.Status == telemetry.StatusFailed && strings.Contains(res.Reason, "not run again"):
			ran++
		case res.Status == telemetry.StatusRefused && strings.Contains(res.Reason, "before this request ran"):
			waited++
		default:
			t.Errorf("r%d: %+v", i, res)
		}
	}
	if ran != 4 || waited != 1 {
		t.Errorf("%d answered as interrupted, %d as never run; want 4 and 1", ran, waited)
	}
	h2.mu.Lock()
	for id, r := range h2.results {
		if len(r) != 1 {
			t.Errorf("%s answered %d times", id, len(r))
		}
	}
	h2.mu.Unlock()
	// Refused, not cached: sent again, it runs.
	plugin(t, dir, "slow", "echo ran")
	h2.send(telemetry.Command{ID: "r4", Name: "slow"})
	if res := h2.wait("r4", 2); res.Status != telemetry.StatusOK || res.Cached {
		t.Errorf("the request that never ran, sent again: %+v", res)
	}
}

func TestBuiltin(t *testing.T) {
	h := newHarness(t, pluginDir(t), t.TempDir())
	h.send(telemetry.Command{ID: "p", Name: "ping"})
	if res := h.wait("p", 1); res.Status != telemetry.StatusOK || string(res.Stdout.Data) != "pong\n" {
		t.Fatalf("%+v", res)
	}
}

// TestStopAnswersEveryRequest: when the agent stops, the request running
// is killed and says so (not "timed out"), and the one still queued is
// refused, not lost; one sent after the stop is refused too.
func TestStopAnswersEveryRequest(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "slow", "sleep 1000")
	h := newHarness(t, dir, t.TempDir())
	for i := range 5 { // concurrency 4: the fifth waits in the queue
		h.send(telemetry.Command{ID: fmt.Sprintf("r%d", i), Name: "slow"})
	}
	time.Sleep(300 * time.Millisecond)
	h.cancel()
	h.send(telemetry.Command{ID: "late", Name: "slow"})
	var killed, refused int
	for _, id := range []string{"r0", "r1", "r2", "r3", "r4", "late"} {
		res := h.wait(id, 1)
		switch {
		case res.Status == telemetry.StatusFailed && strings.Contains(res.Reason, "the agent stopped"):
			killed++
		case res.Status == telemetry.StatusRefused && strings.Contains(res.Reason, "the agent is stopping"):
			refused++
		default:
			t.Errorf("%s: %+v", id, res)
		}
	}
	if killed != 4 || refused != 2 {
		t.Errorf("%d killed and %d refused, want 4 and 2", killed, refused)
	}
}

// TestResultsAreText makes every kind of result say something in random
// bytes: a built-in's error (a local service's words), a plugin directory
// whose path is not UTF-8, a plugin that is not executable there, a plugin
// that fails to start, and a marker file left with a damaged id. Each result
// is taken by the controller without the encoder's help.
func TestResultsAreText(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 1))
	for range 20 {
		junk := wiretest.Junk(r, 1+r.IntN(12), wiretest.NotInFileName)
		plugins := filepath.Join(t.TempDir(), junk)
		if err := os.Mkdir(plugins, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(plugins, "notexec"), []byte("#!/bin/sh\n"), 0o644)
		os.WriteFile(filepath.Join(plugins, "noshell"), []byte("#!/nonexistent/"+junk+"\n"), 0o755)
		cache := t.TempDir()
		marker := (&Dispatcher{opts: Options{CacheDir: cache}}).marker("lost")
		os.WriteFile(marker, []byte("lost"+junk+"\n0\n"), 0o640)
		var mu sync.Mutex
		var results []telemetry.CommandResult
		d := New(Options{Node: "node-a", PluginDir: plugins, CacheDir: cache,
			Builtins: map[string]Builtin{"fail": func(context.Context, []string) ([]byte, error) {
				return nil, fmt.Errorf("service %s: %s", "store", junk)
			}},
			Result: func(res telemetry.CommandResult) { mu.Lock(); results = append(results, res); mu.Unlock() },
			Log:    slog.New(slog.NewTextHandler(io.Discard, nil))})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { d.Run(ctx); close(done) }()
		for i, name := range []string{"fail", "notexec", "noshell"} {
			var e telemetry.Encoder
			data, _ := e.Encode(telemetry.Header{Node: "node-a", Seq: uint64(i + 1), Time: time.Now(), Kind: telemetry.KindCommand},
				telemetry.Command{ID: name, Node: "node-a", Name: name, IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Minute)})
			env, _ := telemetry.Decode(data)
			d.Handle(env)
		}
		testenv.WaitFor(t, 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(results) == 4 },
			func() string { return fmt.Sprintf("results %+v", results) })
		cancel()
		<-done
		for _, res := range results {
			if res.Status == telemetry.StatusOK || res.Reason == "" {
				t.Errorf("%+v: want a failure with its reason", res)
			}
			if n := wiretest.Send(t, telemetry.KindCommandResult, res); n > 0 {
				t.Fatalf("the encoder escaped %d strings: %s", n, wiretest.InvalidText(res))
			}
		}
	}
}

// TestDrainRunsWhatWasTaken: Drain returns once the running request and
// the queued ones have run and answered, each once.
func TestDrainRunsWhatWasTaken(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "short", "sleep 0.2; echo done")
	h := newHarness(t, dir, t.TempDir())
	for i := range 6 { // four run, two wait in the queue
		h.send(telemetry.Command{ID: fmt.Sprintf("q%d", i), Name: "short"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.d.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range 6 {
		id := fmt.Sprintf("q%d", i)
		if r := h.results[id]; len(r) != 1 || r[0].Status != telemetry.StatusOK {
			t.Errorf("%s: %+v", id, r)
		}
	}
}

// TestQuiesceRacesHandle: requests arrive while a reload quiesces the
// dispatcher and drains it. Each request Handle took (acknowledged to the
// broker) has its result out when Drain returns; each it did not take has
// none, ever (the broker delivers it again to the next image). Before the
// gate was in the dispatcher, a request could be decoded and looked up in
// the cache, Drain find nothing pending and return, and the request be
// acknowledged and then refused or killed with the agent.
func TestQuiesceRacesHandle(t *testing.T) {
	const senders = 8
	for round := range 40 {
		h := newHarness(t, pluginDir(t), t.TempDir())
		envs := make([]telemetry.Envelope, senders)
		for i := range envs {
			envs[i] = envelope(t, telemetry.Command{ID: fmt.Sprintf("r%d-%d", round, i), Name: "ping"})
		}
		took := make([]bool, senders)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range senders {
			wg.Go(func() {
				<-start
				took[i] = h.d.Handle(envs[i])
			})
		}
		close(start)
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		h.d.Quiesce()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := h.d.Drain(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		h.mu.Lock()
		drained := maps.Clone(h.results)
		h.mu.Unlock()
		wg.Wait()
		time.Sleep(10 * time.Millisecond) // a result sent late would show now
		h.mu.Lock()
		for i, env := range envs {
			var c telemetry.Command
			env.DecodeBody(&c)
			switch r := drained[c.ID]; {
			case took[i] && (len(r) != 1 || r[0].Status != telemetry.StatusOK):
				t.Errorf("round %d: %s taken, but at Drain's return its results were %+v", round, c.ID, r)
			case !took[i] && len(h.results[c.ID]) > 0:
				t.Errorf("round %d: %s not taken, yet answered: %+v", round, c.ID, h.results[c.ID])
			}
		}
		h.mu.Unlock()
		if h.d.Handle(envelope(t, telemetry.Command{ID: fmt.Sprintf("late%d", round), Name: "ping"})) {
			t.Errorf("round %d: a request after Quiesce was taken", round)
		}
		h.cancel()
	}
}
