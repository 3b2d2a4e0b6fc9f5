package tunnel

import (
	"context"
	"time"
)

// ager says how old the events a reading reports are.
type ager interface {
	// age returns how long ago the latest event of key (a tunnel or a peer)
	// happened; stamp is its wall-clock time, zero when there has been none
	// (the age is then 0). A floating stamp is only the oldest the source
	// still remembers: it may move later while the event stays the same.
	age(key string, stamp time.Time, floating bool) time.Duration
}

// wallClock ages the stamps of a single reading taken at that wall-clock time.
type wallClock time.Time

func (now wallClock) age(_ string, stamp time.Time, _ bool) time.Duration {
	if stamp.IsZero() {
		return 0
	}
	return max(time.Time(now).Sub(stamp), 0)
}

// Tracker reads tunnels again and again, as a collector does, and ages the
// wall-clock stamps they report (when an OpenVPN outage began, a WireGuard
// peer's last handshake) on the monotonic clock: a stamp is aged by the wall
// clock once, when first seen, and from then on by the monotonic time since.
// So a step of the wall clock, which NTP makes on a node without a real-time
// clock, changes no verdict, and a peer whose handshake stays old goes stale.
//
// The age of a stamp first seen is no less than zero and, when the tunnel or
// peer was read before with another stamp (or none), no more than the time
// since that read: the event happened in between.
//
// A Tracker is for one reader at a time, such as one collector's runs.
type Tracker struct {
	// clock reads the wall clock and the monotonic time since the Tracker
	// was made; a seam for tests, which cannot step this machine's clock.
	clock func() (wall time.Time, mono time.Duration)
	seen  map[string]sighting
}

// sighting is what a Tracker knows of one tunnel's or peer's latest event.
type sighting struct {
	stamp time.Time     // the event's wall-clock stamp; zero when none
	age   time.Duration // its age when first seen
	at    time.Duration // monotonic time when first seen
	last  time.Duration // monotonic time the tunnel or peer was last read
}

// forget is how long a tunnel or peer no longer read is remembered.
const forget = time.Hour

// NewTracker returns a Tracker that has seen nothing yet.
func NewTracker() *Tracker {
	start := time.Now()
	return &Tracker{seen: map[string]sighting{}, clock: func() (time.Time, time.Duration) {
		now := time.Now()
		return now, now.Sub(start)
	}}
}

// OpenVPN reads o as OpenVPN.Read does, judged with what the Tracker saw
// before. The error says why the management interface could not be read at
// all (the tunnel is then down with the same reason).
func (tr *Tracker) OpenVPN(ctx context.Context, o OpenVPN) (Tunnel, error) {
	tr.sweep()
	return o.read(ctx, tr)
}

// WireGuard reads w as WireGuard.Read does, judged with what the Tracker saw
// before.
func (tr *Tracker) WireGuard(w WireGuard) ([]Tunnel, error) {
	tr.sweep()
	return w.read(tr)
}

// sweep forgets tunnels and peers not read for a while.
func (tr *Tracker) sweep() {
	_, mono := tr.clock()
	for key, s := range tr.seen {
		if mono-s.last > forget {
			delete(tr.seen, key)
		}
	}
}

func (tr *Tracker) age(key string, stamp time.Time, floating bool) time.Duration {
	wall, mono := tr.clock()
	s, seen := tr.seen[key]
	switch {
	case stamp.IsZero():
		s = sighting{}
	case seen && !s.stamp.IsZero() && (floating || s.stamp.Equal(stamp)):
		// The same event: it ages on the monotonic clock.
	default:
		age := max(wall.Sub(stamp), 0)
		if seen {
			age = min(age, mono-s.last)
		}
		s = sighting{stamp: stamp, age: age, at: mono}
	}
	s.last = mono
	tr.seen[key] = s
	if stamp.IsZero() {
		return 0
	}
	return s.age + mono - s.at
}
