package controller

import (
	"fmt"
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
	if st := f.Stats(); st.Refused != 2 || len(f.Nodes()) != 0 {
		t.Errorf("refused %d, nodes %v", st.Refused, f.Nodes())
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

// hbAt is a heartbeat of node n by instance inst (boot boot) numbered seq,
// stamped by the node's clock at stamp.
func hbAt(t *testing.T, seq uint64, inst, boot string, stamp time.Time, unsynced bool) []byte {
	t.Helper()
	var e telemetry.Encoder
	hb := telemetry.Heartbeat{Node: "n", Seq: seq, Time: stamp, Version: fmt.Sprintf("v%d", seq), Health: telemetry.Healthy,
		Instance: inst, BootID: boot}
	data, err := e.Encode(telemetry.Header{Node: "n", Seq: seq, Time: stamp, Kind: telemetry.KindHeartbeat, Unsynced: unsynced,
		Instance: inst}, hb)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), data...)
}

// TestLivenessByReceipt feeds heartbeats from nodes whose clocks are wrong:
// one reads 1970 (no real-time clock, NTP not yet reached), one is hours
// ahead, one hours behind. Each is online while its heartbeats arrive, with
// the time of receipt as its last heartbeat and its own clock kept apart,
// and goes offline three intervals after they stop.
func TestLivenessByReceipt(t *testing.T) {
	received := time.Unix(1795301700, 0)
	for _, tt := range []struct {
		name     string
		clock    func(time.Time) time.Time
		unsynced bool
	}{
		{"clock at 1970", func(r time.Time) time.Time { return time.Unix(300, 0).Add(r.Sub(received)) }, true},
		{"clock 6 h ahead", func(r time.Time) time.Time { return r.Add(6 * time.Hour) }, false},
		{"clock 6 h behind", func(r time.Time) time.Time { return r.Add(-6 * time.Hour) }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFleet(Options{HeartbeatInterval: 10 * time.Second})
			var at time.Time
			for i := range uint64(4) {
				at = received.Add(time.Duration(i) * 10 * time.Second)
				if err := f.Handle("edge/n/heartbeat", hbAt(t, i+1, "i1", "b1", tt.clock(at), tt.unsynced), at); err != nil {
					t.Fatal(err)
				}
				f.Check(at.Add(time.Second))
				n := f.Nodes()[0]
				if !n.Online || !n.LastHeartbeat.Equal(at) || !n.NodeTime.Equal(tt.clock(at)) || n.Unsynced != tt.unsynced {
					t.Fatalf("heartbeat %d: %+v", i+1, n)
				}
			}
			f.Check(at.Add(29 * time.Second))
			if !f.Nodes()[0].Online {
				t.Fatal("offline before three heartbeats were missed")
			}
			f.Check(at.Add(31 * time.Second))
			if f.Nodes()[0].Online {
				t.Fatal("still online after three missed heartbeats")
			}
			events, _ := f.Events(0)
			if len(events) != 2 || events[0].New != "online" || events[1].New != "offline" || events[1].Message != "node n is offline (no heartbeat for 31s)" {
				t.Errorf("events %+v", events)
			}
		})
	}
}

// A heartbeat that arrives after a later one (from a backlog) does not move
// the view back.
func TestLateHeartbeatKeepsView(t *testing.T) {
	f := NewFleet(Options{HeartbeatInterval: 10 * time.Second})
	at := time.Unix(1795301700, 0)
	f.Handle("edge/n/heartbeat", hbAt(t, 10, "i1", "b1", at, false), at)
	f.Handle("edge/n/heartbeat", hbAt(t, 8, "i1", "b1", at.Add(-20*time.Second), false), at.Add(5*time.Second))
	if n := f.Nodes()[0]; n.HeartbeatSeq != 10 || n.Version != "v10" || !n.LastHeartbeat.Equal(at) || !n.NodeTime.Equal(at) || n.Messages != 2 {
		t.Errorf("view moved back: %+v", n)
	}
}

// TestInstanceConflicts feeds heartbeats of one node id from agent instances
// (instance, seq, seconds after the start; each instance on its own boot) and
// expects a conflict only when two live agents alternate, raised once.
func TestInstanceConflicts(t *testing.T) {
	type beat struct {
		inst string
		seq  uint64
		sec  float64
	}
	start := time.Unix(1795301700, 0)
	for _, tt := range []struct {
		name     string
		beats    []beat
		conflict bool
	}{
		{"restart", []beat{{"a", 1, 0}, {"a", 2, 10}, {"b", 5, 30}, {"b", 6, 40}, {"b", 7, 50}}, false},
		{"restart, the old one's backlog arriving late", []beat{{"a", 1, 0}, {"a", 2, 10}, {"b", 5, 20}, {"a", 3, 20.1}, {"b", 6, 30}}, false},
		{"restarts, backlog of the first arriving late", []beat{{"a", 1, 0}, {"b", 3, 5}, {"c", 5, 8}, {"a", 2, 8.1}, {"c", 6, 18}}, false},
		{"clones of one state directory", []beat{{"a", 10, 0}, {"b", 11, 1}, {"a", 12, 10}, {"b", 13, 11}, {"a", 14, 20}, {"b", 15, 21}, {"a", 16, 30}}, true},
		{"a clone with a fresh state directory", []beat{{"a", 1000, 0}, {"b", 1, 2}, {"a", 1001, 10}, {"b", 2, 12}, {"a", 1002, 20}, {"b", 3, 22}}, true},
		// Clones of one state directory reserve the same blocks: the same
		// numbers from two instances are two messages, not a redelivery.
		{"clones numbering alike", []beat{{"a", 10, 0}, {"b", 10, 1}, {"a", 11, 10}, {"b", 11, 11}, {"a", 12, 20}, {"b", 12, 21}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFleet(Options{HeartbeatInterval: 10 * time.Second})
			for _, b := range tt.beats {
				at := start.Add(time.Duration(b.sec * float64(time.Second)))
				if err := f.Handle("edge/n/heartbeat", hbAt(t, b.seq, b.inst, "boot-"+b.inst, at, false), at); err != nil {
					t.Fatal(err)
				}
			}
			var conflicts []EventRecord
			events, _ := f.Events(0)
			for _, e := range events {
				if e.New == "conflict" {
					conflicts = append(conflicts, e)
				}
			}
			n := f.Nodes()[0]
			if !tt.conflict {
				if len(conflicts) != 0 || n.Conflict != nil {
					t.Errorf("conflict raised: %+v, %+v", conflicts, n.Conflict)
				}
				return
			}
			if len(conflicts) != 1 || n.Conflict == nil || len(n.Conflict.Instances) != 2 {
				t.Fatalf("conflict events %+v, node %+v", conflicts, n.Conflict)
			}
			if n.Duplicates != 0 || n.Messages != uint64(len(tt.beats)) {
				t.Errorf("%d messages and %d duplicates from two instances, want %d and none", n.Messages, n.Duplicates, len(tt.beats))
			}
			e := conflicts[0]
			if e.Kind != "node" || e.Subject != "n" || e.Severity != telemetry.Critical ||
				e.Message != "node n is claimed by two live agents, whose heartbeats alternate: instance a (boot boot-a) and instance b (boot boot-b)" {
				t.Errorf("conflict event %+v", e)
			}
		})
	}
}

// TestConflictResolved: two clones alternate, one falls silent while the
// other goes on, and after ten intervals the conflict is resolved, once
// (checked at each heartbeat here: b, last heard at 51 s, is found silent at
// 160 s); when the silent one speaks again it is a new conflict.
func TestConflictResolved(t *testing.T) {
	f := NewFleet(Options{HeartbeatInterval: 10 * time.Second})
	start := time.Unix(1795301700, 0)
	seq := uint64(0)
	beat := func(inst string, sec int) {
		seq++
		at := start.Add(time.Duration(sec) * time.Second)
		f.Handle("edge/n/heartbeat", hbAt(t, seq, inst, "boot-"+inst, at, false), at)
		f.Check(at)
	}
	for sec := 0; sec < 60; sec += 10 {
		beat("a", sec)
		beat("b", sec+1)
	}
	for sec := 60; sec < 200; sec += 10 { // b is silent
		beat("a", sec)
	}
	if c := f.Nodes()[0].Conflict; c != nil {
		t.Errorf("conflict still set: %+v", c)
	}
	for sec := 200; sec < 230; sec += 10 {
		beat("b", sec)
		beat("a", sec+1)
	}
	var kinds []string
	events, _ := f.Events(0)
	for _, e := range events {
		kinds = append(kinds, e.New)
		if e.New == "resolved" && (e.Severity != telemetry.Info ||
			e.Message != "node n: instance b (boot boot-b) silent for 1m49s; only instance a (boot boot-a) speaks for it now") {
			t.Errorf("resolved event %+v", e)
		}
	}
	if strings.Join(kinds, " ") != "online conflict resolved conflict" {
		t.Errorf("events %v", kinds)
	}
	// b is back and replaces a, and a speaks again: a came back first.
	if c := f.Nodes()[0].Conflict; c == nil || c.Instances[0].ID != "a" || c.Instances[1].ID != "b" || !c.Since.Equal(start.Add(201*time.Second)) {
		t.Errorf("second conflict %+v", c)
	}
}

// stateAt is node n's retained state st, sent by instance inst as seq.
func stateAt(t *testing.T, seq uint64, inst string, st telemetry.State) []byte {
	t.Helper()
	var e telemetry.Encoder
	data, err := e.Encode(telemetry.Header{Node: "n", Seq: seq, Time: time.Unix(1, 0), Kind: telemetry.KindState, Instance: inst}, st)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), data...)
}

// TestUpgrading feeds a node's presence through a hand-over to a new image
// of itself (instance a hands over, instance b comes back; heartbeats every
// 10 s, so three missed take 30 s) and checks the state it ends in, when its
// deadline is (seconds after the start), and every node event. A step
// without a message is a Check.
func TestUpgrading(t *testing.T) {
	type step struct {
		sec   int
		inst  string // the sender; empty for a Check
		seq   uint64
		state *telemetry.State // nil: a heartbeat
	}
	up := func(back uint32, to string) *telemetry.State {
		return &telemetry.State{State: "upgrading", BackSec: back, NextVersion: to}
	}
	onlineState := &telemetry.State{State: "online"}
	start := time.Unix(1795301700, 0)
	for _, tt := range []struct {
		name   string
		steps  []step
		state  string
		until  int // seconds after start, while upgrading
		events []string
	}{
		{"upgrade, heartbeats missed meanwhile, back with online", []step{
			{0, "a", 1, nil}, {5, "a", 2, up(60, "v2.0.0")}, {40, "", 0, nil}, {45, "b", 3, onlineState}, {70, "", 0, nil},
		}, "online", 0, []string{
			"info online: node n is online (heartbeat)",
			"info upgrading: node n is upgrading to v2.0.0, back within 60s",
			"info online: node n is back from its upgrade to v2.0.0 after 40s (the node said online)",
		}},
		{"reload, the old image's late heartbeat does not bring it back, the new one's does", []step{
			{0, "a", 1, nil}, {5, "a", 3, up(60, "v1")}, {6, "a", 2, nil}, {40, "", 0, nil}, {50, "b", 4, nil},
		}, "online", 0, []string{
			"info online: node n is online (heartbeat)",
			"info upgrading: node n is reloading, back within 60s",
			"info online: node n is back from its reload after 45s (heartbeat)",
		}},
		{"not back by the deadline", []step{
			{0, "a", 1, nil}, {5, "a", 2, up(60, "v2.0.0")}, {65, "", 0, nil}, {66, "", 0, nil}, {70, "b", 3, nil},
		}, "online", 0, []string{
			"info online: node n is online (heartbeat)",
			"info upgrading: node n is upgrading to v2.0.0, back within 60s",
			"critical offline: node n is offline (did not come back from its upgrade to v2.0.0 within 60s)",
			"info online: node n is online (heartbeat)",
		}},
		{"a deadline beyond ten minutes is capped", []step{
			{0, "a", 1, up(3600, "")}, {600, "", 0, nil}, {601, "", 0, nil},
		}, "offline", 0, []string{
			"info upgrading: node n is reloading, back within 600s",
			"critical offline: node n is offline (did not come back from its reload within 600s)",
		}},
		{"no deadline said: three heartbeat intervals", []step{
			{0, "a", 1, up(0, "")}, {30, "", 0, nil}, {31, "", 0, nil},
		}, "offline", 0, []string{
			"info upgrading: node n is reloading, back within 30s",
			"critical offline: node n is offline (did not come back from its reload within 30s)",
		}},
		{"the announcement again does not move the deadline", []step{
			{0, "a", 1, up(60, "")}, {50, "a", 1, up(60, "")}, {59, "", 0, nil},
		}, "upgrading", 60, []string{
			"info upgrading: node n is reloading, back within 60s",
		}},
		{"a last will while upgrading: the deadline judges", []step{
			{0, "a", 1, nil}, {5, "a", 2, up(120, "")}, {6, "a", 3, &telemetry.State{State: "offline"}}, {100, "", 0, nil},
		}, "upgrading", 125, []string{
			"info online: node n is online (heartbeat)",
			"info upgrading: node n is reloading, back within 120s",
		}},
		{"a clean stop is a clean stop", []step{
			{0, "a", 1, nil}, {5, "a", 2, &telemetry.State{State: "offline", Clean: true}}, {100, "", 0, nil},
		}, "offline", 0, []string{
			"info online: node n is online (heartbeat)",
			"warning offline: node n is offline (the node said offline, stopping cleanly)",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFleet(Options{HeartbeatInterval: 10 * time.Second})
			for _, s := range tt.steps {
				at := start.Add(time.Duration(s.sec) * time.Second)
				var err error
				switch {
				case s.inst == "":
					f.Check(at)
				case s.state == nil:
					err = f.Handle("edge/n/heartbeat", hbAt(t, s.seq, s.inst, "boot", at, false), at)
				default:
					err = f.Handle("edge/n/state", stateAt(t, s.seq, s.inst, *s.state), at)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			n := f.Nodes()[0]
			if n.State != tt.state || n.Online != (tt.state == "online") {
				t.Errorf("state %q (online %v), want %s", n.State, n.Online, tt.state)
			}
			switch u := n.Upgrading; {
			case tt.state != "upgrading" && u != nil:
				t.Errorf("upgrading %+v while %s", u, n.State)
			case tt.state == "upgrading" && (u == nil || !u.Until.Equal(start.Add(time.Duration(tt.until)*time.Second))):
				t.Errorf("upgrading %+v, want until %d s after the start", u, tt.until)
			}
			events, _ := f.Events(0)
			var got []string
			for _, e := range events {
				got = append(got, fmt.Sprintf("%s %s: %s", e.Severity, e.New, e.Message))
			}
			if strings.Join(got, "\n") != strings.Join(tt.events, "\n") {
				t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.events, "\n"))
			}
		})
	}
}
