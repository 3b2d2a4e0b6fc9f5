package proc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/seed69aca190/edgeagent/hal/internal/fixture"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
)

func TestParseStat(t *testing.T) {
	// A name with spaces and parentheses, as a process may choose.
	line := "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 50 0 0 20 0 3 0 123456 100000000 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	p, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != 4242 || p.Name != "my (odd) name" || p.State != 'S' || p.PPID != 1 ||
		p.CPUSeconds != 2 || p.startTicks != 123456 || p.RSSBytes != 2560*uint64(os.Getpagesize()) {
		t.Errorf("parsed %+v", p)
	}
	for _, bad := range []string{"", "12 no parens", "12 (x) S 1"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseUptime(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"836.58 1364.93\n", 836*time.Second + 580*time.Millisecond, true},
		{"0.05 0.00\n", 50 * time.Millisecond, true},
		{"31536000.00 1.00", 365 * 24 * time.Hour, true}, // a year up
		{"", 0, false},
		{"-3.00 1.00", 0, false},
		{"1h2 0", 0, false},
		{"NaN 0", 0, false},
	} {
		got, err := parseUptime([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseUptime(%q) = %v, %v; want %v (ok %v)", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestAgeOnFixture reads processes from testdata/procs.txtar, a copy of a
// real /proc: a process's age is /proc/uptime less its start ticks, whatever
// this machine's clock says now (the copy is older than the test run).
func TestAgeOnFixture(t *testing.T) {
	data, err := os.ReadFile("testdata/procs.txtar")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := fixture.Extract(root, data); err != nil {
		t.Fatal(err)
	}
	fs := New(filepath.Join(root, "sys"), filepath.Join(root, "proc"))
	// uptime 836.58 s; pid 1 started at tick 24, the service at tick 83391.
	for _, tt := range []struct {
		pid  int
		name string
		age  time.Duration
	}{
		{1, "process_api", 836580*time.Millisecond - 240*time.Millisecond},
		{18123, "edgefixture-sto", 836580*time.Millisecond - 833910*time.Millisecond},
	} {
		p, err := fs.Process(tt.pid)
		if err != nil || p.Name != tt.name || p.Age != tt.age {
			t.Errorf("pid %d: %+v, %v; want %s aged %v", tt.pid, p, err, tt.name, tt.age)
		}
	}
	if p, err := fs.Named("process_api"); err != nil || p.PID != 1 {
		t.Errorf("by name: %+v, %v", p, err)
	}
	if _, err := fs.Process(2); !errors.Is(err, ErrNotFound) {
		t.Errorf("pid 2 is not in the fixture: %v", err)
	}
	os.Remove(filepath.Join(root, "proc", "uptime"))
	if _, err := fs.Process(1); err == nil {
		t.Error("no /proc/uptime, yet an age")
	}
}

// service starts a real long-running process under a unique name longer
// than comm's 15 bytes, and returns it.
func service(t *testing.T) (*exec.Cmd, string) {
	name := fmt.Sprintf("edgetest-service-%06d", rand.IntN(1e6))
	return named(t, name), name
}

// named starts a real long-running process whose executable is called name.
func named(t *testing.T, name string) *exec.Cmd {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// TestProcessNameIsText runs processes whose names are random bytes: each is
// found by its exact name, and reported with the name escaped.
func TestProcessNameIsText(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 2))
	fs := New("/sys", "/proc")
	for i := range 10 {
		name := fmt.Sprintf("e%d", i) + wiretest.Junk(r, 1+r.IntN(10), "/\x00 \t\n\v\f\r") // comm is read trimmed
		cmd := named(t, name)
		var p Process
		var err error
		testenv.WaitFor(t, 5*time.Second, func() bool { // until it has exec'd
			p, err = fs.Named(name)
			return err == nil
		}, func() string { return fmt.Sprintf("%q: %v", name, err) })
		if p.PID != cmd.Process.Pid || p.Name != text.EscapeString(name) {
			t.Errorf("%q: %+v", name, p)
		}
	}
}

// FuzzParseStat: whatever a process calls itself, its stat parses to text.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 50 0 0 20 0 3 0 123456 100000000 2560 1 1\n"))
	f.Add([]byte("7 (\xff\\x\xfe) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 1 1 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if p, err := parseStat(data); err == nil && !utf8.ValidString(p.Name) {
			t.Fatalf("name %q is not text", p.Name)
		}
	})
}

func TestFindRealProcess(t *testing.T) {
	cmd, name := service(t)
	fs := New("/sys", "/proc")
	pid := cmd.Process.Pid

	// Right after exec the process may not have touched a page yet.
	var byName Process
	var err error
	testenv.WaitFor(t, 5*time.Second, func() bool {
		byName, err = fs.Named(name)
		return err == nil && byName.RSSBytes > 0
	}, func() string { return fmt.Sprintf("by name: %+v, %v", byName, err) })
	pidFile := filepath.Join(t.TempDir(), "svc.pid")
	os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644)
	byFile, err := fs.PIDFile(pidFile)
	if err != nil {
		t.Fatalf("by pid file: %v", err)
	}
	for _, p := range []Process{byName, byFile} {
		if p.PID != pid || p.Name != name[:15] || p.RSSBytes == 0 || p.Identity() != byName.Identity() {
			t.Errorf("found %+v, want pid %d", p, pid)
		}
		if p.Age > time.Minute {
			t.Errorf("started a moment ago, aged %v", p.Age)
		}
	}
	if _, err := fs.Named(name[:15]); !errors.Is(err, ErrNotFound) {
		t.Errorf("a 15-byte prefix of the name matched: %v", err)
	}

	cmd.Process.Kill()
	cmd.Wait()
	if _, err := fs.PIDFile(pidFile); !errors.Is(err, ErrNotFound) {
		t.Errorf("after kill: %v, want not found", err)
	}
	if _, err := fs.Named(name); !errors.Is(err, ErrNotFound) {
		t.Errorf("after kill by name: %v, want not found", err)
	}
}

// TestUnitCgroup puts a real process into a real systemd-style cgroup
// (v2, or v1's name=systemd hierarchy) and finds it by unit name.
func TestUnitCgroup(t *testing.T) {
	testenv.RequireRoot(t)
	var base string
	for _, dir := range []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
			base = dir
			break
		}
	}
	if base == "" {
		testenv.Missing(t, "no writable cgroup hierarchy at /sys/fs/cgroup")
		return
	}
	cmd, _ := service(t)
	unit := fmt.Sprintf("edgetest-%06d.service", rand.IntN(1e6))
	dir := filepath.Join(base, "system.slice", unit)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		testenv.Missing(t, "cannot create a cgroup: %v", err)
		return
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(dir)
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{unit, unit[:len(unit)-len(".service")]} {
		p, err := New("/sys", "/proc").Unit(name)
		if err != nil || p.PID != cmd.Process.Pid {
			t.Errorf("unit %s: %+v, %v; want pid %d", name, p, err, cmd.Process.Pid)
		}
	}
}
