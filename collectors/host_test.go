package collectors

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

func names(r *Report) map[string]int {
	m := map[string]int{}
	for _, p := range r.Points() {
		m[p.Name]++
	}
	return m
}

// liveErr is a collection error this machine explains: a VM without
// temperature sensors is degraded, truthfully.
func liveErr(err error) error {
	if errors.Is(err, errNoSensors) && !hasSensors() {
		return nil
	}
	return err
}

func hasSensors() bool {
	hw, _ := filepath.Glob("/sys/class/hwmon/*/temp*_input")
	tz, _ := filepath.Glob("/sys/class/thermal/thermal_zone*/temp")
	return len(hw)+len(tz) > 0
}

// TestNoSensorsDegrades: a sysfs without hwmon or thermal zones fails the
// run with the reason, while everything else is still reported.
func TestNoSensorsDegrades(t *testing.T) {
	h := NewHost(t.TempDir(), "/proc")
	r := &Report{Time: time.Now()}
	if err := h.Collect(context.Background(), r); !errors.Is(err, errNoSensors) {
		t.Fatalf("err = %v, want the missing sensors named", err)
	}
	if names(r)["host.memory.total_bytes"] != 1 {
		t.Errorf("memory not reported beside the missing sensors: %v", names(r))
	}
}

func TestHostLive(t *testing.T) {
	h := NewHost("/sys", "/proc")
	first := &Report{Time: time.Now()}
	if err := liveErr(h.Collect(context.Background(), first)); err != nil {
		t.Fatal(err)
	}
	if n := names(first)["host.cpu.busy_percent"]; n != 0 {
		t.Errorf("first run reported %d CPU shares from a single reading", n)
	}
	time.Sleep(50 * time.Millisecond)
	second := &Report{Time: time.Now()}
	if err := liveErr(h.Collect(context.Background(), second)); err != nil {
		t.Fatal(err)
	}
	got := names(second)
	if got["host.cpu.busy_percent"] != runtime.NumCPU()+1 {
		t.Errorf("busy_percent for %d CPUs, want %d and the total", got["host.cpu.busy_percent"], runtime.NumCPU())
	}
	for _, want := range []string{"host.cpu.iowait_percent", "host.cpu.steal_percent", "host.load1", "host.memory.used_percent",
		"host.memory.available_bytes", "host.swap.total_bytes", "host.uptime_seconds"} {
		if got[want] != 1 {
			t.Errorf("%s reported %d times", want, got[want])
		}
	}
	for _, p := range second.Points() {
		if p.Name == "host.cpu.busy_percent" && (p.Value < 0 || p.Value > 100) {
			t.Errorf("%v", p)
		}
	}
}

func TestAgentReportsCollectorsAndItself(t *testing.T) {
	s := New(Options{Sink: &recorder{}, Log: quiet()})
	s.Add(NewHost("/sys", "/proc"), time.Hour, 0)
	a := NewAgent(AgentOptions{Sysfs: "/sys", Procfs: "/proc", Scheduler: s, Spool: func() (uint64, uint64) { return 1, 2 }})
	r := &Report{Time: time.Now()}
	if err := a.Collect(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, p := range r.Points() {
		got[p.Name] = p.Value
	}
	if got["agent.rss_bytes"] <= 0 || got["agent.goroutines"] <= 0 || got["agent.heap_bytes"] <= 0 ||
		got["agent.spool.depth"] != 1 || got["agent.spool.dropped"] != 2 {
		t.Errorf("points %v", got)
	}
	if _, ok := got["agent.collector.duration_seconds"]; !ok {
		t.Error("no per-collector timing")
	}
}
