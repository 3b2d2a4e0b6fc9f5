package collectors

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestTelemetrySizeAgainstJSON encodes one real flush of this machine (the
// host, disk, net and agent collectors, second run, so rates are in) as the
// CBOR message the uplink sends and as encoding/json of the same envelope.
// Target: CBOR at most half the size. Run with -v for the figures.
func TestTelemetrySizeAgainstJSON(t *testing.T) {
	n := NewNet(nic.Options{})
	defer n.Close()
	s := New(Options{Sink: &recorder{}, Log: quiet()})
	cs := []Collector{NewHost("/sys", "/proc"), NewDisk("/sys", "/proc", disk.Options{}, 90), n,
		NewAgent(AgentOptions{Sysfs: "/sys", Procfs: "/proc", Scheduler: s})}
	var batches []telemetry.Batch
	for run := 0; run < 2; run++ {
		batches = batches[:0]
		for _, c := range cs {
			r := &Report{Time: time.Now()}
			if err := liveErr(c.Collect(context.Background(), r)); err != nil {
				t.Fatal(err)
			}
			batches = append(batches, telemetry.Batch{Source: c.Name(), Time: r.Time, Points: r.Points()})
		}
		time.Sleep(200 * time.Millisecond)
	}
	const node = "3d1219c7c4c5404aaa1f6d2a48adfda4" // a machine-id, as nodes use
	var e telemetry.Encoder
	data := e.EncodeBatches(telemetry.Header{Node: node, Seq: 123456, Time: time.Now(), Kind: telemetry.KindBatch}, batches)
	js, err := json.Marshal(struct {
		V    int               `json:"v"`
		Node string            `json:"node"`
		Seq  uint64            `json:"seq"`
		Time time.Time         `json:"time"`
		Kind string            `json:"kind"`
		Body []telemetry.Batch `json:"body"`
	}{1, node, 123456, time.Now(), "batch", batches})
	if err != nil {
		t.Fatal(err)
	}
	points := 0
	for _, b := range batches {
		points += len(b.Points)
	}
	ratio := float64(len(data)) / float64(len(js))
	t.Logf("one flush, %d points: CBOR %d bytes, JSON %d bytes, ratio %.2f", points, len(data), len(js), ratio)
	if ratio > 0.5 {
		t.Errorf("CBOR is %.2f of JSON, want at most 0.5", ratio)
	}
}
