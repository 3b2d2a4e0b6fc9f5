package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

func msg(t *testing.T, node string, seq uint64, when time.Time, kind telemetry.Kind, body any) []byte {
	t.Helper()
	var e telemetry.Encoder
	data, err := e.Encode(telemetry.Header{Node: node, Seq: seq, Time: when, Kind: kind}, body)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), data...)
}

func TestFleetDedupUtilizationAndOffline(t *testing.T) {
	f := NewFleet(Options{HeartbeatInterval: 10 * time.Second})
	now := time.Unix(1763700000, 0)
	hb := telemetry.Heartbeat{Node: "n1", Seq: 5, Time: now, Version: "v1.2", Health: telemetry.Healthy}
	for range 2 { // QoS 1 redelivery: the second is a duplicate
		if err := f.Handle("edge/n1/heartbeat", msg(t, "n1", 5, now, telemetry.KindHeartbeat, hb), now); err != nil {
			t.Fatal(err)
		}
	}
	batch := []telemetry.Batch{{Source: "host", Time: now, Points: []telemetry.Point{
		{Name: "host.cpu.busy_percent", Value: 12.5, Tags: map[string]string{"cpu": "total"}},
		{Name: "host.cpu.busy_percent", Value: 99, Tags: map[string]string{"cpu": "cpu0"}},
		{Name: "host.memory.used_percent", Value: 40},
		{Name: "fs.used_percent", Value: 70, Tags: map[string]string{"mount": "/"}},
		{Name: "fs.used_percent", Value: 91, Tags: map[string]string{"mount": "/data"}},
	}}}
	if err := f.Handle("edge/n1/telemetry", msg(t, "n1", 6, now, telemetry.KindBatch, batch), now); err != nil {
		t.Fatal(err)
	}
	nodes := f.Nodes()
	if len(nodes) != 1 {
		t.Fatalf("nodes %+v", nodes)
	}
	n := nodes[0]
	if !n.Online || n.Version != "v1.2" || n.HeartbeatSeq != 5 || n.Messages != 2 || n.Duplicates != 1 ||
		n.Utilization["cpu_percent"] != 12.5 || n.Utilization["memory_percent"] != 40 || n.Utilization["disk_percent"] != 91 {
		t.Fatalf("node %+v", n)
	}
	// Three missed heartbeats: offline, with an alert.
	f.Check(now.Add(29 * time.Second))
	if !f.Nodes()[0].Online {
		t.Fatal("offline before three heartbeats were missed")
	}
	f.Check(now.Add(31 * time.Second))
	if f.Nodes()[0].Online {
		t.Fatal("still online after three missed heartbeats")
	}
	events, _ := f.Events(0)
	last := events[len(events)-1]
	if last.Kind != "node" || last.New != "offline" || last.Severity != telemetry.Critical || !strings.Contains(last.Message, "no heartbeat") {
		t.Fatalf("alert %+v", last)
	}
}

func TestFleetRefusesSpoofAndGarbage(t *testing.T) {
	f := NewFleet(Options{})
	now := time.Now()
	st := telemetry.State{State: "offline"}
	if err := f.Handle("edge/victim/state", msg(t, "attacker", 1, now, telemetry.KindState, st), now); err == nil {
		t.Error("a node's message on another node's topic was accepted")
	}
	if err := f.Handle("edge/n/telemetry", []byte{0xff, 0x00}, now); err == nil {
		t.Error("garbage accepted")
	}
	if f.Refused() != 2 || len(f.Nodes()) != 0 {
		t.Errorf("refused %d, nodes %v", f.Refused(), f.Nodes())
	}
}

func TestLastWillMarksOffline(t *testing.T) {
	f := NewFleet(Options{})
	now := time.Now()
	f.Handle("edge/n/state", msg(t, "n", 1, now, telemetry.KindState, telemetry.State{State: "online"}), now)
	f.Handle("edge/n/state", msg(t, "n", 2, now, telemetry.KindState, telemetry.State{State: "offline"}), now)
	events, _ := f.Events(0)
	if len(events) != 2 || events[1].New != "offline" || !strings.Contains(events[1].Message, "last will") {
		t.Fatalf("events %+v", events)
	}
	if got, _ := f.Events(1); len(got) != 1 || got[0].ID != 2 {
		t.Fatalf("events after 1: %+v", got)
	}
}
