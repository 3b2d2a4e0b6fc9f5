package collectors

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestServiceLifecycle supervises a real process through a pid file: found
// running, killed, restarted, and restarted so often that it flaps.
func TestServiceLifecycle(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "store.pid")
	var cmd *exec.Cmd
	startService := func() {
		cmd = exec.Command(testenv.LookPath(t, "sleep"), "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	}
	stopService := func() { cmd.Process.Kill(); cmd.Wait() }
	t.Cleanup(func() { stopService() })

	c := NewProcesses("/sys", "/proc", []Service{{Name: "store", PIDFile: pidFile}})
	collect := func() ([]telemetry.Event, map[string]float64) {
		r := &Report{Time: time.Now()}
		if err := c.Collect(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		points := map[string]float64{}
		for _, p := range r.Points() {
			points[p.Name] = p.Value
		}
		return r.Events(), points
	}
	expect := func(step string, events []telemetry.Event, state string, sev telemetry.Severity) {
		t.Helper()
		if state == "" {
			if len(events) != 0 {
				t.Errorf("%s: unexpected events %+v", step, events)
			}
			return
		}
		if len(events) != 1 || events[0].New != state || events[0].Severity != sev {
			t.Errorf("%s: events %+v, want one to %s (%s)", step, events, state, sev)
		}
	}

	startService()
	ev, p := collect()
	expect("found running", ev, "", "")
	if p["process.up"] != 1 || p["process.pid"] != float64(cmd.Process.Pid) || p["process.restarts"] != 0 {
		t.Errorf("points %v", p)
	}
	ev, _ = collect()
	expect("still running", ev, "", "")

	stopService()
	ev, p = collect()
	expect("killed", ev, Stopped, telemetry.Critical)
	if p["process.up"] != 0 {
		t.Errorf("points after kill %v", p)
	}

	startService()
	ev, p = collect()
	expect("started again", ev, Running, telemetry.Info)
	if p["process.restarts"] != 1 {
		t.Errorf("restarts %v, want 1", p["process.restarts"])
	}
	// Restarted between two collections, never seen stopped.
	stopService()
	startService()
	ev, _ = collect()
	expect("restarted unseen", ev, Running, telemetry.Info)
	if len(ev) == 1 && ev[0].Message == "" {
		t.Error("empty message")
	}
	stopService()
	startService()
	ev, p = collect()
	expect("third restart in the window", ev, Flapping, telemetry.Warning)
	if p["process.restarts"] != 3 || p["process.up"] != 1 {
		t.Errorf("points %v", p)
	}
	st := c.Status()
	if len(st) != 1 || st[0].State != Flapping || st[0].PID != cmd.Process.Pid {
		t.Errorf("status %+v", st)
	}
}

func TestServiceNeverSeenIsReported(t *testing.T) {
	c := NewProcesses("/sys", "/proc", []Service{{Name: "ghost", Process: "edgetest-no-such-daemon"}})
	r := &Report{Time: time.Now()}
	c.Collect(context.Background(), r)
	ev := r.Events()
	if len(ev) != 1 || ev[0].New != Stopped || ev[0].Old != "" {
		t.Fatalf("events %+v", ev)
	}
}

// TestServiceUptimeIgnoresClockSteps reads a real process with the report's
// wall clock stepped six hours either way, as NTP does to a node without a
// real-time clock: the uptime comes from the clock since boot and stays put,
// and the start time shown follows the clock.
func TestServiceUptimeIgnoresClockSteps(t *testing.T) {
	cmd := exec.Command(testenv.LookPath(t, "sleep"), "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pidFile := filepath.Join(t.TempDir(), "store.pid")
	os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)

	c := NewProcesses("/sys", "/proc", []Service{{Name: "store", PIDFile: pidFile}})
	for _, step := range []time.Duration{0, 6 * time.Hour, -6 * time.Hour} {
		r := &Report{Time: time.Now().Add(step)}
		if err := c.Collect(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		uptime := -1.0
		for _, p := range r.Points() {
			if p.Name == "process.uptime_seconds" {
				uptime = p.Value
			}
		}
		since := r.Time.Sub(c.Status()[0].Since).Seconds()
		if uptime < 0 || uptime > 30 || math.Abs(since-uptime) > 0.001 {
			t.Errorf("clock stepped %v: uptime %.2f s, since %.2f s before the report", step, uptime, since)
		}
	}
}
