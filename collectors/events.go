package collectors

import (
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// limiter rate-limits events per kind and subject with a token bucket: a
// burst passes at once (a link going down and coming back), a subject that
// keeps firing is held to one event per interval. Held events are counted;
// the latest one is kept and sent when a token frees up, so the controller
// always learns the final state, with how many were held back before it.
type limiter struct {
	burst float64
	every time.Duration

	mu         sync.Mutex
	buckets    map[string]*bucket
	suppressed uint64 // events superseded before they could be sent
}

type bucket struct {
	tokens  float64
	last    time.Time
	held    uint64           // events held since the last one sent
	pending *telemetry.Event // the latest held event
}

func newLimiter(burst int, every time.Duration) *limiter {
	return &limiter{burst: float64(burst), every: every, buckets: map[string]*bucket{}}
}

// offer returns e, with its Suppressed count, when it may be sent now.
func (l *limiter) offer(e telemetry.Event, now time.Time) (telemetry.Event, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := e.Kind + "\x00" + e.Subject
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	if b.pending != nil { // superseded by e either way: never sent
		l.suppressed++
	}
	if b.tokens >= 1 {
		b.tokens--
		e.Suppressed = b.held
		b.held, b.pending = 0, nil
		return e, true
	}
	b.held++
	b.pending = &e
	return telemetry.Event{}, false
}

// due returns the held events whose subject may speak again.
func (l *limiter) due(now time.Time) []telemetry.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []telemetry.Event
	for key, b := range l.buckets {
		l.refill(b, now)
		if b.pending != nil && b.tokens >= 1 {
			b.tokens--
			e := *b.pending
			e.Suppressed = b.held - 1 // the pending one itself is being sent
			b.held, b.pending = 0, nil
			out = append(out, e)
		}
		if b.pending == nil && b.tokens >= l.burst {
			delete(l.buckets, key) // quiet long enough: forget it
		}
	}
	return out
}

// release returns every held event, whatever the tokens say (the process
// is about to be replaced, and its buckets with it).
func (l *limiter) release() []telemetry.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []telemetry.Event
	for key, b := range l.buckets {
		if b.pending != nil {
			e := *b.pending
			e.Suppressed = b.held - 1
			out = append(out, e)
		}
		delete(l.buckets, key)
	}
	return out
}

func (l *limiter) refill(b *bucket, now time.Time) {
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(l.burst, b.tokens+float64(elapsed)/float64(l.every))
		b.last = now
	}
}

// dropped returns how many events were superseded by a later one about the
// same subject and so never sent.
func (l *limiter) dropped() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.suppressed
}
