package agent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// problem is one part of the agent that does not work.
type problem struct {
	part   string // "statsd", "clock", "collector net", …
	reason string
	// unhealthy: without this part the agent cannot do its job (it is about
	// to lose data). Everything else only degrades it.
	unhealthy bool
}

// String is the problem on one line, as text: errors.Join puts a newline
// between the errors of one collector run, and an error may name a path in
// bytes that are not UTF-8 (a flag's state directory, a plugin directory).
func (p problem) String() string { return p.part + ": " + p.why() }

// why is the reason on one line, as text.
func (p problem) why() string { return text.EscapeString(strings.ReplaceAll(p.reason, "\n", "; ")) }

// health is the agent's verdict on itself, part by part. An optional part
// that is missing or failing makes the agent degraded with its reason; only
// what stops it doing its job makes it unhealthy. Parts report either by set
// (what the wiring learns once: a listener that cannot bind yet) or through
// probes, read whenever the verdict is asked for.
type health struct {
	sched *collectors.Scheduler
	log   *slog.Logger

	mu     sync.Mutex
	set    map[string]problem
	probes []func() []problem
	last   map[string]telemetry.Health // per part, for the events on changes
	snap   *snapshot                   // the latest check's problems
}

// snapshot is what a check found, and when. /healthz answers from it, so a
// probe stuck on failing flash never holds a supervisor's request.
type snapshot struct {
	at    time.Time
	probs []problem
}

func newHealth(sched *collectors.Scheduler, log *slog.Logger) *health {
	return &health{sched: sched, log: log, set: map[string]problem{}, last: map[string]telemetry.Health{}}
}

// degrade records that part does not work, and why; an empty reason says it
// works (again).
func (h *health) degrade(part, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if reason == "" {
		delete(h.set, part)
		return
	}
	h.set[part] = problem{part: part, reason: reason}
}

// probe adds a source of problems read at every check.
func (h *health) probe(f func() []problem) {
	h.mu.Lock()
	h.probes = append(h.probes, f)
	h.mu.Unlock()
}

// problems lists what does not work now, by part. Failing collectors are
// among them (the scheduler raises their events itself).
func (h *health) problems() []problem {
	h.mu.Lock()
	out := make([]problem, 0, len(h.set))
	for _, p := range h.set {
		out = append(out, p)
	}
	probes := slices.Clone(h.probes)
	h.mu.Unlock()
	for _, f := range probes {
		out = append(out, f()...)
	}
	for _, st := range h.sched.Status() {
		switch {
		case st.Stuck:
			out = append(out, problem{part: "collector " + st.Name, reason: "stuck past its " + st.Timeout.String() + " timeout"})
		case st.LastError != "":
			out = append(out, problem{part: "collector " + st.Name, reason: st.LastError})
		case st.WatchError != "":
			out = append(out, problem{part: "collector " + st.Name, reason: "watch: " + st.WatchError + "; restarting it"})
		}
	}
	slices.SortFunc(out, func(a, b problem) int { return strings.Compare(a.part, b.part) })
	return out
}

// verdict sums problems up in one word and the reasons, "; " between them.
func (h *health) verdict(probs []problem) (telemetry.Health, string) {
	if len(probs) == 0 {
		if st, why := h.sched.Health(); st == telemetry.Starting {
			return st, why
		}
		return telemetry.Healthy, ""
	}
	word := telemetry.Degraded
	reasons := make([]string, len(probs))
	for i, p := range probs {
		if p.unhealthy {
			word = telemetry.Unhealthy
		}
		reasons[i] = p.String()
	}
	return word, strings.Join(reasons, "; ")
}

// summary is the verdict now: what the heartbeat carries.
func (h *health) summary() (telemetry.Health, string) { return h.verdict(h.problems()) }

// latest returns the problems the latest check found, without probing; a
// check that has not finished for stale is itself a problem (something,
// most likely the flash, does not answer). Before the first check it probes.
func (h *health) latest(stale time.Duration) []problem {
	h.mu.Lock()
	snap := h.snap
	h.mu.Unlock()
	if snap == nil {
		return h.problems()
	}
	probs := snap.probs
	if age := time.Since(snap.at); age > stale {
		probs = append(slices.Clone(probs), problem{part: "health",
			reason: fmt.Sprintf("the last check finished %s ago; a probe does not answer (failing flash?)", age.Round(time.Second))})
	}
	return probs
}

// reported returns the parts whose degradation was announced, for the next
// image of the agent (carry), so that a reload does not announce them again.
func (h *health) reported() map[string]telemetry.Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.last)
}

// carry takes what the previous image had announced.
func (h *health) carry(last map[string]telemetry.Health) {
	h.mu.Lock()
	defer h.mu.Unlock()
	maps.Copy(h.last, last)
}

// watch raises an event, once, when a part (other than a collector, whose
// events come from the scheduler) becomes degraded or unhealthy or recovers,
// checking every interval until ctx ends.
func (h *health) watch(ctx context.Context, every time.Duration, event func(telemetry.Event)) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		h.check(event)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (h *health) check(event func(telemetry.Event)) {
	probs := h.problems()
	now := map[string]problem{}
	for _, p := range probs {
		if !strings.HasPrefix(p.part, "collector ") {
			now[p.part] = p
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snap = &snapshot{at: time.Now(), probs: probs}
	for part, p := range now {
		word := telemetry.Degraded
		if p.unhealthy {
			word = telemetry.Unhealthy
		}
		old, seen := h.last[part]
		if seen && old == word {
			continue
		}
		if !seen {
			old = telemetry.Healthy
		}
		h.last[part] = word
		sev := telemetry.Warning
		if p.unhealthy {
			sev = telemetry.Critical
		}
		h.log.Warn("agent "+string(word), "part", part, "reason", p.reason)
		event(telemetry.Event{Time: time.Now(), Severity: sev, Kind: "agent", Subject: part, Old: string(old), New: string(word),
			Message: fmt.Sprintf("%s %s: %s", part, word, p.why())})
	}
	for part, old := range h.last {
		if _, still := now[part]; still {
			continue
		}
		delete(h.last, part)
		h.log.Info("agent part recovered", "part", part)
		event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "agent", Subject: part, Old: string(old),
			New: string(telemetry.Healthy), Message: part + " works again"})
	}
}
