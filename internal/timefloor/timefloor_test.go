package timefloor

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fakeClock is a wall clock that tests can step while the monotonic time
// since opening moves only when told: what a node without an RTC sees when
// NTP, or an operator, sets its clock.
type fakeClock struct {
	wall    time.Time
	elapsed time.Duration
}

func (c *fakeClock) read() (time.Time, time.Duration) { return c.wall, c.elapsed }

// advance lets d pass on both clocks.
func (c *fakeClock) advance(d time.Duration) { c.wall, c.elapsed = c.wall.Add(d), c.elapsed+d }

func openFake(t *testing.T, path string, build time.Time, c *fakeClock) *Floor {
	t.Helper()
	f := &Floor{path: path, clock: c.read}
	if err := f.load(build); err != nil {
		t.Fatal(err)
	}
	return f
}

var build = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

func TestBootAt1970UsesTheFloorUntilNTP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clock")
	c := &fakeClock{wall: time.Unix(5, 0)} // five seconds after power-on, no RTC
	f := openFake(t, path, build, c)
	if f.Synced() {
		t.Fatal("a clock at 1970 reads synced")
	}
	c.advance(90 * time.Second)
	if got, want := f.Now(), build.Add(90*time.Second); !got.Equal(want) {
		t.Fatalf("Now at 1970 = %v, want the floor plus the time running, %v", got, want)
	}
	f.Save(time.Hour)
	// NTP steps the clock to the real time, a day after the build.
	real := build.Add(24 * time.Hour)
	c.wall = real
	if !f.Synced() || !f.Now().Equal(real) {
		t.Fatalf("after NTP: synced %v, now %v; want true, %v", f.Synced(), f.Now(), real)
	}
	// The synced time is persisted once it has run steady for ten minutes,
	// and the next boot at 1970 starts from it, not from the build date.
	if wrote, _ := f.Save(time.Minute); wrote {
		t.Fatal("a wall clock persisted the moment it stepped")
	}
	c.advance(steadyFor)
	real = real.Add(steadyFor)
	if wrote, err := f.Save(time.Minute); err != nil || !wrote {
		t.Fatalf("Save after ten steady minutes: wrote %v, err %v", wrote, err)
	}
	c2 := &fakeClock{wall: time.Unix(3, 0)}
	f2 := openFake(t, path, build, c2)
	if got := f2.Now(); !got.Equal(real) {
		t.Fatalf("next boot at 1970: Now = %v, want the persisted %v", got, real)
	}
}

// TestClockStepsBothWays steps a synced clock 6 hours forward, then back:
// the forward step is believed (it is above the floor), the step back below
// what was already believed is not, and times never go back below the floor.
func TestClockStepsBothWays(t *testing.T) {
	c := &fakeClock{wall: build.Add(time.Hour)}
	f := openFake(t, filepath.Join(t.TempDir(), "clock"), build, c)
	if !f.Synced() {
		t.Fatal("a clock after the build date reads unsynced")
	}
	c.wall = c.wall.Add(6 * time.Hour)
	c.advance(time.Minute)
	if !f.Synced() || !f.Now().Equal(c.wall) {
		t.Fatalf("forward step: synced %v now %v, want the wall clock %v", f.Synced(), f.Now(), c.wall)
	}
	// Back 12 hours: 5 hours before the build date, below the floor.
	c.wall = c.wall.Add(-12 * time.Hour)
	c.advance(time.Minute)
	if f.Synced() {
		t.Fatal("a clock stepped below the floor reads synced")
	}
	if got, want := f.Now(), build.Add(2*time.Minute); !got.Equal(want) {
		t.Fatalf("after stepping below the floor: Now %v, want %v", got, want)
	}
}

// TestBadStepsAreNotPersisted: a wrong NTP answer corrected within minutes,
// and an RTC reading 2099, never become the floor; a steady wall clock that
// is persisted raises the running floor too, as the next start will have it.
func TestBadStepsAreNotPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clock")
	c := &fakeClock{wall: build.Add(time.Hour)}
	f := openFake(t, path, build, c)
	f.Save(time.Minute)
	c.wall = c.wall.Add(6 * time.Hour) // a bad answer
	for range 5 {
		c.advance(time.Minute)
		if wrote, _ := f.Save(time.Minute); wrote {
			t.Fatal("a clock stepped 6 hours ahead was persisted within 5 minutes")
		}
	}
	c.wall = c.wall.Add(-6 * time.Hour) // corrected
	c.advance(time.Minute)
	f.Save(time.Minute)

	c.wall = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC) // a dead RTC's battery
	for range 30 {
		c.advance(time.Minute)
		if wrote, _ := f.Save(time.Minute); wrote {
			t.Fatal("a clock reading 2099 was persisted")
		}
	}
	if saved, _ := read(path); saved.After(build.Add(2 * time.Hour)) {
		t.Fatalf("persisted %v", saved)
	}

	c.wall = build.Add(48 * time.Hour) // NTP, steady from now on
	for range 11 {
		c.advance(time.Minute)
		f.Save(time.Minute)
	}
	c.wall = build // an operator sets the date back by two days
	if f.Synced() {
		t.Fatal("a clock set below the persisted time reads synced in the running process")
	}
}

func TestSaveCadence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clock")
	c := &fakeClock{wall: time.Unix(0, 0)}
	f := openFake(t, path, build, c)
	if wrote, _ := f.Save(time.Hour); !wrote {
		t.Fatal("the first save did not write")
	}
	c.advance(59 * time.Minute)
	if wrote, _ := f.Save(time.Hour); wrote {
		t.Fatal("saved again before the cadence")
	}
	c.advance(2 * time.Minute)
	if wrote, _ := f.Save(time.Hour); !wrote {
		t.Fatal("did not save after the cadence")
	}
	data, _ := os.ReadFile(path)
	if want := build.Add(61 * time.Minute).Unix(); string(data) != strconv.FormatInt(want, 10)+"\n" {
		t.Fatalf("persisted %q, want %d: an unsynced node persists its estimate", data, want)
	}
}

func TestUnreadableFloorFallsBackToTheBuildDate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clock")
	os.WriteFile(path, []byte("\x00\x00garbage"), 0o640)
	f, err := Open(path, build)
	if err == nil {
		t.Fatal("a corrupt floor file gave no error")
	}
	if !f.Base().Equal(build) {
		t.Fatalf("floor %v, want the build date %v", f.Base(), build)
	}
}

// TestStampLeavesTimesFromElsewhere: a time decoded from a file has no
// monotonic reading to place it on the floor; it is not taken for the
// current clock (a cached result's start, sent again by a node at 1970).
func TestStampLeavesTimesFromElsewhere(t *testing.T) {
	f, _ := Open(filepath.Join(t.TempDir(), "clock"), time.Now().Add(24*time.Hour))
	stored := time.Now().Add(-time.Hour).Round(0)
	if got, unsynced := f.Stamp(stored); !got.Equal(stored) || unsynced {
		t.Fatalf("Stamp(stored) = %v, %v; want it unchanged", got, unsynced)
	}
	if _, unsynced := f.Stamp(time.Now()); !unsynced {
		t.Fatal("a clock below the floor reads synced")
	}
}

func TestRealClockIsSynced(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "clock"), time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if got, unsynced := f.Stamp(now); unsynced || !got.Equal(now) {
		t.Fatalf("Stamp(now) = %v, %v; want now, synced", got, unsynced)
	}
}
