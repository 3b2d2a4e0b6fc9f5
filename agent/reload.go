package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/agent/router"
	"github.com/seed69aca190/edgeagent/collectors/statsd"
	"github.com/seed69aca190/edgeagent/internal/atomicfile"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// A reload replaces the running agent with a new image of its binary in the
// same process (execve: the pid stays), handing its listening sockets and its
// state directory's lock to it (update/handoff), so that no datagram,
// connection, record, command or event is lost and the controller sees the
// node "upgrading", never offline. The phases, in handOver's order:
//
//  1. commands: new requests are left with the broker (not acknowledged,
//     delivered to the next image's session); those taken run and answer;
//  2. local services are handed over (no deregistration), the router stops;
//  3. producers stop: collectors, the heartbeat; events held by the rate
//     limit leave;
//  4. the uplink flushes, writes the spool to flash, gets its PUBACKs, says
//     "upgrading" (retained) and disconnects cleanly (no last will);
//  5. the servers stop: StatsD (its last window flushed, straight to the
//     spool, its gauges kept), the status endpoint (each connection taken is
//     answered); they run until now so that their sockets go unread only
//     from here to the next image's start, not while the uplink waits for
//     the broker;
//  6. what the next image takes over is written (services, gauges, when
//     StatsD last read) and the spool synced;
//  7. exec, with the sockets and the lock as LISTEN_FDS.
//
// Every socket's queue stays in the kernel throughout: the registry holds a
// copy of each, so a server closing its own descriptor does not close it.

// reloadBack is how long the controller is told to wait for the node.
const reloadBack = 30 * time.Second

// generationEnv counts the images this process has run, across reloads.
const generationEnv = "EDGEAGENT_GENERATION"

// Reloaded reports whether this process image was started by a reload (or
// an upgrade's switch), not by init: it then runs the binary chosen for it.
func Reloaded() bool { return os.Getenv(generationEnv) != "" }

// handover is what one image leaves the next in the state directory.
type handover struct {
	Services []router.ServiceInfo `json:"services,omitempty"`
	Gauges   []statsd.Gauge       `json:"gauges,omitempty"`
	// What the controller was told is wrong, so the next image does not
	// announce it again: failing collectors, degraded parts.
	Failing  []string                    `json:"failing,omitempty"`
	Degraded map[string]telemetry.Health `json:"degraded,omitempty"`
	// When the StatsD server last read its socket: the next image logs how
	// long the socket went unread (under steady traffic, the reload's gap).
	StatsDLastRead time.Time `json:"statsd_last_read,omitzero"`
	// Where the sequence numbers stand, so the reload leaves no gap in
	// them (seqfile.Resume).
	SeqNext  uint64 `json:"seq_next,omitempty"`
	SeqLimit uint64 `json:"seq_limit,omitempty"`
}

func handoverPath(dir string) string { return filepath.Join(dir, "handover.json") }

// readHandover takes what the previous image handed over; nil when there is
// none. The file stays until this image is ready (handoverTaken): one killed
// before that leaves it to the agent started afresh, which is not a
// reload but still takes the gauges.
func readHandover(dir string, log *slog.Logger) *handover {
	path := handoverPath(dir)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var h handover
	if err == nil {
		err = json.Unmarshal(data, &h)
	}
	if err != nil {
		log.Warn("hand-over from the previous image unreadable; its gauges and services are not restored", "err", err)
		return nil
	}
	return &h
}

// handoverTaken removes the hand-over once this image is ready, so that no
// later start takes it again.
func handoverTaken(dir string) { os.Remove(handoverPath(dir)) }

// Reload asks the running agent to replace itself with a new image of its
// binary. check runs first, on Run's goroutine: when it fails (the
// configuration does not check) the reload is refused with the reason in
// the log and the state directory, and the agent runs on. It reports false
// when a reload is already pending.
func (a *Agent) Reload(check func() error) bool {
	select {
	case a.reloads <- reloadRequest{check: check}:
		return true
	default:
		return false
	}
}

// reloadRequest is a reload (check the configuration it will run with) or
// an upgrade's switch (binary, which runs version).
type reloadRequest struct {
	check           func() error
	binary, version string
}

// checkReload is a reload's pre-check, before anything stops: the state
// lock can be handed over, the configuration checks (r.check), and the
// binary it will exec (r's, or this one) is a regular file this process may
// execute. It returns that binary.
func (a *Agent) checkReload(p *parts, r reloadRequest) (string, error) {
	if p.st.lockKept != nil {
		return "", fmt.Errorf("the state directory's lock cannot be handed over (it would close at the exec): %w", p.st.lockKept)
	}
	if r.check != nil {
		if err := r.check(); err != nil {
			return "", err
		}
	}
	exe := r.binary
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return "", fmt.Errorf("the running binary: %w", err)
		}
	}
	if err := checkBinary(exe); err != nil {
		return "", fmt.Errorf("binary %s: %w", exe, err)
	}
	return exe, nil
}

// checkBinary reports why path cannot be exec'd by this process, or nil.
func checkBinary(path string) error {
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

// handOver quiesces the agent and replaces it in this process with exe.
// It returns an error only when that failed before the exec: the caller
// exits, with everything on flash, and whatever restarts the agent (the
// init script's reload, when it ran it; an inittab respawn line) finds it
// there. When ctx ends (the agent is being stopped) while commands drain or
// before the uplink is handed over, it stops cleanly instead (stop: the
// controller is told "offline", clean) and returns nil; after that, the
// session is over: it stops without the exec, and the controller, told
// "upgrading", raises its presence alert at the deadline.
func (a *Agent) handOver(ctx context.Context, p *parts, r reloadRequest, exe string) error {
	began := time.Now()
	a.log.Info("reloading: quiescing", "generation", p.st.generation)
	// How long each phase took, for the log line before the exec.
	var phases []any
	last := began
	lap := func(phase string) {
		now := time.Now()
		phases = append(phases, phase, now.Sub(last).Round(10*time.Microsecond))
		last = now
	}

	// stopped ends the reload when the agent is told to stop before the
	// uplink is handed over: a clean stop, from whatever has quiesced.
	stopped := func() bool {
		if ctx.Err() == nil {
			return false
		}
		a.log.Info("edgeagent stopping during a reload; no new image", "reason", context.Cause(ctx))
		a.stop(p)
		return true
	}

	p.quiesce()
	// Running plugins may take up to commands.max_timeout: a stop meanwhile
	// is not waited out.
	if err := p.disp.Drain(ctx); err != nil && ctx.Err() == nil {
		a.log.Warn("requests still running at the reload", "err", err)
	}
	if stopped() {
		return nil
	}
	lap("commands")

	routerCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	services := p.rt.Handover(routerCtx)
	cancel()
	p.routerSessions()
	lap("services")

	p.stopProducers()
	p.wg.Wait()
	p.sched.ReleaseHeld()
	lap("producers")
	if stopped() {
		return nil
	}

	upCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := p.up.Handover(upCtx, reloadBack, r.version); err != nil {
		a.log.Warn("uplink hand-over incomplete", "err", err)
	}
	cancel()
	<-p.upDone
	lap("uplink")

	// StatsD's last window goes straight to the spool now.
	p.stopServers()
	p.servers.Wait()
	lap("servers")

	h := handover{Services: services, Gauges: p.gauges, Failing: p.sched.Failing(),
		Degraded: p.hl.reported(), StatsDLastRead: p.statsdLastRead}
	h.SeqNext, h.SeqLimit = p.st.seq.Reserved()
	data, err := json.Marshal(h)
	if err == nil {
		err = atomicfile.WriteFile(handoverPath(p.st.dir), data, 0o640)
	}
	if err != nil {
		a.log.Warn("hand-over not written; local services re-register and gauges start afresh", "err", err)
	}
	p.st.save()
	if err := p.sp.Sync(); err != nil {
		a.log.Error("spool not all on flash at the reload", "err", err)
	}
	lap("written")

	if ctx.Err() != nil {
		// Stopped after the uplink's hand-over: no new image. The session
		// is over (the controller was told "upgrading"); what was handed
		// over is on flash for the agent started next.
		a.log.Info("edgeagent stopping during a reload, after the hand-over; no new image", "reason", context.Cause(ctx))
		if err := p.sp.Close(); err != nil {
			a.log.Error("spool", "err", err)
		}
		p.sockets.Stop()
		a.log.Info("edgeagent stopped", "next_seq", p.st.seq.Peek())
		return nil
	}
	env := append(withoutEnv(os.Environ(), generationEnv), generationEnv+"="+strconv.Itoa(p.st.generation+1))
	a.log.Info("reloading: exec", append([]any{"binary", exe, "quiesced_in", time.Since(began).Round(10 * time.Microsecond)},
		phases...)...)
	return fmt.Errorf("reload: %w", p.sockets.Exec(exe, os.Args, env))
}

// withoutEnv returns env without the variable key.
func withoutEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// Reconfigure applies, in place, what can change without a reload from the
// configuration load reads (again, at SIGHUP): the log level and the
// collectors' intervals; turning a collector on or off is logged as needing
// a reload, and a configuration that does not check is refused with the
// reason in the log. It reports false when a request is already pending.
func (a *Agent) Reconfigure(load func() (*config.Config, error)) bool {
	select {
	case a.reconfig <- load:
		return true
	default:
		return false
	}
}

// apply is Reconfigure's work, on Run's goroutine.
func (a *Agent) apply(p *parts, load func() (*config.Config, error)) {
	cfg, err := load()
	if err != nil {
		a.log.Error("configuration not applied; it does not check", "err", err)
		return
	}
	if level := parseLevel(cfg.Log.Level); level != a.level.Level() {
		a.log.Info("log level changed", "from", a.level.Level(), "to", level)
		a.level.Set(level)
	}
	a.cfg.Log.Level = cfg.Log.Level
	old, now := &a.cfg.Collect, cfg.Collect
	for _, c := range []struct {
		name string
		old  *time.Duration
		now  time.Duration
	}{
		{"host", &old.Host, now.Host}, {"disk", &old.Disk, now.Disk}, {"net", &old.Net, now.Net},
		{"tunnel", &old.Tunnel, now.Tunnel}, {"process", &old.Process, now.Process},
		{"smart", &old.Smart, now.Smart}, {"agent", &old.Agent, now.Agent},
	} {
		switch {
		case *c.old == c.now:
		case *c.old == 0 || c.now == 0:
			a.log.Warn("turning a collector on or off takes a reload", "collector", c.name, "interval", c.now)
		case p.sched.SetInterval(c.name, c.now):
			a.log.Info("collector interval changed", "collector", c.name, "from", *c.old, "to", c.now)
			*c.old = c.now
		}
	}
}
