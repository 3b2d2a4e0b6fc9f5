// Package timefloor keeps a lower bound of the real time for a node that has
// no real-time clock. Such a node boots at 1970 and learns the time from NTP
// minutes later, or never; its wall clock can also step by hours either way.
//
// The floor starts at the larger of the build date and the latest time
// persisted in the state directory, and moves on with the monotonic clock
// while the process runs: the real time is never earlier than the floor plus
// the time this process has been running. A wall clock at or above that
// estimate is believed (it is synced); one below it is not, and the estimate
// stands in for it. The floor is persisted periodically, so the next start
// begins from it: the estimate while the clock reads below it, and the wall
// clock only once that has run steady (no step) for ten minutes and reads no
// later than twenty years after the build, so that a bad NTP answer
// corrected a minute later, or an RTC reading 2099, cannot poison the floor.
// What is persisted also raises the floor of the running process, so that it
// behaves as the next start will. Deleting the file resets the floor to the
// build date.
//
// Intervals and timeouts never come from here: they use Go's monotonic clock.
// This is for what must be a date: message stamps and expiry checks.
package timefloor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
)

// Floor is the node's time floor. It is safe for concurrent use.
type Floor struct {
	path   string
	built  time.Time
	base   atomic.Int64 // the floor at opening (raised by Save), in Unix nanoseconds
	opened time.Time    // time.Now() when opened, with its monotonic reading
	// clock reads the wall clock and the monotonic time since opening; a
	// seam for tests, which cannot step this machine's clock.
	clock func() (wall time.Time, elapsed time.Duration)

	mu          sync.Mutex
	saved       time.Time     // the value persisted last (or read at open)
	offset      int64         // wall clock less elapsed time at the last Save, in ns
	steadySince time.Duration // elapsed time when the offset last moved (a step)
}

// steadyFor is how long the wall clock must run without a step before it is
// persisted; lifetime bounds how far after the build it may read.
const (
	steadyFor = 10 * time.Minute
	lifetime  = 20 * 365 * 24 * time.Hour
)

// Open returns the floor persisted at path, or build when that is later (or
// the file is missing or unreadable). The error, when not nil, says why the
// persisted floor could not be used; the Floor is usable all the same.
func Open(path string, build time.Time) (*Floor, error) {
	f := &Floor{path: path, opened: time.Now()}
	f.clock = func() (time.Time, time.Duration) {
		now := time.Now()
		return now, now.Sub(f.opened)
	}
	return f, f.load(build)
}

func (f *Floor) load(build time.Time) error {
	f.built = build.Round(0)
	base := f.built
	saved, err := read(f.path)
	if err == nil && saved.After(base) {
		base = saved
	}
	f.base.Store(base.UnixNano())
	f.saved = saved
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return err
}

func read(path string) (time.Time, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("time floor %s holds %.40q", path, data)
	}
	return time.Unix(sec, 0), nil
}

// Stamp returns t if the wall clock was synced at t, else the floor's
// estimate of t, and whether it was unsynced. The estimate needs t's
// monotonic reading (time.Now in this process gives one); a time without
// one (decoded from a file or the wire) cannot be placed and is returned
// as it is.
func (f *Floor) Stamp(t time.Time) (time.Time, bool) {
	if t == t.Round(0) {
		return t, false
	}
	return f.stamp(t, t.Sub(f.opened))
}

// stamp judges a wall-clock reading taken elapsed after opening: the floor
// then was base+elapsed.
func (f *Floor) stamp(wall time.Time, elapsed time.Duration) (time.Time, bool) {
	if est := f.Base().Add(max(elapsed, 0)); wall.Round(0).Before(est) {
		return est, true
	}
	return wall, false
}

func (f *Floor) now() (time.Time, bool) { return f.stamp(f.clock()) }

// Now is the current time as Stamp gives it: never below the floor.
func (f *Floor) Now() time.Time {
	t, _ := f.now()
	return t
}

// Synced reports whether the wall clock now reads at or above the floor.
func (f *Floor) Synced() bool {
	_, unsynced := f.now()
	return !unsynced
}

// Base returns the floor as it was when opened, or as Save raised it.
func (f *Floor) Base() time.Time { return time.Unix(0, f.base.Load()) }

// Save persists the floor when it moved on by at least every since the
// last save: the estimate while the clock reads below it, the wall clock
// once that has run steady for steadyFor (and reads within lifetime of the
// build). Call it regularly (every minute): it also watches for steps. It
// reports whether it wrote.
func (f *Floor) Save(every time.Duration) (bool, error) {
	wall, elapsed := f.clock()
	now, unsynced := f.stamp(wall, elapsed)
	f.mu.Lock()
	defer f.mu.Unlock()
	offset := wall.UnixNano() - int64(elapsed)
	if d := offset - f.offset; d > int64(2*time.Second) || d < -int64(2*time.Second) {
		f.offset, f.steadySince = offset, elapsed
	}
	trusted := unsynced || (elapsed-f.steadySince >= steadyFor && now.Before(f.built.Add(lifetime)))
	if !trusted || now.Sub(f.saved) < every {
		return false, nil
	}
	data := strconv.FormatInt(now.Unix(), 10) + "\n"
	if err := atomicfile.WriteFile(f.path, []byte(data), 0o640); err != nil {
		return false, err
	}
	f.saved = now
	if raised := now.Add(-elapsed); raised.After(f.Base()) {
		f.base.Store(raised.UnixNano())
	}
	return true, nil
}
