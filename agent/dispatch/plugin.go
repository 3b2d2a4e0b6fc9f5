package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// pluginName is what a plugin may be called: a plain file name, so that no
// request can reach outside the plugin directory.
var pluginName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// killGrace is how long a plugin's process group has between SIGTERM and
// SIGKILL at its deadline.
const killGrace = 2 * time.Second

// pluginEnv is the whole environment a plugin gets: nothing of the agent's.
var pluginEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/"}

// checkPlugin returns the plugin's path, or why it may not run: a bad name,
// a missing file, or a directory or file that someone other than root or the
// agent's user could have written.
func checkPlugin(dir, name string) (string, error) {
	if !pluginName.MatchString(name) || name == "." || name == ".." {
		return "", fmt.Errorf("%q is not a plugin name (letters, digits, '.', '_' and '-'; no path)", name)
	}
	if err := safeOwner(dir, true); err != nil {
		return "", fmt.Errorf("plugin directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no plugin or built-in named %q", name)
	}
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("plugin %s is not a regular file (symbolic links are not followed)", name)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("plugin %s is not executable", name)
	}
	if err := safeOwner(path, false); err != nil {
		return "", fmt.Errorf("plugin %s: %w", name, err)
	}
	return path, nil
}

// safeOwner refuses a file or directory that is not owned by root or by the
// agent's user, or that group or others may write.
func safeOwner(path string, dir bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if dir && !fi.IsDir() {
		return errors.New("is not a directory")
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("owner unknown")
	}
	if uid := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != uid {
		return fmt.Errorf("is owned by uid %d, not root or the agent (uid %d)", st.Uid, uid)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("is writable by group or others (mode %04o); chmod go-w", fi.Mode().Perm())
	}
	return nil
}

// capped keeps the first limit bytes written and counts the rest.
type capped struct {
	limit int
	buf   []byte
	total uint64
}

func (c *capped) Write(p []byte) (int, error) {
	c.total += uint64(len(p))
	if room := c.limit - len(c.buf); room > 0 {
		c.buf = append(c.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) output() telemetry.Output {
	return telemetry.Output{Data: c.buf, Truncated: c.total > uint64(len(c.buf)), Total: c.total}
}

// runPlugin runs the plugin at path with args, directly (no shell), in its
// own process group, with a clean environment and the plugin directory as
// working directory. At the deadline, or when the agent stops (ctx is
// cancelled), the whole group gets SIGTERM, then SIGKILL killGrace later;
// when the plugin exits, whatever it left running in its group is killed
// too, so nothing outlives the request.
func runPlugin(ctx context.Context, path string, args []string, limit int) telemetry.CommandResult {
	res := telemetry.CommandResult{ExitCode: -1, Started: time.Now()}
	cmd := exec.Command(path, args...)
	cmd.Dir = filepath.Dir(path)
	cmd.Env = pluginEnv
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, stderr := &capped{limit: limit}, &capped{limit: limit}
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	cmd.Stdout, cmd.Stderr = outW, errW
	if err := cmd.Start(); err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		res.Status, res.Reason = telemetry.StatusFailed, "start: "+err.Error()
		return res
	}
	outW.Close()
	errW.Close()
	var readers sync.WaitGroup
	readers.Go(func() { io.Copy(stdout, outR); outR.Close() })
	readers.Go(func() { io.Copy(stderr, errR); errR.Close() })

	pgid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var err error
	timedOut := false
	select {
	case err = <-exited:
	case <-ctx.Done():
		timedOut = true
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case err = <-exited:
		case <-time.After(killGrace):
			syscall.Kill(-pgid, syscall.SIGKILL)
			err = <-exited
		}
	}
	// Grandchildren left in the group (a daemonised helper) go too; their
	// hold on the output pipes would otherwise keep the readers waiting.
	syscall.Kill(-pgid, syscall.SIGKILL)
	readers.Wait()

	res.DurationMs = time.Since(res.Started).Milliseconds()
	res.Stdout, res.Stderr = stdout.output(), stderr.output()
	var exit *exec.ExitError
	switch {
	case timedOut && errors.Is(ctx.Err(), context.DeadlineExceeded):
		res.Status, res.Reason = telemetry.StatusTimedOut, "killed at the deadline"
	case timedOut:
		res.Status, res.Reason = telemetry.StatusFailed, "killed: the agent stopped while it ran"

	case err == nil:
		res.Status, res.ExitCode = telemetry.StatusOK, 0
	case errors.As(err, &exit):
		res.Status, res.ExitCode = telemetry.StatusFailed, exit.ExitCode()
		res.Reason = exit.String()
	default:
		res.Status, res.Reason = telemetry.StatusFailed, err.Error()
	}
	return res
}

// Plugin is one entry of the plugin directory, as 'edgeagent plugins' lists it.
type Plugin struct {
	Name    string `json:"name"`
	Problem string `json:"problem,omitempty"` // why it would be refused; empty when it may run
}

// Plugins lists the plugin directory with the verdict of the checks made
// before every run. A directory that may not be used is an error.
func Plugins(dir string) ([]Plugin, error) {
	if err := safeOwner(dir, true); err != nil {
		return nil, fmt.Errorf("plugin directory %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Plugin
	for _, e := range entries {
		p := Plugin{Name: text.EscapeString(e.Name())} // as a result would name it, never as JSON's U+FFFD
		if _, err := checkPlugin(dir, e.Name()); err != nil {
			p.Problem = text.EscapeString(err.Error())
		}
		out = append(out, p)
	}
	return out, nil
}
