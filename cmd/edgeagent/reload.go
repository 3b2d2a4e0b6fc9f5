package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/seed69aca190/edgeagent/internal/cli"
)

var reloadCommand = cli.Command{
	Name:    "reload",
	Summary: "replace the running agent with a new image of its binary, same pid, nothing lost",
	Run:     reloadAgent,
}

const reloadHelp = `Reload the running agent: it checks its configuration again, quiesces (the
requests it took run and answer, local services are handed over, StatsD and
the spool are flushed to flash), tells the controller it is upgrading, and
replaces itself with a new image of its binary in the same process, its
sockets handed over. This waits until the new image is ready.

The configuration (--config, as for run) is checked here first: one that does
not check is refused before anything stops (exit 2, with the problems). The
agent refuses, and runs on, one that checks but would stop the new image at
its start (TLS or node id files it cannot read, another state directory). The
agent is found by the pid in its state directory's edgeagent.lock, and only
while it holds the directory's lock; sending it SIGUSR1 does the same without
waiting.

Exit status: 0 reloaded, 1 failed (no agent running, it died, or no answer
within --timeout), 2 refused (the configuration does not check, or would
stop the new image).`

func reloadAgent(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("reload", "edgeagent reload [--config PATH] [--state-dir DIR] [--timeout D]", reloadHelp, stdout)
	configPath := flags.String("config", defaultConfigPath, "YAML config file of the running agent")
	stateDir := flags.String("state-dir", "", "its state directory, when given to run as a flag (paths.state_dir)")
	timeout := flags.Duration("timeout", 2*time.Minute, "how long to wait for the new image (requests still running are waited for)")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	cfg, ok := commandConfig(flags, *configPath, stderr)
	if !ok {
		return cli.ExitUsage
	}
	dir := cfg.Paths.StateDir
	if *stateDir != "" {
		dir = *stateDir
	}
	lockPath := filepath.Join(dir, "edgeagent.lock")
	before, err := readLockFile(lockPath)
	if err == nil {
		// After a crash the pid in edgeagent.lock may be another process's
		// now, which SIGUSR1 would kill: only an agent holding the state
		// directory's lock is signalled.
		err = lockHeld(dir)
	}
	if err != nil {
		fmt.Fprintf(stderr, "edgeagent reload: no agent found: %v\n", err)
		return cli.ExitFailure
	}
	if err := syscall.Kill(before.pid, syscall.SIGUSR1); err != nil {
		fmt.Fprintf(stderr, "edgeagent reload: signal pid %d: %v\n", before.pid, err)
		return cli.ExitFailure
	}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		now, err := readLockFile(lockPath)
		switch {
		case syscall.Kill(before.pid, 0) != nil:
			fmt.Fprintf(stderr, "edgeagent reload: the agent (pid %d) is gone; its log says why "+
				"(the init script's reload starts it again)\n", before.pid)
			return cli.ExitFailure
		case err != nil || now == before:
			continue
		case now.generation > before.generation:
			fmt.Fprintf(stdout, "reloaded: pid %d, image %d\n", now.pid, now.generation)
			return cli.ExitOK
		case strings.HasPrefix(now.note, "reload refused"):
			fmt.Fprintf(stderr, "edgeagent reload: %s\n", now.note)
			return cli.ExitUsage
		}
	}
	fmt.Fprintf(stderr, "edgeagent reload: no new image of pid %d within %v\n", before.pid, *timeout)
	return cli.ExitFailure
}

// lockHeld reports, as an error, that no agent holds the state directory
// dir: it tries the lock the agent takes (flock on the directory itself,
// agent/state.go) and, when it gets it, releases it at once.
func lockHeld(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	switch err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); {
	case errors.Is(err, syscall.EWOULDBLOCK):
		return nil
	case err != nil:
		return fmt.Errorf("lock %s: %w", dir, err)
	}
	syscall.Flock(int(d.Fd()), syscall.LOCK_UN)
	return fmt.Errorf("not running: no agent holds %s", dir)
}

// lockFile is what the agent writes into edgeagent.lock: its pid, the
// image it runs (0 at a start, one more at each reload), and a note (why the
// last reload was refused).
type lockFile struct {
	pid, generation int
	note            string
}

func readLockFile(path string) (lockFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return lockFile{}, err
	}
	lines := strings.SplitN(strings.TrimRight(string(data), "\n"), "\n", 3)
	var lf lockFile
	lf.pid, err = strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || lf.pid <= 0 {
		return lockFile{}, fmt.Errorf("%s holds no pid", path)
	}
	if len(lines) > 1 {
		lf.generation, _ = strconv.Atoi(lines[1])
	}
	if len(lines) > 2 {
		lf.note = lines[2]
	}
	if errors.Is(syscall.Kill(lf.pid, 0), syscall.ESRCH) {
		return lockFile{}, fmt.Errorf("pid %d in %s is not running", lf.pid, path)
	}
	return lf, nil
}
