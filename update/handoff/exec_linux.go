package handoff

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exec replaces this process's program image with path, keeping its pid (as
// execve does), and passes it every descriptor the registry keeps, in order,
// from 3 on, named in LISTEN_FDNAMES, with LISTEN_FDS, LISTEN_PID (this pid)
// and HANDOFF_UNLINK set in env in place of any earlier ones. Call it as the
// very last step of a reload, with the servers stopped and state flushed.
//
// It first checks that path is a regular file this process may execute and
// that no string holds a NUL byte; then, holding syscall.ForkLock so that no
// child started meanwhile inherits what it passes, it copies every kept
// descriptor above the range. A failure so far is returned and the process
// goes on. Then it moves the copies into place without close-on-exec and
// calls execve. A place that holds the Go runtime's epoll instance or eventfd
// is skipped: threads that run no Go code poll with them until execve ends
// them, and would make the runtime throw. Such a descriptor is passed where
// it is, as a filler that FromEnv closes (an older image closes it as an
// inherited socket nobody asks for). Anything else there is overwritten (the
// runtime's cgroup files, the caller's files), so from then on a failure is
// fatal: Exec writes the reason to stderr and exits with ExecFailedStatus.
// It does not return on success.
func (r *Registry) Exec(path string, argv, env []string) error {
	if err := preflight(path, argv, env); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	slots := r.layout()
	env = listenEnv(env, slots)
	copies := make([]int, len(slots)) // 0: a filler, passed where it is
	for i, k := range slots {
		if k == nil {
			continue
		}
		fd, err := unix.FcntlInt(k.file.Fd(), unix.F_DUPFD_CLOEXEC, firstFD+len(slots))
		if err != nil {
			for _, fd := range copies[:i] {
				if fd != 0 {
					unix.Close(fd)
				}
			}
			return fmt.Errorf("exec %s: copy %s above fd %d: %w", path, k.name, firstFD+len(slots)-1, err)
		}
		copies[i] = fd
	}
	// No way back from here. Until execve ends them, no other goroutine
	// should run: one could use or close a descriptor just overwritten, and
	// so close a passed socket. Hence one P, no garbage collection (the
	// allocations in syscall.Exec start none), a fresh time slice (no
	// preemption before execve) and raw system calls (the P is never handed
	// off).
	runtime.GOMAXPROCS(1)
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(math.MaxInt64)
	runtime.Gosched()
	for i, fd := range copies {
		target := uintptr(firstFD + i)
		var errno syscall.Errno
		if fd == 0 {
			_, _, errno = unix.RawSyscall(unix.SYS_FCNTL, target, unix.F_SETFD, 0)
		} else {
			_, _, errno = unix.RawSyscall(unix.SYS_DUP3, uintptr(fd), target, 0)
		}
		if errno != 0 {
			exitExecFailed(path, fmt.Errorf("pass fd %d: %w", target, errno))
		}
	}
	err := syscall.Exec(path, argv, env)
	exitExecFailed(path, err)
	return err // not reached
}

// layout assigns the kept descriptors to 3, 4, … in order, leaving a nil
// filler where the runtime polls (see Exec).
func (r *Registry) layout() []*kept {
	var slots []*kept
	for i := 0; i < len(r.kept); {
		if runtimePoller(firstFD + len(slots)) {
			slots = append(slots, nil)
			continue
		}
		slots = append(slots, r.kept[i])
		i++
	}
	return slots
}

// runtimePoller reports whether fd is an epoll instance or an eventfd, as
// the runtime's poller uses. Without /proc it cannot tell, and says no.
func runtimePoller(fd int) bool {
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	return err == nil && (target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]")
}

// exitExecFailed ends a process whose descriptors Exec overwrote.
func exitExecFailed(path string, err error) {
	// Not os.Stderr, which could park this goroutine (a pollable stderr) and
	// let others run.
	unix.Write(2, []byte("handoff: exec "+path+" failed after its descriptors were moved; exiting: "+err.Error()+"\n"))
	os.Exit(ExecFailedStatus)
}

// preflight reports why execve(path, argv, env) would fail for reasons that
// can be known beforehand.
func preflight(path string, argv, env []string) error {
	if len(argv) == 0 {
		return errors.New("empty argv")
	}
	for _, list := range [][]string{{path}, argv, env} {
		for _, s := range list {
			if strings.IndexByte(s, 0) >= 0 {
				return fmt.Errorf("%q holds a NUL byte", s)
			}
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if err := unix.Faccessat(unix.AT_FDCWD, path, unix.X_OK, unix.AT_EACCESS); err != nil {
		return fmt.Errorf("not executable by this process: %w", err)
	}
	return nil
}

// listenEnv returns env with the variables that announce slots (nil: a
// filler) in place of any that announced other descriptors.
func listenEnv(env []string, slots []*kept) []string {
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); !isListenVar(k) {
			out = append(out, kv)
		}
	}
	if len(slots) == 0 {
		return out
	}
	var names, unlink []string
	for i, k := range slots {
		if k == nil {
			names = append(names, fillerPrefix+strconv.Itoa(firstFD+i))
			continue
		}
		names = append(names, k.name)
		if k.unlink != "" {
			unlink = append(unlink, k.name)
		}
	}
	out = append(out, "LISTEN_FDS="+strconv.Itoa(len(slots)), "LISTEN_FDNAMES="+strings.Join(names, ":"),
		"LISTEN_PID="+strconv.Itoa(os.Getpid()))
	if len(unlink) > 0 {
		out = append(out, unlinkVar+"="+strings.Join(unlink, ":"))
	}
	return out
}

// closeOnExecAbove2 sets close-on-exec on every descriptor above 2.
func closeOnExecAbove2() error {
	if err := unix.CloseRange(firstFD, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	return closeOnExecListed("/proc/self/fd") // before Linux 5.11
}
