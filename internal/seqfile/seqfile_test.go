package seqfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// floor is a time floor as a node at 1970 has it: its build date.
func floor() time.Time { return time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC) }

func TestNeverBackwardsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	var last uint64
	writes := 0
	for run := 0; run < 5; run++ {
		c, err := Open(path, 100, floor)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 250; i++ {
			before, _ := os.ReadFile(path)
			n := c.Next()
			if n <= last {
				t.Fatalf("run %d: got %d after %d", run, n, last)
			}
			last = n
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				writes++
			}
		}
	}
	// 5 runs × 250 numbers in blocks of 100: the block reserved at open covers
	// the first 100, then 2 more writes per run; not one write per number.
	if writes != 10 {
		t.Errorf("file rewritten %d times during 1250 numbers, want 10", writes)
	}
}

// TestResumeAtReload: the image after a reload continues where the one
// before stopped, with no gap and never backwards, also reload after reload
// with few numbers taken in each; what that image did not reserve last, or
// a position handed over after a number was taken, is not taken.
func TestResumeAtReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	c, err := Open(path, 100, floor)
	if err != nil {
		t.Fatal(err)
	}
	last := c.Next()
	for reload := range 5 {
		for range 30 + reload*40 {
			last = c.Next()
		}
		next, limit := c.Reserved()
		c, err = Open(path, 100, floor) // the next image
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range [][2]uint64{{next, limit - 1}, {next, limit + 100}, {limit + 1, limit}} {
			if c.Resume(bad[0], bad[1]) {
				t.Fatalf("reload %d: Resume(%d, %d) taken; %d, %d was handed over", reload, bad[0], bad[1], next, limit)
			}
		}
		if !c.Resume(next, limit) {
			t.Fatalf("reload %d: Resume(%d, %d) refused", reload, next, limit)
		}
		if n := c.Next(); n != last+1 {
			t.Errorf("reload %d: %d after %d", reload, n, last)
		}
		last++
		if c.Resume(next, limit) {
			t.Error("Resume taken after a number was handed out")
		}
	}
	for range 300 { // past the blocks reserved at each Open
		if n := c.Next(); n <= last {
			t.Fatalf("%d after %d", n, last)
		} else {
			last = n
		}
	}
	c, _ = Open(path, 100, floor) // a restart, not a reload
	if n := c.Next(); n <= last {
		t.Errorf("after a restart: %d after %d", n, last)
	}
}

// TestCorruptFileResumesAboveTheFloor: a node at 1970 whose sequence file is
// corrupt resumes from its time floor, not from its clock (which would be
// below numbers already sent), and twice in a row still goes forward, also
// when the floor it had persisted lags by most of an hour.
func TestCorruptFileResumesAboveTheFloor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	corrupt := func() { os.WriteFile(path, []byte("garbage\x00"), 0o600) }
	corrupt()
	c, err := Open(path, 10, floor)
	if !errors.Is(err, ErrRecovered) {
		t.Fatalf("err = %v, want ErrRecovered", err)
	}
	first := c.Next()
	if min := uint64(floor().UnixMilli()); first < min {
		t.Fatalf("resumed at %d, below the floor %d", first, min)
	}
	var last uint64
	for range 5000 { // a busy hour
		last = c.Next()
	}
	corrupt()
	lagging := func() time.Time { return floor().Add(10 * time.Minute) }
	c, _ = Open(path, 10, lagging)
	if n := c.Next(); n <= last {
		t.Fatalf("second recovery resumed at %d, not above %d already sent", n, last)
	}
}

func mount(t *testing.T, args ...string) {
	t.Helper()
	testenv.Run(t, "mount", args...)
}

// TestFullFilesystem fills the partition holding the file: reservations go
// on by overwriting the file in place, and a reopen resumes above them.
func TestFullFilesystem(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	mount(t, "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir)
	t.Cleanup(func() { testenv.Run(t, "umount", "-l", dir) })
	path := filepath.Join(dir, "seq")
	c, err := Open(path, 10, floor)
	if err != nil {
		t.Fatal(err)
	}
	filler, _ := os.Create(filepath.Join(dir, "filler"))
	for _, err := filler.Write(make([]byte, 4096)); err == nil; _, err = filler.Write(make([]byte, 4096)) {
	}
	filler.Close()
	if err := os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o600); err == nil {
		t.Fatal("the filesystem is not full")
	}
	var last uint64
	for range 35 {
		last = c.Next()
	}
	if err := c.Fault(); err != nil {
		t.Fatalf("fault on a full filesystem: %v", err)
	}
	c, err = Open(path, 10, floor)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Next(); n <= last || n > last+10 {
		t.Fatalf("reopened at %d after %d: the in-place reservations were not persisted", n, last)
	}
}

// TestReadOnlyFilesystem: numbering goes on in memory with a fault, above
// anything the file knew, and is persisted again once the filesystem is
// writable.
func TestReadOnlyFilesystem(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "seq")
	c, _ := Open(path, 10, floor)
	for range 25 {
		c.Next()
	}
	mount(t, "--bind", dir, dir)
	t.Cleanup(func() { testenv.Run(t, "umount", "-l", dir) })
	mount(t, "-o", "remount,bind,ro", dir)

	c, err := Open(path, 10, floor)
	if !errors.Is(err, ErrRecovered) {
		t.Fatalf("err = %v, want ErrRecovered", err)
	}
	c.retry = 0
	first := c.Next()
	if first < uint64(floor().UnixMilli()) {
		t.Fatalf("on a read-only file numbering resumed at %d, not above the floor", first)
	}
	if c.Fault() == nil {
		t.Fatal("no fault while the file cannot be written")
	}
	mount(t, "-o", "remount,bind,rw", dir)
	for range 20 {
		c.Next()
	}
	if err := c.Fault(); err != nil {
		t.Fatalf("still failing after the remount: %v", err)
	}
	last := c.Next()
	c, _ = Open(path, 10, floor)
	if n := c.Next(); n <= last {
		t.Fatalf("reopened at %d after %d", n, last)
	}
}
