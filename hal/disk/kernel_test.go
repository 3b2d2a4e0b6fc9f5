package disk

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// TestLoopDeviceOnRealKernel makes a real block device (a loop device over a
// file whose name is not UTF-8), puts ext4 on it, mounts it where the path is
// not UTF-8 either, writes to it, then checks what the HAL reads from the
// machine's own /sys and /proc: the mount point and the image's path are
// reported escaped, the usage read through the real path.
func TestLoopDeviceOnRealKernel(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount"} {
		testenv.LookPath(t, tool)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk\xfe.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	dev := testenv.Run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() { testenv.Run(t, "losetup", "--detach", dev) })
	name := filepath.Base(dev)
	testenv.Run(t, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(dir, "mnt \xff\\x") // a space too: the kernel writes it \040 in mountinfo
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", dev, mnt)
	t.Cleanup(func() { testenv.Run(t, "umount", mnt) })

	fs := NewFS("/sys", "/proc")
	before, err := fs.DiskStats()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	f, err := os.Create(filepath.Join(mnt, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 8<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	after, err := fs.DiskStats()
	if err != nil {
		t.Fatal(err)
	}

	disks, err := fs.Disks(Options{IncludeLoop: true})
	if err != nil {
		t.Logf("Disks reported problems elsewhere on this machine: %v", err)
	}
	d := findDisk(disks, name)
	if d == nil {
		t.Fatalf("%s not in the inventory", name)
	}
	if d.Kind != "loop" || d.SizeBytes != 64<<20 || d.BackingFile != text.EscapeString(img) {
		t.Errorf("%s: %+v", name, d)
	}
	if len(d.Filesystems) != 1 {
		t.Fatalf("%s filesystems: %+v", name, d.Filesystems)
	}
	fsys := d.Filesystems[0]
	if fsys.MountPoint != text.EscapeString(mnt) || fsys.Type != "ext4" || fsys.UsageError != "" ||
		fsys.TotalBytes < 40<<20 || fsys.TotalBytes > 64<<20 || fsys.UsedBytes < 8<<20 || fsys.Inodes == 0 {
		t.Errorf("filesystem: %+v", fsys)
	}

	stat := func(all []IOStats) IOStats {
		for _, s := range all {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("%s not in /proc/diskstats", name)
		return IOStats{}
	}
	if b, a := stat(before), stat(after); a.WriteSectors-b.WriteSectors < (8<<20)/512 {
		t.Errorf("write sectors moved by %d, want at least %d", a.WriteSectors-b.WriteSectors, (8<<20)/512)
	}
	rates := DeviceRates(before, after, time.Since(start))
	if r, ok := rates[name]; !ok || r.WriteBytesPerSec <= 0 || r.WriteIOPS <= 0 {
		t.Errorf("rates for %s: %+v (present %v)", name, r, ok)
	}

	// A loop device has no SMART: smartctl says so and the verdict carries it.
	testenv.LookPath(t, "smartctl")
	h := SmartCtl{Timeout: 10 * time.Second}.Health(context.Background(), dev)
	if h.Status != SmartUnsupported || !strings.Contains(h.Reason, "Unable to detect device type") {
		t.Errorf("SMART of %s: %+v", dev, h)
	}
}

func TestSmartCtlUnavailable(t *testing.T) {
	h := SmartCtl{Path: filepath.Join(t.TempDir(), "no-smartctl")}.Health(context.Background(), "/dev/sda")
	if h.Status != SmartUnavailable || !strings.Contains(h.Reason, "run smartctl") {
		t.Errorf("missing executable: %+v", h)
	}

	// A smartctl that hangs (a dead drive can make it) is cut off at the timeout.
	hang := filepath.Join(t.TempDir(), "smartctl")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nsleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	h = SmartCtl{Path: hang, Timeout: 200 * time.Millisecond}.Health(context.Background(), "/dev/sda")
	if h.Status != SmartUnavailable || !strings.Contains(h.Reason, "timed out after 200ms") {
		t.Errorf("hung smartctl: %+v", h)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Health returned after %v, want soon after the 200ms timeout", took)
	}
}
