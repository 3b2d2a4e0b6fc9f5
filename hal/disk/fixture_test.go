package disk

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/seed69aca190/edgeagent/hal/internal/fixture"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
)

// vmTree extracts testdata/vm.txtar (a copy of this project's CI machine, a
// virtio VM, with a partitioned loop device attached) and returns its root.
func vmTree(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile("testdata/vm.txtar")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := fixture.Extract(root, data); err != nil {
		t.Fatal(err)
	}
	return root
}

func findDisk(disks []Disk, name string) *Disk {
	for i := range disks {
		if disks[i].Name == name {
			return &disks[i]
		}
	}
	return nil
}

func TestDisksOnFixture(t *testing.T) {
	root := vmTree(t)
	fs := NewFS(filepath.Join(root, "sys"), filepath.Join(root, "proc"))

	disks, err := fs.Disks(Options{})
	var names []string
	for _, d := range disks {
		names = append(names, d.Name)
	}
	if strings.Join(names, ",") != "vda" {
		t.Fatalf("default options list %v; want only vda (loop and zram excluded)", names)
	}
	// The fixture's loop partition was mounted at /mnt/fixture-data when it was
	// captured; that path is not mounted here, so statfs fails for it only.
	if err != nil {
		t.Fatalf("Disks: %v", err)
	}
	vda := disks[0]
	want := Disk{Name: "vda", Dev: "254:0", Kind: "disk", Transport: "virtio", Vendor: "0x1af4", Serial: "overlayblk",
		SizeBytes: 536870912 * 512, LogicalSectorSize: 512, PhysicalSectorSize: 4096, Rotational: true}
	got := vda
	got.Filesystems = nil
	if !equalJSON(t, got, want) {
		t.Errorf("vda:\n got %+v\nwant %+v", got, want)
	}
	if len(vda.Filesystems) != 1 {
		t.Fatalf("vda filesystems: %+v", vda.Filesystems)
	}
	root0 := vda.Filesystems[0]
	if root0.MountPoint != "/" || root0.Type != "ext4" || root0.Device != "vda" || root0.TotalBytes == 0 || root0.Inodes == 0 {
		t.Errorf("vda's root filesystem: %+v", root0)
	}

	disks, err = fs.Disks(Options{IncludeLoop: true, IncludeRAM: true})
	if loop1 := findDisk(disks, "loop1"); loop1 != nil {
		t.Errorf("a detached loop device is listed: %+v", loop1)
	}
	if findDisk(disks, "zram0") == nil {
		t.Errorf("IncludeRAM does not list zram0")
	}
	loop0 := findDisk(disks, "loop0")
	if loop0 == nil {
		t.Fatal("loop0 missing with IncludeLoop")
	}
	if loop0.BackingFile != "/tmp/fx.img" || loop0.SizeBytes != 64<<20 || loop0.Kind != "loop" {
		t.Errorf("loop0: %+v", loop0)
	}
	wantParts := []Partition{
		{Name: "loop0p1", Dev: "259:0", Number: 1, StartSector: 2048, SizeBytes: 24 << 20},
		{Name: "loop0p2", Dev: "259:1", Number: 2, StartSector: 51200, SizeBytes: 77824 * 512},
	}
	if !equalJSON(t, loop0.Partitions, wantParts) {
		t.Errorf("loop0 partitions:\n got %+v\nwant %+v", loop0.Partitions, wantParts)
	}
	if len(loop0.Filesystems) != 1 || loop0.Filesystems[0].Device != "loop0p1" || loop0.Filesystems[0].MountPoint != "/mnt/fixture-data" {
		t.Fatalf("loop0 filesystems: %+v", loop0.Filesystems)
	}
	// The mount point of the captured machine does not exist here: its usage
	// cannot be read, which is said both in the filesystem and in the error.
	if _, statErr := os.Stat("/mnt/fixture-data"); statErr == nil {
		t.Fatal("/mnt/fixture-data exists on this machine; remove it, the test needs it absent")
	}
	if !strings.Contains(loop0.Filesystems[0].UsageError, "statfs /mnt/fixture-data") {
		t.Errorf("an unreadable filesystem has no usage error: %+v", loop0.Filesystems[0])
	}
	if err == nil || !strings.Contains(err.Error(), "disk loop0: statfs /mnt/fixture-data") {
		t.Errorf("the statfs failure is not in the error: %v", err)
	}
}

// A damaged attribute is named in the error and the rest is still read; an
// attribute that older kernels lack is simply absent.
func TestDisksPartialResults(t *testing.T) {
	root := vmTree(t)
	vdaDir := filepath.Join(root, "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda")
	if err := os.WriteFile(filepath.Join(vdaDir, "size"), []byte("lots\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(vdaDir, "queue/physical_block_size")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "proc/self/mountinfo")); err != nil {
		t.Fatal(err)
	}
	disks, err := NewFS(filepath.Join(root, "sys"), filepath.Join(root, "proc")).Disks(Options{})
	if err == nil {
		t.Fatal("no error for a damaged size attribute")
	}
	for _, want := range []string{"disk vda: " + filepath.Join(vdaDir, "size") + `: "lots" is not a number`, "read mounts:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "physical_block_size") {
		t.Errorf("a missing optional attribute is reported: %v", err)
	}
	if len(disks) != 1 || disks[0].Serial != "overlayblk" || disks[0].LogicalSectorSize != 512 || disks[0].PhysicalSectorSize != 0 {
		t.Errorf("partial result: %+v", disks)
	}

	if _, err := NewFS(filepath.Join(root, "nope"), root).Disks(Options{}); err == nil || !strings.Contains(err.Error(), "list block devices") {
		t.Errorf("missing sysfs: %v", err)
	}
}

func TestDiskStatsOnFixture(t *testing.T) {
	root := vmTree(t)
	stats, err := NewFS(filepath.Join(root, "sys"), filepath.Join(root, "proc")).DiskStats()
	if err != nil {
		t.Fatal(err)
	}
	var p1 *IOStats
	for i := range stats {
		if stats[i].Name == "loop0p1" {
			p1 = &stats[i]
		}
	}
	if p1 == nil || p1.Dev != "259:0" || p1.WriteSectors == 0 || !p1.HasDiscard || !p1.HasFlush {
		t.Errorf("loop0p1 stats: %+v", p1)
	}
}

// TestDiskTextOnFixture puts random bytes where the kernel and the drives
// put names (a block device's name and its line in /proc/diskstats, a dm
// name, a serial, a model) into the fixture tree: everything Disks and
// DiskStats return is text, the names escaped alike so they still pair up.
func TestDiskTextOnFixture(t *testing.T) {
	r := rand.New(rand.NewPCG(16, 1))
	root := vmTree(t)
	sys := filepath.Join(root, "sys")
	vda := filepath.Join(sys, "devices/pci0000:00/0000:00:02.0/virtio1/block/vda")
	diskstats, err := os.ReadFile(filepath.Join(root, "proc/diskstats"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(path, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for range 200 {
		name := "md" + wiretest.Junk(r, 1+r.IntN(8), "/\x00 \t\n\v\f\r")
		dmName, serial, model := wiretest.Junk(r, r.IntN(12), ""), wiretest.Junk(r, r.IntN(12), ""), wiretest.Junk(r, r.IntN(12), "")
		dir := filepath.Join(sys, "devices/virtual/block", name)
		write(filepath.Join(dir, "dev"), "9:127\n")
		write(filepath.Join(dir, "size"), "2048\n")
		write(filepath.Join(dir, "dm/name"), dmName+"\n")
		write(filepath.Join(vda, "serial"), serial)
		write(filepath.Join(vda, "device/model"), model+"\n")
		write(filepath.Join(root, "proc/diskstats"), string(diskstats)+
			fmt.Sprintf("   9     127 %s 1 0 8 0 2 0 16 0 0 1 1 0 0 0 0 0 0\n", name))
		link := filepath.Join(sys, "block", name)
		if err := os.Symlink("../devices/virtual/block/"+name, link); err != nil {
			t.Fatal(err)
		}

		fs := NewFS(sys, filepath.Join(root, "proc"))
		disks, _ := fs.Disks(Options{}) // the fixture's loop mount is not here: its statfs fails
		io, err := fs.DiskStats()
		if err != nil {
			t.Fatal(err)
		}
		if bad := wiretest.InvalidText(disks) + wiretest.InvalidText(io); bad != "" {
			t.Fatalf("not text: %s", bad)
		}
		md := findDisk(disks, text.EscapeString(name))
		if md == nil || md.DMName != text.EscapeString(strings.TrimSpace(dmName)) {
			t.Fatalf("%q: %+v", name, md)
		}
		if d := findDisk(disks, "vda"); d.Serial != text.EscapeString(strings.TrimSpace(serial)) ||
			d.Model != text.EscapeString(strings.TrimSpace(model)) {
			t.Fatalf("vda serial %q model %q, from %q %q", d.Serial, d.Model, serial, model)
		}
		if !slices.ContainsFunc(io, func(s IOStats) bool { return s.Name == md.Name && s.Dev == "9:127" }) {
			t.Fatalf("no I/O counters under %q", md.Name)
		}
		os.Remove(link)
		os.RemoveAll(dir)
	}
}
