package collectors

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestHeartbeatSeqSurvivesRestart runs the heartbeat three times over the same
// state file, as three agent lifetimes, and checks that the sequence only
// ever rises.
func TestHeartbeatSeqSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	var all []telemetry.Heartbeat
	for life := 0; life < 3; life++ {
		seq, err := seqfile.Open(path, 1000, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		rec := &recorder{}
		s := New(Options{Sink: rec, Log: quiet()})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			s.RunHeartbeat(ctx, HeartbeatOptions{Node: "n1", Version: "v1", BootID: "b", Interval: 5 * time.Millisecond,
				Seq: seq, Started: time.Now(), Spool: func() (uint64, uint64) { return 3, 7 }})
			close(done)
		}()
		testenv.WaitFor(t, 2*time.Second, func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.heartbeats) >= 5 },
			func() string { return "too few heartbeats" })
		cancel()
		<-done
		all = append(all, rec.heartbeats...)
	}
	for i, hb := range all {
		if i > 0 && hb.Seq <= all[i-1].Seq {
			t.Fatalf("heartbeat %d has seq %d after %d", i, hb.Seq, all[i-1].Seq)
		}
		if hb.Node != "n1" || hb.SpoolDepth != 3 || hb.Dropped != 7 || hb.Health != telemetry.Starting {
			t.Fatalf("heartbeat %+v", hb)
		}
	}
}
