package hal

import (
	"context"
	"testing"

	"github.com/seed69aca190/edgeagent/hal/disk"
)

// BenchmarkRead measures one full HAL reading on this machine: all disks with
// their partitions and filesystems, /proc/diskstats, every link with addresses
// and counters, and all tunnels. SMART is left out: it runs smartctl, hourly.
//
//	go test ./hal -run '^$' -bench Read -benchmem
func BenchmarkRead(b *testing.B) {
	opts := Options{Sysfs: "/sys", Procfs: "/proc"}
	inv := Read(context.Background(), opts)
	if len(inv.Errors) > 0 {
		b.Fatalf("inventory errors: %v", inv.Errors)
	}
	b.ReportMetric(float64(len(inv.Disks)), "disks")
	b.ReportMetric(float64(len(inv.NICs)), "links")
	b.ResetTimer()
	for b.Loop() {
		Read(context.Background(), opts)
	}
}

// BenchmarkDisks measures the disk inventory alone on the machine.
func BenchmarkDisks(b *testing.B) {
	fs := disk.NewFS("/sys", "/proc")
	for b.Loop() {
		if _, err := fs.Disks(disk.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
