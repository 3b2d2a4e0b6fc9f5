package collectors

import (
	"context"
	"errors"

	"github.com/seed69aca190/edgeagent/hal/host"
)

// Host reports CPU, load, memory, swap, uptime and temperatures.
type Host struct {
	r    host.Reader
	prev map[string]host.CPUTimes
}

// NewHost returns the host collector reading under sysfs and procfs.
func NewHost(sysfs, procfs string) *Host {
	return &Host{r: host.New(sysfs, procfs), prev: map[string]host.CPUTimes{}}
}

// Name implements Collector.
func (*Host) Name() string { return "host" }

// Collect implements Collector. CPU shares need two readings, so the first
// run reports none.
func (h *Host) Collect(ctx context.Context, r *Report) error {
	s, err := h.r.Read(ctx)
	for _, c := range s.CPUs {
		if busy, iowait, steal, ok := host.Usage(h.prev[c.CPU], c); ok && h.prev[c.CPU] != (host.CPUTimes{}) {
			r.Add("host.cpu.busy_percent", busy, "cpu", c.CPU)
			if c.CPU == "total" {
				r.Add("host.cpu.iowait_percent", iowait)
				r.Add("host.cpu.steal_percent", steal)
			}
		}
		h.prev[c.CPU] = c
	}
	if s.CPUs != nil {
		r.Add("host.load1", s.Load1)
		r.Add("host.load5", s.Load5)
		r.Add("host.load15", s.Load15)
	}
	if m := s.Memory; m.Total > 0 {
		r.Add("host.memory.total_bytes", float64(m.Total))
		r.Add("host.memory.available_bytes", float64(m.Available))
		r.Add("host.memory.used_bytes", float64(m.Used))
		r.Add("host.memory.used_percent", 100*float64(m.Total-m.Available)/float64(m.Total))
		r.Add("host.swap.total_bytes", float64(m.SwapTotal))
		r.Add("host.swap.used_bytes", float64(m.SwapUsed))
	}
	if s.UptimeSec > 0 {
		r.Add("host.uptime_seconds", s.UptimeSec)
	}
	for _, t := range s.Temperatures {
		r.Add("host.temperature_celsius", t.Celsius, "sensor", t.Sensor)
	}
	if len(s.Temperatures) == 0 {
		// Overheating is a storage appliance's classic silent killer: a box
		// whose sensors cannot be read is degraded, not healthy.
		err = errors.Join(err, errNoSensors)
	}
	return err
}

var errNoSensors = errors.New("no temperature sensor readable (no hwmon or thermal zone in sysfs)")
