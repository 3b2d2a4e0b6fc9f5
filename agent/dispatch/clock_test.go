package dispatch

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// steppable is the node's time floor as the dispatcher sees it, moved by
// the test as a clock step (or NTP) would move it.
type steppable struct{ t atomic.Int64 }

func (s *steppable) now() time.Time       { return time.Unix(0, s.t.Load()) }
func (s *steppable) set(t time.Time)      { s.t.Store(t.UnixNano()) }
func (s *steppable) step(d time.Duration) { s.t.Add(int64(d)) }

// floorDate is the floor of a node whose clock reads 1970: its build date
// (or the last time it persisted).
var floorDate = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

// TestExpiryUsesTheTimeFloor: a request that expired before the floor is
// refused although the wall clock (1970) is far below its expiry; one that
// expires after the floor runs.
func TestExpiryUsesTheTimeFloor(t *testing.T) {
	dir := pluginDir(t)
	plugin(t, dir, "ok", "echo fine")
	clock := &steppable{}
	clock.set(floorDate)
	h := newHarnessAt(t, dir, t.TempDir(), clock.now)
	h.send(telemetry.Command{ID: "replayed", Name: "ok", IssuedAt: floorDate.Add(-48 * time.Hour), ExpiresAt: floorDate.Add(-47 * time.Hour)})
	h.send(telemetry.Command{ID: "fresh", Name: "ok", IssuedAt: floorDate, ExpiresAt: floorDate.Add(time.Minute)})
	if res := h.wait("replayed", 1); res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, "expired") {
		t.Fatalf("a request expired before the floor: %+v", res)
	}
	if res := h.wait("fresh", 1); res.Status != telemetry.StatusOK {
		t.Fatalf("a request valid at the floor: %+v", res)
	}
}

// TestCacheSurvivesClockSteps: results are kept until their request
// expires on the floor, whatever the files' times say (a step of the clock
// scrambles them), so a repeat inside the expiry is answered, never run.
func TestCacheSurvivesClockSteps(t *testing.T) {
	dir := pluginDir(t)
	count := filepath.Join(t.TempDir(), "runs")
	plugin(t, dir, "count", `echo run >> "$1"`)
	cache := t.TempDir()
	clock := &steppable{}
	clock.set(floorDate)
	h := newHarnessAt(t, dir, cache, clock.now)
	h.d.cache.size = 2
	long := telemetry.Command{Name: "count", Args: []string{count}, IssuedAt: floorDate, ExpiresAt: floorDate.Add(time.Hour)}
	for _, id := range []string{"a", "b"} {
		c := long
		c.ID = id
		h.send(c)
		h.wait(id, 1)
	}
	// The files now look 56 years old, as if written before NTP ran.
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		os.Chtimes(filepath.Join(cache, e.Name()), time.Unix(60, 0), time.Unix(60, 0))
	}
	short := long
	short.ID, short.ExpiresAt = "c", floorDate.Add(time.Minute)
	h.send(short)
	h.wait("c", 1)
	// Three entries, room for two: the oldest by order ("a") goes, not
	// "c", although by file time "c" is the newest and "a" is no older
	// than "b".
	h.send(withID(long, "b"))
	if res := h.wait("b", 2); !res.Cached {
		t.Fatalf("repeat of b: %+v", res)
	}
	h.send(withID(short, "c"))
	if res := h.wait("c", 2); !res.Cached {
		t.Fatalf("repeat of c: %+v", res)
	}
	// Two minutes later c has expired: its entry goes at the next store,
	// and a repeat is then refused as expired.
	clock.step(2 * time.Minute)
	h.send(withID(long, "d"))
	h.wait("d", 1)
	h.send(withID(short, "c"))
	if res := h.wait("c", 3); res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, "expired") {
		t.Fatalf("repeat of c after its expiry: %+v", res)
	}
	data, _ := os.ReadFile(count)
	if runs := strings.Count(string(data), "run"); runs != 4 {
		t.Fatalf("the plugin ran %d times for 4 ids", runs)
	}
}

func withID(c telemetry.Command, id string) telemetry.Command {
	c.ID = id
	return c
}

// TestReadOnlyStateRunsRequestsOnce: with the cache directory read-only,
// requests still run, a repeat is answered from memory, and Fault says
// why nothing is persisted.
func TestReadOnlyStateRunsRequestsOnce(t *testing.T) {
	testenv.RequireRoot(t)
	dir := pluginDir(t)
	count := filepath.Join(t.TempDir(), "runs")
	plugin(t, dir, "count", `echo run >> "$1"`)
	cache := t.TempDir()
	testenv.Run(t, "mount", "--bind", cache, cache)
	t.Cleanup(func() { testenv.Run(t, "umount", "-l", cache) })
	testenv.Run(t, "mount", "-o", "remount,bind,ro", cache)
	h := newHarness(t, dir, cache)
	c := telemetry.Command{ID: "x", Name: "count", Args: []string{count}}
	h.send(c)
	if res := h.wait("x", 1); res.Status != telemetry.StatusOK {
		t.Fatalf("on a read-only state directory: %+v", res)
	}
	h.send(c)
	if res := h.wait("x", 2); !res.Cached {
		t.Fatalf("repeat: %+v", res)
	}
	if h.d.Fault() == nil {
		t.Error("no fault while nothing can be persisted")
	}
	data, _ := os.ReadFile(count)
	if runs := strings.Count(string(data), "run"); runs != 1 {
		t.Fatalf("the plugin ran %d times for one id", runs)
	}
}
