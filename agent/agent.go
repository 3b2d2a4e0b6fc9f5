package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/internal/buildinfo"
)

// Agent is one running edgeagent daemon.
type Agent struct {
	cfg   *config.Config
	log   *slog.Logger
	level *slog.LevelVar
}

// New returns an agent for cfg that logs to w in the configured format.
func New(cfg *config.Config, w io.Writer) *Agent {
	level := new(slog.LevelVar)
	level.Set(parseLevel(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return &Agent{cfg: cfg, log: slog.New(h), level: level}
}

// parseLevel maps a validated log.level to its slog level.
func parseLevel(s string) slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(s)) // config.Validate allowed only known names
	return l
}

// Run runs the agent until ctx is cancelled. Cancellation is a clean stop and
// returns nil.
func (a *Agent) Run(ctx context.Context) error {
	stateDir := a.cfg.Paths.StateDir
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	unlock, err := lockStateDir(stateDir)
	if err != nil {
		return err
	}
	defer unlock()

	node, err := a.cfg.NodeID()
	if err != nil {
		return err
	}
	bi := buildinfo.Read("edgeagent")
	a.log.Info("edgeagent started", "version", bi.Version, "commit", bi.Commit,
		"platform", bi.Platform(), "node", node, "state_dir", stateDir, "pid", os.Getpid())

	<-ctx.Done()
	a.log.Info("edgeagent stopping", "reason", context.Cause(ctx))
	return nil
}

// lockStateDir takes an exclusive lock on the state directory so that two agents
// never share sequence numbers or a spool. The lock file records the holder's pid.
func lockStateDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "edgeagent.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state dir %s is in use by another edgeagent (pid %s)", dir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
