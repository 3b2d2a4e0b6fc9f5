package disk

import (
	"encoding/json"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/seed69aca190/edgeagent/internal/wiretest"
)

func equalJSON(t *testing.T, got, want any) bool {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	return string(g) == string(w)
}

func TestParseDiskstats(t *testing.T) {
	// Lines as three kernel generations print them (4.x before 4.18: 14
	// fields; 4.18-5.4: 18 with discards; 5.5 on: 20 with flushes).
	data := "   8       0 sda 100 2 800 50 200 4 1600 70 0 90 120\n" +
		" 259       0 nvme0n1 10 0 80 5 20 0 160 7 1 9 12 3 0 24 1\n" +
		" 254       0 vda 97 0 1212 7 30 61 10876 7 0 12 17 2 0 49154 0 10 2\n" +
		"   8      16 sdb 1 2 x\n"
	stats, err := parseDiskstats([]byte(data))
	if err == nil || !strings.Contains(err.Error(), "line 4: 6 fields, want 14, 18 or 20") {
		t.Errorf("malformed line not reported: %v", err)
	}
	if len(stats) != 3 {
		t.Fatalf("got %d devices, want the 3 good lines", len(stats))
	}
	want := []IOStats{
		{Name: "sda", Dev: "8:0", ReadIOs: 100, ReadMerges: 2, ReadSectors: 800, ReadTicksMs: 50, WriteIOs: 200, WriteMerges: 4,
			WriteSectors: 1600, WriteTicksMs: 70, IOTicksMs: 90, QueueTimeMs: 120},
		{Name: "nvme0n1", Dev: "259:0", ReadIOs: 10, ReadSectors: 80, ReadTicksMs: 5, WriteIOs: 20, WriteSectors: 160, WriteTicksMs: 7,
			InFlight: 1, IOTicksMs: 9, QueueTimeMs: 12, DiscardIOs: 3, DiscardSectors: 24, DiscardTicksMs: 1, HasDiscard: true},
		{Name: "vda", Dev: "254:0", ReadIOs: 97, ReadSectors: 1212, ReadTicksMs: 7, WriteIOs: 30, WriteMerges: 61, WriteSectors: 10876,
			WriteTicksMs: 7, IOTicksMs: 12, QueueTimeMs: 17, DiscardIOs: 2, DiscardSectors: 49154, FlushIOs: 10, FlushTicksMs: 2,
			HasDiscard: true, HasFlush: true},
	}
	if !reflect.DeepEqual(stats, want) {
		t.Errorf("got  %+v\nwant %+v", stats, want)
	}
	if _, err := parseDiskstats([]byte("8 0 sda 1 2 3 4 5 6 7 8 9 10 -11\n")); err == nil || !strings.Contains(err.Error(), `field 14 "-11" is not a number`) {
		t.Errorf("negative counter: %v", err)
	}
}

func TestComputeRates(t *testing.T) {
	prev := IOStats{Name: "sda", Dev: "8:0", ReadIOs: 1000, ReadSectors: 8000, ReadTicksMs: 500, WriteIOs: 2000,
		WriteSectors: 40000, WriteTicksMs: 4000, IOTicksMs: 10000, QueueTimeMs: 20000}
	cur := prev
	cur.ReadIOs += 100      // 10/s
	cur.ReadSectors += 2000 // 100 KiB/s
	cur.ReadTicksMs += 200  // 2 ms each
	cur.WriteIOs += 50
	cur.WriteSectors += 1000
	cur.WriteTicksMs += 500 // 10 ms each
	cur.IOTicksMs += 2500   // 25 % of 10 s
	cur.QueueTimeMs += 15000

	r, ok := ComputeRates(prev, cur, 10*time.Second)
	want := Rates{ReadIOPS: 10, WriteIOPS: 5, ReadBytesPerSec: 102400, WriteBytesPerSec: 51200,
		UtilPercent: 25, ReadAwaitMs: 2, WriteAwaitMs: 10, QueueDepth: 1.5}
	if !ok || r != want {
		t.Errorf("rates:\n got %+v\nwant %+v", r, want)
	}

	// Utilization cannot exceed 100 % even when ticks and clock disagree.
	over := cur
	over.IOTicksMs = prev.IOTicksMs + 11000
	if r, _ := ComputeRates(prev, over, 10*time.Second); r.UtilPercent != 100 {
		t.Errorf("util = %v, want capped at 100", r.UtilPercent)
	}

	// A 32-bit kernel's counter wraps: 2^32-100 -> 50 is 150 I/Os.
	wrapPrev, wrapCur := prev, prev
	wrapPrev.ReadIOs, wrapCur.ReadIOs = math.MaxUint32-99, 50
	if r, ok := ComputeRates(wrapPrev, wrapCur, time.Second); !ok || r.ReadIOPS != 150 {
		t.Errorf("32-bit wrap: %+v, %v; want 150 IOPS", r, ok)
	}

	// A counter that drops from a small value was reset (device replaced).
	resetCur := prev
	resetCur.WriteIOs = 3
	if _, ok := ComputeRates(prev, resetCur, time.Second); ok {
		t.Error("a reset counter gave a rate")
	}
	if _, ok := ComputeRates(prev, cur, 0); ok {
		t.Error("zero elapsed time gave a rate")
	}
}

func TestDeviceRatesHotplug(t *testing.T) {
	a := IOStats{Name: "sda", Dev: "8:0", ReadIOs: 10}
	b := IOStats{Name: "sdb", Dev: "8:16", ReadIOs: 10}
	c := IOStats{Name: "sdc", Dev: "8:32", ReadIOs: 10}
	a2, c2 := a, c
	a2.ReadIOs = 20
	// sdb removed, sdc's name reused by another device (different dev), sdd new.
	c2.Dev = "8:48"
	d := IOStats{Name: "sdd", Dev: "8:64", ReadIOs: 5}
	rates := DeviceRates([]IOStats{a, b, c}, []IOStats{a2, c2, d}, time.Second)
	if len(rates) != 1 || rates["sda"].ReadIOPS != 10 {
		t.Errorf("rates = %+v; want only sda at 10 IOPS", rates)
	}
}

func TestClassify(t *testing.T) {
	for _, tt := range []struct{ name, path, kind, transport string }{
		{"vda", "/devices/pci0000:00/0000:00:02.0/virtio1/block/vda", "disk", "virtio"},
		{"sda", "/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", "disk", "sata"},
		{"sda", "/devices/pci0000:00/0000:00:01.0/0000:01:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sda", "disk", "sas"},
		{"sdb", "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb", "disk", "usb"},
		{"sdc", "/devices/pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0/block/sdc", "disk", "scsi"},
		{"nvme0n1", "/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1", "disk", "nvme"},
		{"mmcblk0", "/devices/platform/soc/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0", "disk", "mmc"},
		{"md0", "/devices/virtual/block/md0", "md", "md"},
		{"dm-0", "/devices/virtual/block/dm-0", "dm", "dm"},
		{"loop0", "/devices/virtual/block/loop0", "loop", "loop"},
		{"zram0", "/devices/virtual/block/zram0", "ram", "ram"},
		{"nbd0", "/devices/virtual/block/nbd0", "disk", "virtual"},
	} {
		if kind, transport := classify(tt.name, tt.path); kind != tt.kind || transport != tt.transport {
			t.Errorf("classify(%s, %s) = %s, %s; want %s, %s", tt.name, tt.path, kind, transport, tt.kind, tt.transport)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	data := "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n" +
		"42 27 259:0 / /mnt/my\\040data ro,relatime shared:1 master:2 - ext4 /dev/loop0p1 rw\n" +
		"43 27 0:50 /sub /srv/bind rw - tmpfs tmpfs rw\n" +
		"44 27 broken line\n"
	mounts, err := parseMountinfo([]byte(data))
	if err == nil || !strings.Contains(err.Error(), "malformed line(s) 4") {
		t.Errorf("malformed line not reported: %v", err)
	}
	want := []Mount{
		{Dev: "254:0", Root: "/", MountPoint: "/", FSType: "ext4", Source: "/dev/vda"},
		{Dev: "259:0", Root: "/", MountPoint: "/mnt/my data", FSType: "ext4", Source: "/dev/loop0p1", ReadOnly: true},
		{Dev: "0:50", Root: "/sub", MountPoint: "/srv/bind", FSType: "tmpfs", Source: "tmpfs"},
	}
	if !reflect.DeepEqual(mounts, want) {
		t.Errorf("got  %+v\nwant %+v", mounts, want)
	}
	if got := unescapeOctal(`a\134b\011c\`); got != "a\\b\tc\\" {
		t.Errorf("unescapeOctal = %q", got)
	}
}

func u64(v uint64) *uint64 { return &v }
func i64(v int64) *int64   { return &v }

func TestParseSmartctl(t *testing.T) {
	vda, err := os.ReadFile("testdata/smartctl/vda-virtio.json") // saved from this project's VM
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		json string
		want Health
	}{
		{"virtio disk without SMART", string(vda),
			Health{Status: SmartUnsupported, Reason: "/dev/vda: Unable to detect device type"}},
		// The ATA and NVMe cases hold the fields read here, with the values of
		// real drives' smartctl 7.1 output: a failing Hitachi HDS721050DLE630
		// (exit status 216) and a healthy INTEL SSDPEKNW010T8.
		{"failing ATA drive", `{"json_format_version":[1,0],"smartctl":{"exit_status":216},
			"device":{"protocol":"ATA"},"smart_status":{"passed":false},
			"ata_smart_attributes":{"revision":16,"table":[{"id":5,"name":"Reallocated_Sector_Ct","raw":{"value":1975,"string":"1975"}},
			{"id":194,"name":"Temperature_Celsius","raw":{"value":167504969753,"string":"25 (Min/Max 19/39)"}},
			{"id":197,"name":"Current_Pending_Sector","raw":{"value":8,"string":"8"}}]},
			"power_on_time":{"hours":65592},"temperature":{"current":25}}`,
			Health{Status: SmartFailing, Reason: "the drive's self-assessment is FAILED", Protocol: "ATA", TemperatureC: i64(25),
				PowerOnHours: u64(65592), ReallocatedSectors: u64(1975), PendingSectors: u64(8)}},
		{"healthy NVMe drive", `{"json_format_version":[1,0],"smartctl":{"exit_status":0},"device":{"type":"nvme","protocol":"NVMe"},
			"smart_status":{"passed":true,"nvme":{"value":0}},
			"nvme_smart_health_information_log":{"critical_warning":0,"temperature":36,"percentage_used":0,"power_on_hours":2401,"media_errors":0},
			"temperature":{"current":36},"power_on_time":{"hours":2401}}`,
			Health{Status: SmartPassed, Protocol: "NVMe", TemperatureC: i64(36), PowerOnHours: u64(2401),
				PercentageUsed: u64(0), MediaErrors: u64(0), CriticalWarning: u64(0)}},
		{"prefail attribute past threshold", `{"json_format_version":[1,0],"smartctl":{"exit_status":16},"smart_status":{"passed":true}}`,
			Health{Status: SmartFailing, Reason: "a pre-failure attribute is at or below its threshold"}},
		{"sleeping disk", `{"json_format_version":[1,0],"smartctl":{"messages":[{"string":"Device is in STANDBY mode, exit(2)","severity":"information"}],"exit_status":2}}`,
			Health{Status: SmartStandby, Reason: "Device is in STANDBY mode, exit(2)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSmartctl([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if !equalJSON(t, got, tt.want) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(tt.want)
				t.Errorf("got  %s\nwant %s", g, w)
			}
		})
	}
	for _, bad := range []string{"", "smartctl: command failed", `{"json_format_version":[2,0]}`} {
		if _, err := parseSmartctl([]byte(bad)); err == nil {
			t.Errorf("parseSmartctl(%q) succeeded", bad)
		}
	}
}

func FuzzParseDiskstats(f *testing.F) {
	f.Add([]byte(" 254       0 vda 97 0 1212 7 30 61 10876 7 0 12 17 2 0 49154 0 10 2\n"))
	f.Add([]byte("   9     127 md\xff\\x 1 0 8 0 2 0 16 0 0 1 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		stats, err := parseDiskstats(data)
		if err == nil && len(stats) > strings.Count(string(data), "\n")+1 {
			t.Fatalf("more devices than lines")
		}
		if bad := wiretest.InvalidText(stats); bad != "" {
			t.Fatalf("not text: %s", bad)
		}
	})
}

// FuzzParseMountinfo parses any mount table and reports its filesystems as
// a disk would (statfs of whatever mount points it names, read-only): what
// is reported is text, whatever the kernel's bytes.
func FuzzParseMountinfo(f *testing.F) {
	f.Add([]byte("42 27 259:0 / /mnt/my\\040data ro,relatime shared:1 - ext4 /dev/loop0p1 rw\n"))
	f.Add([]byte("43 27 259:1 / /mnt/\\377\xfe\\134 rw - ext\xff /dev/loop0p2 rw\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		mounts, _ := parseMountinfo(data)
		for _, m := range mounts {
			d := Disk{Name: "vda", Dev: m.Dev}
			d.attachFilesystems(mounts)
			if bad := wiretest.InvalidText(d.Filesystems); bad != "" {
				t.Fatalf("not text: %s", bad)
			}
		}
	})
}

// FuzzParseSmartctl: a verdict for every output that parses, and its
// strings are text (encoding/json turns invalid UTF-8 into U+FFFD).
func FuzzParseSmartctl(f *testing.F) {
	f.Add([]byte(`{"json_format_version":[1,0],"smartctl":{"exit_status":0},"smart_status":{"passed":true}}`))
	f.Add([]byte(`{"json_format_version":[1,0],"smartctl":{"messages":[{"string":"Read failed: ` + "\xff\xfe" +
		`"}],"exit_status":4},"device":{"protocol":"A` + "\xc0" + `"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseSmartctl(data)
		if err == nil && h.Status == "" {
			t.Fatal("a parsed output without a verdict")
		}
		if bad := wiretest.InvalidText(h); bad != "" || (err != nil && !utf8.ValidString(err.Error())) {
			t.Fatalf("not text: %s %q", bad, err)
		}
	})
}

// A bind mount of a directory shows the same filesystem again: it is reported
// once, at the mount of the filesystem's root.
func TestAttachFilesystemsSkipsBindMounts(t *testing.T) {
	d := Disk{Name: "vda", Dev: "254:0"}
	d.attachFilesystems([]Mount{
		{Dev: "254:0", Root: "/run/netns", MountPoint: "/run/netns", FSType: "ext4"},
		{Dev: "254:0", Root: "/", MountPoint: "/", FSType: "ext4"},
		{Dev: "0:22", Root: "/", MountPoint: "/sys", FSType: "sysfs"},
	})
	if len(d.Filesystems) != 1 || d.Filesystems[0].MountPoint != "/" {
		t.Errorf("filesystems: %+v", d.Filesystems)
	}
}
