package collectors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// Options configure a Scheduler.
type Options struct {
	Sink Sink
	// Include and Exclude are metric-name globs deciding what leaves the node.
	Include, Exclude []string
	// EventBurst events about one subject pass at once; beyond that one per
	// EventEvery. Zero means 5 and one minute.
	EventBurst int
	EventEvery time.Duration
	Log        *slog.Logger
}

// Status is what the scheduler knows about one collector.
type Status struct {
	Name         string        `json:"name"`
	Interval     time.Duration `json:"interval"`
	Timeout      time.Duration `json:"timeout"`
	Runs         uint64        `json:"runs"`
	Failures     uint64        `json:"failures"`
	Skipped      uint64        `json:"skipped"` // ticks that found the previous run still going
	LastStart    time.Time     `json:"last_start,omitzero"`
	LastDuration time.Duration `json:"last_duration"`
	LastSuccess  time.Time     `json:"last_success,omitzero"`
	LastError    string        `json:"last_error,omitempty"` // text, escaped (internal/text) where it names OS bytes
	Stuck        bool          `json:"stuck"`                // running past its timeout
	// WatchError says why the collector's watch (its events between runs)
	// is down and being restarted; empty while it watches.
	WatchError string `json:"watch_error,omitempty"`
}

// Scheduler runs each collector on its own interval, jittered, never
// overlapping itself; a slow or stuck collector delays nobody else.
type Scheduler struct {
	opts    Options
	filter  filter
	limiter *limiter
	log     *slog.Logger
	entries []*entry
}

type entry struct {
	c       Collector
	trigger chan struct{}
	log     *slog.Logger

	mu     sync.Mutex
	status Status // its Interval and Timeout are the schedule
}

// schedule returns the entry's interval and timeout.
func (e *entry) schedule() (interval, timeout time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status.Interval, e.status.Timeout
}

// New returns a scheduler with no collectors.
func New(opts Options) *Scheduler {
	if opts.EventBurst <= 0 {
		opts.EventBurst = 5
	}
	if opts.EventEvery <= 0 {
		opts.EventEvery = time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Scheduler{
		opts:    opts,
		filter:  filter{include: opts.Include, exclude: opts.Exclude},
		limiter: newLimiter(opts.EventBurst, opts.EventEvery),
		log:     opts.Log,
	}
}

// Add registers c to run every interval; a run taking longer than timeout
// counts as failed (zero: the interval). Add must be called before Run.
func (s *Scheduler) Add(c Collector, interval, timeout time.Duration) {
	if timeout <= 0 || timeout > interval {
		timeout = interval
	}
	s.entries = append(s.entries, &entry{
		c: c, trigger: make(chan struct{}, 1),
		log:    s.log.With("collector", c.Name()),
		status: Status{Name: c.Name(), Interval: interval, Timeout: timeout},
	})
}

// Run runs every collector until ctx is cancelled. Runs still going then
// get a short grace to notice the cancellation.
func (s *Scheduler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, e := range s.entries {
		wg.Go(func() { s.loop(ctx, e) })
		if w, ok := e.c.(Watcher); ok {
			wg.Go(func() { s.watch(ctx, e, w) })
		}
	}
	// Events held by the rate limiter go out as their subject may speak again.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case now := <-tick.C:
			for _, e := range s.limiter.due(now) {
				s.opts.Sink.Event(e)
			}
		}
	}
}

// watch keeps w watching until ctx ends: when the watch fails (its source
// is missing or broke) it starts again after 1 s, then twice as long each
// time up to 5 minutes (from 1 s again after a watch that held for a
// minute); meanwhile changes show at the next collection.
func (s *Scheduler) watch(ctx context.Context, e *entry, w Watcher) {
	wait := time.Second
	for {
		began := time.Now()
		err := w.Watch(ctx, s.Event)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > time.Minute {
			wait = time.Second
		}
		if err == nil {
			err = errors.New("stopped")
		}
		e.mu.Lock()
		e.status.WatchError = text.EscapeString(err.Error())
		e.mu.Unlock()
		e.log.Warn("watch failed; changes show at the next collection until it works", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Minute)
		e.mu.Lock()
		e.status.WatchError = "" // until the new watch fails too
		e.mu.Unlock()
	}
}

// CollectNow makes the named collectors (all, when none are named) run now,
// without moving their schedule. A collector already running is not started
// twice. Unknown names are an error naming them; the known ones still run.
func (s *Scheduler) CollectNow(names ...string) error {
	var unknown []string
	for _, n := range names {
		if !slices.ContainsFunc(s.entries, func(e *entry) bool { return e.c.Name() == n }) {
			unknown = append(unknown, n)
		}
	}
	for _, e := range s.entries {
		if len(names) == 0 || slices.Contains(names, e.c.Name()) {
			select {
			case e.trigger <- struct{}{}:
			default: // already triggered
			}
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("no collector named %v; have %v", unknown, s.names())
	}
	return nil
}

func (s *Scheduler) names() []string {
	var n []string
	for _, e := range s.entries {
		n = append(n, e.c.Name())
	}
	return n
}

// Status returns every collector's status, in the order they were added.
func (s *Scheduler) Status() []Status {
	out := make([]Status, 0, len(s.entries))
	for _, e := range s.entries {
		e.mu.Lock()
		out = append(out, e.status)
		e.mu.Unlock()
	}
	return out
}

// Health summarises the collectors in one word and, unless healthy, why.
func (s *Scheduler) Health() (telemetry.Health, string) {
	var failing []string
	anyOK := false
	for _, st := range s.Status() {
		switch {
		case st.Stuck:
			failing = append(failing, st.Name+" stuck")
		case st.LastError != "":
			failing = append(failing, st.Name+" failing")
		}
		anyOK = anyOK || !st.LastSuccess.IsZero()
	}
	switch {
	case len(failing) > 0:
		return telemetry.Degraded, fmt.Sprint(failing)
	case !anyOK:
		return telemetry.Starting, "no collection finished yet"
	}
	return telemetry.Healthy, ""
}

// LastSuccess is when any collector last finished without error.
func (s *Scheduler) LastSuccess() time.Time {
	var last time.Time
	for _, st := range s.Status() {
		if st.LastSuccess.After(last) {
			last = st.LastSuccess
		}
	}
	return last
}

// ReleaseHeld sends every event the rate limit holds back now, for a
// process about to be replaced by a new image of itself: its buckets go
// with it, so the final state of each subject must leave before.
func (s *Scheduler) ReleaseHeld() {
	for _, e := range s.limiter.release() {
		s.opts.Sink.Event(e)
	}
}

// EventsDropped counts events superseded while rate limited.
func (s *Scheduler) EventsDropped() uint64 { return s.limiter.dropped() }

// Publish filters a batch produced outside the scheduler (StatsD) and
// passes it on.
func (s *Scheduler) Publish(b telemetry.Batch) {
	b.Points = s.filter.apply(b.Points)
	if len(b.Points) > 0 {
		s.opts.Sink.Batch(b)
	}
}

// Event passes an event on at once, unless its subject is rate limited.
func (s *Scheduler) Event(e telemetry.Event) {
	if e, ok := s.limiter.offer(e, time.Now()); ok {
		s.opts.Sink.Event(e)
	}
}

type result struct {
	report *Report
	err    error
	took   time.Duration
}

// Failing lists the collectors whose last run failed, for the next image of
// the agent (CarryFailing), so that a reload does not announce again what
// the controller was told.
func (s *Scheduler) Failing() []string {
	var out []string
	for _, st := range s.Status() {
		if st.LastError != "" || st.Stuck {
			out = append(out, st.Name)
		}
	}
	return out
}

// CarryFailing marks the named collectors as failing, as the previous image
// left them: their first run raises an event only if it recovers. Call it
// before Run.
func (s *Scheduler) CarryFailing(names []string) {
	for _, e := range s.entries {
		if slices.Contains(names, e.c.Name()) {
			e.mu.Lock()
			e.status.LastError = "failing before the reload"
			e.mu.Unlock()
		}
	}
}

// SetInterval makes the named collector run every interval (its timeout
// too) from its next run on: what a SIGHUP changes in place. It reports
// whether there is such a collector.
func (s *Scheduler) SetInterval(name string, interval time.Duration) bool {
	for _, e := range s.entries {
		if e.c.Name() == name {
			e.mu.Lock()
			e.status.Interval, e.status.Timeout = interval, interval
			e.mu.Unlock()
			return true
		}
	}
	return false
}

// loop runs one collector: on its jittered tick and on CollectNow, never
// two runs at once.
func (s *Scheduler) loop(ctx context.Context, e *entry) {
	interval, timeout := e.schedule()
	jitter := interval / 20 // ±5 %: spreads a fleet's reports, keeps the rate
	timer := time.NewTimer(rand.N(jitter + 1))
	defer timer.Stop()
	var done chan result // non-nil while a run is in flight
	var deadline <-chan time.Time
	start := func() {
		if done != nil {
			e.mu.Lock()
			e.status.Skipped++
			e.mu.Unlock()
			return
		}
		done = make(chan result, 1) // buffered: a run that outlives the loop still ends
		deadline = time.After(timeout)
		now := time.Now()
		e.mu.Lock()
		e.status.LastStart = now
		e.mu.Unlock()
		runCtx, cancel := context.WithTimeout(ctx, timeout)
		go func(done chan<- result) {
			defer cancel()
			r := &Report{Time: now}
			err := e.c.Collect(runCtx, r)
			done <- result{report: r, err: err, took: time.Since(now)}
		}(done)
	}
	for {
		select {
		case <-ctx.Done():
			if done != nil {
				select {
				case <-done:
				case <-time.After(2 * time.Second):
					e.log.Warn("collector did not stop within 2s of shutdown")
				}
			}
			return
		case <-timer.C:
			interval, timeout = e.schedule()
			jitter = interval / 20
			timer.Reset(interval + rand.N(2*jitter+1) - jitter)
			start()
		case <-e.trigger:
			start()
		case <-deadline:
			deadline = nil
			s.finish(e, result{err: fmt.Errorf("timed out after %s", timeout), took: timeout}, true)
		case r := <-done:
			timedOut := deadline == nil
			done, deadline = nil, nil
			if timedOut { // already reported as failed; its data is stale
				e.mu.Lock()
				e.status.Stuck = false
				e.mu.Unlock()
				e.log.Info("collector finished late", "took", r.took)
				continue
			}
			s.finish(e, r, false)
		}
	}
}

// finish records a run's outcome and sends what it produced.
func (s *Scheduler) finish(e *entry, r result, stuck bool) {
	e.mu.Lock()
	wasFailing := e.status.LastError
	e.status.Runs++
	e.status.LastDuration = r.took
	e.status.Stuck = stuck
	if r.err != nil {
		e.status.Failures++
		e.status.LastError = text.EscapeString(r.err.Error()) // it names paths, links, devices
	} else {
		e.status.LastError = ""
		e.status.LastSuccess = time.Now()
	}
	nowFailing := e.status.LastError
	e.mu.Unlock()

	name := e.c.Name()
	switch {
	case wasFailing == "" && nowFailing != "":
		e.log.Warn("collector failing", "err", r.err)
		s.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Warning, Kind: "collector", Subject: name,
			Old: "ok", New: "failing", Message: fmt.Sprintf("collector %s failing: %s", name, nowFailing)})
	case wasFailing != "" && nowFailing == "":
		e.log.Info("collector recovered")
		s.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "collector", Subject: name,
			Old: "failing", New: "ok", Message: fmt.Sprintf("collector %s recovered", name)})
	}
	if r.report == nil {
		return
	}
	// A failed run may still have read most things: send what it has.
	if points := s.filter.apply(r.report.points); len(points) > 0 {
		s.opts.Sink.Batch(telemetry.Batch{Source: name, Time: r.report.Time, Points: points})
	}
	for _, ev := range r.report.events {
		s.Event(ev)
	}
}
