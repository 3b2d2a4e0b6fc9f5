package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/agent/dispatch"
	"github.com/seed69aca190/edgeagent/agent/router"
	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/collectors/statsd"
	"github.com/seed69aca190/edgeagent/hal/host"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/internal/buildinfo"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/update"
	"github.com/seed69aca190/edgeagent/update/handoff"
	"github.com/seed69aca190/edgeagent/uplink"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

// Agent is one running edgeagent daemon.
type Agent struct {
	reloads  chan reloadRequest                  // Reload's requests, and upgrades' switches
	reconfig chan func() (*config.Config, error) // Reconfigure's
	cfg      *config.Config
	log      *slog.Logger
	level    *slog.LevelVar
	logFault string                        // why log.output could not be used; stderr serves instead
	statsd   atomic.Pointer[statsd.Server] // nil until its socket is bound, or when StatsD is off
}

// New returns an agent for cfg that logs in the configured format to
// log.output: stderr (w), syslog or a file. When that output cannot be
// opened the agent logs to w and reports itself degraded.
func New(cfg *config.Config, w io.Writer) *Agent {
	a := &Agent{cfg: cfg, level: new(slog.LevelVar), reloads: make(chan reloadRequest, 1),
		reconfig: make(chan func() (*config.Config, error), 1)}
	a.level.Set(parseLevel(cfg.Log.Level))
	out, err := logOutput(cfg.Log.Output, w)
	if err != nil {
		a.logFault = err.Error()
		out = w
	}
	opts := &slog.HandlerOptions{Level: a.level}
	if _, ok := out.(syslogWriter); ok {
		opts.ReplaceAttr = dropTime // syslog stamps each line itself
	}
	if exe, err := os.Executable(); err == nil {
		// A version on trial logs to the slots directory too, so that its
		// rollback can quote the end of its log (update.TrialLog).
		if f := update.TrialLog(cfg.SlotsDir(), exe); f != nil {
			out = io.MultiWriter(out, f)
		}
	}
	var h slog.Handler = slog.NewTextHandler(out, opts)
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(out, opts)
	}
	a.log = slog.New(h)
	if err != nil {
		a.log.Warn("log output unusable; logging to stderr", "err", err)
	}
	return a
}

// logOutput opens where the log goes: stderr (w), syslog (the local
// daemon's socket; BusyBox syslogd serves it), or a file appended to.
func logOutput(output string, w io.Writer) (io.Writer, error) {
	switch output {
	case "", "stderr":
		return w, nil
	case "syslog":
		s, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "edgeagent")
		if err != nil {
			return nil, fmt.Errorf("log.output syslog: %w", err)
		}
		return syslogWriter{s}, nil
	}
	f, err := os.OpenFile(output, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log.output: %w", err)
	}
	// A crash (a panic's trace) goes to the log too, not only to stderr,
	// which init sends to /dev/null.
	if err := debug.SetCrashOutput(f, debug.CrashOptions{}); err != nil {
		return nil, fmt.Errorf("log.output: crash output: %w", err)
	}
	return f, nil
}

// syslogWriter sends each log line at the severity its level names (the
// handlers write one line per record, the level first once the time is
// dropped), so that syslogd can file warnings and errors apart.
type syslogWriter struct{ w *syslog.Writer }

func (s syslogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	var err error
	switch {
	case hasLevel(line, "ERROR"):
		err = s.w.Err(line)
	case hasLevel(line, "WARN"):
		err = s.w.Warning(line)
	case hasLevel(line, "DEBUG"):
		err = s.w.Debug(line)
	default:
		err = s.w.Info(line)
	}
	return len(p), err
}

// hasLevel reports whether a text or JSON log line starts with level.
func hasLevel(line, level string) bool {
	return strings.HasPrefix(line, "level="+level) || strings.HasPrefix(line, `{"level":"`+level)
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// parseLevel maps a validated log.level to its slog level.
func parseLevel(s string) slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(s)) // config.Validate allowed only known names
	return l
}

// Run runs the agent until ctx is cancelled, or until a reload (Reload)
// replaces it with a new image of itself in this process. Cancellation is a
// clean stop and returns nil, also during a reload (no new image then); a
// reload does not return otherwise unless it failed, with the error logged. Run
// fails only when the agent would be useless (ErrUnusable: no state
// directory, TLS configured without its files, a provisioned id file that
// cannot be read) or another agent holds the state directory; every optional
// part that is missing (a netlink family, a port held by another daemon,
// smartctl, a read-only or full data partition) degrades it instead, with
// the reason in the heartbeat and /healthz, and is tried again until it works.
//
// Its phases: open (state, sockets, spool, uplink, collectors, dispatcher),
// start (servers, collectors, heartbeat, uplink), then stop, or quiesce and
// hand over (reload.go).
func (a *Agent) Run(ctx context.Context) error {
	p, err := a.open()
	if err != nil {
		return err
	}
	defer p.close()
	a.start(ctx, p)
	for {
		select {
		case <-ctx.Done():
			a.log.Info("edgeagent stopping", "reason", context.Cause(ctx))
			a.stop(p)
			return nil
		case load := <-a.reconfig:
			a.apply(p, load)
		case r := <-a.reloads:
			exe, err := a.checkReload(p, r)
			if err != nil {
				a.log.Error("reload refused; the agent runs on unchanged", "err", err)
				p.st.markReload(err)
				continue
			}
			if err := a.handOver(ctx, p, r, exe); err != nil {
				// Logged here: under init, stderr may go nowhere.
				a.log.Error("reload failed before the exec; the agent exits", "err", err)
				return err
			}
			return nil // stopped during the reload, cleanly
		}
	}
}

// parts is what Run opened, for its phases.
type parts struct {
	bi       buildinfo.Info
	st       *state
	sockets  *handoff.Registry
	sp       *spool.Spool
	up       *uplink.Uplink
	sched    *collectors.Scheduler
	hl       *health
	stat     *status
	rt       *router.Router
	disp     *dispatch.Dispatcher
	console  *logSink
	instance string
	upd      *update.Manager
	handed   *handover      // what the previous image handed over, if anything
	gauges   []statsd.Gauge // what the StatsD server remembered when it stopped
	// when it last read its socket
	statsdLastRead time.Time

	closers   []func() error
	quiescing atomic.Bool // update offers are left with the broker (commands: the dispatcher's Quiesce)

	wg             sync.WaitGroup // producers: collectors, heartbeat, dispatcher, the router
	stopProducers  context.CancelFunc
	servers        sync.WaitGroup // StatsD and the status endpoint: a reload stops them last
	stopServers    context.CancelFunc
	stopUplink     context.CancelFunc
	upDone         chan error
	routerSessions context.CancelFunc // the router's serving, ended apart from the producers at a reload
}

// quiesce stops taking commands and update offers: they are left with the
// broker (not acknowledged), for the next image or the restarted agent.
func (p *parts) quiesce() {
	p.quiescing.Store(true)
	p.disp.Quiesce()
}

func (p *parts) close() {
	for _, f := range slices.Backward(p.closers) {
		f()
	}
}

// open makes every part, in dependency order; nothing runs yet.
func (a *Agent) open() (*parts, error) {
	p := &parts{bi: buildinfo.Read("edgeagent"), instance: instanceID()}
	sockets, err := handoff.FromEnv(a.log.With("component", "handoff"))
	if err != nil {
		a.log.Warn("inherited descriptors ignored", "err", err)
	}
	p.sockets = sockets
	p.st, err = openState(a.cfg, p.bi.Built(), sockets, a.log.With("component", "state"))
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, func() error { p.st.close(); return nil })
	a.log.Info("edgeagent started", "version", p.bi.Version, "commit", p.bi.Commit, "platform", p.bi.Platform(),
		"node", p.st.node, "state_dir", p.st.dir, "pid", os.Getpid(), "generation", p.st.generation)
	p.handed = readHandover(p.st.dir, a.log)
	if p.handed != nil && p.st.generation > 0 && !p.st.seq.Resume(p.handed.SeqNext, p.handed.SeqLimit) {
		// Only an image exec'd by a reload resumes: one started afresh
		// after a kill does not know what the killed image sent.
		a.log.Debug("sequence numbers resume at the stored bound", "next", p.handed.SeqNext, "limit", p.handed.SeqLimit)
	}
	if p.sp, err = a.openSpool(p.st); err != nil {
		p.close()
		return nil, err
	}
	p.up, err = a.newUplink(p.st, p.sp, p.instance, func(env telemetry.Envelope) bool {
		if env.Kind == telemetry.KindUpdateOffer {
			if p.quiescing.Load() {
				return false
			}
			a.offer(p, env)
			return true
		}
		// The dispatcher's own gate: a request it reports taken is one
		// that its Drain waits for (quiesce).
		return p.disp.Handle(env)
	})
	if err != nil {
		p.sp.Close()
		p.close()
		return nil, err
	}
	p.console = &logSink{log: a.log.With("component", "telemetry")}
	var closeCollectors func()
	p.sched, closeCollectors = a.collectors(teeSink{p.up, p.console})
	p.closers = append(p.closers, func() error { closeCollectors(); return nil })
	p.hl = newHealth(p.sched, a.log.With("component", "health"))
	a.probeHealth(p.hl, p.st, p.sp, p.up)
	if q := p.sp.Stats().Quarantined; q > 0 {
		p.sched.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Warning, Kind: "spool", Subject: "segments",
			New: "quarantined", Message: fmt.Sprintf("%d spool segments could not be read (bad flash?) and were set aside; "+
				"their records are lost", q)})
	}
	p.stat = &status{sched: p.sched, uplink: p.up, statsd: a.statsd.Load, sockets: sockets, seq: p.st.seq, health: p.hl,
		node: p.st.node, version: p.bi.Version, started: time.Now()}
	p.rt = router.New(p.sched.Event, a.log.With("component", "router"))
	p.disp = a.newDispatcher(p.st, p.sched, p.sp, p.stat, p.rt, p.up)
	p.stat.disp = p.disp
	p.upd = a.newUpdates(p)
	p.hl.probe(func() []problem {
		if err := p.disp.Fault(); err != nil {
			return []problem{{part: "commands", reason: "not persisted (a request repeated after a restart could run again): " + err.Error()}}
		}
		return nil
	})
	if iv := a.cfg.Collect.Agent; iv > 0 {
		p.sched.Add(collectors.NewAgent(collectors.AgentOptions{Sysfs: a.cfg.Paths.Sysfs, Procfs: a.cfg.Paths.Procfs,
			Scheduler: p.sched, StatsD: a.statsd.Load, Spool: spoolCounts(p.sp),
			Escaped: func() uint64 { return p.up.Status().Escaped }}), iv, 0)
	}
	return p, nil
}

// start runs every part: the servers on their sockets, the collectors, the
// heartbeat, the dispatcher and the uplink. Producers stop first and the
// uplink after them, so that the last StatsD flush and heartbeat still reach
// the spool; until it runs, what is produced waits in the spool.
func (a *Agent) start(ctx context.Context, p *parts) {
	producers, stop := context.WithCancel(ctx)
	p.stopProducers = stop
	// The router serves under its own context: at a reload it hands its
	// services over first, then stops serving, before anything else stops.
	routerCtx, stopRouter := context.WithCancel(producers)
	p.routerSessions = stopRouter
	// The servers too: at a reload their sockets are read until the rest
	// has quiesced and the uplink is handed over.
	servers, stopServers := context.WithCancel(ctx)
	p.stopServers = stopServers
	if p.handed != nil && p.st.generation > 0 { // a reload: the services reconnect
		p.rt.Restore(p.handed.Services)
		p.sched.CarryFailing(p.handed.Failing)
		p.hl.carry(p.handed.Degraded)
	}
	a.listen(routerCtx, servers, p)
	p.sockets.Close() // inherited sockets the configuration no longer has
	bootID, err := host.New(a.cfg.Paths.Sysfs, a.cfg.Paths.Procfs).BootID()
	if err != nil {
		a.log.Warn("boot id unknown", "err", err)
	}
	upCtx, stopUplink := context.WithCancel(context.WithoutCancel(ctx))
	p.stopUplink = stopUplink
	p.upDone = make(chan error, 1)
	go func() { p.upDone <- p.up.Run(upCtx) }()
	started := time.Now()
	p.wg.Go(func() { p.disp.Run(producers) })
	p.wg.Go(func() { p.sched.Run(producers) })
	p.wg.Go(func() { p.hl.watch(producers, healthEvery, p.sched.Event) })
	p.wg.Go(func() { p.st.run(producers) })
	p.wg.Go(func() { p.upd.Run(producers) })
	p.wg.Go(func() {
		p.sched.RunHeartbeat(producers, collectors.HeartbeatOptions{Node: p.st.node, Version: p.bi.Version, BootID: bootID,
			Instance: p.instance, Interval: a.cfg.Heartbeat.Interval, Seq: p.st.seq, Started: started,
			Spool: spoolCounts(p.sp), Health: p.hl.summary, Slot: p.upd.Slot(), Rollback: p.upd.Rollback})
	})
	p.st.markReady()
	handoverTaken(p.st.dir)
}

// stop is a clean stop: new commands are left with the broker (delivered
// again after the restart), producers stop (requests still running are
// stopped and answered, those queued refused), then the uplink (which
// flushes, says offline and closes the spool), then the sockets (their unix
// paths removed).
func (a *Agent) stop(p *parts) {
	p.quiesce()
	p.stopProducers()
	p.stopServers()
	p.wg.Wait()
	p.servers.Wait()
	p.stopUplink()
	if err := <-p.upDone; err != nil {
		a.log.Error("uplink", "err", err)
	}
	p.sockets.Stop()
	a.log.Info("edgeagent stopped", "batches", p.console.batches.Load(), "points", p.console.points.Load(),
		"events", p.console.events.Load(), "heartbeats", p.console.heartbeats.Load(), "next_seq", p.st.seq.Peek(),
		"spooled", p.sp.Stats().Depth())
}

// openSpool opens the store-and-forward queue; it fails only when its
// directory does not exist and cannot be made.
func (a *Agent) openSpool(st *state) (*spool.Spool, error) {
	c := a.cfg
	dir := c.Paths.SpoolDir
	if dir == "" {
		dir = filepath.Join(st.dir, "spool")
	}
	sp, err := spool.Open(spool.Options{Dir: dir, MaxBytes: int64(c.Spool.MaxBytes),
		FsyncInterval: c.Spool.FsyncInterval, Log: a.log.With("component", "spool")})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnusable, err)
	}
	return sp, nil
}

// newUplink prepares the MQTT session (Run connects); it fails only when
// TLS is configured and its files cannot be read.
func (a *Agent) newUplink(st *state, sp *spool.Spool, instance string, onCommand func(telemetry.Envelope) bool) (*uplink.Uplink, error) {
	c := a.cfg.Uplink
	up, err := uplink.New(uplink.Options{
		Brokers: c.Brokers, Node: st.node, TopicPrefix: c.TopicPrefix, Username: c.Username, Password: c.Password,
		CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile,
		Keepalive: c.Keepalive, ConnectTimeout: c.ConnectTimeout, PublishTimeout: c.PublishTimeout,
		FlushInterval: c.FlushInterval, MaxBackoff: c.MaxBackoff, MaxMessage: int(c.MaxMessage),
		Spool: sp, Seq: st.seq, Stamp: st.floor.Stamp, Instance: instance, Log: a.log.With("component", "uplink"),
		OnCommand: onCommand,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnusable, err)
	}
	return up, nil
}

func (a *Agent) newDispatcher(st *state, sched *collectors.Scheduler, sp *spool.Spool, stat *status,
	rt *router.Router, up *uplink.Uplink) *dispatch.Dispatcher {
	c := a.cfg.Commands
	return dispatch.New(dispatch.Options{
		Node: st.node, PluginDir: a.cfg.Paths.PluginDir, CacheDir: filepath.Join(st.dir, "commands"),
		Concurrency: c.Concurrency, Queue: c.Queue, OutputLimit: int(c.OutputLimit),
		DefaultTimeout: c.Timeout, MaxTimeout: c.MaxTimeout, Now: st.floor.Now,
		Builtins: a.builtins(st.node, stat.version, sched, sp, stat, rt), Result: up.Result,
		Log: a.log.With("component", "commands"),
	})
}

// probeHealth tells hl where to look for what does not work.
func (a *Agent) probeHealth(hl *health, st *state, sp *spool.Spool, up *uplink.Uplink) {
	if a.logFault != "" {
		hl.degrade("log", a.logFault+"; logging to stderr")
	}
	hl.probe(st.problems)
	spoolMax := float64(a.cfg.Spool.MaxBytes)
	dropping := dropWatch{}
	hl.probe(func() []problem {
		var out []problem
		s := up.Status()
		if n := dropping.since(s.Spool.Dropped); n > 0 {
			out = append(out, problem{part: "spool drops", unhealthy: true,
				reason: fmt.Sprintf("dropping records: %d dropped in the last minute (%d ever)", n, s.Spool.Dropped)})
		}
		if s.State != "connected" && time.Since(s.Since) > uplinkGrace {
			p := problem{part: "uplink", reason: fmt.Sprintf("%s since %s; %d records wait in the spool",
				s.State, s.Since.UTC().Format(time.RFC3339), s.Spool.Depth())}
			if used := float64(s.Spool.DiskBytes) / spoolMax; used >= spoolLimit {
				p.reason, p.unhealthy = fmt.Sprintf("%s and the spool is %.0f%% full: the oldest records are about to be dropped", s.State, 100*used), true
			}
			out = append(out, p)
		}
		if s.TLSError != "" {
			out = append(out, problem{part: "tls", reason: s.TLSError + "; the files read before are used"})
		}
		if f := sp.Stats().Fault; f != "" {
			out = append(out, problem{part: "spool", reason: f + "; records wait in memory"})
		}
		return out
	})
}

// dropWatch tells whether the spool dropped records in the last minute:
// then the agent is losing data, which makes it unhealthy.
type dropWatch struct {
	mu    sync.Mutex
	marks []dropMark // the dropped count as seen, over the last minute
}

type dropMark struct {
	at      time.Time
	dropped uint64
}

// since records the count and returns how many were dropped in the last
// minute.
func (w *dropWatch) since(dropped uint64) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	w.marks = append(w.marks, dropMark{now, dropped})
	for len(w.marks) > 1 && now.Sub(w.marks[1].at) > time.Minute {
		w.marks = w.marks[1:]
	}
	return dropped - w.marks[0].dropped
}

// uplinkGrace is how long the uplink may be without a broker before that
// degrades the agent: long enough for the first connection at start, and a
// reconnect after a broker restart, to pass unremarked.
const uplinkGrace = 30 * time.Second

// spoolLimit is the share of spool.max_bytes beyond which spooling no longer
// counts as healthy: past it the oldest records are about to be dropped.
const spoolLimit = 0.9

func spoolCounts(sp *spool.Spool) func() (uint64, uint64) {
	return func() (uint64, uint64) {
		st := sp.Stats()
		return uint64(st.Depth()), st.Dropped
	}
}

// instanceID is random per start of the process: the controller tells two
// machines claiming one node id by it.
func instanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// listen starts the servers on their sockets: StatsD, the control socket
// (service router) and the status endpoint. A socket that cannot be had
// now (a port another daemon holds, an address not yet configured) is
// tried again in the background while the part reports degraded. The
// router serves (and is retried) under routerCtx, which a reload ends before
// producers (a stop with them: it derives from producers), and
// StatsD and the status endpoint under servers, which it ends after the
// uplink's hand-over.
func (a *Agent) listen(routerCtx, servers context.Context, p *parts) {
	if addr := a.cfg.StatsD.Listen; addr != "" {
		retry(servers, &p.servers, p.hl, "statsd", func() (net.PacketConn, error) { return p.sockets.PacketConn("statsd", addr) },
			func(conn net.PacketConn) error {
				opts := statsd.Options{
					FlushInterval: a.cfg.StatsD.FlushInterval, MaxSeries: a.cfg.StatsD.MaxSeries,
					ReadBuffer: int(a.cfg.StatsD.ReadBuffer), Emit: p.sched.Publish, Log: a.log.With("component", "statsd"),
				}
				if p.handed != nil && !p.handed.StatsDLastRead.IsZero() {
					last := p.handed.StatsDLastRead
					opts.FirstRead = func(at time.Time) {
						a.log.Info("statsd socket read again after the hand-over", "unread", at.Sub(last), "last_read", last)
					}
				}
				srv := statsd.New(conn, opts)
				if p.handed != nil {
					srv.RestoreGauges(p.handed.Gauges)
				}
				a.statsd.Store(srv)
				err := srv.Run(servers)
				if servers.Err() != nil { // for the next image, if this is a reload
					p.gauges, p.statsdLastRead = srv.Gauges(), srv.LastRead()
				}
				a.statsd.Store(nil)
				return logStopped(a.log, "statsd server", err)
			})
	}
	control := a.cfg.Control.Socket
	if control == "" {
		control = filepath.Join(a.cfg.Paths.StateDir, "control.sock")
	}
	// Retried under routerCtx, which Serve ends on: under producers, the
	// reload's ending of the router first would read as the server broken
	// and report the part degraded until the exec.
	retry(routerCtx, &p.wg, p.hl, "control socket", func() (net.Listener, error) { return p.sockets.Listener("control", "unix:"+control) },
		func(l net.Listener) error { return logStopped(a.log, "control socket", p.rt.Serve(routerCtx, l)) })
	if addr := a.cfg.HTTP.Listen; addr != "" {
		retry(servers, &p.servers, p.hl, "http", func() (net.Listener, error) { return p.sockets.Listener("http", addr) },
			func(l net.Listener) error {
				return logStopped(a.log, "status endpoint", p.stat.serve(servers, l, a.log.With("component", "http")))
			})
	}
}

// retry obtains a socket with get and runs serve with it, on its own
// goroutine, until ctx ends. While get fails, or after serve returned an
// error (the server broke), part is degraded with the reason and get is
// tried again: after 1 s, then twice as long each time up to 30 s.
func retry[T any](ctx context.Context, wg *sync.WaitGroup, hl *health, part string, get func() (T, error), serve func(T) error) {
	s, err := get()
	wg.Go(func() {
		wait := time.Second
		for {
			if err == nil {
				hl.degrade(part, "")
				err = serve(s)
				if ctx.Err() != nil {
					return
				}
				err = fmt.Errorf("stopped: %w", err)
			}
			hl.degrade(part, err.Error()+"; trying again")
			select {
			case <-ctx.Done():
				hl.degrade(part, "")
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, 30*time.Second)
			s, err = get()
		}
	})
}

// logStopped logs a server that stopped on an error and returns the error.
func logStopped(log *slog.Logger, what string, err error) error {
	if err != nil {
		log.Error(what+" stopped", "err", err)
	}
	return err
}

// collectors builds the scheduler with every collector the configuration
// turns on. None of them fails to start: a source that is missing (a
// netlink family, smartctl) makes its collector fail at each run, which
// reports the agent degraded and tries again at the next run. closeAll
// releases what they hold.
func (a *Agent) collectors(sink collectors.Sink) (*collectors.Scheduler, func()) {
	c := a.cfg
	var closers []func() error
	closeAll := func() {
		for _, f := range closers {
			f()
		}
	}
	sched := collectors.New(collectors.Options{Sink: sink, Include: c.Collect.Include, Exclude: c.Collect.Exclude,
		EventBurst: c.Events.Burst, EventEvery: c.Events.RateLimit, Log: a.log.With("component", "collectors")})
	halOpts := HALOptions(c, true)
	if c.Collect.Host > 0 {
		sched.Add(collectors.NewHost(c.Paths.Sysfs, c.Paths.Procfs), c.Collect.Host, 0)
	}
	if c.Collect.Disk > 0 {
		sched.Add(collectors.NewDisk(c.Paths.Sysfs, c.Paths.Procfs, halOpts.Disks, float64(c.Events.FilesystemFullPercent)), c.Collect.Disk, 0)
	}
	if c.Collect.Net > 0 {
		n := collectors.NewNet(nic.Options{Sysfs: c.Paths.Sysfs})
		closers = append(closers, n.Close)
		sched.Add(n, c.Collect.Net, 0)
	}
	if c.Collect.Tunnel > 0 {
		t := collectors.NewTunnel(halOpts.OpenVPN, halOpts.WireGuard, nic.Options{Sysfs: c.Paths.Sysfs})
		closers = append(closers, t.Close)
		sched.Add(t, c.Collect.Tunnel, 0)
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
	return sched, closeAll
}
