package uplink

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/timefloor"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

// TestMessagesCarryTheFloorWhenUnsynced: with the clock below the time
// floor (a node at 1970; here the floor is put a year ahead of this
// machine's clock), every message is flagged unsynced and dated from the
// floor, envelope and body alike.
func TestMessagesCarryTheFloorWhenUnsynced(t *testing.T) {
	dir := t.TempDir()
	floorDate := time.Now().Add(365 * 24 * time.Hour).Truncate(time.Second)
	floor, err := timefloor.Open(filepath.Join(dir, "clock"), floorDate)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool"), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	seq, _ := seqfile.Open(filepath.Join(dir, "seq"), 100, floor.Now)
	u, err := New(Options{Brokers: []string{"tcp://127.0.0.1:1"}, Node: "n", TopicPrefix: "edge", Spool: sp, Seq: seq,
		Stamp: floor.Stamp, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "s", New: "x", Message: "m"})
	_, rec, ok, err := sp.Next()
	if !ok || err != nil {
		t.Fatalf("nothing queued: %v", err)
	}
	env, err := telemetry.Decode(rec.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var ev telemetry.Event
	if err := env.DecodeBody(&ev); err != nil {
		t.Fatal(err)
	}
	if !env.Unsynced {
		t.Error("a message made below the floor is not flagged unsynced")
	}
	u.Batch(telemetry.Batch{Source: "host", Time: time.Now(), Points: []telemetry.Point{{Name: "host.load1", Value: 1}}})
	u.flush()
	_, rec, ok, err = sp.Next()
	if !ok || err != nil {
		t.Fatalf("no batch queued: %v", err)
	}
	benv, err := telemetry.Decode(rec.Payload)
	if err != nil {
		t.Fatal(err)
	}
	batches, err := benv.DecodeBatches()
	if err != nil {
		t.Fatal(err)
	}
	if !benv.Unsynced {
		t.Error("a batch made below the floor is not flagged unsynced")
	}
	for what, got := range map[string]time.Time{"envelope": env.Time, "event": ev.Time, "batch": batches[0].Time} {
		if got.Before(floorDate) || got.After(floorDate.Add(time.Minute)) {
			t.Errorf("%s time %v, want the floor's estimate (%v and a few seconds)", what, got, floorDate)
		}
	}
}
