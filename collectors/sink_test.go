package collectors

import (
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// recorder is a Sink that keeps everything, for tests.
type recorder struct {
	mu         sync.Mutex
	batches    []telemetry.Batch
	events     []telemetry.Event
	heartbeats []telemetry.Heartbeat
}

func (r *recorder) Batch(b telemetry.Batch) {
	r.mu.Lock()
	r.batches = append(r.batches, b)
	r.mu.Unlock()
}
func (r *recorder) Event(e telemetry.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}
func (r *recorder) Heartbeat(h telemetry.Heartbeat) {
	r.mu.Lock()
	r.heartbeats = append(r.heartbeats, h)
	r.mu.Unlock()
}

func (r *recorder) eventsOf(kind string) []telemetry.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []telemetry.Event
	for _, e := range r.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, e := range r.events {
		b.WriteString(string(e.Severity) + " " + e.Kind + " " + e.Subject + " " + e.Old + "→" + e.New + ": " + e.Message + "\n")
	}
	return b.String()
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
