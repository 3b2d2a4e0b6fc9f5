// Package host reads whole-machine utilization: CPU times, load, memory,
// swap, uptime, boot id and hwmon temperatures. CPU, load, memory, swap and
// temperatures come from gopsutil (v4), pointed at the configured sysfs and
// procfs roots through its context environment rather than process-wide
// variables; uptime and the boot id are single small files read directly.
// gopsutil's cost was measured (BenchmarkRead): about 180 µs, 45 KiB and 650
// allocations per full sample, each /proc file read once. At one sample per
// 10 s that is not worth replacing with our own parsers.
package host

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v4/common"
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/sensors"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// CPUTimes are the seconds a CPU spent in each state since boot.
type CPUTimes struct {
	CPU                                                   string // cpu0, cpu1, …; "total" for the sum
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal float64
}

func (t CPUTimes) all() float64 {
	// Guest time is already counted in user time by the kernel.
	return t.User + t.Nice + t.System + t.Idle + t.IOWait + t.IRQ + t.SoftIRQ + t.Steal
}

// Usage is the share of time, in percent, a CPU spent busy (neither idle nor
// waiting for I/O), waiting for I/O, and stolen by the hypervisor, between
// two readings. ok is false when no time passed (or counters went back).
func Usage(prev, cur CPUTimes) (busy, iowait, steal float64, ok bool) {
	total := cur.all() - prev.all()
	if total <= 0 {
		return 0, 0, 0, false
	}
	idle := (cur.Idle - prev.Idle) + (cur.IOWait - prev.IOWait)
	pct := func(v float64) float64 { return min(max(100*v/total, 0), 100) }
	return pct(total - idle), pct(cur.IOWait - prev.IOWait), pct(cur.Steal - prev.Steal), true
}

// Memory is physical memory and swap, in bytes.
type Memory struct {
	Total, Available, Used, Free, Buffers, Cached uint64
	SwapTotal, SwapUsed, SwapFree                 uint64
}

// Temperature is one hwmon (or thermal zone) sensor.
type Temperature struct {
	Sensor   string  // chip and input, such as coretemp_core_0; escaped (a driver names its chip)
	Celsius  float64 //
	High     float64 // 0 when the chip does not say
	Critical float64 // 0 when the chip does not say
}

// Sample is one reading of the machine.
type Sample struct {
	Time         time.Time
	CPUs         []CPUTimes // per CPU, then the total last
	Load1        float64
	Load5        float64
	Load15       float64
	Memory       Memory
	UptimeSec    float64
	Temperatures []Temperature
}

// Reader reads the machine under sysfs and procfs roots.
type Reader struct {
	procfs string
	env    common.EnvMap
}

// New returns a reader rooted at sysfs and procfs.
func New(sysfs, procfs string) Reader {
	return Reader{procfs: procfs, env: common.EnvMap{common.HostProcEnvKey: procfs, common.HostSysEnvKey: sysfs}}
}

// Read takes one sample. A part that cannot be read is left zero and its
// error is returned along with the rest.
func (r Reader) Read(ctx context.Context) (Sample, error) {
	ctx = context.WithValue(ctx, common.EnvKey, r.env)
	s := Sample{Time: time.Now()}
	var errs []error
	if times, err := cpu.TimesWithContext(ctx, true); err != nil {
		errs = append(errs, fmt.Errorf("cpu times: %w", err))
	} else {
		total := CPUTimes{CPU: "total"}
		for _, t := range times {
			c := CPUTimes{CPU: text.EscapeString(t.CPU), User: t.User, Nice: t.Nice, System: t.System, Idle: t.Idle,
				IOWait: t.Iowait, IRQ: t.Irq, SoftIRQ: t.Softirq, Steal: t.Steal}
			s.CPUs = append(s.CPUs, c)
			total.User += c.User
			total.Nice += c.Nice
			total.System += c.System
			total.Idle += c.Idle
			total.IOWait += c.IOWait
			total.IRQ += c.IRQ
			total.SoftIRQ += c.SoftIRQ
			total.Steal += c.Steal
		}
		s.CPUs = append(s.CPUs, total)
	}
	if l, err := load.AvgWithContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("load: %w", err))
	} else {
		s.Load1, s.Load5, s.Load15 = l.Load1, l.Load5, l.Load15
	}
	if m, err := mem.VirtualMemoryWithContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("memory: %w", err))
	} else {
		s.Memory.Total, s.Memory.Available, s.Memory.Used = m.Total, m.Available, m.Used
		s.Memory.Free, s.Memory.Buffers, s.Memory.Cached = m.Free, m.Buffers, m.Cached
	}
	if sw, err := mem.SwapMemoryWithContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("swap: %w", err))
	} else {
		s.Memory.SwapTotal, s.Memory.SwapUsed, s.Memory.SwapFree = sw.Total, sw.Used, sw.Free
	}
	if up, err := r.uptime(); err != nil {
		errs = append(errs, err)
	} else {
		s.UptimeSec = up
	}
	temps, err := sensors.TemperaturesWithContext(ctx)
	var warn *sensors.Warnings
	if err != nil && !errors.As(err, &warn) { // warnings: some sensors unreadable, the rest are good
		errs = append(errs, fmt.Errorf("temperatures: %w", err))
	}
	for _, t := range temps {
		s.Temperatures = append(s.Temperatures, Temperature{Sensor: text.EscapeString(t.SensorKey), Celsius: t.Temperature,
			High: t.High, Critical: t.Critical})
	}
	return s, errors.Join(errs...)
}

func (r Reader) uptime() (float64, error) {
	path := filepath.Join(r.procfs, "uptime")
	s, err := kfile.String(path)
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(s, " ")
	up, err := strconv.ParseFloat(first, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not seconds", path, s)
	}
	return up, nil
}

// BootID returns the kernel's random id of this boot, which tells a reboot
// from an agent restart.
func (r Reader) BootID() (string, error) {
	id, err := kfile.String(filepath.Join(r.procfs, "sys/kernel/random/boot_id"))
	return text.EscapeString(id), err
}
