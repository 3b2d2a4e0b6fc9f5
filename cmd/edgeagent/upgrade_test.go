//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mathrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/update"
	"github.com/seed69aca190/edgeagent/update/release"
)

// The signed A/B upgrade end to end (issue 13, items 13-17): real agent
// processes of versions the test builds, a real broker, real signals and
// SIGKILL; offers published on edge/<node>/update as the controller does
// (or by `edgectl rollout` against `edgectl serve`), the artifact served
// over HTTP with Range, and statuses read from edge/<node>/update/status.
// The test plays init where the S95edgeagent would: when the agent's
// process is gone, it starts the factory binary again.

// upgradeBuilds are the versions the tests install, built once per run of
// the test binary next to `binary`.
type upgradeBuilds struct {
	v1, v2    string // the real agent, 1.0.0 and 2.0.0; v1 is the factory binary
	noConnect string // the real agent, 3.0.0, whose run never reaches the broker
	crash     string // testdata/badagent, 3.0.1: passes the pre-flight, exits at start
	hang      string // testdata/badagent, 3.0.2: passes the pre-flight, then hangs
	arm64     string // testdata/badagent for linux/arm64
}

var upgradeVersions = sync.OnceValues(func() (*upgradeBuilds, error) {
	dir := filepath.Dir(binary)
	const stamp = "-X github.com/seed69aca190/edgeagent/internal/buildinfo.Version="
	b := &upgradeBuilds{v1: filepath.Join(dir, "edgeagent-1.0.0"), v2: filepath.Join(dir, "edgeagent-2.0.0"),
		noConnect: filepath.Join(dir, "edgeagent-noconnect"), crash: filepath.Join(dir, "bad-crash"),
		hang: filepath.Join(dir, "bad-hang"), arm64: filepath.Join(dir, "bad-arm64")}
	for _, c := range []struct {
		out, pkg, ldflags, tags string
		env                     []string
	}{
		{b.v1, ".", stamp + "1.0.0", "", nil},
		{b.v2, ".", stamp + "2.0.0", "", nil},
		{b.noConnect, ".", stamp + "3.0.0", "edgeagent_noconnect", nil},
		{b.crash, "./testdata/badagent", "-X main.version=3.0.1 -X main.mode=crash", "", nil},
		{b.hang, "./testdata/badagent", "-X main.version=3.0.2 -X main.mode=hang", "", nil},
		{b.arm64, "./testdata/badagent", "-X main.version=3.0.3", "", []string{"GOOS=linux", "GOARCH=arm64"}},
	} {
		cmd := exec.Command("go", "build", "-o", c.out, "-ldflags", c.ldflags, "-tags", c.tags, c.pkg)
		cmd.Env = append(os.Environ(), c.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %v\n%s", c.out, err, out)
		}
	}
	return b, nil
})

func buildVersions(t testing.TB) *upgradeBuilds {
	t.Helper()
	b, err := upgradeVersions()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// releaseKey signs manifests; pub is its public key file, for
// update.trusted_keys.
type releaseKey struct {
	priv ed25519.PrivateKey
	pub  string
}

func newReleaseKey(t testing.TB) releaseKey {
	t.Helper()
	path := filepath.Join(t.TempDir(), "release.key")
	if _, err := release.GenerateKey(path); err != nil {
		t.Fatal(err)
	}
	priv, err := release.LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return releaseKey{priv: priv, pub: path + ".pub"}
}

// manifest signs a manifest of bin as version (for this machine, valid an
// hour, downgrade allowed), after edit changes what it lies about.
func (k releaseKey) manifest(t testing.TB, bin, version string, edit func(*telemetry.Manifest)) []byte {
	t.Helper()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	now := time.Now()
	m := telemetry.Manifest{Version: version, OS: runtime.GOOS, Arch: runtime.GOARCH, Size: uint64(len(data)), SHA256: sum[:],
		IssuedAt: now, ExpiresAt: now.Add(time.Hour), AllowDowngrade: true}
	if edit != nil {
		edit(&m)
	}
	signed, err := release.Sign(m, k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// artifactServer serves artifacts with Range (http.ServeContent), counts
// the bytes it wrote, and can be slowed down to a rate.
type artifactServer struct {
	srv    *httptest.Server
	mu     sync.Mutex
	files  map[string][]byte
	served atomic.Int64
	rate   atomic.Int64 // bytes a second; 0: as fast as it goes
	ranges atomic.Int64 // requests with a Range
}

func serveArtifacts(t testing.TB) *artifactServer {
	t.Helper()
	s := &artifactServer{files: map[string][]byte{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		data, ok := s.files[r.URL.Path]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Range") != "" {
			s.ranges.Add(1)
		}
		http.ServeContent(&countingWriter{ResponseWriter: w, s: s}, r, r.URL.Path, time.Unix(1700000000, 0), bytes.NewReader(data))
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// add serves data at /name and returns its URL.
func (s *artifactServer) add(name string, data []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files["/"+name] = data
	return s.srv.URL + "/" + name
}

// addFile serves the file at path as /name.
func (s *artifactServer) addFile(t testing.TB, name, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return s.add(name, data)
}

type countingWriter struct {
	http.ResponseWriter
	s *artifactServer
}

func (w *countingWriter) Write(p []byte) (int, error) {
	var written int
	for len(p) > 0 {
		chunk := p
		if rate := w.s.rate.Load(); rate > 0 {
			chunk = p[:min(len(p), 16<<10)]
			time.Sleep(time.Duration(int64(len(chunk)) * int64(time.Second) / rate))
		}
		n, err := w.ResponseWriter.Write(chunk)
		w.s.served.Add(int64(n))
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// offerUpdate publishes an offer on edge/<node>/update as the controller's
// rollout does, and returns its id.
func (f *fleetTap) offerUpdate(t testing.TB, node string, manifest []byte, urls ...string) string {
	t.Helper()
	f.mu.Lock()
	f.seq++
	id := fmt.Sprintf("offer-%d", f.seq)
	now := time.Now()
	data, err := f.enc.Encode(telemetry.Header{Node: node, Seq: f.seq, Time: now, Kind: telemetry.KindUpdateOffer},
		telemetry.UpdateOffer{ID: id, Manifest: manifest, URLs: urls, IssuedAt: now})
	payload := slices.Clone(data)
	f.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if tok := f.client.Publish("edge/"+node+"/update", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish offer: %v", tok.Error())
	}
	return id
}

// statusTap is the controller's view of edge/<node>/update/status.
type statusTap struct {
	mu   sync.Mutex
	byID map[string][]telemetry.UpdateStatus
	bad  []string
}

func tapStatuses(t testing.TB, broker, node string) *statusTap {
	t.Helper()
	s := &statusTap{byID: map[string][]telemetry.UpdateStatus{}}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID("status-" + node).SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).SetOrderMatters(true)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("status tap connect: %v", tok.Error())
	}
	tok := c.Subscribe("edge/"+node+"/update/status", 1, func(_ mqtt.Client, m mqtt.Message) {
		var st telemetry.UpdateStatus
		env, err := telemetry.Decode(m.Payload())
		if err == nil {
			err = env.DecodeBody(&st)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.bad = append(s.bad, err.Error())
			return
		}
		s.byID[st.ID] = append(s.byID[st.ID], st)
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("status tap subscribe: %v", tok.Error())
	}
	t.Cleanup(func() {
		c.Disconnect(100)
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.bad) > 0 {
			t.Errorf("statuses that do not decode: %v", s.bad)
		}
	})
	return s
}

func terminal(phase string) bool {
	switch phase {
	case telemetry.PhaseCommitted, telemetry.PhaseRolledBack, telemetry.PhaseRefused, telemetry.PhaseFailed:
		return true
	}
	return false
}

// statuses returns what offer id reported so far.
func (s *statusTap) statuses(id string) []telemetry.UpdateStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.byID[id])
}

// phases lists the phases offer id went through, repeats folded.
func (s *statusTap) phases(id string) []string {
	var out []string
	for _, st := range s.statuses(id) {
		if len(out) == 0 || out[len(out)-1] != st.Phase {
			out = append(out, st.Phase)
		}
	}
	return out
}

// end waits for the status that ends offer id.
func (s *statusTap) end(t testing.TB, id string, timeout time.Duration, tail func() string) telemetry.UpdateStatus {
	t.Helper()
	var last telemetry.UpdateStatus
	testenv.WaitFor(t, timeout, func() bool {
		for _, st := range s.statuses(id) {
			if terminal(st.Phase) {
				last = st
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("offer %s did not end: phases %v\n%s", id, s.phases(id), tail()) })
	return last
}

// upgradeAgent is an agent started from its factory binary, as init starts
// it, and started again by start when the test plays init.
type upgradeAgent struct {
	*liveAgent
	factory string
	exited  chan struct{} // closed when the current process is gone
	starts  int
}

// startUpgradeAgent runs factory with liveConfig, the release key trusted,
// a 5 s health timeout, and extra.
func startUpgradeAgent(t testing.TB, broker, factory string, key releaseKey, extra string) *upgradeAgent {
	t.Helper()
	dir := t.TempDir()
	a := &liveAgent{dir: dir, node: fmt.Sprintf("upgrade-%d", time.Now().UnixNano()%1e9), http: testenv.FreePort(t),
		state: filepath.Join(dir, "state"), log: &testenv.Buffer{}}
	a.statsd = freeUDP(t)
	a.socket = filepath.Join(a.state, "control.sock")
	a.lock = filepath.Join(a.state, "edgeagent.lock")
	a.config = filepath.Join(dir, "config.yaml")
	a.plugins = filepath.Join(dir, "plugins")
	if err := os.Mkdir(a.plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	upd := fmt.Sprintf("update:\n  trusted_keys: [%s]\n  health_timeout: 5s\n  attempts: 2\n", key.pub)
	cfg := mergeYAML(mergeYAML(fmt.Sprintf(liveConfig, a.node, a.state, a.plugins, broker, a.http, a.statsd), upd), extra)
	if err := os.WriteFile(a.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	u := &upgradeAgent{liveAgent: a, factory: factory}
	u.start(t)
	t.Cleanup(func() {
		if u.cmd.Process != nil {
			u.cmd.Process.Kill()
			<-u.exited
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", u.tail())
		}
	})
	u.waitReady(t)
	return u
}

// start runs the factory binary, as init does.
func (u *upgradeAgent) start(t testing.TB) {
	t.Helper()
	u.cmd = exec.Command(u.factory, "run", "--config", u.config)
	u.cmd.Stderr = u.log
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u.starts++
	exited := make(chan struct{})
	u.exited = exited
	cmd := u.cmd
	go func() { cmd.Wait(); close(exited) }()
}

func (u *upgradeAgent) alive() bool {
	select {
	case <-u.exited:
		return false
	default:
		return true
	}
}

// kill cuts the power: SIGKILL, and waits until the process is gone.
func (u *upgradeAgent) kill(t testing.TB) {
	t.Helper()
	u.cmd.Process.Kill()
	select {
	case <-u.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent outlived SIGKILL for 10s")
	}
}

// waitReady waits until the current process has an image ready
// (edgeagent.lock names it) and is connected.
func (u *upgradeAgent) waitReady(t testing.TB) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, func() bool {
		lf, err := readLockFile(u.lock)
		return u.alive() && err == nil && lf.pid == u.cmd.Process.Pid
	}, func() string { return fmt.Sprintf("agent (start %d) not ready\n%s", u.starts, u.tail()) })
	u.waitConnected(t)
}

// exe is the binary the agent's process runs.
func (u *upgradeAgent) exe(t testing.TB) string {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", u.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("the agent's binary: %v\n%s", err, u.tail())
	}
	return exe
}

func (u *upgradeAgent) slotsDir() string { return filepath.Join(u.state, "slots") }

// upgradeState is what `edgeagent update status --json` says.
type upgradeState struct {
	Dir string `json:"slots_dir"`
	update.State
}

func (u *upgradeAgent) updateStatus(t testing.TB) upgradeState {
	t.Helper()
	out, err := exec.Command(binary, "update", "status", "--json", "--config", u.config).Output()
	if err != nil {
		t.Fatalf("edgeagent update status --json: %v\n%s", err, out)
	}
	var st upgradeState
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("update status --json: %v\n%s", err, out)
	}
	return st
}

// loadState reads the state file directly (cheap enough to poll).
func (u *upgradeAgent) loadState() *update.State {
	st, _ := update.LoadState(u.slotsDir())
	return st
}

// runningVerified says what the agent runs, or why that is not a verified
// version: the factory binary, or a slot whose file hashes to what the
// state recorded for it.
func (u *upgradeAgent) runningVerified(t testing.TB) (string, error) {
	t.Helper()
	exe := u.exe(t)
	if sameFileTest(exe, u.factory) {
		return "factory", nil
	}
	st := u.loadState()
	for _, slot := range update.Slots {
		path := update.SlotPath(u.slotsDir(), slot)
		if !sameFileTest(exe, path) {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(data)
		if info := st.Slots[slot]; info.SHA256 != hex.EncodeToString(sum[:]) {
			return "", fmt.Errorf("slot %s runs, its SHA-256 %x is not the recorded %s", slot, sum, info.SHA256)
		}
		return slot + " " + st.Slots[slot].Version, nil
	}
	return "", fmt.Errorf("the agent runs %s, neither the factory binary nor a slot", exe)
}

func sameFileTest(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// statsdAnswers sends n counters named name and waits for them at the
// controller: the StatsD socket reads and its counts reach the broker.
func statsdAnswers(t testing.TB, u *upgradeAgent, tap *fleetTap, name string, n int) {
	t.Helper()
	load := sendStatsD(t, u.statsd, name, 2000)
	testenv.WaitFor(t, 5*time.Second, func() bool { return load.sent.Load() >= uint64(n) },
		func() string { return "StatsD datagrams not sent" })
	sent := load.stop()
	testenv.WaitFor(t, 15*time.Second, func() bool { return tap.counter(name) == float64(sent) },
		func() string {
			return fmt.Sprintf("StatsD %s: %v of %d at the controller\n%s", name, tap.counter(name), sent, u.tail())
		})
}

// httpAnswers checks /healthz answers 200.
func httpAnswers(t testing.TB, u *upgradeAgent) {
	t.Helper()
	c := http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + u.http + "/healthz")
	if err != nil {
		t.Errorf("/healthz: %v", err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}
}

// edgectlBinary is cmd/edgectl, built once.
var edgectlBinary = sync.OnceValues(func() (string, error) {
	path := filepath.Join(filepath.Dir(binary), "edgectl")
	if out, err := exec.Command("go", "build", "-o", path, "../edgectl").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build edgectl: %v\n%s", err, out)
	}
	return path, nil
})

// startEdgectlServe runs `edgectl serve` with its embedded broker and
// returns the API's and the broker's URLs.
func startEdgectlServe(t testing.TB) (api, broker string, log *testenv.Buffer) {
	t.Helper()
	bin, err := edgectlBinary()
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, mqttAddr := testenv.FreePort(t), testenv.FreePort(t)
	log = &testenv.Buffer{}
	cmd := exec.Command(bin, "serve", "--http", httpAddr, "--mqtt", mqttAddr, "--heartbeat", "1s",
		"--artifact-dir", t.TempDir(), "--client-id", "edgectl-upgrade-test")
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("edgectl serve log:\n%s", log.String())
		}
	})
	testenv.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(log.String(), "HTTP API listening") },
		func() string { return "edgectl serve did not start\n" + log.String() })
	return "http://" + httpAddr, "tcp://" + mqttAddr, log
}

// knownTo waits until the controller knows node.
func knownTo(t testing.TB, api, node string) {
	t.Helper()
	testenv.WaitFor(t, 15*time.Second, func() bool {
		resp, err := http.Get(api + "/api/nodes")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var nodes []controller.Node
		json.NewDecoder(resp.Body).Decode(&nodes)
		return slices.ContainsFunc(nodes, func(n controller.Node) bool { return n.ID == node })
	}, func() string { return node + " unknown to the controller" })
}

// rolloutOnce runs `edgectl rollout NODE MANIFEST --artifact BIN` and
// returns its output; it must exit 0 (every node committed).
func rolloutOnce(t testing.TB, ctx context.Context, api, node, manifest, artifact string) (string, error) {
	bin, _ := edgectlBinary()
	cmd := exec.CommandContext(ctx, bin, "rollout", "--server", api, "--timeout", "60s", node, manifest, "--artifact", artifact)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// upgradeTo offers release (manifest of bin) and waits until it ends; it
// must commit.
func upgradeTo(t testing.TB, u *upgradeAgent, tap *fleetTap, st *statusTap, arts *artifactServer, key releaseKey, bin, version string) {
	t.Helper()
	url := arts.addFile(t, filepath.Base(bin), bin)
	id := tap.offerUpdate(t, u.node, key.manifest(t, bin, version, nil), url)
	if end := st.end(t, id, 60*time.Second, u.tail); end.Phase != telemetry.PhaseCommitted {
		t.Fatalf("upgrade to %s: %+v (phases %v)\n%s", version, end, st.phases(id), u.tail())
	}
}

// TestUpgradeAdversarial offers releases a node must refuse (issue 13,
// item 14), after an upgrade to 2.0.0 so that a highest version is
// committed: each is refused by the check that names what is wrong, the
// slot is never switched (the state `update status --json` shows is the
// same, the agent runs the same binary in the same process) and the highest
// committed version stays 2.0.0.
func TestUpgradeAdversarial(t *testing.T) {
	b := buildVersions(t)
	key, other := newReleaseKey(t), newReleaseKey(t)
	broker := testenv.StartMosquitto(t, "")
	arts := serveArtifacts(t)
	u := startUpgradeAgent(t, broker.URL, b.v1, key, "")
	tap := tapFleet(t, broker.URL, u.node)
	st := tapStatuses(t, broker.URL, u.node)
	upgradeTo(t, u, tap, st, arts, key, b.v2, "2.0.0")

	pid, exe := u.cmd.Process.Pid, u.exe(t)
	before := u.updateStatus(t)
	if before.Committed == "" || before.Highest != "2.0.0" || before.Trial != nil {
		t.Fatalf("after the upgrade to 2.0.0: %+v", before.State)
	}
	v1, err := os.ReadFile(b.v1)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := os.ReadFile(b.v2)
	if err != nil {
		t.Fatal(err)
	}
	v2URL := arts.add("v2", v2)
	sameSize := len(v1) == len(v2)
	hashCheck := release.CheckSHA256
	if !sameSize {
		hashCheck = release.CheckSize
	}
	up := func(m *telemetry.Manifest) { m.Version, m.AllowDowngrade = "2.1.0", false }

	for _, tc := range []struct {
		name, check string
		manifest    func() []byte
		url         string
		download    bool // the refusal comes after the download
	}{
		{name: "bad signature", check: release.CheckSignature, url: v2URL, manifest: func() []byte {
			m := key.manifest(t, b.v2, "2.1.0", up)
			m[len(m)-1] ^= 0x01 // the last byte of the Ed25519 signature
			return m
		}},
		{name: "key not trusted", check: release.CheckSignature, url: v2URL, manifest: func() []byte {
			return other.manifest(t, b.v2, "2.1.0", up)
		}},
		{name: "expired", check: release.CheckExpiry, url: v2URL, manifest: func() []byte {
			return key.manifest(t, b.v2, "2.1.0", func(m *telemetry.Manifest) {
				up(m)
				m.IssuedAt, m.ExpiresAt = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Minute)
			})
		}},
		{name: "another release's binary", check: hashCheck, url: arts.add("v1-as-2.1.0", v1), download: true,
			manifest: func() []byte { return key.manifest(t, b.v2, "2.1.0", up) }},
		{name: "payload longer than declared", check: release.CheckSize, download: true,
			url:      arts.add("v2-and-more", append(slices.Clone(v2), bytes.Repeat([]byte{0x90}, 64<<10)...)),
			manifest: func() []byte { return key.manifest(t, b.v2, "2.1.0", up) }},
		{name: "older version without the downgrade flag", check: release.CheckVersion, url: arts.add("v1", v1),
			manifest: func() []byte {
				return key.manifest(t, b.v1, "1.0.0", func(m *telemetry.Manifest) { m.AllowDowngrade = false })
			}},
		{name: "arm64 binary offered to " + runtime.GOARCH, check: release.CheckTarget, url: arts.addFile(t, "arm64", b.arm64),
			manifest: func() []byte {
				return key.manifest(t, b.arm64, "3.0.3", func(m *telemetry.Manifest) { m.Arch = "arm64" })
			}},
		{name: "manifest lying about the arch", check: release.CheckTarget, url: arts.addFile(t, "arm64-lying", b.arm64), download: true,
			manifest: func() []byte { return key.manifest(t, b.arm64, "3.0.3", nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			served := arts.served.Load()
			id := tap.offerUpdate(t, u.node, tc.manifest(), tc.url)
			end := st.end(t, id, 30*time.Second, u.tail)
			t.Logf("%s: %s", end.Phase, end.Reason)
			if end.Phase != telemetry.PhaseRefused || end.Check != tc.check {
				t.Errorf("ended %q by check %q, want refused by %q: %s (phases %v)", end.Phase, end.Check, tc.check, end.Reason, st.phases(id))
			}
			if ph := st.phases(id); slices.Contains(ph, telemetry.PhaseSwitching) || slices.Contains(ph, telemetry.PhasePreflight) {
				t.Errorf("phases %v", ph)
			}
			if downloaded := arts.served.Load() - served; tc.download != (downloaded > 0) {
				t.Errorf("%d bytes downloaded; want a download: %v", downloaded, tc.download)
			}
			now := u.updateStatus(t)
			if now.Committed != before.Committed || now.Highest != before.Highest || now.Trial != nil ||
				!mapsEqual(now.Slots, before.Slots) {
				t.Errorf("the state changed:\nbefore %+v\nnow    %+v", before.State, now.State)
			}
			if now.Last == nil || now.Last.ID != id || now.Last.Phase != telemetry.PhaseRefused {
				t.Errorf("the state's last outcome: %+v", now.Last)
			}
			if u.cmd.Process.Pid != pid || !u.alive() || u.exe(t) != exe {
				t.Errorf("the agent changed: pid %d, binary %s; was %d, %s", u.cmd.Process.Pid, u.exe(t), pid, exe)
			}
			if parts, _ := filepath.Glob(filepath.Join(u.slotsDir(), "*.part*")); len(parts) > 0 {
				t.Errorf("a refused download left %v", parts)
			}
		})
	}
	httpAnswers(t, u)
	statsdAnswers(t, u, tap, "adversarial.after", 500)
	if states := tap.states(); slices.Contains(states, "offline") {
		t.Errorf("the node was said offline: %v", states)
	}
}

func mapsEqual(a, b map[string]update.SlotInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestUpgradeBadVersions installs versions that pass every check and the
// pre-flight but are bad when they run (issue 13, item 15). Each ends with
// the old version running, its sockets intact (StatsD counts reach the
// controller, /healthz answers) and a "rolled back" status with the reason
// at the controller:
//
//   - one that crashes at start: the process is gone; the test plays init
//     (starts the factory binary again), the start-up decision runs the
//     version on trial again (update.attempts 2), it crashes again, and the
//     third start rolls back;
//   - one that hangs before it is healthy: the detached watchdog kills it
//     after the health timeout and its margin; the next start rolls back
//     (update.attempts 1);
//   - one that never connects to the broker: it rolls back by itself when
//     its health timeout passes, by the same hand-over, in the same process.
func TestUpgradeBadVersions(t *testing.T) {
	b := buildVersions(t)
	key := newReleaseKey(t)
	broker := testenv.StartMosquitto(t, "")
	arts := serveArtifacts(t)

	// playInit starts the factory binary again whenever the agent's process
	// is gone, until the state says the trial is over and an image of the
	// current process is ready.
	playInit := func(t *testing.T, u *upgradeAgent, timeout time.Duration) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			if !u.alive() {
				t.Logf("the agent's process is gone (%v): init starts it again", u.cmd.ProcessState)
				u.start(t)
			}
			st := u.loadState()
			lf, err := readLockFile(u.lock)
			if st.Trial == nil && st.Rollback != nil && err == nil && lf.pid == u.cmd.Process.Pid && u.alive() {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no rollback within %v\n%s", timeout, u.tail())
	}

	for _, tc := range []struct {
		name, bin, version string
		attempts           int
		samePID            bool // rolls back by itself, in the same process
		reason             string
		starts             int // starts of the factory binary, the first included
	}{
		{name: "crashes at start", bin: b.crash, version: "3.0.1", attempts: 2, reason: "did not become healthy in 2 starts", starts: 3},
		{name: "hangs", bin: b.hang, version: "3.0.2", attempts: 1, reason: "did not become healthy in 1 starts", starts: 2},
		{name: "never connects", bin: b.noConnect, version: "3.0.0", attempts: 2, samePID: true,
			reason: "not healthy within 5s: not connected to the broker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			began := time.Now()
			u := startUpgradeAgent(t, broker.URL, b.v1, key, fmt.Sprintf("update:\n  trusted_keys: [%s]\n  health_timeout: 5s\n  attempts: %d\n", key.pub, tc.attempts))
			tap := tapFleet(t, broker.URL, u.node)
			st := tapStatuses(t, broker.URL, u.node)
			pid := u.cmd.Process.Pid
			statsdAnswers(t, u, tap, "bad.before", 500)
			id := tap.offerUpdate(t, u.node, key.manifest(t, tc.bin, tc.version, nil), arts.addFile(t, tc.name, tc.bin))
			testenv.WaitFor(t, 30*time.Second, func() bool { return slices.Contains(st.phases(id), telemetry.PhaseSwitching) },
				func() string { return fmt.Sprintf("no switch: phases %v\n%s", st.phases(id), u.tail()) })
			playInit(t, u, 60*time.Second)
			u.waitReady(t)
			end := st.end(t, id, 20*time.Second, u.tail)
			t.Logf("%s after %v, %d starts: %s; log %q", end.Phase, time.Since(began).Round(100*time.Millisecond), u.starts, end.Reason, end.Log)
			if end.Phase != telemetry.PhaseRolledBack || !strings.Contains(end.Reason, tc.reason) || end.Version != tc.version {
				t.Errorf("ended %+v; want rolled back from %s: %q", end, tc.version, tc.reason)
			}
			if tc.samePID {
				if u.cmd.Process.Pid != pid || u.starts != 1 {
					t.Errorf("pid %d after %d starts; was %d", u.cmd.Process.Pid, u.starts, pid)
				}
			} else {
				if u.starts != tc.starts {
					t.Errorf("%d starts of the factory binary, want %d", u.starts, tc.starts)
				}
				// The start-up decision notes each start it counts, the
				// watchdog why it killed one that hung.
				want := map[string]string{"crashes at start": "start-up decision: start 2 of 2", "hangs": "watchdog"}[tc.name]
				if !strings.Contains(strings.Join(end.Log, "\n"), want) {
					t.Errorf("the rollback's log does not say %q: %q", want, end.Log)
				}
			}
			if got, err := u.runningVerified(t); err != nil || got != "factory" {
				t.Errorf("running %q, %v; want the factory binary", got, err)
			}
			if s := u.updateStatus(t); s.Committed != "" || s.Trial != nil || s.Rollback == nil || !strings.Contains(s.Rollback.Reason, tc.reason) {
				t.Errorf("update status: %+v", s.State)
			}
			if ev := tap.events(func(e telemetry.Event) bool { return e.Kind == "update" && e.New == "rolled back" }); len(ev) != 1 {
				t.Errorf("rollback events at the controller: %+v", ev)
			}
			httpAnswers(t, u)
			statsdAnswers(t, u, tap, "bad.after", 500)
		})
	}
}

// TestUpgradeUnderLoad upgrades the agent 50 times back to back, 1.0.0 →
// 2.0.0 → 1.0.0 …, through the real offer path, `edgectl rollout NODE
// MANIFEST --artifact BIN` against `edgectl serve` (issue 13, item 13), both
// manifests allowing a downgrade, while StatsD counters arrive at 20,000
// datagrams/s and HTTP connections to /healthz follow one another. Then:
// every rollout ended committed (exit 0), no HTTP connection was refused or
// reset, the counter total at the controller is what was sent, the pid
// never changed, as many descriptors after the 50th upgrade as after the
// 1st, and the node was never said offline.
func TestUpgradeUnderLoad(t *testing.T) {
	const (
		upgrades = 50
		rate     = 20000
	)
	b := buildVersions(t)
	key := newReleaseKey(t)
	api, broker, _ := startEdgectlServe(t)
	u := startUpgradeAgent(t, broker, b.v1, key, "")
	tap := tapFleet(t, broker, u.node)
	knownTo(t, api, u.node)
	pid := u.cmd.Process.Pid
	dir := t.TempDir()
	releases := []struct{ manifest, bin, version string }{
		{filepath.Join(dir, "2.0.0.manifest"), b.v2, "2.0.0"},
		{filepath.Join(dir, "1.0.0.manifest"), b.v1, "1.0.0"},
	}
	for _, r := range releases {
		if err := os.WriteFile(r.manifest, key.manifest(t, r.bin, r.version, nil), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	load := sendStatsD(t, u.statsd, "upgrade.load", rate)
	probe := probeHTTP(t, u.http)
	testenv.WaitFor(t, 10*time.Second, func() bool { return tap.counter("upgrade.load") > 0 },
		func() string { return "no StatsD counter at the controller\n" + u.tail() })

	var fdsFirst []string
	var took []time.Duration
	started := time.Now()
	for i := 1; i <= upgrades; i++ {
		r := releases[(i-1)%2]
		gen := u.generation(t)
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		out, err := rolloutOnce(t, ctx, api, u.node, r.manifest, r.bin)
		cancel()
		took = append(took, time.Since(began))
		if err != nil || !strings.Contains(out, "committed "+r.version) {
			t.Fatalf("upgrade %d to %s: %v\n%s\n%s", i, r.version, err, out, u.tail())
		}
		if g := u.generation(t); g <= gen {
			t.Fatalf("upgrade %d: image %d after %d", i, g, gen)
		}
		if u.cmd.Process.Pid != pid || !u.alive() {
			t.Fatalf("upgrade %d: the agent is pid %d (alive %v), was %d", i, u.cmd.Process.Pid, u.alive(), pid)
		}
		if v, err := u.runningVerified(t); err != nil || !strings.HasSuffix(v, " "+r.version) {
			t.Fatalf("upgrade %d: running %q, %v", i, v, err)
		}
		if i == 1 || i == upgrades {
			fds := probe.paused(func() []string {
				u.waitConnected(t)
				return u.fds(t)
			})
			if i == 1 {
				fdsFirst = fds
			} else if len(fds) != len(fdsFirst) {
				t.Errorf("%d descriptors after upgrade 1, %d after upgrade %d\nafter 1:  %s\nafter %d: %s",
					len(fdsFirst), len(fds), i, strings.Join(fdsFirst, " "), i, strings.Join(fds, " "))
			}
		}
	}
	total := time.Since(started)
	time.Sleep(300 * time.Millisecond)
	sent := load.stop()
	requests, failures := probe.stop()
	t.Logf("%d upgrades in %v under %d datagrams/s (offer to commit as edgectl rollout sees it: %s); %d datagrams, %d HTTP requests (slowest %v)",
		upgrades, total.Round(time.Millisecond), rate, summarize(took), sent, requests, probe.slowest.Round(time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("%d of %d HTTP requests failed, the first: %s", len(failures), requests, strings.Join(failures[:min(5, len(failures))], "; "))
	}
	var got float64
	testenv.WaitFor(t, 20*time.Second, func() bool {
		got = tap.counter("upgrade.load")
		return got >= float64(sent)
	}, func() string {
		return fmt.Sprintf("the controller has %v of the %d counted; socket drops %d\n%s", got, sent, u.socketDrops(t), u.tail())
	})
	time.Sleep(1500 * time.Millisecond)
	if got = tap.counter("upgrade.load"); got != float64(sent) {
		t.Errorf("the controller counted %v, %d sent", got, sent)
	}
	if states := tap.states(); slices.Contains(states, "offline") {
		t.Errorf("the node was said offline: states %v", states)
	}
	if s := u.updateStatus(t); s.Trial != nil || s.Highest != "2.0.0" || s.Last == nil || s.Last.Phase != telemetry.PhaseCommitted {
		t.Errorf("update status after the upgrades: %+v", s.State)
	}
	if pid := u.lockPID(t); pid != u.cmd.Process.Pid {
		t.Errorf("edgeagent.lock names pid %d, the agent is %d", pid, u.cmd.Process.Pid)
	}
}

// target is the slot an offer to u is written to: neither the running slot
// nor the committed one (as the manager picks it).
func (u *upgradeAgent) target(t testing.TB) string {
	t.Helper()
	exe, st := u.exe(t), u.loadState()
	for _, s := range update.Slots {
		if !sameFileTest(exe, update.SlotPath(u.slotsDir(), s)) && s != st.Committed {
			return s
		}
	}
	return update.Slots[0]
}

// waitSettled waits until the agent runs an image ready in its current
// process with no version on trial: after a restart as init, the start-up
// decision may run the version on trial again, which then commits.
func (u *upgradeAgent) waitSettled(t testing.TB) {
	t.Helper()
	testenv.WaitFor(t, 40*time.Second, func() bool {
		lf, err := readLockFile(u.lock)
		return u.alive() && err == nil && lf.pid == u.cmd.Process.Pid && u.loadState().Trial == nil
	}, func() string { return fmt.Sprintf("not settled: state %+v\n%s", u.loadState(), u.tail()) })
	u.waitConnected(t)
}

// TestUpgradePowerCut cuts the power (SIGKILL) at each step of an upgrade
// (issue 13, item 16), seen from the slots directory and the process as
// they change: downloading (the partial file grows), the verified binary
// renamed into its slot, the state file recording the slot, the process
// exec'd into the new binary, the new version running before it is healthy,
// and after the commit. Each time the test starts the factory binary again
// as init would; the agent must end on a verified version (the factory
// binary or a slot hashing to what the state recorded), with no version
// left on trial, and offering the release again must complete (committed).
// One agent goes through every step, the release alternating 2.0.0 and
// 1.0.0 (downgrades allowed).
func TestUpgradePowerCut(t *testing.T) {
	b := buildVersions(t)
	key := newReleaseKey(t)
	broker := testenv.StartMosquitto(t, "")
	arts := serveArtifacts(t)
	u := startUpgradeAgent(t, broker.URL, b.v1, key, "")
	tap := tapFleet(t, broker.URL, u.node)
	st := tapStatuses(t, broker.URL, u.node)
	urls := map[string]string{"2.0.0": arts.addFile(t, "v2", b.v2), "1.0.0": arts.addFile(t, "v1", b.v1)}
	bins := map[string]string{"2.0.0": b.v2, "1.0.0": b.v1}
	sums := map[string]string{}
	for v, bin := range bins {
		data, _ := os.ReadFile(bin)
		sum := sha256.Sum256(data)
		sums[v] = hex.EncodeToString(sum[:])
	}
	next := "2.0.0"
	other := map[string]string{"2.0.0": "1.0.0", "1.0.0": "2.0.0"}
	stateFile := filepath.Join(u.slotsDir(), "state.json")
	// What the target slot was before the offer, and the state file when
	// the download was seen renamed into it.
	var slotBefore, stateAtRename os.FileInfo
	renamed := func(slot string) bool {
		fi, err := os.Stat(update.SlotPath(u.slotsDir(), slot))
		return err == nil && (slotBefore == nil || !os.SameFile(fi, slotBefore))
	}

	steps := []struct {
		name string
		slow bool // serve the artifact slowly, so the download lasts
		// at reports whether the step is reached; slot is the target.
		at func(slot string) bool
	}{
		{name: "downloading", slow: true, at: func(slot string) bool {
			fi, err := os.Stat(filepath.Join(u.slotsDir(), slot+".part"))
			return err == nil && fi.Size() > 2<<20
		}},
		{name: "verified and slot written", at: func(slot string) bool {
			return renamed(slot)
		}},
		{name: "state written", at: func(slot string) bool {
			// The first save of the state after the rename into the slot
			// is the one recording it (the next sets the trial).
			if stateAtRename == nil {
				if renamed(slot) {
					stateAtRename, _ = os.Stat(stateFile)
				}
				return false
			}
			fi, err := os.Stat(stateFile)
			s := u.loadState()
			return err == nil && !os.SameFile(fi, stateAtRename) && s.Slots[slot].SHA256 == sums[next] && s.Trial == nil
		}},
		{name: "exec'd", at: func(slot string) bool {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", u.cmd.Process.Pid))
			return err == nil && sameFileTest(exe, update.SlotPath(u.slotsDir(), slot))
		}},
		{name: "before healthy", at: func(slot string) bool {
			// The new image is up (its lock file written) and on trial.
			lf, err := readLockFile(u.lock)
			s := u.loadState()
			return err == nil && lf.generation > 0 && s.Trial != nil && s.Trial.Slot == slot
		}},
		{name: "after commit", at: func(slot string) bool {
			s := u.loadState()
			return s.Committed == slot && s.Trial == nil
		}},
	}
	// Round 0 cuts as soon as a step is seen; rounds 1 and 2 a random
	// 0-30 ms later, into the step or past it.
	for round := range 3 {
		for _, step := range steps {
			upgradePowerCutStep(t, round, step.name, step.slow, step.at, powerCut{u: u, tap: tap, st: st, arts: arts, key: key,
				bins: bins, urls: urls, next: &next, other: other, slotBefore: &slotBefore, stateAtRename: &stateAtRename})
		}
	}
	statsdAnswers(t, u, tap, "powercut.after", 500)
}

// powerCut is what the steps of TestUpgradePowerCut share.
type powerCut struct {
	u                         *upgradeAgent
	tap                       *fleetTap
	st                        *statusTap
	arts                      *artifactServer
	key                       releaseKey
	bins, urls                map[string]string
	next                      *string
	other                     map[string]string
	slotBefore, stateAtRename *os.FileInfo
}

func upgradePowerCutStep(t *testing.T, round int, name string, slow bool, at func(string) bool, p powerCut) {
	u, tap, st, arts, key, bins, urls := p.u, p.tap, p.st, p.arts, p.key, p.bins, p.urls
	next := *p.next
	t.Run(fmt.Sprintf("%s/%d", name, round), func(t *testing.T) {
		step := struct {
			name string
			slow bool
			at   func(string) bool
		}{name, slow, at}
		began := time.Now()
		slot := u.target(t)
		*p.slotBefore, _ = os.Stat(update.SlotPath(u.slotsDir(), slot))
		*p.stateAtRename = nil
		if step.slow {
			arts.rate.Store(8 << 20)
			defer arts.rate.Store(0)
		}
		id := tap.offerUpdate(t, u.node, key.manifest(t, bins[next], next, nil), urls[next])
		deadline := time.Now().Add(30 * time.Second)
		for !step.at(slot) {
			if time.Now().After(deadline) {
				t.Fatalf("step %q not seen: phases %v, state %+v\n%s", step.name, st.phases(id), u.loadState(), u.tail())
			}
			time.Sleep(200 * time.Microsecond)
		}
		var delay time.Duration
		if round > 0 {
			delay = time.Duration(mathrand.Int64N(int64(30 * time.Millisecond)))
			time.Sleep(delay)
		}
		u.kill(t)
		s := u.loadState()
		trial := "none"
		if s.Trial != nil {
			trial = s.Trial.Version + " in " + s.Trial.Slot
		}
		t.Logf("killed at %q +%v (slot %s): committed %q, trial %s, phases %v", step.name, delay.Round(time.Millisecond), slot, s.Committed, trial, st.phases(id))
		arts.rate.Store(0)

		u.start(t)
		u.waitSettled(t)
		running, err := u.runningVerified(t)
		if err != nil {
			t.Fatalf("after the restart: %v\n%s", err, u.tail())
		}
		t.Logf("after the restart: running %s", running)
		if parts, _ := filepath.Glob(filepath.Join(u.slotsDir(), "*.part")); len(parts) > 0 && step.name != "downloading" {
			t.Errorf("partial downloads left: %v", parts)
		}

		again := tap.offerUpdate(t, u.node, key.manifest(t, bins[next], next, nil), urls[next])
		if end := st.end(t, again, 60*time.Second, u.tail); end.Phase != telemetry.PhaseCommitted {
			t.Fatalf("offered again: %+v (phases %v)", end, st.phases(again))
		}
		if v, err := u.runningVerified(t); err != nil || !strings.HasSuffix(v, " "+next) {
			t.Errorf("after the offer again: running %q, %v; want %s", v, err, next)
		}
		httpAnswers(t, u)
		t.Logf("step took %v", time.Since(began).Round(100*time.Millisecond))
		*p.next = p.other[next]
	})
}

// TestUpgradeResumedDownload cuts an upgrade's download halfway by killing
// the agent (issue 13, item 17), starts it again as init, and offers the
// release again: the download resumes where the agent recorded it stopped
// (a Range request), the upgrade commits, and the server sent at most
// 1.1 × the artifact's size in all.
func TestUpgradeResumedDownload(t *testing.T) {
	b := buildVersions(t)
	key := newReleaseKey(t)
	broker := testenv.StartMosquitto(t, "")
	arts := serveArtifacts(t)
	u := startUpgradeAgent(t, broker.URL, b.v1, key, "")
	tap := tapFleet(t, broker.URL, u.node)
	st := tapStatuses(t, broker.URL, u.node)
	fi, err := os.Stat(b.v2)
	if err != nil {
		t.Fatal(err)
	}
	size := fi.Size()
	url := arts.addFile(t, "v2", b.v2)
	manifest := key.manifest(t, b.v2, "2.0.0", nil)

	arts.rate.Store(5 << 20)
	slot := u.target(t)
	resume := filepath.Join(u.slotsDir(), slot+".part.resume")
	first := tap.offerUpdate(t, u.node, manifest, url)
	var offset int64
	testenv.WaitFor(t, 30*time.Second, func() bool {
		data, err := os.ReadFile(resume)
		if err != nil {
			return false
		}
		var r struct{ Offset int64 }
		json.Unmarshal(data, &r)
		offset = r.Offset
		return offset >= size*2/5
	}, func() string {
		return fmt.Sprintf("no checkpoint past 40%%: phases %v\n%s", st.phases(first), u.tail())
	})
	u.kill(t)
	arts.rate.Store(0)
	servedFirst := arts.served.Load()
	t.Logf("killed with %d of %d bytes recorded (%d%%), %d served", offset, size, offset*100/size, servedFirst)

	u.start(t)
	u.waitReady(t)
	again := tap.offerUpdate(t, u.node, manifest, url)
	if end := st.end(t, again, 60*time.Second, u.tail); end.Phase != telemetry.PhaseCommitted {
		t.Fatalf("offered again: %+v (phases %v)", end, st.phases(again))
	}
	served := arts.served.Load()
	t.Logf("%d bytes served in all for %d (%.3f ×); %d requests with a Range", served, size, float64(served)/float64(size), arts.ranges.Load())
	if float64(served) > 1.1*float64(size) {
		t.Errorf("%d bytes served for an artifact of %d: more than 1.1 ×", served, size)
	}
	if arts.ranges.Load() == 0 {
		t.Errorf("the download did not resume (%d Range requests)\n%s", arts.ranges.Load(), u.tail())
	}
	if v, err := u.runningVerified(t); err != nil || !strings.HasSuffix(v, " 2.0.0") {
		t.Errorf("running %q, %v; want 2.0.0", v, err)
	}
}
