package qemu

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// binaries are built once for every test: the agent and the StatsD helper
// for each guest, edgectl for this machine.
type binaries struct {
	edgectl string
	agent   map[string]string // by arch name
	udpsend map[string]string
	took    time.Duration
}

var (
	buildOnce sync.Once
	built     *binaries
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// build cross-builds the agent with scripts/build, as firmware gets it
// (static, stripped, stamped with the commit's date, which the agent's time
// floor starts from), and the rest with go build.
func build(t *testing.T) *binaries {
	t.Helper()
	buildOnce.Do(func() {
		started := time.Now()
		buildDir, buildErr = os.MkdirTemp("", "edgeagent-qemu")
		if buildErr != nil {
			return
		}
		b := &binaries{edgectl: filepath.Join(buildDir, "edgectl"), agent: map[string]string{}, udpsend: map[string]string{}}
		var names []string
		for _, a := range arches {
			names = append(names, a.name)
			b.agent[a.name] = filepath.Join(buildDir, "edgeagent-linux-"+a.name)
		}
		steps := [][]string{append([]string{"scripts/build"}, names...), {"go", "build", "-o", b.edgectl, "./cmd/edgectl"}}
		envs := [][]string{{"OUT_DIR=" + buildDir}, nil}
		for _, a := range arches {
			b.udpsend[a.name] = filepath.Join(buildDir, "udpsend-"+a.name)
			steps = append(steps, []string{"go", "build", "-trimpath", "-ldflags=-s -w", "-o", b.udpsend[a.name], "./scripts/qemu/udpsend"})
			envs = append(envs, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + a.goarch, "GOARM=" + a.goarm})
		}
		for i, step := range steps {
			cmd := exec.Command(step[0], step[1:]...)
			cmd.Dir, cmd.Env = "../..", append(os.Environ(), envs[i]...)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("%s: %v\n%s", strings.Join(step, " "), err, out)
				return
			}
		}
		b.took = time.Since(started)
		built = b
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// ctl is an 'edgectl serve' with its embedded broker on loopback, which the
// guests reach as 10.0.2.2 through QEMU's user network, and a watcher of
// everything the nodes publish.
type ctl struct {
	bin   string
	api   string // http://127.0.0.1:PORT
	port  string // the broker's
	log   *testenv.Buffer
	watch *watcher
}

// startController runs edgectl serve until the test ends, judging liveness
// by a heartbeat interval of heartbeat.
func startController(t *testing.T, b *binaries, heartbeat time.Duration) *ctl {
	t.Helper()
	mqttAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	_, port, _ := net.SplitHostPort(mqttAddr)
	c := &ctl{bin: b.edgectl, api: "http://" + httpAddr, port: port, log: new(testenv.Buffer)}
	cmd := exec.Command(b.edgectl, "serve", "--mqtt", mqttAddr, "--http", httpAddr,
		"--heartbeat", heartbeat.String())
	cmd.Stdout, cmd.Stderr = c.log, c.log
	must(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("edgectl serve:\n%s", c.log.String())
		}
	})
	testenv.WaitFor(t, 20*time.Second, func() bool {
		return exec.Command(b.edgectl, "nodes", "--server", c.api).Run() == nil
	}, func() string { return "edgectl serve does not answer:\n" + c.log.String() })
	c.watch = watch(t, "tcp://"+mqttAddr)
	return c
}

// nodes is 'edgectl nodes --json'.
func (c *ctl) nodes(t *testing.T) []controller.Node {
	t.Helper()
	out, err := exec.Command(c.bin, "nodes", "--json", "--server", c.api).Output()
	if err != nil {
		t.Fatalf("edgectl nodes: %v", err)
	}
	var nodes []controller.Node
	must(t, json.Unmarshal(out, &nodes))
	return nodes
}

// events is 'edgectl events --json'.
func (c *ctl) events(t *testing.T) []controller.EventRecord {
	t.Helper()
	out, err := exec.Command(c.bin, "events", "--json", "--server", c.api).Output()
	if err != nil {
		t.Fatalf("edgectl events: %v", err)
	}
	var events []controller.EventRecord
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var e controller.EventRecord
		must(t, dec.Decode(&e))
		events = append(events, e)
	}
	return events
}

// exec is 'edgectl exec NODE ARGS...': its output and exit code.
func (c *ctl) exec(node string, args ...string) (string, int) {
	cmd := exec.Command(c.bin, append([]string{"exec", "--server", c.api, "--timeout", "30s", node}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		return err.Error(), -1
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// received is one message a node published, with when it arrived.
type received struct {
	at    time.Time
	topic string
	env   telemetry.Envelope
}

// watcher is a second controller-side MQTT client on <prefix>/#: it keeps
// every message with its arrival time, which edgectl's view does not show
// (cadence, the unsynced flag, single points), and publishes requests the
// way edgectl does.
type watcher struct {
	client mqtt.Client
	enc    telemetry.Encoder

	mu   sync.Mutex
	msgs []received
	bad  []string
}

func watch(t *testing.T, broker string) *watcher {
	t.Helper()
	w := &watcher{}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("qemu-test-%d", rand.Int())).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond)
	w.client = mqtt.NewClient(opts)
	if tok := w.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher: connect: %v", tok.Error())
	}
	tok := w.client.Subscribe("edge/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		env, err := telemetry.Decode(m.Payload())
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			w.bad = append(w.bad, fmt.Sprintf("%s: %v", m.Topic(), err))
			return
		}
		w.msgs = append(w.msgs, received{at: time.Now(), topic: m.Topic(), env: env})
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher: subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { w.client.Disconnect(100) })
	return w
}

// from returns what node published, in order of arrival.
func (w *watcher) from(node string) []received {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []received
	for _, r := range w.msgs {
		if r.env.Node == node && !strings.HasSuffix(r.topic, "/cmd") {
			out = append(out, r)
		}
	}
	return out
}

// heartbeats returns when node's heartbeats arrived.
func (w *watcher) heartbeats(node string) []time.Time {
	var at []time.Time
	for _, r := range w.from(node) {
		if r.env.Kind == telemetry.KindHeartbeat {
			at = append(at, r.at)
		}
	}
	return at
}

// point finds the latest point called name among node's StatsD batches.
func (w *watcher) point(node, name string) (telemetry.Point, bool) {
	var found telemetry.Point
	ok := false
	for _, r := range w.from(node) {
		if r.env.Kind != telemetry.KindBatch {
			continue
		}
		batches, err := r.env.DecodeBatches()
		if err != nil {
			continue
		}
		for _, b := range batches {
			for _, p := range b.Points {
				if b.Source == "statsd" && p.Name == name {
					found, ok = p, true
				}
			}
		}
	}
	return found, ok
}

// counter sums the StatsD counter called name in node's batches, each
// message counted once (by instance and sequence number, as the controller
// de-duplicates).
func (w *watcher) counter(node, name string) float64 {
	type key struct {
		instance string
		seq      uint64
	}
	seen := map[key]bool{}
	sum := 0.0
	for _, r := range w.from(node) {
		k := key{r.env.Instance, r.env.Seq}
		if r.env.Kind != telemetry.KindBatch || seen[k] {
			continue
		}
		seen[k] = true
		batches, err := r.env.DecodeBatches()
		if err != nil {
			continue
		}
		for _, b := range batches {
			for _, p := range b.Points {
				if b.Source == "statsd" && p.Name == name && p.Tags["metric_type"] == "counter" {
					sum += p.Value
				}
			}
		}
	}
	return sum
}

// states returns the presence states node published since from, in order.
func (w *watcher) states(node string, from time.Time) []string {
	var out []string
	for _, r := range w.from(node) {
		var st telemetry.State
		if r.env.Kind == telemetry.KindState && r.at.After(from) && r.env.DecodeBody(&st) == nil {
			out = append(out, st.State)
		}
	}
	return out
}

// result returns node's answer to request id, once it has arrived.
func (w *watcher) result(node, id string) (telemetry.CommandResult, bool) {
	for _, r := range w.from(node) {
		var res telemetry.CommandResult
		if r.env.Kind == telemetry.KindCommandResult && r.env.DecodeBody(&res) == nil && res.ID == id {
			return res, true
		}
	}
	return telemetry.CommandResult{}, false
}

// send publishes a request to c.Node as controller.Ingest.Send does.
func (w *watcher) send(c telemetry.Command) error {
	w.mu.Lock()
	data, err := w.enc.Encode(telemetry.Header{Node: c.Node, Seq: uint64(time.Now().UnixNano()), Time: time.Now(),
		Kind: telemetry.KindCommand}, c)
	payload := append([]byte(nil), data...)
	w.mu.Unlock()
	if err != nil {
		return err
	}
	tok := w.client.Publish("edge/"+c.Node+"/cmd", 1, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("no PUBACK within 10s")
	}
	return tok.Error()
}
