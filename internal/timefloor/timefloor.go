// Package timefloor keeps a lower bound of the real time for a node that has
// no real-time clock. Such a node boots at 1970 and learns the time from NTP
// minutes later, or never; its wall clock can also step by hours either way.
//
// The floor starts at the larger of the build date and the latest time
// persisted in the state directory, and moves on with the monotonic clock
// while the process runs: the real time is never earlier than the floor plus
// the time this process has been running. A wall clock at or above that
// estimate is believed (it is synced); one below it is not, and the estimate
// stands in for it. The estimate is persisted periodically and when the clock
// first reads synced, so the next start begins from it.
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
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
)

// Floor is the node's time floor. It is safe for concurrent use.
type Floor struct {
	path   string
	base   time.Time // the floor when opened, without a monotonic reading
	opened time.Time // time.Now() when opened, with its monotonic reading
	// clock reads the wall clock and the monotonic time since opening; a
	// seam for tests, which cannot step this machine's clock.
	clock func() (wall time.Time, elapsed time.Duration)

	mu     sync.Mutex
	saved  time.Time // the value persisted last (or read at open)
	synced bool      // the wall clock read synced at the last Save
}

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
	f.base = build.Round(0)
	saved, err := read(f.path)
	if err == nil && saved.After(f.base) {
		f.base = saved
	}
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
	if est := f.base.Add(max(elapsed, 0)); wall.Round(0).Before(est) {
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

// Base returns the floor as it was when opened (for reports).
func (f *Floor) Base() time.Time { return f.base }

// Save persists the current floor (Now) when it moved on since the last
// save by at least every, or when the clock has become synced since. It
// reports whether it wrote.
func (f *Floor) Save(every time.Duration) (bool, error) {
	now, unsynced := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	newlySynced := !unsynced && !f.synced
	if !newlySynced && now.Sub(f.saved) < every {
		return false, nil
	}
	data := strconv.FormatInt(now.Unix(), 10) + "\n"
	if err := atomicfile.WriteFile(f.path, []byte(data), 0o640); err != nil {
		return false, err
	}
	f.saved, f.synced = now, !unsynced
	return true, nil
}
