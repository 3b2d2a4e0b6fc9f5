package host

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"

	"github.com/seed69aca190/edgeagent/hal/internal/fixture"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
)

func TestReadLive(t *testing.T) {
	r := New("/sys", "/proc")
	s, err := r.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.CPUs) != runtime.NumCPU()+1 || s.CPUs[len(s.CPUs)-1].CPU != "total" {
		t.Errorf("CPUs = %+v, want %d and the total", s.CPUs, runtime.NumCPU())
	}
	if s.Memory.Total == 0 || s.Memory.Available > s.Memory.Total || s.UptimeSec <= 0 {
		t.Errorf("implausible sample: %+v", s)
	}
	id, err := r.BootID()
	if err != nil || !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(id) {
		t.Errorf("boot id %q, %v", id, err)
	}
}

func TestTemperaturesFromHwmon(t *testing.T) {
	sys := t.TempDir()
	data, err := os.ReadFile(filepath.Join("testdata", "hwmon.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	if err := fixture.Extract(sys, data); err != nil {
		t.Fatal(err)
	}
	s, _ := New(sys, "/proc").Read(context.Background())
	want := []Temperature{
		{Sensor: "coretemp_package_id_0", Celsius: 45, High: 80, Critical: 100},
		{Sensor: "coretemp_core_0", Celsius: 43.5},
	}
	if len(s.Temperatures) != len(want) {
		t.Fatalf("temperatures = %+v, want %+v", s.Temperatures, want)
	}
	for i := range want {
		if s.Temperatures[i] != want[i] {
			t.Errorf("temperature %d = %+v, want %+v", i, s.Temperatures[i], want[i])
		}
	}
}

// TestSensorNamesAreText names the fixture's chip and its inputs, and the
// boot, in random bytes: what Read and BootID return is text.
func TestSensorNamesAreText(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "hwmon.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 14))
	for range 50 {
		sys, proc := t.TempDir(), t.TempDir()
		if err := fixture.Extract(sys, data); err != nil {
			t.Fatal(err)
		}
		chip := filepath.Join(sys, "devices/platform/coretemp.0/hwmon/hwmon0")
		for path, junk := range map[string]string{
			filepath.Join(chip, "name"): wiretest.Junk(r, 1+r.IntN(10), "\n"), filepath.Join(chip, "temp1_label"): wiretest.Junk(r, r.IntN(10), ""),
			filepath.Join(proc, "sys/kernel/random/boot_id"): wiretest.Junk(r, 36, ""),
		} {
			os.MkdirAll(filepath.Dir(path), 0o755)
			if err := os.WriteFile(path, []byte(junk+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		host := New(sys, proc)
		s, _ := host.Read(context.Background())
		id, err := host.BootID()
		if len(s.Temperatures) != 2 || err != nil {
			t.Fatalf("temperatures %+v, boot id %v", s.Temperatures, err)
		}
		if bad := wiretest.InvalidText(s) + wiretest.InvalidText(id); bad != "" {
			t.Fatalf("not text: %s", bad)
		}
	}
}

func TestUsage(t *testing.T) {
	prev := CPUTimes{User: 100, System: 50, Idle: 800, IOWait: 40, Steal: 10}
	cur := CPUTimes{User: 130, System: 60, Idle: 850, IOWait: 50, Steal: 10}
	// 100 s passed: 40 busy, 50 idle, 10 iowait.
	busy, iowait, steal, ok := Usage(prev, cur)
	if !ok || busy != 40 || iowait != 10 || steal != 0 {
		t.Errorf("busy %v iowait %v steal %v ok %v", busy, iowait, steal, ok)
	}
	if _, _, _, ok := Usage(cur, prev); ok {
		t.Error("counters going back gave a usage")
	}
}

// BenchmarkRead measures one full host sample (gopsutil and direct reads).
func BenchmarkRead(b *testing.B) {
	r := New("/sys", "/proc")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Read(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
