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
	"sync"
	"syscall"
	"time"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/agent/dispatch"
	"github.com/seed69aca190/edgeagent/agent/router"
	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/collectors/statsd"
	"github.com/seed69aca190/edgeagent/hal/host"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/internal/buildinfo"
	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/update/handoff"
	"github.com/seed69aca190/edgeagent/uplink"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

// Agent is one running edgeagent daemon.
type Agent struct {
	cfg    *config.Config
	log    *slog.Logger
	level  *slog.LevelVar
	statsd *statsd.Server // nil when StatsD is off
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

	sockets, err := handoff.FromEnv(a.log.With("component", "handoff"))
	if err != nil {
		a.log.Warn("inherited sockets ignored", "err", err)
	}
	seq, err := seqfile.Open(filepath.Join(stateDir, "seq"), seqBlock)
	switch {
	case errors.Is(err, seqfile.ErrRecovered):
		a.log.Warn("sequence file was unreadable; sequence resumes from the clock", "err", err)
	case err != nil:
		return err
	}
	spoolDir := a.cfg.Paths.SpoolDir
	if spoolDir == "" {
		spoolDir = filepath.Join(stateDir, "spool")
	}
	sp, err := spool.Open(spool.Options{Dir: spoolDir, MaxBytes: int64(a.cfg.Spool.MaxBytes),
		FsyncInterval: a.cfg.Spool.FsyncInterval, Log: a.log.With("component", "spool")})
	if err != nil {
		return err
	}
	var disp *dispatch.Dispatcher // made below, once the uplink can carry its results
	up, err := uplink.New(uplink.Options{
		Brokers: a.cfg.Uplink.Brokers, Node: node, TopicPrefix: a.cfg.Uplink.TopicPrefix,
		Username: a.cfg.Uplink.Username, Password: a.cfg.Uplink.Password,
		CAFile: a.cfg.Uplink.CAFile, CertFile: a.cfg.Uplink.CertFile, KeyFile: a.cfg.Uplink.KeyFile,
		Keepalive: a.cfg.Uplink.Keepalive, ConnectTimeout: a.cfg.Uplink.ConnectTimeout,
		PublishTimeout: a.cfg.Uplink.PublishTimeout, FlushInterval: a.cfg.Uplink.FlushInterval, MaxBackoff: a.cfg.Uplink.MaxBackoff,
		MaxMessage: int(a.cfg.Uplink.MaxMessage), Spool: sp, Seq: seq, Log: a.log.With("component", "uplink"),
		OnCommand: func(env telemetry.Envelope) { disp.Handle(env) },
	})
	if err != nil {
		sp.Close()
		return err
	}
	console := &logSink{log: a.log.With("component", "telemetry")}
	sched, closeAll, err := a.collectors(teeSink{up, console})
	defer closeAll()
	if err != nil {
		sp.Close()
		return err
	}
	spoolStats := func() (uint64, uint64) {
		st := sp.Stats()
		return uint64(st.Depth()), st.Dropped
	}

	// Producers stop first; the uplink after them, so that the last StatsD
	// flush and heartbeat still reach the spool. Until it runs, what is
	// produced waits in the spool.
	var wg sync.WaitGroup
	defer wg.Wait()
	producers, stopProducers := context.WithCancel(ctx)
	defer stopProducers()
	ctx = producers
	if listen := a.cfg.StatsD.Listen; listen != "" {
		conn, err := sockets.PacketConn("statsd", listen)
		if err != nil {
			sp.Close()
			return err
		}
		srv := statsd.New(conn, statsd.Options{
			FlushInterval: a.cfg.StatsD.FlushInterval,
			MaxSeries:     a.cfg.StatsD.MaxSeries,
			ReadBuffer:    int(a.cfg.StatsD.ReadBuffer),
			Emit:          sched.Publish,
			Log:           a.log.With("component", "statsd"),
		})
		a.statsd = srv
		wg.Go(func() {
			if err := srv.Run(ctx); err != nil {
				a.log.Error("statsd server stopped", "err", err)
			}
		})
	}
	st := &status{sched: sched, uplink: up, statsd: a.statsd, sockets: sockets, seq: seq, node: node,
		version: bi.Version, spoolMax: int64(a.cfg.Spool.MaxBytes), started: time.Now()}
	rt := router.New(sched.Event, a.log.With("component", "router"))
	controlSocket := a.cfg.Control.Socket
	if controlSocket == "" {
		controlSocket = filepath.Join(stateDir, "control.sock")
	}
	control, err := sockets.Listener("control", "unix:"+controlSocket)
	if err != nil {
		sp.Close()
		return err
	}
	wg.Go(func() {
		if err := rt.Serve(ctx, control); err != nil {
			a.log.Error("control socket stopped", "err", err)
		}
	})
	disp, err = dispatch.New(dispatch.Options{
		Node: node, PluginDir: a.cfg.Paths.PluginDir, CacheDir: filepath.Join(stateDir, "commands"),
		Concurrency: a.cfg.Commands.Concurrency, Queue: a.cfg.Commands.Queue, OutputLimit: int(a.cfg.Commands.OutputLimit),
		DefaultTimeout: a.cfg.Commands.Timeout, MaxTimeout: a.cfg.Commands.MaxTimeout,
		Builtins: a.builtins(node, bi.Version, sched, sp, st, rt), Result: up.Result, Log: a.log.With("component", "commands"),
	})
	if err != nil {
		sp.Close()
		return err
	}
	st.disp = disp
	wg.Go(func() { disp.Run(ctx) })
	if listen := a.cfg.HTTP.Listen; listen != "" {
		l, err := sockets.Listener("http", listen)
		if err != nil {
			sp.Close()
			return err
		}
		wg.Go(func() { st.serve(ctx, l, a.log.With("component", "http")) })
	}
	sockets.Close() // inherited sockets the configuration no longer has
	if iv := a.cfg.Collect.Agent; iv > 0 {
		sched.Add(collectors.NewAgent(collectors.AgentOptions{Sysfs: a.cfg.Paths.Sysfs, Procfs: a.cfg.Paths.Procfs,
			Scheduler: sched, StatsD: a.statsd, Spool: spoolStats}), iv, 0)
	}

	bootID, err := host.New(a.cfg.Paths.Sysfs, a.cfg.Paths.Procfs).BootID()
	if err != nil {
		a.log.Warn("boot id unknown", "err", err)
	}
	upCtx, stopUplink := context.WithCancel(context.WithoutCancel(ctx))
	defer stopUplink()
	upDone := make(chan error, 1)
	go func() { upDone <- up.Run(upCtx) }()
	started := time.Now()
	wg.Go(func() { sched.Run(ctx) })
	wg.Go(func() {
		sched.RunHeartbeat(ctx, collectors.HeartbeatOptions{Node: node, Version: bi.Version, BootID: bootID,
			Interval: a.cfg.Heartbeat.Interval, Seq: seq, Started: started, Spool: spoolStats})
	})
	<-ctx.Done()
	a.log.Info("edgeagent stopping", "reason", context.Cause(ctx))
	wg.Wait()
	stopUplink()
	if err := <-upDone; err != nil {
		a.log.Error("uplink", "err", err)
	}
	a.log.Info("edgeagent stopped", "batches", console.batches.Load(), "points", console.points.Load(),
		"events", console.events.Load(), "heartbeats", console.heartbeats.Load(), "next_seq", seq.Peek(),
		"spooled", sp.Stats().Depth())
	return nil
}

// seqBlock sequence numbers are reserved per write of the sequence file: at
// one heartbeat per 10 s that is one flash write every 2¾ hours.
const seqBlock = 1000

// collectors builds the scheduler with every collector the configuration
// turns on. closeAll releases what they hold, also after an error.
func (a *Agent) collectors(sink collectors.Sink) (*collectors.Scheduler, func(), error) {
	c := a.cfg
	var closers []func() error
	closeAll := func() {
		for _, f := range closers {
			f()
		}
	}
	sched := collectors.New(collectors.Options{Sink: sink, Include: c.Collect.Include, Exclude: c.Collect.Exclude,
		EventBurst: c.Events.Burst, EventEvery: c.Events.RateLimit, Log: a.log.With("component", "collectors")})
	halOpts, err := HALOptions(c, true)
	if err != nil {
		return nil, closeAll, err
	}
	if c.Collect.Host > 0 {
		sched.Add(collectors.NewHost(c.Paths.Sysfs, c.Paths.Procfs), c.Collect.Host, 0)
	}
	if c.Collect.Disk > 0 {
		sched.Add(collectors.NewDisk(c.Paths.Sysfs, c.Paths.Procfs, halOpts.Disks, float64(c.Events.FilesystemFullPercent)), c.Collect.Disk, 0)
	}
	if c.Collect.Net > 0 {
		n, err := collectors.NewNet(nic.Options{Sysfs: c.Paths.Sysfs})
		if err != nil {
			return nil, closeAll, fmt.Errorf("net collector: %w", err)
		}
		closers = append(closers, n.Close)
		sched.Add(n, c.Collect.Net, 0)
	}
	if c.Collect.Tunnel > 0 {
		links, err := nic.Open(nic.Options{Sysfs: c.Paths.Sysfs})
		if err != nil {
			return nil, closeAll, fmt.Errorf("tunnel collector: %w", err)
		}
		closers = append(closers, links.Close)
		sched.Add(collectors.NewTunnel(halOpts.OpenVPN, halOpts.WireGuard, links), c.Collect.Tunnel, 0)
	}
	if c.Collect.Process > 0 && len(c.Services) > 0 {
		var services []collectors.Service
		for _, s := range c.Services {
			services = append(services, collectors.Service{Name: s.Name, PIDFile: s.PIDFile, Unit: s.Unit, Process: s.Process})
		}
		sched.Add(collectors.NewProcesses(c.Paths.Sysfs, c.Paths.Procfs, services), c.Collect.Process, 0)
	}
	if c.Collect.Smart > 0 {
		sched.Add(collectors.NewSmart(c.Paths.Sysfs, c.Paths.Procfs, halOpts.Disks, *halOpts.Smart), c.Collect.Smart, 0)
	}
	return sched, closeAll, nil
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
