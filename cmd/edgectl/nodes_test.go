package main

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/controller"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestWriteNodes renders a fleet against testdata/nodes.golden: a healthy
// node, one claimed by two agents, one whose clock reads 1970 (unsynced)
// and one whose clock is six hours ahead. SEEN is by the controller's clock,
// so the last two were seen seconds ago, and every line fits 80 columns.
func TestWriteNodes(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	beat := now.Add(-3 * time.Second)
	list := []controller.Node{
		{ID: "store-01", Online: true, Version: "v1.4.0", Slot: "a", HeartbeatSeq: 8120, LastHeartbeat: beat, NodeTime: beat,
			Utilization: map[string]float64{"cpu_percent": 12.5, "memory_percent": 40, "disk_percent": 91}},
		{ID: "store-02", Online: true, Version: "v1.4.0", HeartbeatSeq: 530, LastHeartbeat: beat, NodeTime: beat,
			Conflict: &controller.Conflict{Since: now.Add(-5 * time.Minute), Instances: []controller.Instance{
				{ID: "3f2a9c1e07b1d2aa", BootID: "9c1e4f2a-5b6c-4d7e-8f90-a1b2c3d4e5f6", LastHeard: now.Add(-2 * time.Second)},
				{ID: "77b0a1b2c3d4e5f6", BootID: "12aa3344-5566-4778-899a-abbccddeeff0", LastHeard: now.Add(-9 * time.Second)},
			}}},
		{ID: "store-03-without-an-rtc", Online: true, Version: "v1.4.0", HeartbeatSeq: 12, LastHeartbeat: beat,
			NodeTime: time.Unix(420, 0), Unsynced: true},
		{ID: "store-04", Online: false, Version: "v1.3.9", HeartbeatSeq: 77, LastHeartbeat: now.Add(-2 * time.Hour),
			NodeTime: now.Add(4 * time.Hour)},
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
