package agent

import (
	"io"
	"log/slog"
	"testing"

	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/telemetry"
)

func TestHealthEventsOncePerChange(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := newHealth(collectors.New(collectors.Options{Log: quiet}), quiet)
	var events []telemetry.Event
	record := func(e telemetry.Event) { events = append(events, e) }
	unhealthy := false
	h.probe(func() []problem {
		if unhealthy {
			return []problem{{part: "uplink", reason: "disconnected and the spool is 95% full", unhealthy: true}}
		}
		return nil
	})

	if word, _ := h.summary(); word != telemetry.Starting {
		t.Fatalf("nothing wrong and nothing collected: %s, want starting", word)
	}
	h.degrade("statsd", "listen udp 127.0.0.1:8125: address already in use; trying again")
	h.check(record)
	h.degrade("statsd", "listen udp 127.0.0.1:8125: address already in use; trying again (2)")
	h.check(record)
	h.check(record)
	if len(events) != 1 || events[0].Kind != "agent" || events[0].Subject != "statsd" || events[0].New != "degraded" {
		t.Fatalf("events after a part degraded and stayed so: %+v", events)
	}
	if word, why := h.summary(); word != telemetry.Degraded || why != "statsd: listen udp 127.0.0.1:8125: address already in use; trying again (2)" {
		t.Fatalf("summary %s %q", word, why)
	}

	unhealthy = true
	h.check(record)
	if word, _ := h.summary(); word != telemetry.Unhealthy || len(events) != 2 || events[1].Severity != telemetry.Critical {
		t.Fatalf("an unhealthy part: %s, events %+v", word, events)
	}

	h.degrade("statsd", "")
	unhealthy = false
	h.check(record)
	if len(events) != 4 {
		t.Fatalf("want a recovery event per part, got %+v", events)
	}
	for _, e := range events[2:] {
		if e.New != "ok" || e.Severity != telemetry.Info {
			t.Errorf("recovery event %+v", e)
		}
	}
}
