package collectors

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestLinkEventBeforeNextInterval changes a real link's state in a namespace
// and expects the event at once, although the next collection is an hour away.
func TestLinkEventBeforeNextInterval(t *testing.T) {
	ns := testenv.Netns(t)
	testenv.Run(t, "ip", "-n", ns, "link", "add", "edge0", "type", "veth", "peer", "name", "edge1")
	testenv.Run(t, "ip", "-n", ns, "link", "set", "edge0", "up")
	testenv.Run(t, "ip", "-n", ns, "link", "set", "edge1", "up")

	n := NewNet(nic.Options{Namespace: "/var/run/netns/" + ns})
	defer n.Close()
	rec := &recorder{}
	s := New(Options{Sink: rec, Log: quiet()})
	s.Add(n, time.Hour, 0)
	start(t, s)
	time.Sleep(200 * time.Millisecond) // let Watch subscribe

	began := time.Now()
	testenv.Run(t, "ip", "-n", ns, "link", "set", "edge1", "down")
	down := func(e telemetry.Event) bool { return e.Subject == "edge1" && e.New == "down" }
	testenv.WaitFor(t, 5*time.Second, func() bool { return anyEvent(rec.eventsOf("link"), down) }, rec.String)
	t.Logf("link-down event after %v", time.Since(began).Round(time.Millisecond))
	for _, e := range rec.eventsOf("link") {
		if down(e) && e.Severity != telemetry.Warning {
			t.Errorf("link down has severity %s", e.Severity)
		}
	}
	// edge0 loses its carrier as its peer went down.
	testenv.WaitFor(t, 5*time.Second, func() bool {
		return anyEvent(rec.eventsOf("link"), func(e telemetry.Event) bool { return e.Subject == "edge0" && e.New == "lower-layer-down" })
	}, rec.String)
	testenv.Run(t, "ip", "-n", ns, "link", "set", "edge1", "up")
	testenv.WaitFor(t, 5*time.Second, func() bool {
		return anyEvent(rec.eventsOf("link"), func(e telemetry.Event) bool { return e.Subject == "edge0" && e.New == "up" })
	}, rec.String)
	if st := s.Status(); st[0].Runs > 1 {
		t.Errorf("collector ran %d times; the events must not wait for it", st[0].Runs)
	}
}

// TestNetRatesFromRealTraffic runs two collections around real traffic
// between two namespaces and checks the rates.
func TestNetRatesFromRealTraffic(t *testing.T) {
	ns, peer := testenv.Netns(t), testenv.Netns(t)
	testenv.Run(t, "ip", "-n", ns, "link", "add", "edge0", "type", "veth", "peer", "name", "edge1", "netns", peer)
	testenv.Run(t, "ip", "-n", ns, "addr", "add", "198.18.7.1/24", "dev", "edge0")
	testenv.Run(t, "ip", "-n", peer, "addr", "add", "198.18.7.2/24", "dev", "edge1")
	testenv.Run(t, "ip", "-n", ns, "link", "set", "edge0", "up")
	testenv.Run(t, "ip", "-n", peer, "link", "set", "edge1", "up")
	n := NewNet(nic.Options{Namespace: "/var/run/netns/" + ns})
	defer n.Close()
	first := &Report{Time: time.Now()}
	if err := n.Collect(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	testenv.LookPath(t, "ping")
	testenv.Run(t, "ip", "netns", "exec", ns, "ping", "-c", "20", "-i", "0.01", "-s", "1000", "-q", "198.18.7.2")
	second := &Report{Time: first.Time.Add(2 * time.Second)} // a fixed elapsed time makes the rate exact
	if err := n.Collect(context.Background(), second); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, p := range second.Points() {
		if p.Tags["link"] == "edge0" {
			got[p.Name] = p.Value
		}
	}
	// 20 echo requests of 1000 bytes of payload (1042 on the wire, with
	// ICMP, IP and Ethernet headers) over 2 s; the kernel may add neighbour
	// discovery, so at least that.
	if got["net.tx_packets_per_sec"] < 10 || got["net.tx_bytes_per_sec"] < 20*1042/2 || got["net.up"] != 1 {
		t.Errorf("edge0 points %v", got)
	}
	if got["net.rx_packets_per_sec"] < 10 {
		t.Errorf("replies not counted: %v", got)
	}
}

func anyEvent(events []telemetry.Event, match func(telemetry.Event) bool) bool {
	for _, e := range events {
		if match(e) {
			return true
		}
	}
	return false
}

// TestFilesystemThreshold drives the fullness state machine with readings:
// first seen full is news, hovering at the line is not, clearing needs
// hysteresis, and inode exhaustion counts as full.
func TestFilesystemThreshold(t *testing.T) {
	d := NewDisk("/sys", "/proc", disk.Options{}, 90)
	fs := func(usedPct, inodePct uint64) disk.Filesystem {
		return disk.Filesystem{Device: "sdb1", MountPoint: "/data", Type: "ext4", TotalBytes: 1000,
			UsedBytes: usedPct * 10, FreeBytes: 1000 - usedPct*10, Inodes: 100, InodesFree: 100 - inodePct}
	}
	for i, step := range []struct {
		used, inodes uint64
		want         string // the new state of an expected event, or ""
	}{
		{95, 1, "full"}, // first seen above: an event (old "")
		{91, 1, ""},
		{88, 1, ""}, // below 90 but within the 5 % hysteresis
		{84, 1, "ok"},
		{89, 1, ""},
		{50, 95, "full"}, // inodes
	} {
		r := &Report{Time: time.Now()}
		d.filesystem(r, fs(step.used, step.inodes))
		ev := r.Events()
		switch {
		case step.want == "" && len(ev) != 0:
			t.Errorf("step %d: unexpected %+v", i, ev)
		case step.want != "" && (len(ev) != 1 || ev[0].New != step.want):
			t.Errorf("step %d: events %+v, want one to %s", i, ev, step.want)
		}
		if i == 0 && (len(ev) != 1 || ev[0].Old != "" || ev[0].Severity != telemetry.Warning) {
			t.Errorf("first event %+v", ev)
		}
	}
}

// TestNetWaitsForItsNamespace: a namespace that is not there yet (or
// netlink that cannot be opened) fails the runs with the reason; the first
// run after it appears reads it, and the link watch, restarted by the
// scheduler, reports its changes.
func TestNetWaitsForItsNamespace(t *testing.T) {
	ns := testenv.Netns(t)
	path := filepath.Join(t.TempDir(), "later")
	n := NewNet(nic.Options{Namespace: path})
	defer n.Close()
	if err := n.Collect(context.Background(), &Report{Time: time.Now()}); err == nil || !strings.Contains(err.Error(), "open network namespace") {
		t.Fatalf("run before the namespace exists: %v", err)
	}
	rec := &recorder{}
	s := New(Options{Sink: rec, Log: quiet()})
	s.Add(n, time.Second, 0)
	start(t, s)
	os.Symlink("/var/run/netns/"+ns, path)
	testenv.WaitFor(t, 10*time.Second, func() bool { st := s.Status()[0]; return st.Runs > 0 && st.LastError == "" },
		func() string { return fmt.Sprintf("no clean run once the namespace exists: %+v", s.Status()[0]) })
	testenv.WaitFor(t, 10*time.Second, func() bool {
		testenv.Run(t, "ip", "-n", ns, "link", "set", "lo", "down")
		testenv.Run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		return len(rec.eventsOf("link")) > 0
	}, func() string { return "the restarted watch reported no link change" })
}
