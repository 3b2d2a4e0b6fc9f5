// Command rollout measures what one rollout to a large fleet costs the
// controller (issue 13, item 20): 'edgectl serve' with its embedded broker
// (its cost is in the figures: one process) and 'edgectl rollout --all' to
// -nodes simulated nodes, each an MQTT client of its own (or -conns clients
// sharing the nodes, each subscribed to its nodes' update topics) that takes
// the offer, downloads the artifact from the controller's URL, and reports
// a realistic status sequence: offered; downloading 0..100 % in -step steps
// once a second; verifying, preflight, switching and checking a second
// apart; committed. Node starts are spread over a second, as a fleet's are.
// It reports the controller's CPU time and peak RSS over the rollout (peak
// reset just before it starts, through /proc/PID/clear_refs), how long the
// offers took to publish, and when the last one arrived.
//
//	go run ./scripts/bench/rollout [-nodes 1000] [-conns 1000] [-artifact-size 1048576] [-step 10]
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/fxamacker/cbor/v2"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/hal/proc"
	"github.com/seed69aca190/edgeagent/telemetry"
)

func main() {
	nodes := flag.Int("nodes", 1000, "simulated nodes")
	conns := flag.Int("conns", 1000, "MQTT connections the nodes share (at most -nodes)")
	size := flag.Int("artifact-size", 1<<20, "bytes of the artifact every node downloads")
	step := flag.Int("step", 10, "download percent reported per second")
	flag.Parse()
	if err := run(*nodes, min(*conns, *nodes), *size, *step); err != nil {
		fmt.Fprintln(os.Stderr, "rollout:", err)
		os.Exit(1)
	}
}

type bench struct {
	broker    string
	server    string // the controller's API
	step      int
	statuses  atomic.Int64
	fetched   atomic.Int64
	errs      atomic.Int64
	mu        sync.Mutex
	lastOffer time.Time
	wg        sync.WaitGroup
}

func run(nodes, conns, size, step int) error {
	work, err := os.MkdirTemp("", "rollout-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	edgectl := filepath.Join(work, "edgectl")
	if out, err := exec.Command("go", "build", "-o", edgectl, "./cmd/edgectl").CombinedOutput(); err != nil {
		return fmt.Errorf("build edgectl: %v\n%s", err, out)
	}
	artifact := make([]byte, size)
	rand.Read(artifact)
	artifactFile, manifestFile := filepath.Join(work, "artifact"), filepath.Join(work, "manifest")
	os.WriteFile(artifactFile, artifact, 0o644)
	if err := writeManifest(manifestFile, artifact); err != nil {
		return err
	}

	api, mqttAddr := freePort(), freePort()
	ctl := exec.Command(edgectl, "serve", "--http", api, "--mqtt", mqttAddr, "--heartbeat", "1h")
	ctlLog, err := os.Create(filepath.Join(work, "edgectl.log"))
	if err != nil {
		return err
	}
	defer ctlLog.Close()
	ctl.Stderr = ctlLog
	if err := ctl.Start(); err != nil {
		return err
	}
	defer func() { ctl.Process.Kill(); ctl.Wait() }()
	server := "http://" + api

	b := &bench{broker: "tcp://" + mqttAddr, server: server, step: step}
	start := time.Now()
	clients, err := b.connect(nodes, conns)
	if err != nil {
		log, _ := os.ReadFile(ctlLog.Name())
		return fmt.Errorf("%v\ncontroller:\n%s", err, log)
	}
	defer func() {
		for _, c := range clients {
			c.Disconnect(0)
		}
	}()
	fmt.Printf("%d nodes on %d MQTT connections, known to the controller after %s\n", nodes, conns, time.Since(start).Round(time.Millisecond))

	pid := ctl.Process.Pid
	time.Sleep(2 * time.Second) // let the start settle
	p0, err := proc.New("/sys", "/proc").Process(pid)
	if err != nil {
		return err
	}
	idleCPU := p0.CPUSeconds
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset the controller's peak RSS: %w", err)
	}
	rssBefore := p0.RSSBytes

	began := time.Now()
	cli := exec.Command(edgectl, "rollout", "--server", server, "--all", "--artifact", artifactFile, "--timeout", "10m", manifestFile)
	var cliOut bytes.Buffer
	cli.Stdout, cli.Stderr = &cliOut, &cliOut
	cliErr := cli.Run()
	took := time.Since(began)
	p1, err := proc.New("/sys", "/proc").Process(pid)
	if err != nil {
		return err
	}
	hwm := vmHWM(pid)
	b.wg.Wait()

	var list []controller.Rollout
	if err := getJSON(server+"/api/rollouts", &list); err != nil || len(list) != 1 {
		return fmt.Errorf("rollouts: %v (%d)", err, len(list))
	}
	lines := strings.Split(strings.TrimSpace(cliOut.String()), "\n")
	summary := lines[len(lines)-1]
	if cliErr != nil {
		return fmt.Errorf("edgectl rollout: %v: %s", cliErr, summary)
	}
	b.mu.Lock()
	lastOffer := b.lastOffer.Sub(began)
	b.mu.Unlock()
	cpu := p1.CPUSeconds - idleCPU
	log, _ := os.ReadFile(ctlLog.Name())
	if n := bytes.Count(log, []byte("ingest queue full")); n > 0 {
		fmt.Printf("the controller's ingest queue overflowed: %d messages dropped\n", n)
	}
	fmt.Printf("edgectl rollout: %s in %s\n", summary, took.Round(time.Millisecond))
	fmt.Printf("statuses published: %d; artifact downloads: %d of %d bytes; errors at the nodes: %d\n",
		b.statuses.Load(), b.fetched.Load(), size, b.errs.Load())
	fmt.Printf("offers: published in %s (controller, until the broker acknowledged the last); the last arrived %s after the CLI started\n",
		list[0].OfferTime.Round(time.Millisecond), lastOffer.Round(time.Millisecond))
	fmt.Printf("controller (with its embedded broker): CPU %.2f s over the rollout (%.1f%% of one core), peak RSS %.1f MiB (%.1f MiB before)\n",
		cpu, 100*cpu/took.Seconds(), float64(hwm)/(1<<20), float64(rssBefore)/(1<<20))
	return nil
}

// connect opens conns clients, spreads the nodes over them, subscribes each
// node's update topic, and has each node heartbeat until the controller
// knows them all.
func (b *bench) connect(nodes, conns int) ([]mqtt.Client, error) {
	clients := make([]mqtt.Client, conns)
	errs := make(chan error, conns)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.broker).SetClientID(fmt.Sprintf("bench-%d", i)).
				SetConnectRetry(true).SetConnectRetryInterval(200 * time.Millisecond).SetKeepAlive(60 * time.Second))
			if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("connect %d: %v", i, tok.Error())
				return
			}
			clients[i] = c
			for n := i; n < nodes; n += conns {
				node := &simNode{b: b, c: c, id: fmt.Sprintf("node-%04d", n)}
				tok := c.Subscribe("edge/"+node.id+"/update", 1, node.offer)
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					errs <- fmt.Errorf("subscribe %s: %v", node.id, tok.Error())
					return
				}
				node.publish(telemetry.KindHeartbeat, "heartbeat", telemetry.Heartbeat{Node: node.id, Seq: 1, Time: time.Now(),
					Version: "1.4.0", Slot: "a", Health: telemetry.Healthy, Instance: "sim"})
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return clients, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var list []controller.Node
		if err := getJSON(b.server+"/api/nodes", &list); err == nil && len(list) == nodes {
			return clients, nil
		}
		if time.Now().After(deadline) {
			return clients, fmt.Errorf("the controller knows %d of %d nodes after 60s", len(list), nodes)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type simNode struct {
	b   *bench
	c   mqtt.Client
	id  string
	mu  sync.Mutex
	enc telemetry.Encoder
	seq uint64
}

func (n *simNode) publish(kind telemetry.Kind, topic string, body any) {
	n.mu.Lock()
	n.seq++
	data, err := n.enc.Encode(telemetry.Header{Node: n.id, Seq: n.seq, Time: time.Now(), Kind: kind, Instance: "sim"}, body)
	data = bytes.Clone(data)
	n.mu.Unlock()
	if err != nil {
		n.b.errs.Add(1)
		return
	}
	if tok := n.c.Publish("edge/"+n.id+"/"+topic, 1, false, data); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		n.b.errs.Add(1)
	}
}

// offer runs the node's upgrade in the background (the MQTT client's
// handler must not block).
func (n *simNode) offer(_ mqtt.Client, m mqtt.Message) {
	now := time.Now()
	n.b.mu.Lock()
	if now.After(n.b.lastOffer) {
		n.b.lastOffer = now
	}
	n.b.mu.Unlock()
	env, err := telemetry.Decode(m.Payload())
	var o telemetry.UpdateOffer
	if err == nil {
		err = env.DecodeBody(&o)
	}
	if err != nil || len(o.URLs) == 0 {
		n.b.errs.Add(1)
		return
	}
	n.b.wg.Go(func() { n.upgrade(o) })
}

func (n *simNode) upgrade(o telemetry.UpdateOffer) {
	time.Sleep(mrand.N(time.Second))
	st := telemetry.UpdateStatus{ID: o.ID, Version: "1.5.0", From: "1.4.0"}
	status := func(phase string) {
		st.Phase = phase
		n.publish(telemetry.KindUpdateStatus, "update/status", st)
		n.b.statuses.Add(1)
	}
	status(telemetry.PhaseOffered)
	resp, err := http.Get(o.URLs[0])
	if err != nil {
		n.b.errs.Add(1)
		return
	}
	got, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		n.b.errs.Add(1)
		return
	}
	n.b.fetched.Add(1)
	st.Total = uint64(got)
	for pct := 0; ; pct = min(pct+n.b.step, 100) {
		st.Percent, st.Bytes = pct, st.Total*uint64(pct)/100
		status(telemetry.PhaseDownloading)
		if pct == 100 {
			break
		}
		time.Sleep(time.Second)
	}
	st.Percent, st.Bytes, st.Total = 0, 0, 0
	for _, ph := range []string{telemetry.PhaseVerifying, telemetry.PhasePreflight, telemetry.PhaseSwitching, telemetry.PhaseChecking} {
		time.Sleep(time.Second)
		status(ph)
	}
	time.Sleep(time.Second)
	st.Slot = "b"
	status(telemetry.PhaseCommitted)
}

// writeManifest writes a manifest for artifact shaped as a signed one
// (COSE_Sign1) with an empty signature: the controller passes it on
// unverified, and the simulated nodes do not check it.
func writeManifest(path string, artifact []byte) error {
	sum := sha256.Sum256(artifact)
	payload, err := cbor.Marshal(telemetry.Manifest{Version: "1.5.0", OS: "linux", Arch: "amd64", Size: uint64(len(artifact)),
		SHA256: sum[:], IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		return err
	}
	signed, err := cbor.Marshal(cbor.Tag{Number: 18, Content: []any{[]byte{0xa1, 0x01, 0x27}, map[any]any{}, payload, make([]byte, 64)}})
	if err != nil {
		return err
	}
	return os.WriteFile(path, signed, 0o644)
}

func vmHWM(pid int) uint64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func getJSON(url string, v any) error {
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}
