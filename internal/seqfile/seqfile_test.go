package seqfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestNeverBackwardsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	var last uint64
	writes := 0
	for run := 0; run < 5; run++ {
		c, err := Open(path, 100)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 250; i++ {
			before, _ := os.ReadFile(path)
			n, err := c.Next()
			if err != nil {
				t.Fatal(err)
			}
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

func TestCorruptFileResumesFromClock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	if err := os.WriteFile(path, []byte("garbage\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path, 10)
	if !errors.Is(err, ErrRecovered) {
		t.Fatalf("err = %v, want ErrRecovered", err)
	}
	n, err := c.Next()
	if err != nil {
		t.Fatal(err)
	}
	if floor := uint64(time.Now().Add(-time.Minute).UnixMilli()); n < floor {
		t.Errorf("resumed at %d, want at least the clock floor %d", n, floor)
	}
}
