//go:build linux

package spool

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// Flash that fails, tested on real filesystems: a full tmpfs, a read-only
// bind mount, an ext2 filesystem whose loop device is cut short. The tests
// mount, so they need root; without it (or without mount or losetup) they
// skip, and under CI=true they fail.

// mountFS runs "mount args... dir" and unmounts dir (lazily) when the test
// ends.
func mountFS(t *testing.T, dir string, args ...string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.LookPath(t, "mount")
	if out, err := exec.Command("mount", append(args, dir)...).CombinedOutput(); err != nil {
		testenv.Missing(t, "mount %v: %v: %s", args, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// bindMount makes dir a mount of its own, so that remount can turn it
// read-only and back without touching the filesystem it lives on.
func bindMount(t *testing.T, dir string) { mountFS(t, dir, "--bind", dir) }

func remount(t *testing.T, dir, mode string) {
	t.Helper()
	testenv.Run(t, "mount", "-o", "remount,bind,"+mode, dir)
}

// breakFlash makes s treat flash as failing, as after a failed write, until
// its RetryInterval has passed.
func breakFlash(s *Spool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setFault(errors.New("flash broken by the test"))
}

func TestMemoryBoundWhileFlashFails(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spill bool // the broker is away
		puts  uint64
		size  int // of each payload; the bound is 10000 bytes
		kept  []uint64
	}{
		{"broker away, within the bound", true, 8, 1000, seqRange(1, 8)},
		{"broker away, beyond the bound: oldest dropped", true, 25, 1000, seqRange(16, 25)},
		{"online, beyond the bound: cannot spill, oldest dropped", false, 25, 1000, seqRange(16, 25)},
		{"a record larger than the bound on its own", true, 1, 20000, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openWith(t, Options{Dir: dir, MemoryBytes: 10000, RetryInterval: time.Hour})
			defer s.Close()
			breakFlash(s)
			if tc.spill {
				if err := s.Spill(); err != nil {
					t.Fatal(err)
				}
			}
			put(t, s, 1, tc.puts, tc.size)
			st := s.Stats()
			if dropped := tc.puts - uint64(len(tc.kept)); st.Memory != len(tc.kept) || st.Disk != 0 ||
				st.Dropped != dropped || st.Fault == "" {
				t.Fatalf("stats %+v, want %d in memory, %d dropped, the fault", st, len(tc.kept), dropped)
			}
			if got := drain(t, s, tc.size); !slices.Equal(got, tc.kept) {
				t.Fatalf("drained %v, want %v", got, tc.kept)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("flash touched while faulted: %v", entries)
			}
		})
	}
}

// fill writes a file into dir until its filesystem is full, then frees one
// page of it: room for part of a frame, not a whole one.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for {
		if _, err = f.Write(page); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling %s: %v", dir, err)
	}
	fi, err := f.Stat()
	if err == nil {
		err = f.Truncate(fi.Size() - int64(len(page)))
	}
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// A full data partition: writes fail with ENOSPC, the spool goes on from
// memory within its bound, and back to flash once there is room and the retry
// is due.
func TestFullFlashHoldsRecordsInMemoryUntilThereIsRoom(t *testing.T) {
	dir := t.TempDir()
	mountFS(t, dir, "-t", "tmpfs", "-o", "size=256k", "tmpfs")
	filler := fill(t, dir)
	const retry = time.Second
	opts := Options{Dir: dir, MemoryBytes: 64 << 10, RetryInterval: retry}
	s := openWith(t, opts)
	if err := s.Spill(); err != nil {
		t.Fatal(err)
	}
	put(t, s, 1, 20, 10000) // six fit the bound
	st := s.Stats()
	if !strings.Contains(st.Fault, syscall.ENOSPC.Error()) || st.Memory != 6 || st.Disk != 0 || st.Depth() != 6 ||
		st.Dropped != 14 {
		t.Fatalf("on full flash: %+v, want 6 in memory, 14 dropped, the fault ENOSPC", st)
	}
	// The first frame was written in part before ENOSPC; it was cut off.
	for _, seg := range segments(t, dir) {
		if data, err := os.ReadFile(seg); err != nil || len(data) != 0 {
			t.Errorf("segment %s after a failed write: %d bytes (%v), want none", seg, len(data), err)
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	put(t, s, 21, 21, 10000)
	if st := s.Stats(); st.Fault == "" || st.Disk != 0 || st.Memory != 6 || st.Dropped != 15 {
		t.Fatalf("flash tried again before RetryInterval: %+v", st)
	}
	time.Sleep(retry)
	put(t, s, 22, 22, 10000)
	if st := s.Stats(); st.Fault != "" || st.Disk != 7 || st.Memory != 0 || st.Dropped != 15 {
		t.Fatalf("after the retry with room again: %+v, want 7 on flash, no fault", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openWith(t, opts)
	defer s.Close()
	if st := s.Stats(); st.Disk != 7 || st.Dropped != 15 {
		t.Fatalf("after reopen: %+v, want 7 on flash and the 15 dropped (persisted)", st)
	}
	if got := drain(t, s, 10000); !slices.Equal(got, seqRange(16, 22)) {
		t.Fatalf("drained %v", got)
	}
}

// A data partition remounted read-only, as the kernel does with a failing SD
// card, holding segments of an earlier run and one that cannot be read.
func TestReadOnlyFlashDeliversTheBacklogAndResumes(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	s.Spill()
	put(t, s, 1, 10, 100)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Numbered after the good segment: it cannot be set aside on read-only
	// flash, and its number must not be taken when flash is writable again.
	unreadable := filepath.Join(dir, fmt.Sprintf("%020d.seg", 2))
	if err := os.Mkdir(unreadable, 0o750); err != nil {
		t.Fatal(err)
	}
	bindMount(t, dir)
	remount(t, dir, "ro")

	const retry = time.Second
	s = openWith(t, Options{Dir: dir, RetryInterval: retry})
	st := s.Stats()
	if st.Disk != 10 || st.Quarantined != 1 || !strings.Contains(st.Fault, syscall.EROFS.Error()) {
		t.Fatalf("open on read-only flash: %+v, want 10 on flash, 1 quarantined, the fault EROFS", st)
	}
	if fi, err := os.Stat(unreadable); err != nil || !fi.IsDir() {
		t.Fatalf("the unreadable segment should be left in place: %v", err)
	}
	if err := s.Spill(); err != nil {
		t.Fatal(err)
	}
	put(t, s, 11, 13, 100)
	if st := s.Stats(); st.Memory != 3 || st.Disk != 10 {
		t.Fatalf("new records on read-only flash: %+v, want 3 in memory", st)
	}
	got := drain(t, s, 100)
	slices.Sort(got)
	if !slices.Equal(got, seqRange(1, 13)) {
		t.Fatalf("drained %v", got)
	}
	// The acknowledged segment cannot be removed, but what it holds is not
	// handed out again.
	if seq, _, ok, err := s.Next(); ok || err != nil {
		t.Fatalf("after the drain Next gave %d, %v", seq, err)
	}
	put(t, s, 14, 15, 100)

	remount(t, dir, "rw")
	time.Sleep(retry)
	put(t, s, 16, 16, 100)
	if st := s.Stats(); st.Fault != "" || st.Disk != 3 || st.Memory != 0 {
		t.Fatalf("after the retry on writable flash: %+v, want 3 on flash, no fault", st)
	}
	// The drained segment is gone now; the new one took number 3.
	want := []string{unreadable, filepath.Join(dir, fmt.Sprintf("%020d.seg", 3))}
	if segs := segments(t, dir); !slices.Equal(segs, want) {
		t.Fatalf("segments %v, want %v", segs, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, 0)
	if st := s.Stats(); st.Quarantined != 1 {
		t.Errorf("reopen: %+v, want the unreadable segment set aside", st)
	}
	if _, err := os.Stat(unreadable + ".unreadable"); err != nil {
		t.Errorf("set aside on writable flash: %v", err)
	}
	if got := drain(t, s, 100); !slices.Equal(got, seqRange(14, 16)) {
		t.Fatalf("drained after reopen %v, want 14..16 (1..13 were acknowledged and their segment removed)", got)
	}
	// After a restart with only the set-aside file left, its number still is
	// not used again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, 0)
	defer s.Close()
	s.Spill()
	put(t, s, 17, 17, 100)
	if segs := segments(t, dir); !slices.Equal(segs, want[1:]) {
		t.Fatalf("segments %v, want %v", segs, want[1:])
	}
}

func TestCloseOnReadOnlyFlashIsPromptAndKeepsTheBacklog(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	s.Spill()
	put(t, s, 1, 10, 100)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	bindMount(t, dir)
	remount(t, dir, "ro")

	s = openWith(t, Options{Dir: dir, RetryInterval: time.Hour})
	s.Spill()
	put(t, s, 11, 12, 100)
	start := time.Now()
	err := s.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %v", took)
	}
	if err == nil || !errors.Is(err, syscall.EROFS) || !strings.Contains(err.Error(), "2 records") {
		t.Fatalf("Close on read-only flash: %v, want the 2 records lost and EROFS", err)
	}
	if st := s.Stats(); st.Memory != 0 || st.Disk != 10 || st.Dropped != 2 {
		t.Errorf("after Close: %+v, want the 2 lost counted as dropped, the 10 on flash waiting", st)
	}

	remount(t, dir, "rw")
	s = open(t, dir, 0)
	defer s.Close()
	if got := drain(t, s, 100); !slices.Equal(got, seqRange(1, 10)) {
		t.Fatalf("drained %v, want the backlog on flash intact", got)
	}
}

// A segment whose reads fail is set aside; the others are delivered.
func TestUnreadableSegmentIsQuarantined(t *testing.T) {
	src := t.TempDir()
	s := open(t, src, 512<<10) // segments of 64 KiB, 7 records each
	s.Spill()
	put(t, s, 1, 21, 10<<10)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segments(t, src)
	if len(segs) != 3 {
		t.Fatalf("want 3 segments, got %v", segs)
	}
	data, err := os.ReadFile(segs[1])
	if err != nil {
		t.Fatal(err)
	}
	frames, _, _ := scanFrames(data)
	lost := map[uint64]bool{}
	for _, fr := range frames {
		lost[fr.seq] = true
	}
	want := slices.DeleteFunc(seqRange(1, 21), func(seq uint64) bool { return lost[seq] })

	for _, tc := range []struct {
		name  string
		errno syscall.Errno
		place func(t *testing.T, segs []string) string // a directory where segs[1] fails to read
	}{
		{"EISDIR from a directory in its place", syscall.EISDIR, directoryInPlace},
		{"EIO from blocks beyond the end of a loop device", syscall.EIO, beyondLoopEnd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.place(t, segs)
			bad := filepath.Join(dir, filepath.Base(segs[1]))
			if _, err := os.ReadFile(bad); !errors.Is(err, tc.errno) {
				t.Fatalf("reading %s: %v, want %v", bad, err, tc.errno)
			}
			s := open(t, dir, 512<<10)
			defer s.Close()
			if st := s.Stats(); st.Quarantined != 1 || st.Disk != len(want) || st.Fault != "" {
				t.Fatalf("stats %+v, want 1 quarantined, %d on flash, no fault", st, len(want))
			}
			if _, err := os.Lstat(bad + ".unreadable"); err != nil {
				t.Errorf("set aside: %v", err)
			}
			if got := drain(t, s, 10<<10); !slices.Equal(got, want) {
				t.Fatalf("drained %v\nwant %v", got, want)
			}
		})
	}
}

// directoryInPlace copies the first and last segment into a new directory
// and makes a directory of the middle one's name: reading it fails with
// EISDIR. Open treats every read error alike, so this is the path EIO takes.
func directoryInPlace(t *testing.T, segs []string) string {
	dir := t.TempDir()
	copySynced(t, dir, segs[0], segs[2])
	if err := os.Mkdir(filepath.Join(dir, filepath.Base(segs[1])), 0o750); err != nil {
		t.Fatal(err)
	}
	return dir
}

// beyondLoopEnd gives a real EIO, as failing flash does, without
// device-mapper (this host kernel has none, so no dm-error): an ext2
// filesystem on an 8 MiB loop device receives the first and last segment,
// 4 MiB of padding, then the middle segment, which thus lies beyond 4 MiB;
// its pages are dropped from the cache and the device is cut to 4 MiB under
// the mounted filesystem. Reading it then fails in the block layer ("attempt
// to access beyond end of device"), the others read normally.
func beyondLoopEnd(t *testing.T, segs []string) string {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "losetup")
	testenv.LookPath(t, "mkfs.ext2")
	img := filepath.Join(t.TempDir(), "flash.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mkfs.ext2", "-q", "-F", img)
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		testenv.Missing(t, "a loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	dir := t.TempDir()
	mountFS(t, dir, dev)

	copySynced(t, dir, segs[0], segs[2])
	pad := filepath.Join(t.TempDir(), "pad")
	if err := os.WriteFile(pad, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	copySynced(t, dir, pad, segs[1])
	f, err := os.Open(filepath.Join(dir, filepath.Base(segs[1])))
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 4<<20); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "losetup", "--set-capacity", dev)
	return dir
}

// copySynced copies files into dir in order, each synced before the next, so
// that the filesystem allocates their blocks in that order.
func copySynced(t *testing.T, dir string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, filepath.Base(p)))
		if err == nil {
			_, err = f.Write(data)
		}
		if err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestDirectoryThatCannotBeCreated: a spool whose directory cannot be made
// (its parent is on a read-only partition, as on a first boot with the data
// partition remounted read-only) opens in memory and makes the directory
// once it can.
func TestDirectoryThatCannotBeCreated(t *testing.T) {
	testenv.RequireRoot(t)
	parent := t.TempDir()
	testenv.Run(t, "mount", "--bind", parent, parent)
	t.Cleanup(func() { testenv.Run(t, "umount", "-l", parent) })
	testenv.Run(t, "mount", "-o", "remount,bind,ro", parent)
	dir := filepath.Join(parent, "spool")
	s := openWith(t, Options{Dir: dir, RetryInterval: time.Millisecond})
	defer s.Close()
	if f := s.Stats().Fault; !strings.Contains(f, "read-only file system") {
		t.Fatalf("fault %q, want the mkdir's error", f)
	}
	if err := s.Put(1, Record{Topic: "t", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", "-o", "remount,bind,rw", parent)
	time.Sleep(5 * time.Millisecond)
	s.Spill()
	if f := s.Stats().Fault; f != "" {
		t.Fatalf("still faulted after the remount: %s", f)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("directory not made: %v", err)
	}
}
