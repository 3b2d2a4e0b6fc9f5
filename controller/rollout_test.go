package controller

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestRolloutStatuses feeds one node's statuses to a rollout in order, out
// of order and twice: the view never moves back, the end of the upgrade is
// one event, a status of another rollout is an event only when it ends one,
// and an unknown node is refused before a rollout is registered.
func TestRolloutStatuses(t *testing.T) {
	f := NewFleet(Options{})
	now := time.Unix(1763700000, 0)
	f.Handle("edge/n1/heartbeat", msg(t, "n1", 1, now, telemetry.KindHeartbeat, telemetry.Heartbeat{Node: "n1", Seq: 1}), now)
	if _, err := f.newRollout([]string{"n1", "n2"}, "", nil, now); !errors.Is(err, ErrUnknownNodes) || !strings.Contains(err.Error(), "n2") {
		t.Fatalf("unknown node: %v", err)
	}
	if len(f.Rollouts()) != 0 {
		t.Fatal("a rollout registered with an unknown node")
	}
	ro, err := f.newRollout(nil, "", nil, now) // --all
	if err != nil || len(ro.Nodes) != 1 || ro.Nodes[0].Node != "n1" || ro.Done() {
		t.Fatalf("rollout %+v, %v", ro, err)
	}
	status := func(seq uint64, id, phase string, pct int) {
		st := telemetry.UpdateStatus{ID: id, Phase: phase, Percent: pct, Version: "1.5.0", Slot: "b"}
		if err := f.Handle("edge/n1/update/status", msg(t, "n1", seq, now, telemetry.KindUpdateStatus, st), now); err != nil {
			t.Fatal(err)
		}
	}
	upgradeEvents := func() (n int) {
		events, _ := f.Events(0)
		for _, e := range events {
			if e.Kind == "upgrade" {
				n++
			}
		}
		return n
	}
	steps := []struct {
		seq    uint64
		id     string
		phase  string
		pct    int
		want   string // the node's phase after it
		wantPc int
		events int // upgrade events so far
	}{
		{10, ro.ID, telemetry.PhaseDownloading, 50, telemetry.PhaseDownloading, 50, 0},
		{9, ro.ID, telemetry.PhaseDownloading, 40, telemetry.PhaseDownloading, 50, 0}, // late: ignored
		{12, ro.ID, telemetry.PhaseCommitted, 0, telemetry.PhaseCommitted, 0, 1},
		{11, ro.ID, telemetry.PhaseChecking, 0, telemetry.PhaseCommitted, 0, 1},  // late: ignored
		{12, ro.ID, telemetry.PhaseCommitted, 0, telemetry.PhaseCommitted, 0, 1}, // redelivered
		{13, ro.ID, telemetry.PhaseCommitted, 0, telemetry.PhaseCommitted, 0, 1}, // said again: one event
		{14, "other", telemetry.PhaseDownloading, 10, telemetry.PhaseCommitted, 0, 1},
		{15, "other", telemetry.PhaseRolledBack, 0, telemetry.PhaseCommitted, 0, 2},
	}
	for _, s := range steps {
		status(s.seq, s.id, s.phase, s.pct)
		got, _, _ := f.Rollout(ro.ID)
		if n := got.Nodes[0]; n.Phase != s.want || n.Percent != s.wantPc || upgradeEvents() != s.events {
			t.Fatalf("after %+v: node %+v, %d upgrade events", s, n, upgradeEvents())
		}
	}
	if got, _, _ := f.Rollout(ro.ID); !got.Done() {
		t.Error("not done after the node committed")
	}
}

// TestRolloutArtifactServed stores an artifact and serves it whole and by
// range, and refuses what is not a stored hash.
func TestRolloutArtifactServed(t *testing.T) {
	a, err := NewArtifacts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("edgeagent"), 1000)
	sum, size, err := a.Put(bytes.NewReader(data), 1<<20)
	if err != nil || size != int64(len(data)) || !a.Has(sum) {
		t.Fatalf("put: %s %d %v", sum, size, err)
	}
	if _, _, err := a.Put(bytes.NewReader(data), 100); err == nil {
		t.Error("an artifact above the limit was stored")
	}
	mux := http.NewServeMux()
	mux.Handle("GET /artifacts/{sha256}", a)
	for _, c := range []struct {
		path, rng string
		code      int
		body      []byte
	}{
		{"/artifacts/" + sum, "", 200, data},
		{"/artifacts/" + sum, "bytes=100-199", 206, data[100:200]},
		{"/artifacts/" + strings.Repeat("0", 64), "", 404, nil},
		{"/artifacts/..%2fetc", "", 404, nil},
	} {
		r := httptest.NewRequest("GET", c.path, nil)
		if c.rng != "" {
			r.Header.Set("Range", c.rng)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		if w.Code != c.code || (c.body != nil && !bytes.Equal(w.Body.Bytes(), c.body)) {
			t.Errorf("GET %s %s: %d, %d bytes", c.path, c.rng, w.Code, w.Body.Len())
		}
	}
}
