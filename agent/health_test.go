package agent

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
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

// TestHealthzAnswersFromTheLatestCheck: /healthz reads what the latest
// check found, so a probe stuck on failing flash does not hold it; a check
// that has not finished for long is itself reported.
func TestHealthzAnswersFromTheLatestCheck(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := newHealth(collectors.New(collectors.Options{Log: quiet}), quiet)
	h.degrade("statsd", "address already in use")
	h.check(func(telemetry.Event) {})
	stuck := make(chan struct{})
	defer close(stuck)
	h.probe(func() []problem { <-stuck; return nil }) // the flash does not answer
	if got := h.latest(time.Minute); len(got) != 1 || got[0].part != "statsd" {
		t.Fatalf("latest = %v, want the check's statsd problem", got)
	}
	h.mu.Lock()
	h.snap.at = time.Now().Add(-time.Minute)
	h.mu.Unlock()
	got := h.latest(15 * time.Second)
	if len(got) != 2 || got[1].part != "health" || !strings.Contains(got[1].reason, "does not answer") {
		t.Fatalf("latest of an old check = %v, want the stuck check reported", got)
	}
}

// TestHealthWhyIsText gives the agent's parts reasons in random bytes (an
// error naming a path as a flag gave it): the heartbeat's why and the
// events about the parts are text when they reach the uplink, and the
// controller takes them.
func TestHealthWhyIsText(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := rand.New(rand.NewPCG(5, 9))
	for round := range 100 {
		h := newHealth(collectors.New(collectors.Options{Log: quiet}), quiet)
		path := wiretest.Junk(r, r.IntN(20), "")
		h.degrade("state", "open "+path+": no such file or directory")
		h.probe(func() []problem {
			return []problem{{part: "uplink", reason: path + "\n" + path, unhealthy: round%2 == 0}}
		})
		var events []telemetry.Event
		h.check(func(e telemetry.Event) { events = append(events, e) })
		health, why := h.summary()
		escaped := wiretest.Send(t, telemetry.KindHeartbeat, telemetry.Heartbeat{Node: "n", Health: health, Why: why})
		for _, e := range events {
			escaped += wiretest.Send(t, telemetry.KindEvent, e)
		}
		if escaped > 0 || len(events) != 2 {
			t.Fatalf("%d events, %d strings escaped by the encoder: %s%s", len(events), escaped,
				wiretest.InvalidText(why), wiretest.InvalidText(events))
		}
	}
}
