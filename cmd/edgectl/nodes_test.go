package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/uplink"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestWriteNodes renders a fleet against testdata/nodes.golden: a healthy
// node, one claimed by two agents, one whose clock reads 1970 (unsynced),
// one whose clock is six hours ahead, one upgrading and one reloading. SEEN
// is by the controller's clock, so the third was seen seconds ago, and every
// line fits 80 columns.
func TestWriteNodes(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	beat := now.Add(-3 * time.Second)
	list := []controller.Node{
		{ID: "store-01", State: "online", Online: true, Version: "v1.4.0", Slot: "a", HeartbeatSeq: 8120, LastHeartbeat: beat, NodeTime: beat,
			Utilization: map[string]float64{"cpu_percent": 12.5, "memory_percent": 40, "disk_percent": 91}},
		{ID: "store-02", State: "online", Online: true, Version: "v1.4.0", HeartbeatSeq: 530, LastHeartbeat: beat, NodeTime: beat,
			Conflict: &controller.Conflict{Since: now.Add(-5 * time.Minute), Instances: []controller.Instance{
				{ID: "3f2a9c1e07b1d2aa", BootID: "9c1e4f2a-5b6c-4d7e-8f90-a1b2c3d4e5f6", LastHeard: now.Add(-2 * time.Second)},
				{ID: "77b0a1b2c3d4e5f6", BootID: "12aa3344-5566-4778-899a-abbccddeeff0", LastHeard: now.Add(-9 * time.Second)},
			}}},
		{ID: "store-03-without-an-rtc", State: "online", Online: true, Version: "v1.4.0", HeartbeatSeq: 12, LastHeartbeat: beat,
			NodeTime: time.Unix(420, 0), Unsynced: true},
		{ID: "store-04", State: "offline", Version: "v1.3.9", HeartbeatSeq: 77, LastHeartbeat: now.Add(-2 * time.Hour),
			NodeTime: now.Add(4 * time.Hour)},
		{ID: "store-05", State: "upgrading", Version: "v1.4.0", HeartbeatSeq: 9001, LastHeartbeat: now.Add(-12 * time.Second),
			NodeTime: now.Add(-12 * time.Second), Upgrading: &controller.Upgrading{Since: now.Add(-8 * time.Second),
				Until: now.Add(52 * time.Second), To: "v1.5.0-rc.1"}},
		{ID: "store-06", State: "upgrading", Version: "v1.4.0", HeartbeatSeq: 310, LastHeartbeat: now.Add(-5 * time.Second),
			NodeTime: now.Add(-5 * time.Second), Upgrading: &controller.Upgrading{Since: now.Add(-time.Second),
				Until: now.Add(29 * time.Second)}},
	}
	var b bytes.Buffer
	writeNodes(&b, list, now)
	const golden = "testdata/nodes.golden"
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("edgectl nodes:\n%s\nwant (%s, -update to rewrite):\n%s", b.String(), golden, want)
	}
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if n := len([]rune(line)); n > 80 {
			t.Errorf("line of %d columns: %q", n, line)
		}
	}
}

// image is one agent image's uplink on the state directory dir, as the agent
// wires it, speaking as instance inst of version.
type image struct {
	up      *uplink.Uplink
	seq     *seqfile.Counter
	inst    string
	version string
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
	err     error
}

func startImage(t *testing.T, broker, dir, inst, version string) *image {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool"), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := seqfile.Open(filepath.Join(dir, "seq"), 100, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	up, err := uplink.New(uplink.Options{Brokers: []string{broker}, Node: "store-9", TopicPrefix: "edge", Keepalive: 2 * time.Second,
		ConnectTimeout: time.Second, PublishTimeout: 2 * time.Second, FlushInterval: time.Second, Spool: sp, Seq: seq,
		Instance: inst, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	im := &image{up: up, seq: seq, inst: inst, version: version, done: make(chan error, 1), cancel: cancel}
	go func() { im.done <- up.Run(ctx) }()
	t.Cleanup(func() { cancel(); im.wait() })
	return im
}

// wait returns what Run returned, once it has.
func (im *image) wait() error {
	im.once.Do(func() { im.err = <-im.done })
	return im.err
}

func (im *image) heartbeat() {
	im.up.Heartbeat(telemetry.Heartbeat{Node: "store-9", Seq: im.seq.Next(), Time: time.Now(), Version: im.version,
		Health: telemetry.Healthy, Instance: im.inst})
}

// TestUpgradingNode runs edgectl (heartbeats every second, so three missed
// take 3 s) with its embedded broker and against mosquitto, and a node whose
// first image hands over to a second on the same state directory, as an
// in-place upgrade does: 'edgectl nodes' shows the node upgrading, with its
// deadline, and not offline while heartbeats are missed within it; the
// second image's heartbeat brings it back; its clean stop is shown as one.
// Neither broker publishes the first image's last will.
func TestUpgradingNode(t *testing.T) {
	for _, broker := range []string{"embedded", "mosquitto"} {
		t.Run(broker, func(t *testing.T) {
			api := testenv.FreePort(t)
			args := []string{"serve", "--http", api, "--heartbeat", "1s"}
			url := ""
			if broker == "embedded" {
				mqttAddr := testenv.FreePort(t)
				args = append(args, "--mqtt", mqttAddr)
				url = "tcp://" + mqttAddr
			} else {
				url = testenv.StartMosquitto(t, "").URL
				args = append(args, "--broker", url)
			}
			_, ctlLog := start(t, edgectlBin, args...)
			sub := testenv.Subscribe(t, url) // sees every state the broker publishes
			dir := t.TempDir()
			state := func() string {
				if nodes := fleetNodes(t, api); len(nodes) == 1 {
					return nodes[0].State
				}
				return "unknown"
			}
			events := func() string {
				out, _ := exec.Command(edgectlBin, "events", "--server", "http://"+api).Output()
				return string(out)
			}

			first := startImage(t, url, dir, "first", "v1.4.0")
			testenv.WaitFor(t, 20*time.Second, func() bool {
				first.heartbeat()
				nodes := fleetNodes(t, api)
				return len(nodes) == 1 && nodes[0].State == "online" && nodes[0].Version == "v1.4.0"
			}, func() string { return "node " + state() + "\n" + ctlLog.String() })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := first.up.Handover(ctx, 20*time.Second, "v1.5.0"); err != nil {
				t.Fatal(err)
			}
			if err := first.wait(); err != nil {
				t.Fatalf("run after handover: %v", err)
			}
			testenv.WaitFor(t, 5*time.Second, func() bool { return state() == "upgrading" }, func() string { return "node " + state() })
			time.Sleep(4 * time.Second) // four heartbeats missed
			table, err := exec.Command(edgectlBin, "nodes", "--server", "http://"+api).Output()
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(table), "store-9              upgrading v1.4.0") ||
				!regexp.MustCompile(`store-9: upgrading to v1\.5\.0 for [45]s, due back within 1[56]s`).Match(table) {
				t.Errorf("nodes while upgrading, heartbeats missed:\n%s", table)
			}

			second := startImage(t, url, dir, "second", "v1.5.0")
			testenv.WaitFor(t, 20*time.Second, func() bool { second.heartbeat(); return state() == "online" },
				func() string { return "node " + state() + "\n" + ctlLog.String() })
			second.cancel()
			if err := second.wait(); err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, 5*time.Second, func() bool { return state() == "offline" }, func() string { return "node " + state() })

			got := events()
			for _, want := range []string{
				"info     store-9          node store-9 is online (",
				"info     store-9          node store-9 is upgrading to v1.5.0, back within 20s",
				"info     store-9          node store-9 is back from its upgrade to v1.5.0 after ",
				"warning  store-9          node store-9 is offline (the node said offline, stopping cleanly)",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("no event %q in:\n%s", want, got)
				}
			}
			if n := strings.Count(got, "is offline"); n != 1 {
				t.Errorf("%d offline events:\n%s", n, got)
			}
			if states := sub.Received().States; strings.Join(states, " ") != "online upgrading online offline" {
				t.Errorf("the broker published the states %v, want online upgrading online offline", states)
			}
		})
	}
}
