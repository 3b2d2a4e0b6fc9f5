package collectors

import (
	"context"
	"fmt"
	"path"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// Collector is one periodic sampler. Collect runs on the scheduler's
// goroutine for it, never concurrently with itself; it should honour ctx,
// which carries the collector's timeout.
type Collector interface {
	Name() string
	Collect(ctx context.Context, r *Report) error
}

// Watcher is a collector that also reports changes the moment they happen
// (netlink link events), between its scheduled runs.
type Watcher interface {
	Watch(ctx context.Context, emit func(telemetry.Event)) error
}

// Sink receives everything the collectors produce: the uplink. Its methods
// are called from several goroutines and must not block for long.
type Sink interface {
	Batch(telemetry.Batch)
	Event(telemetry.Event)
	Heartbeat(telemetry.Heartbeat)
}

// Report collects what one run of a collector produced.
type Report struct {
	Time   time.Time
	points []telemetry.Point
	events []telemetry.Event
}

// Add records a point; tags are key, value pairs.
func (r *Report) Add(name string, value float64, tags ...string) {
	p := telemetry.Point{Name: name, Value: value}
	if len(tags) > 0 {
		p.Tags = make(map[string]string, len(tags)/2)
		for i := 0; i+1 < len(tags); i += 2 {
			p.Tags[tags[i]] = tags[i+1]
		}
	}
	r.points = append(r.points, p)
}

// Event records a change of state; it is sent when the run ends.
func (r *Report) Event(sev telemetry.Severity, kind, subject, old, new, format string, args ...any) {
	r.events = append(r.events, telemetry.Event{Time: r.Time, Severity: sev, Kind: kind, Subject: subject,
		Old: old, New: new, Message: fmt.Sprintf(format, args...)})
}

// Points returns the points recorded so far.
func (r *Report) Points() []telemetry.Point { return r.points }

// Events returns the events recorded so far.
func (r *Report) Events() []telemetry.Event { return r.events }

// filter decides which points leave the node: a name must match an include
// glob (all, when there are none) and no exclude glob. Globs are path.Match
// patterns; '*' spans dots, since metric names have no '/'.
type filter struct {
	include, exclude []string
}

func (f filter) keep(name string) bool {
	if len(f.include) > 0 && !matchAny(f.include, name) {
		return false
	}
	return !matchAny(f.exclude, name)
}

func (f filter) apply(points []telemetry.Point) []telemetry.Point {
	if len(f.include) == 0 && len(f.exclude) == 0 {
		return points
	}
	kept := points[:0:0]
	for _, p := range points {
		if f.keep(p.Name) {
			kept = append(kept, p)
		}
	}
	return kept
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}
