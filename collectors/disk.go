package collectors

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// fullHysteresis is how far below the threshold a filesystem must fall before
// it counts as no longer full, so one hovering at the line does not flap.
const fullHysteresis = 5

// Disk reports per-device I/O rates and per-filesystem space and inodes, and
// raises an event when a filesystem crosses the fullness threshold.
type Disk struct {
	fs        disk.FS
	opts      disk.Options
	threshold float64 // percent

	prev     []disk.IOStats
	prevTime time.Time
	full     map[string]bool // by mount point
}

// NewDisk returns the disk collector; threshold is the used percentage at
// which a filesystem is reported full.
func NewDisk(sysfs, procfs string, opts disk.Options, threshold float64) *Disk {
	return &Disk{fs: disk.NewFS(sysfs, procfs), opts: opts, threshold: threshold, full: map[string]bool{}}
}

// Name implements Collector.
func (*Disk) Name() string { return "disk" }

// Collect implements Collector.
func (d *Disk) Collect(ctx context.Context, r *Report) error {
	disks, errDisks := d.fs.Disks(d.opts)
	stats, errStats := d.fs.DiskStats()
	if errStats == nil {
		if d.prev != nil {
			rates := disk.DeviceRates(d.prev, stats, r.Time.Sub(d.prevTime))
			for _, dk := range disks {
				if rt, ok := rates[dk.Name]; ok {
					dev := []string{"device", dk.Name}
					r.Add("disk.read_iops", rt.ReadIOPS, dev...)
					r.Add("disk.write_iops", rt.WriteIOPS, dev...)
					r.Add("disk.read_bytes_per_sec", rt.ReadBytesPerSec, dev...)
					r.Add("disk.write_bytes_per_sec", rt.WriteBytesPerSec, dev...)
					r.Add("disk.util_percent", rt.UtilPercent, dev...)
					r.Add("disk.read_await_ms", rt.ReadAwaitMs, dev...)
					r.Add("disk.write_await_ms", rt.WriteAwaitMs, dev...)
					r.Add("disk.queue_depth", rt.QueueDepth, dev...)
				}
			}
		}
		d.prev, d.prevTime = stats, r.Time
	}
	seen := map[string]bool{}
	for _, dk := range disks {
		for _, f := range dk.Filesystems {
			if f.UsageError != "" || f.TotalBytes == 0 {
				continue
			}
			seen[f.MountPoint] = true
			d.filesystem(r, f)
		}
	}
	for mount := range d.full {
		if !seen[mount] {
			delete(d.full, mount) // unmounted: a new mount there starts afresh
		}
	}
	return errors.Join(errDisks, errStats)
}

func (d *Disk) filesystem(r *Report, f disk.Filesystem) {
	tags := []string{"mount", f.MountPoint, "device", f.Device, "fstype", f.Type}
	// Used as df counts it: what unprivileged users can no longer have.
	usable := f.UsedBytes + f.FreeBytes
	used := 0.0
	if usable > 0 {
		used = 100 * float64(f.UsedBytes) / float64(usable)
	}
	r.Add("fs.total_bytes", float64(f.TotalBytes), tags...)
	r.Add("fs.used_bytes", float64(f.UsedBytes), tags...)
	r.Add("fs.free_bytes", float64(f.FreeBytes), tags...)
	r.Add("fs.used_percent", used, tags...)
	inodes := 0.0
	if f.Inodes > 0 {
		inodes = 100 * float64(f.Inodes-f.InodesFree) / float64(f.Inodes)
		r.Add("fs.inodes_used_percent", inodes, tags...)
	}
	worst := max(used, inodes)
	wasFull, known := d.full[f.MountPoint]
	switch {
	case !wasFull && worst >= d.threshold:
		d.full[f.MountPoint] = true
		old := "ok"
		if !known {
			old = ""
		}
		r.Event(telemetry.Warning, "filesystem", f.MountPoint, old, "full",
			"filesystem %s (%s) is %.0f%% full (space %.0f%%, inodes %.0f%%), above the %.0f%% threshold",
			f.MountPoint, f.Device, worst, used, inodes, d.threshold)
	case wasFull && worst < d.threshold-fullHysteresis:
		d.full[f.MountPoint] = false
		r.Event(telemetry.Info, "filesystem", f.MountPoint, "full", "ok",
			"filesystem %s (%s) is back to %.0f%% full", f.MountPoint, f.Device, worst)
	case !known:
		d.full[f.MountPoint] = false
	}
}

// Smart reports disk health from smartctl and raises an event when a disk
// starts failing or recovers.
type Smart struct {
	fs     disk.FS
	opts   disk.Options
	ctl    disk.SmartCtl
	status map[string]string // by device
}

// NewSmart returns the SMART collector.
func NewSmart(sysfs, procfs string, opts disk.Options, ctl disk.SmartCtl) *Smart {
	return &Smart{fs: disk.NewFS(sysfs, procfs), opts: opts, ctl: ctl, status: map[string]string{}}
}

// Name implements Collector.
func (*Smart) Name() string { return "smart" }

// Collect implements Collector. A disk whose health cannot be read
// (smartctl missing, failing or timing out) fails the run: the agent is
// degraded while it cannot tell a dying disk. Disks without SMART (virtual
// ones) and disks in standby do not.
func (s *Smart) Collect(ctx context.Context, r *Report) error {
	disks, err := s.fs.Disks(s.opts)
	var unreadable []string
	for _, dk := range disks {
		if dk.Kind != "disk" {
			continue
		}
		h := s.ctl.Health(ctx, "/dev/"+dk.Name)
		if h.Status == disk.SmartUnavailable {
			unreadable = append(unreadable, dk.Name+": "+h.Reason)
		}
		dev := []string{"device", dk.Name}
		switch h.Status {
		case disk.SmartPassed:
			r.Add("smart.passed", 1, dev...)
		case disk.SmartFailing:
			r.Add("smart.passed", 0, dev...)
		}
		for name, v := range map[string]*uint64{
			"smart.power_on_hours": h.PowerOnHours, "smart.reallocated_sectors": h.ReallocatedSectors,
			"smart.pending_sectors": h.PendingSectors, "smart.percentage_used": h.PercentageUsed,
			"smart.media_errors": h.MediaErrors, "smart.critical_warning": h.CriticalWarning,
		} {
			if v != nil {
				r.Add(name, float64(*v), dev...)
			}
		}
		if h.TemperatureC != nil {
			r.Add("smart.temperature_celsius", float64(*h.TemperatureC), dev...)
		}
		old := s.status[dk.Name]
		switch {
		case h.Status == disk.SmartFailing && old != disk.SmartFailing:
			r.Event(telemetry.Critical, "smart", dk.Name, old, h.Status, "disk %s (%s %s) reports SMART failing: %s",
				dk.Name, dk.Model, dk.Serial, h.Reason)
		case h.Status == disk.SmartPassed && old == disk.SmartFailing:
			r.Event(telemetry.Info, "smart", dk.Name, old, h.Status, "disk %s passes its SMART check again", dk.Name)
		}
		// Standby and unavailable readings say nothing new about health.
		if h.Status == disk.SmartPassed || h.Status == disk.SmartFailing {
			s.status[dk.Name] = h.Status
		}
	}
	if err != nil {
		return fmt.Errorf("list disks: %w", err)
	}
	if len(unreadable) > 0 {
		return fmt.Errorf("disk health unreadable: %s", strings.Join(unreadable, "; "))
	}
	return nil
}
