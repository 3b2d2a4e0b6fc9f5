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

	"github.com/seed69aca190/edgeagent/internal/testenv"
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

// service starts a real long-running process under a unique name longer
// than comm's 15 bytes, and returns it.
func service(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("edgetest-service-%06d", rand.IntN(1e6))
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
	return cmd, name
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
		if age := time.Since(p.StartTime); age < -2*time.Second || age > time.Minute {
			t.Errorf("start time %v is %v ago", p.StartTime, age)
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
