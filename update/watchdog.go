package update

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"
)

// watchMargin is how long the watchdog gives a version on trial beyond its
// health timeout: one that is alive rolls back by itself first, with its
// reason and its log.
const watchMargin = 15 * time.Second

// Watch starts the watchdog of a version on trial in slot, which has
// healthTimeout to become healthy, as a process apart (exe update watchdog
// …) that outlives this image and is not its child for long: it detaches,
// so no zombie is left for an image that does not know it.
func Watch(exe, dir string, pid int, slot string, healthTimeout time.Duration) error {
	deadline := healthTimeout + watchMargin
	cmd := exec.Command(exe, "update", "watchdog", "--detach", dir, strconv.Itoa(pid), slot, deadline.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd.Run() // the detaching parent exits at once
}

// Watchdog is the body of `edgeagent update watchdog`. With detach it
// starts itself again without and returns. Otherwise it waits until the
// version on trial in slot is no longer on trial (committed or rolled back)
// or pid is gone, and kills pid when the deadline passes first: a version
// that hangs cannot roll back by itself. Init then starts the agent again
// and the start-up decision counts the attempt.
func Watchdog(detach bool, dir string, pid int, slot string, deadline time.Duration) error {
	if detach {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cmd := exec.Command(exe, "update", "watchdog", dir, strconv.Itoa(pid), slot, deadline.String())
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		return cmd.Start()
	}
	debug.SetGCPercent(20) // it idles for a minute: keep it small
	onTrial := func() bool {
		st, err := LoadState(dir)
		return err != nil || (st.Trial != nil && st.Trial.Slot == slot)
	}
	end := time.Now().Add(deadline)
	for time.Now().Before(end) {
		time.Sleep(250 * time.Millisecond)
		if !onTrial() || syscall.Kill(pid, 0) != nil {
			return nil
		}
	}
	if !onTrial() {
		return nil
	}
	note := fmt.Sprintf("%s watchdog: the version on trial in slot %s was not healthy after %v; killing pid %d\n",
		time.Now().UTC().Format(time.RFC3339), slot, deadline, pid)
	if f, err := os.OpenFile(filepath.Join(dir, trialLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
		f.WriteString(note)
		f.Close()
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// TrialLog opens the log of a version on trial when exe is one: what it
// logs and its crash output go there too, so that a rollback can quote the
// end of it. It returns nil otherwise.
func TrialLog(dir, exe string) *os.File {
	st, err := LoadState(dir)
	if err != nil || st.Trial == nil || st.Trial.Slot != runningSlot(dir, exe) {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(dir, trialLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil
	}
	debug.SetCrashOutput(f, debug.CrashOptions{})
	return f
}
