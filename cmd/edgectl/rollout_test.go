package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/fxamacker/cbor/v2"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// fakeNode stands in for an agent in the rollout tests (the agent's side
// is built apart): an MQTT client that heartbeats, takes offers on
// edge/<id>/update, fetches the artifact from the offer's URL (all of it,
// then a range) and reports statuses through the real encoder, ending as
// its behaviour says.
type fakeNode struct {
	t        *testing.T
	id       string
	behave   string // commit, refuse, rollback or silent
	artifact []byte // what the URL must serve
	c        mqtt.Client
	enc      telemetry.Encoder
	mu       sync.Mutex
	seq      uint64
	offers   chan telemetry.UpdateOffer
	got      int // offers taken
	wg       sync.WaitGroup
}

func startFakeNode(t *testing.T, broker, id, behave string, artifact []byte) *fakeNode {
	f := &fakeNode{t: t, id: id, behave: behave, artifact: artifact, seq: 1000, offers: make(chan telemetry.UpdateOffer, 8)}
	f.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).
		SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond))
	if tok := f.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect: %v", id, tok.Error())
	}
	tok := f.c.Subscribe("edge/"+id+"/update", 1, func(_ mqtt.Client, m mqtt.Message) {
		env, err := telemetry.Decode(m.Payload())
		var o telemetry.UpdateOffer
		if err == nil {
			err = env.DecodeBody(&o)
		}
		if err != nil || env.Kind != telemetry.KindUpdateOffer || env.Node != id {
			t.Errorf("%s: offer: kind %v node %q: %v", id, env.Kind, env.Node, err)
			return
		}
		f.offers <- o
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: subscribe: %v", id, tok.Error())
	}
	f.wg.Go(f.run)
	t.Cleanup(func() { close(f.offers); f.wg.Wait(); f.c.Disconnect(100) })
	return f
}

func (f *fakeNode) publish(topic string, kind telemetry.Kind, body any) {
	f.mu.Lock()
	f.seq++
	data, err := f.enc.Encode(telemetry.Header{Node: f.id, Seq: f.seq, Time: time.Now(), Kind: kind, Instance: "fake-" + f.id}, body)
	data = bytes.Clone(data)
	f.mu.Unlock()
	if err != nil {
		f.t.Error(err)
		return
	}
	f.c.Publish("edge/"+f.id+"/"+topic, 1, false, data).WaitTimeout(5 * time.Second)
}

func (f *fakeNode) heartbeat(version, slot string) {
	f.mu.Lock()
	seq := f.seq + 1
	f.mu.Unlock()
	f.publish("heartbeat", telemetry.KindHeartbeat, telemetry.Heartbeat{Node: f.id, Seq: seq, Time: time.Now(),
		Version: version, Slot: slot, BootID: "boot", Health: telemetry.Healthy, Instance: "fake-" + f.id})
}

// status reports st, then waits a little, as an upgrade takes time: long
// enough for the CLI, which looks four times a second, to see each phase.
func (f *fakeNode) status(st telemetry.UpdateStatus) {
	f.publish("update/status", telemetry.KindUpdateStatus, st)
	time.Sleep(300 * time.Millisecond)
}

func (f *fakeNode) run() {
	for o := range f.offers {
		f.mu.Lock()
		f.got++
		f.mu.Unlock()
		st := telemetry.UpdateStatus{ID: o.ID, Version: "1.5.0", From: "1.4.0", Total: uint64(len(f.artifact))}
		st.Phase = telemetry.PhaseOffered
		f.status(st)
		f.fetch(o)
		for _, pct := range []int{0, 30, 60, 100} {
			st.Phase, st.Percent, st.Bytes = telemetry.PhaseDownloading, pct, uint64(len(f.artifact)*pct/100)
			f.status(st)
			if f.behave == "silent" && pct == 30 {
				break
			}
		}
		if f.behave == "silent" {
			continue
		}
		st.Percent, st.Bytes = 0, 0
		for _, ph := range []string{telemetry.PhaseVerifying, telemetry.PhasePreflight, telemetry.PhaseSwitching, telemetry.PhaseChecking} {
			if f.behave == "refuse" && ph == telemetry.PhasePreflight {
				st.Phase, st.Check, st.Reason = telemetry.PhaseRefused, "signature", "no trusted key signed the manifest"
				f.status(st)
				break
			}
			st.Phase = ph
			f.status(st)
		}
		switch f.behave {
		case "commit":
			f.heartbeat("1.5.0", "b")
			st.Phase, st.Slot = telemetry.PhaseCommitted, "b"
			f.status(st)
		case "rollback":
			st.Phase, st.Slot, st.Reason = telemetry.PhaseRolledBack, "a", "not healthy within 60s: broker not connected"
			st.Log = []string{"level=ERROR msg=\"broker unreachable\""}
			f.status(st)
		}
	}
}

// fetch checks that the offer's URL serves the artifact, whole and by range.
func (f *fakeNode) fetch(o telemetry.UpdateOffer) {
	if len(o.URLs) != 1 {
		f.t.Errorf("%s: offer URLs %q", f.id, o.URLs)
		return
	}
	resp, err := http.Get(o.URLs[0])
	if err != nil {
		f.t.Errorf("%s: fetch: %v", f.id, err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, f.artifact) {
		f.t.Errorf("%s: fetch: %s, %d bytes, want %d", f.id, resp.Status, len(body), len(f.artifact))
	}
	req, _ := http.NewRequest("GET", o.URLs[0], nil)
	req.Header.Set("Range", "bytes=1000-")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		f.t.Errorf("%s: fetch range: %v", f.id, err)
		return
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, f.artifact[1000:]) {
		f.t.Errorf("%s: fetch range: %s, %d bytes, want %d", f.id, resp.Status, len(body), len(f.artifact)-1000)
	}
}

func (f *fakeNode) offersTaken() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.got
}

// signedManifest writes a manifest for artifact shaped as a signed one
// (COSE_Sign1), though its signature is nothing: the controller and the
// CLI pass it on unverified, and the fake nodes do not check it.
func signedManifest(t *testing.T, dir string, artifact []byte) string {
	sum := sha256.Sum256(artifact)
	payload, err := cbor.Marshal(telemetry.Manifest{Version: "1.5.0", OS: "linux", Arch: "amd64", Size: uint64(len(artifact)),
		SHA256: sum[:], IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	signed, err := cbor.Marshal(cbor.Tag{Number: 18, Content: []any{[]byte{0xa1, 0x01, 0x27}, map[any]any{}, payload, make([]byte, 64)}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "release.manifest")
	os.WriteFile(path, signed, 0o644)
	return path
}

// TestRolloutWithFakeNodes rolls a release out through 'edgectl serve' and
// its embedded broker to fake nodes: one commits (exit 0, its slot in
// 'edgectl nodes'); then one refuses, one rolls back and one goes silent
// (exit 1, a line each, the silent one timed out); an unknown node is an
// error before anything is offered; a mismatched artifact is caught before
// any node sees it; and the upgrades' ends are events, also one reported
// for a rollout the controller does not know.
func TestRolloutWithFakeNodes(t *testing.T) {
	api, mqttAddr := testenv.FreePort(t), testenv.FreePort(t)
	_, ctlLog := start(t, edgectlBin, "serve", "--http", api, "--mqtt", mqttAddr, "--heartbeat", "1m")
	dir := t.TempDir()
	artifact := make([]byte, 300<<10)
	rand.Read(artifact)
	artifactFile := filepath.Join(dir, "edgeagent")
	os.WriteFile(artifactFile, artifact, 0o755)
	manifest := signedManifest(t, dir, artifact)

	nodes := map[string]*fakeNode{}
	for _, b := range []string{"commit", "refuse", "rollback", "silent"} {
		nodes[b] = startFakeNode(t, "tcp://"+mqttAddr, "n-"+b, b, artifact)
	}
	testenv.WaitFor(t, 15*time.Second, func() bool {
		for _, n := range nodes {
			n.heartbeat("1.4.0", "a")
		}
		return len(fleetNodes(t, api)) == len(nodes)
	}, func() string { return fmt.Sprintf("nodes %+v\n%s", fleetNodes(t, api), ctlLog) })

	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(edgectlBin, append([]string{"rollout", "--server", "http://" + api}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
	}

	t.Run("unknown node", func(t *testing.T) {
		out, errOut, code := run("n-commit", "nope", manifest, "--artifact", artifactFile)
		if code != 1 || !strings.Contains(errOut, "unknown node: nope") || out != "" {
			t.Errorf("exit %d\n%s%s", code, out, errOut)
		}
	})
	t.Run("wrong artifact", func(t *testing.T) {
		out, errOut, code := run("n-commit", manifest, "--artifact", manifest)
		if code != 1 || !strings.Contains(errOut, "is not the manifest's binary") {
			t.Errorf("exit %d\n%s%s", code, out, errOut)
		}
	})
	t.Run("committed", func(t *testing.T) {
		out, errOut, code := run("--timeout", "30s", "n-commit", manifest, "--artifact", artifactFile)
		for _, want := range []string{"offered to 1 nodes", "1.5.0 (linux/amd64)", "n-commit             downloading ",
			"n-commit             committed 1.5.0 (slot b)\n", "1 nodes, 1 committed, 0 not\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q in the output", want)
			}
		}
		t.Logf("edgectl rollout n-commit:\n%s", out)
		if code != 0 || t.Failed() {
			t.Errorf("exit %d\n%s%s\n%s", code, out, errOut, ctlLog)
		}
		table, _ := exec.Command(edgectlBin, "nodes", "--server", "http://"+api).Output()
		if !strings.Contains(string(table), "SLOT") || !regexpLine(string(table), `^n-commit\s+\S+\s+1\.5\.0\s+b\s`) {
			t.Errorf("nodes:\n%s", table)
		}
	})
	t.Run("refused, rolled back, timed out", func(t *testing.T) {
		start := time.Now()
		out, errOut, code := run("--timeout", "6s", "n-refuse", "n-rollback", "n-silent", manifest, "--artifact", artifactFile)
		for _, want := range []string{
			"n-refuse             refused 1.5.0 (signature): no trusted key signed the manifest\n",
			"n-rollback           rolled back from 1.5.0 to slot a: not healthy within 60s: broker not connected\n",
			"n-silent             timed out after 6s in downloading 30%\n",
			"3 nodes, 0 committed, 3 not\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q in the output", want)
			}
		}
		t.Logf("edgectl rollout n-refuse n-rollback n-silent:\n%s", out)
		if code != 1 || t.Failed() || time.Since(start) > 12*time.Second {
			t.Errorf("exit %d after %v\n%s%s", code, time.Since(start), out, errOut)
		}
	})
	if n := nodes["commit"].offersTaken(); n != 1 {
		t.Errorf("n-commit took %d offers, want 1 (the unknown node's and the wrong artifact's were sent)", n)
	}

	// A rollback reported for a rollout the controller does not know (it
	// restarted since) is an event all the same.
	nodes["rollback"].status(telemetry.UpdateStatus{ID: "before-restart", Phase: telemetry.PhaseRolledBack, Version: "1.6.0",
		Reason: "crashed at start", Slot: "a"})
	var events string
	testenv.WaitFor(t, 5*time.Second, func() bool {
		out, _ := exec.Command(edgectlBin, "events", "--server", "http://"+api).Output()
		events = string(out)
		return strings.Contains(events, "node n-rollback rolled back from 1.6.0 (slot a): crashed at start [rollout before-restart]")
	}, func() string { return events })
	for _, want := range []string{"node n-commit committed 1.5.0 (slot b), from 1.4.0",
		"node n-refuse refused 1.5.0 (signature): no trusted key signed the manifest",
		"node n-rollback rolled back from 1.5.0 (slot a): not healthy within 60s: broker not connected; its log ended:"} {
		if !strings.Contains(events, want) {
			t.Errorf("no %q in the events:\n%s", want, events)
		}
	}
}

func regexpLine(text, expr string) bool {
	return regexp.MustCompile("(?m)" + expr).MatchString(text)
}

// TestRolloutProgress renders progress as on a terminal (a block redrawn in
// place, counts by phase for a large rollout) and as lines.
func TestRolloutProgress(t *testing.T) {
	node := func(id, phase string, pct int) controller.RolloutNode {
		return controller.RolloutNode{Node: id, UpdateStatus: telemetry.UpdateStatus{Phase: phase, Percent: pct}}
	}
	ro := controller.Rollout{Nodes: []controller.RolloutNode{node("a", "", 0), node("b", telemetry.PhaseDownloading, 42)}}
	var tty bytes.Buffer
	p := &progress{w: &tty, tty: true}
	p.show(ro)
	ro.Nodes[0] = node("a", telemetry.PhaseChecking, 0)
	p.show(ro)
	p.end()
	want := "\x1b[2Ka                    waiting\n\x1b[2Kb                    downloading 42%\n" +
		"\x1b[2F\x1b[2Ka                    checking\n\x1b[2Kb                    downloading 42%\n\x1b[2F\x1b[J"
	if tty.String() != want {
		t.Errorf("terminal:\n%q\nwant\n%q", tty.String(), want)
	}
	var lines bytes.Buffer
	p = &progress{w: &lines, last: map[string]string{}}
	p.show(ro)
	ro.Nodes[1] = node("b", telemetry.PhaseDownloading, 47) // the same 10 %: no line
	p.show(ro)
	ro.Nodes[1] = node("b", telemetry.PhaseCommitted, 0) // the end has its own line later
	p.show(ro)
	if want := "a                    checking\nb                    downloading 40%\n"; lines.String() != want {
		t.Errorf("lines:\n%q\nwant\n%q", lines.String(), want)
	}
	large := controller.Rollout{}
	for i := range 30 {
		large.Nodes = append(large.Nodes, node(fmt.Sprint(i), []string{telemetry.PhaseDownloading, telemetry.PhaseCommitted, ""}[i%3], 10))
	}
	tty.Reset()
	p = &progress{w: &tty, tty: true}
	p.show(large)
	if want := "\x1b[2Kcommitted 10  downloading 10  waiting 10\n"; tty.String() != want {
		t.Errorf("large:\n%q\nwant\n%q", tty.String(), want)
	}
}
