package agent

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// logSink shows telemetry on the console beside the uplink: events as an
// operator on the serial console wants to see them; batches and heartbeats
// at debug level; all counted for the stop message.
type logSink struct {
	log                                 *slog.Logger
	batches, points, events, heartbeats atomic.Uint64
}

func (s *logSink) Batch(b telemetry.Batch) {
	s.batches.Add(1)
	s.points.Add(uint64(len(b.Points)))
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("batch", "source", b.Source, "points", len(b.Points), "first", firstPoints(b.Points, 6))
	}
}

// firstPoints renders up to n points as name{tags}=value, for the debug log.
func firstPoints(points []telemetry.Point, n int) string {
	var b strings.Builder
	for i, p := range points[:min(n, len(points))] {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.Name)
		if len(p.Tags) > 0 {
			keys := slices.Sorted(maps.Keys(p.Tags))
			b.WriteByte('{')
			for j, k := range keys {
				if j > 0 {
					b.WriteByte(',')
				}
				b.WriteString(k + "=" + p.Tags[k])
			}
			b.WriteByte('}')
		}
		b.WriteString("=" + strconv.FormatFloat(p.Value, 'g', 6, 64))
	}
	if len(points) > n {
		b.WriteString(" …")
	}
	return b.String()
}

func (s *logSink) Event(e telemetry.Event) {
	s.events.Add(1)
	level := slog.LevelInfo
	switch e.Severity {
	case telemetry.Warning:
		level = slog.LevelWarn
	case telemetry.Critical:
		level = slog.LevelError
	}
	attrs := []any{"kind", e.Kind, "subject", e.Subject, "old", e.Old, "new", e.New}
	if e.Suppressed > 0 {
		attrs = append(attrs, "suppressed", e.Suppressed)
	}
	s.log.Log(context.Background(), level, e.Message, attrs...)
}

func (s *logSink) Heartbeat(h telemetry.Heartbeat) {
	s.heartbeats.Add(1)
	s.log.Debug("heartbeat", "seq", h.Seq, "health", h.Health, "why", h.Why)
}

// teeSink passes everything to each of its sinks.
type teeSink []collectors.Sink

func (t teeSink) Batch(b telemetry.Batch) {
	for _, s := range t {
		s.Batch(b)
	}
}

func (t teeSink) Event(e telemetry.Event) {
	for _, s := range t {
		s.Event(e)
	}
}

func (t teeSink) Heartbeat(h telemetry.Heartbeat) {
	for _, s := range t {
		s.Heartbeat(h)
	}
}
