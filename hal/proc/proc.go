// Package proc finds and reads processes under a procfs root: by pid file,
// by systemd unit (its cgroup), or by exact name, and reads what an operator
// asks of a service: pid, state, age, RSS and CPU time.
//
// A process's age is measured on the clock since boot (/proc/uptime), never on
// the wall clock: an appliance without a real-time clock boots at 1970 and NTP
// steps its clock later, so the boot time it would compute from is off by decades.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// userHZ is the kernel's USER_HZ, the unit of /proc/<pid>/stat times: 100 on
// every Linux architecture (sysconf(_SC_CLK_TCK)).
const userHZ = 100

// ErrNotFound says no live process matched.
var ErrNotFound = errors.New("no such process")

// Process is one process as /proc/<pid>/stat describes it.
type Process struct {
	PID   int
	Name  string // comm, at most 15 bytes, escaped (internal/text): a process names itself
	State byte   // R, S, D, Z, T, …
	PPID  int
	// Age is how long the process has been running when it was read:
	// /proc/uptime (time since boot, which the wall clock's steps do not
	// move) less its start time after boot.
	Age        time.Duration
	CPUSeconds float64 // user and system time since start
	RSSBytes   uint64
	// startTicks identifies the process together with the pid: a reused pid
	// has another start time.
	startTicks uint64
}

// Identity is pid and start time: it tells a restarted service from the same
// one, even if the new process got the old pid.
func (p Process) Identity() string { return fmt.Sprintf("%d@%d", p.PID, p.startTicks) }

// FS reads processes under procfs, and systemd units' cgroups under sysfs.
type FS struct {
	procfs, sysfs string
}

// New returns an FS rooted at sysfs and procfs.
func New(sysfs, procfs string) FS { return FS{procfs: procfs, sysfs: sysfs} }

// Process reads pid. A zombie counts as gone.
func (f FS) Process(pid int) (Process, error) {
	data, err := kfile.Read(filepath.Join(f.procfs, strconv.Itoa(pid), "stat"))
	if errors.Is(err, fs.ErrNotExist) {
		return Process{}, ErrNotFound
	}
	if err != nil {
		return Process{}, err
	}
	p, err := parseStat(data)
	if err != nil {
		return Process{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	if p.State == 'Z' || p.State == 'X' {
		return Process{}, ErrNotFound
	}
	up, err := f.uptime()
	if err != nil {
		return Process{}, err
	}
	p.Age = max(up-time.Duration(p.startTicks)*time.Second/userHZ, 0)
	return p, nil
}

// parseStat parses /proc/<pid>/stat. The name is in parentheses and may hold
// spaces and parentheses itself, so fields are counted from the last ')'.
func parseStat(data []byte) (Process, error) {
	var p Process
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return p, errors.New("no (comm)")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
	if err != nil {
		return p, fmt.Errorf("pid %q", data[:open])
	}
	p.PID, p.Name = pid, text.Escape(data[open+1:end])
	// Fields from 3 (state) on; index i here is field i+3 of proc(5).
	f := strings.Fields(string(data[end+1:]))
	if len(f) < 22 {
		return p, fmt.Errorf("%d fields after the name, want at least 22", len(f))
	}
	p.State = f[0][0]
	p.PPID, _ = strconv.Atoi(f[1])
	num := func(i int) uint64 { n, _ := strconv.ParseUint(f[i], 10, 64); return n }
	p.CPUSeconds = float64(num(11)+num(12)) / userHZ // utime, stime
	p.startTicks = num(19)                           // starttime
	p.RSSBytes = num(21) * uint64(os.Getpagesize())  // rss in pages
	return p, nil
}

// uptime reads the time since boot from /proc/uptime.
func (f FS) uptime() (time.Duration, error) {
	data, err := kfile.Read(filepath.Join(f.procfs, "uptime"))
	if err != nil {
		return 0, err
	}
	return parseUptime(data)
}

// parseUptime parses /proc/uptime: seconds since boot and seconds all CPUs
// spent idle, each with two decimals.
func parseUptime(data []byte) (time.Duration, error) {
	first, _, _ := strings.Cut(strings.TrimSpace(string(data)), " ")
	up, err := time.ParseDuration(first + "s")
	if err != nil || strings.Trim(first, "0123456789.") != "" {
		return 0, fmt.Errorf("/proc/uptime: %.40q is not a number of seconds", data)
	}
	return up, nil
}

// PIDFile returns the live process whose pid is in the file at path.
func (f FS) PIDFile(path string) (Process, error) {
	data, err := kfile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Process{}, fmt.Errorf("pid file %s: %w", path, ErrNotFound)
	}
	if err != nil {
		return Process{}, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return Process{}, fmt.Errorf("pid file %s holds %.20q, not a pid", path, data)
	}
	return f.Process(pid)
}

// Unit returns the oldest process of a systemd unit, read from its cgroup
// (cgroup v2, else v1's name=systemd hierarchy).
func (f FS) Unit(unit string) (Process, error) {
	if !strings.Contains(unit, ".") {
		unit += ".service"
	}
	var pids []int
	for _, dir := range []string{"fs/cgroup/system.slice", "fs/cgroup/systemd/system.slice"} {
		data, err := kfile.Read(filepath.Join(f.sysfs, dir, unit, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(field); err == nil {
				pids = append(pids, pid)
			}
		}
		break
	}
	return f.oldest(pids, "unit "+unit)
}

// Named returns the oldest process whose name is exactly name: its comm, or
// when comm is cut to 15 bytes, the base name of its executable.
func (f FS) Named(name string) (Process, error) {
	entries, err := os.ReadDir(f.procfs)
	if err != nil {
		return Process{}, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := kfile.String(filepath.Join(f.procfs, e.Name(), "comm"))
		if err != nil {
			continue
		}
		// comm is cut to 15 bytes: at that length it may be a prefix, and
		// the executable's name decides.
		if (len(comm) < 15 && comm == name) || (len(comm) == 15 && strings.HasPrefix(name, comm) && f.argv0(pid) == name) {
			pids = append(pids, pid)
		}
	}
	return f.oldest(pids, "name "+name)
}

func (f FS) argv0(pid int) string {
	data, err := kfile.Read(filepath.Join(f.procfs, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	arg0, _, _ := bytes.Cut(data, []byte{0})
	return filepath.Base(string(arg0))
}

func (f FS) oldest(pids []int, what string) (Process, error) {
	var found []Process
	for _, pid := range pids {
		if p, err := f.Process(pid); err == nil {
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		return Process{}, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return slices.MinFunc(found, func(a, b Process) int {
		if a.startTicks != b.startTicks {
			return int(int64(a.startTicks) - int64(b.startTicks))
		}
		return a.PID - b.PID
	}), nil
}
