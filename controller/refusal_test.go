package controller

import (
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// badBatch is a telemetry message of node n1, seq 42, written by hand: its
// string table holds "\xff\xfe", which is not UTF-8. The controller's strict
// decoder refuses its body, and with it every point of the flush.
func badBatch(t *testing.T) []byte {
	t.Helper()
	data, err := hex.DecodeString(strings.Join([]string{
		"a6",                       // envelope: a map of 6
		"0101",                     // 1 (v): 1
		"02626e31",                 // 2 (node): "n1"
		"03182a",                   // 3 (seq): 42
		"04c11a69200000",           // 4 (time): tag 1, 1763704832
		"0501",                     // 5 (kind): batch
		"06a2",                     // 6 (body): a map of 2
		"018162fffe",               // 1 (strings): ["\xff\xfe"]
		"0281a3",                   // 2 (batches): [{…3 pairs
		"0164686f7374",             // 1 (source): "host"
		"02c11a69200000",           // 2 (time)
		"0381a2" + "0100" + "0201", // 3 (points): [{1 (name): string 0, 2 (value): 1}]
	}, ""))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func refusal(t *testing.T, err error) *Refusal {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("Handle returned %v, want a *Refusal", err)
	}
	return r
}

// TestRefusalsCountedByReasonAndNode refuses one message for each reason
// and finds each counted, by reason and by the node of its topic.
func TestRefusalsCountedByReasonAndNode(t *testing.T) {
	f := NewFleet(Options{})
	now := time.Unix(1763704900, 0)
	r := refusal(t, f.Handle("edge/n1/telemetry", badBatch(t), now))
	if r.Reason != RefusedBody || r.Node != "n1" || r.Seq != 42 || r.Folded ||
		!strings.Contains(r.Error(), "refused message 42 on edge/n1/telemetry (body): decode batch body: cbor: invalid UTF-8") {
		t.Errorf("bad batch: %+v: %v", r, r)
	}
	// The same message again (a QoS 1 redelivery) is a duplicate, not a second refusal.
	if err := f.Handle("edge/n1/telemetry", badBatch(t), now); err != nil {
		t.Errorf("redelivery: %v", err)
	}
	for _, tc := range []struct {
		topic   string
		payload []byte
		reason  string
	}{
		{"edge/n1/event", []byte{0xff, 0x00}, RefusedEnvelope},
		{"edge/n2/telemetry", make([]byte, telemetry.MaxMessage+1), RefusedTooLarge},
		{"edge/victim/state", msg(t, "n1", 7, now, telemetry.KindState, telemetry.State{State: "offline"}), RefusedTopic},
	} {
		if r := refusal(t, f.Handle(tc.topic, tc.payload, now)); r.Reason != tc.reason || r.Topic != tc.topic {
			t.Errorf("%s: %+v", tc.topic, r)
		}
	}
	// A good message is still taken.
	hb := telemetry.Heartbeat{Node: "n1", Seq: 43, Time: now, Health: telemetry.Healthy}
	if err := f.Handle("edge/n1/heartbeat", msg(t, "n1", 43, now, telemetry.KindHeartbeat, hb), now); err != nil {
		t.Fatal(err)
	}
	want := Stats{Refused: 4,
		RefusedByReason: map[string]uint64{RefusedBody: 1, RefusedEnvelope: 1, RefusedTooLarge: 1, RefusedTopic: 1},
		RefusedByNode: map[string]map[string]uint64{"n1": {RefusedBody: 1, RefusedEnvelope: 1}, "n2": {RefusedTooLarge: 1},
			"victim": {RefusedTopic: 1}}}
	if got := f.Stats(); !reflect.DeepEqual(got, want) {
		t.Errorf("stats\n got %+v\nwant %+v", got, want)
	}
	nodes := f.Nodes()
	if len(nodes) != 1 || nodes[0].ID != "n1" || nodes[0].Messages != 1 || nodes[0].Duplicates != 1 || !nodes[0].Online {
		t.Errorf("nodes %+v", nodes)
	}
	var refusedEvents []EventRecord
	events, _ := f.Events(0)
	for _, e := range events {
		if e.Kind == "message" {
			refusedEvents = append(refusedEvents, e)
		}
	}
	if len(refusedEvents) != 4 {
		t.Fatalf("%d refusal events, want one per node and reason: %+v", len(refusedEvents), events)
	}
	if e := refusedEvents[0]; e.Node != "n1" || e.Subject != "n1" || e.New != "refused" || e.Severity != telemetry.Warning ||
		!strings.Contains(e.Message, "(body)") || !e.Time.Equal(now) {
		t.Errorf("event %+v", e)
	}
}

// TestRefusalEventsAreRateLimited: a flood of bad messages from one node
// raises one event a minute, which says how many it folded; the counts stay
// exact, and another reason or node gets its own event at once.
func TestRefusalEventsAreRateLimited(t *testing.T) {
	f := NewFleet(Options{})
	start := time.Unix(1763704900, 0)
	bad := func(node string, seq uint64, at time.Time) *Refusal {
		// A heartbeat where its kind says a batch: its body does not decode as one.
		hb := telemetry.Heartbeat{Node: node, Seq: seq, Time: at}
		return refusal(t, f.Handle("edge/"+node+"/telemetry", msg(t, node, seq, at, telemetry.KindBatch, hb), at))
	}
	count := func() (n int, last EventRecord) {
		events, _ := f.Events(0)
		for _, e := range events {
			if e.Kind == "message" {
				n, last = n+1, e
			}
		}
		return n, last
	}
	for i := range 10 {
		r := bad("n1", uint64(i+1), start.Add(time.Duration(i)*time.Second))
		if r.Reason != RefusedBody || r.Folded != (i > 0) {
			t.Fatalf("refusal %d: %+v", i, r)
		}
	}
	if n, _ := count(); n != 1 {
		t.Fatalf("%d events for a flood within a minute, want 1", n)
	}
	bad("n2", 1, start.Add(10*time.Second))
	if n, last := count(); n != 2 || last.Subject != "n2" {
		t.Fatalf("another node's refusal: %d events, last %+v", n, last)
	}
	f.Check(start.Add(59 * time.Second))
	if n, _ := count(); n != 2 {
		t.Fatalf("an event before the minute was over: %d", n)
	}
	f.Check(start.Add(61 * time.Second))
	n, last := count()
	if n != 3 || last.Subject != "n1" || last.Suppressed != 8 || !strings.Contains(last.Message, "message 10 on edge/n1/telemetry") {
		t.Fatalf("after a minute: %d events, last %+v; want the 10th refusal with 8 folded before it", n, last)
	}
	f.Check(start.Add(5 * time.Minute))
	if n, _ := count(); n != 3 || len(f.folds) != 0 {
		t.Fatalf("quiet: %d events, %d folds remembered", n, len(f.folds))
	}
	if st := f.Stats(); st.Refused != 11 || st.RefusedByNode["n1"][RefusedBody] != 10 {
		t.Errorf("stats %+v", st)
	}
}
