// Package dispatch carries out the controller's commands on the node:
// built-ins and plugins, each request id at most once (also across restarts,
// through a persisted cache of recent results), a bounded number at a time,
// and every refusal answered with a result that says why.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// Builtin is a command the agent carries out itself; what it returns is the
// result's stdout.
type Builtin func(ctx context.Context, args []string) ([]byte, error)

// Options configure a Dispatcher.
type Options struct {
	Node           string
	PluginDir      string
	CacheDir       string        // one file per recent request id
	CacheSize      int           // results kept; zero means 1000
	Concurrency    int           // requests running at once; zero means 4
	Queue          int           // requests waiting; zero means 16
	OutputLimit    int           // bytes kept of stdout and of stderr; zero means 64 KiB
	DefaultTimeout time.Duration // zero means 60 s
	MaxTimeout     time.Duration // a request may not ask for more; zero means 1 h
	// Now is the time expiries are judged by: the node's time floor, which
	// never reads earlier than the build date or the last persisted time,
	// so a clock at 1970 does not revive expired requests. Nil: time.Now.
	Now      func() time.Time
	Builtins map[string]Builtin
	Result   func(telemetry.CommandResult) // where results go (the uplink)
	Log      *slog.Logger
}

// Dispatcher runs commands. Handle is safe for concurrent use.
type Dispatcher struct {
	opts  Options
	queue chan telemetry.Command
	cache *cache

	mu      sync.Mutex
	pending map[string]bool // ids queued or running
	fault   error           // why a request could not be marked as running
	stopped bool            // Run has ended: requests are refused
	// quiesced: Quiesce was called; requests are no longer taken (Handle
	// reports false), so that Drain, which reads pending under the same
	// lock, cannot miss one taken meanwhile.
	quiesced bool

	refused atomic.Uint64
}

// New returns a dispatcher; results of requests interrupted by the previous
// process's end are sent now, as failed. A cache directory that cannot be
// made or written leaves the cache in memory, and Fault says so.
func New(opts Options) *Dispatcher {
	if opts.CacheSize <= 0 {
		opts.CacheSize = 1000
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.Queue <= 0 {
		opts.Queue = 16
	}
	if opts.OutputLimit <= 0 {
		opts.OutputLimit = 64 << 10
	}
	if opts.DefaultTimeout <= 0 {
		opts.DefaultTimeout = time.Minute
	}
	if opts.MaxTimeout <= 0 {
		opts.MaxTimeout = time.Hour
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &Dispatcher{opts: opts, queue: make(chan telemetry.Command, opts.Queue), pending: map[string]bool{}}
	if err := os.MkdirAll(opts.CacheDir, 0o750); err != nil {
		d.fault = fmt.Errorf("command cache: %w", err)
		opts.Log.Warn("command cache not persisted", "err", err)
	}
	d.cache = openCache(opts.CacheDir, opts.CacheSize, opts.Now)
	d.interrupted()
	return d
}

// Fault says why requests and their results are not persisted now (a
// repeat after a restart could run again), or nil.
func (d *Dispatcher) Fault() error {
	if err := d.cache.err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fault
}

// Refused counts requests refused (malformed, expired, another node's,
// unknown, unsafe, queue full).
func (d *Dispatcher) Refused() uint64 { return d.refused.Load() }

// Handle takes one request from the command topic. It never blocks: a
// request is answered from the cache, refused, or queued. It reports whether
// it took the request (answered it, or will): false once Quiesce was called,
// when the request must be left with the broker (not acknowledged) for the
// next process to take.
func (d *Dispatcher) Handle(env telemetry.Envelope) bool {
	d.mu.Lock()
	quiesced := d.quiesced
	d.mu.Unlock()
	if quiesced {
		return false
	}
	var c telemetry.Command
	if err := env.DecodeBody(&c); err != nil {
		d.refuse(telemetry.Command{}, "malformed request: "+err.Error())
		return true
	}
	now := d.opts.Now()
	switch {
	case c.ID == "" || len(c.ID) > 128:
		d.refuse(c, "malformed request: the id must be 1 to 128 bytes")
		return true
	case c.Node != d.opts.Node:
		d.refuse(c, fmt.Sprintf("request for node %q refused by node %q", c.Node, d.opts.Node))
		return true
	}
	if res, ok := d.cache.get(c.ID); ok {
		res.Cached = true
		d.opts.Log.Info("repeated command answered from the cache", "id", c.ID, "name", c.Name)
		d.result(res)
		return true
	}
	switch {
	case !c.ExpiresAt.IsZero() && now.After(c.ExpiresAt):
		d.refuse(c, fmt.Sprintf("request expired at %s; the node's time is %s", c.ExpiresAt.UTC().Format(time.RFC3339),
			now.UTC().Format(time.RFC3339)))
		return true
	case time.Duration(c.TimeoutSec)*time.Second > d.opts.MaxTimeout:
		d.refuse(c, fmt.Sprintf("timeout %ds exceeds the node's limit of %s", c.TimeoutSec, d.opts.MaxTimeout))
		return true
	}
	d.mu.Lock()
	switch {
	case d.quiesced: // since the check above: Drain may have found nothing pending
		d.mu.Unlock()
		return false
	case d.stopped:
		d.mu.Unlock()
		d.refuse(c, stopping)
		return true
	case d.pending[c.ID]: // redelivered while queued or running: it runs once
		d.mu.Unlock()
		return true
	case len(d.queue) == cap(d.queue):
		d.mu.Unlock()
		d.refuse(c, d.busy())
		return true
	}
	d.pending[c.ID] = true
	d.mu.Unlock()
	// Marked before Handle returns, so before the broker has its
	// acknowledgement: should the agent die while the request waits, the
	// next one refuses it (it never ran) instead of losing it.
	d.mark(c, queued)
	d.mu.Lock()
	if !d.stopped {
		select {
		case d.queue <- c:
			d.mu.Unlock()
			return true
		default:
		}
	}
	why := d.busy()
	if d.stopped {
		why = stopping
	}
	d.mu.Unlock()
	d.notRun(c, why)
	return true
}

func (d *Dispatcher) busy() string {
	return fmt.Sprintf("busy: %d requests running and %d queued", d.opts.Concurrency, d.opts.Queue)
}

// notRun refuses a request taken but not started, and forgets it.
func (d *Dispatcher) notRun(c telemetry.Command, why string) {
	os.Remove(d.marker(c.ID))
	d.mu.Lock()
	delete(d.pending, c.ID)
	d.mu.Unlock()
	d.refuse(c, why)
}

// refuse answers a request that is not run. A refusal is not cached: the
// same id may succeed later (once the queue has room).
func (d *Dispatcher) refuse(c telemetry.Command, why string) {
	d.refused.Add(1)
	d.opts.Log.Warn("command refused", "id", c.ID, "name", c.Name, "reason", why)
	d.result(telemetry.CommandResult{ID: c.ID, Status: telemetry.StatusRefused, Reason: why, ExitCode: -1})
}

// Quiesce stops taking requests: from its return Handle reports false for
// every request (the caller leaves it with the broker, for the next image or
// the restarted agent), and Drain then sees every request that was taken.
// It cannot be undone.
func (d *Dispatcher) Quiesce() {
	d.mu.Lock()
	d.quiesced = true
	d.mu.Unlock()
}

// Drain waits until every request taken has run and its result is out:
// those queued run too, each within its own deadline. Call Quiesce first (a
// reload leaves new requests with the broker for the next image). It
// returns ctx's error if ctx ends first.
func (d *Dispatcher) Drain(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		d.mu.Lock()
		busy := len(d.pending)
		d.mu.Unlock()
		if busy == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d requests still queued or running: %w", busy, ctx.Err())
		case <-tick.C:
		}
	}
}

// stopping is why a request is refused once the agent stops.
const stopping = "the agent is stopping; not run"

// result hands res on to the uplink with its id and reason as text: a
// reason quotes errors that name paths (the plugin or state directory, as a
// flag gave them) and a local service's own words, and an id read back from
// a marker file is whatever the flash holds.
func (d *Dispatcher) result(res telemetry.CommandResult) {
	res.ID, res.Reason = text.EscapeString(res.ID), text.EscapeString(res.Reason)
	d.opts.Result(res)
}

// Run carries out queued requests, Concurrency at a time, until ctx is
// cancelled. Requests still running then are stopped: a plugin's process
// group gets SIGTERM, then SIGKILL 2 s later, and its result says the agent
// stopped (it is cached: the request is not run again). Queued requests that
// had not started are refused ("the agent is stopping"), not cached, so the
// controller may send them again.
func (d *Dispatcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range d.opts.Concurrency {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case c := <-d.queue:
					if ctx.Err() != nil { // both were ready: stopping wins
						d.notRun(c, stopping)
						continue
					}
					d.execute(ctx, c)
				}
			}
		})
	}
	wg.Wait()
	d.mu.Lock()
	d.stopped = true // Handle queues no more: what is queued now is all
	d.mu.Unlock()
	for {
		select {
		case c := <-d.queue:
			d.notRun(c, stopping)
		default:
			return nil
		}
	}
}

func (d *Dispatcher) execute(ctx context.Context, c telemetry.Command) {
	defer func() {
		d.mu.Lock()
		delete(d.pending, c.ID)
		d.mu.Unlock()
	}()
	// Marked before it runs: should the agent die now, the restarted one
	// reports the request as interrupted instead of running it again.
	marker := d.marker(c.ID)
	d.mark(c, running)
	timeout := d.opts.DefaultTimeout
	if c.TimeoutSec > 0 {
		timeout = time.Duration(c.TimeoutSec) * time.Second
	}
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var res telemetry.CommandResult
	if b, ok := d.opts.Builtins[c.Name]; ok {
		res = d.builtin(runCtx, b, c.Args)
	} else if path, err := checkPlugin(d.opts.PluginDir, c.Name); err != nil {
		d.refused.Add(1)
		res = telemetry.CommandResult{Status: telemetry.StatusRefused, Reason: err.Error(), ExitCode: -1}
	} else {
		res = runPlugin(runCtx, path, c.Args, d.opts.OutputLimit)
	}
	res.ID = c.ID
	d.opts.Log.Info("command done", "id", c.ID, "name", c.Name, "status", res.Status, "exit", res.ExitCode,
		"ms", res.DurationMs, "reason", res.Reason)
	d.cache.put(d.opts.Node, res, c.ExpiresAt)
	os.Remove(marker)
	d.result(res)
}

func (d *Dispatcher) builtin(ctx context.Context, b Builtin, args []string) telemetry.CommandResult {
	res := telemetry.CommandResult{Started: time.Now()}
	out, err := b(ctx, args)
	res.DurationMs = time.Since(res.Started).Milliseconds()
	stdout := &capped{limit: d.opts.OutputLimit}
	stdout.Write(out)
	res.Stdout = stdout.output()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		res.Status, res.ExitCode, res.Reason = telemetry.StatusTimedOut, -1, "deadline reached"
	case err != nil:
		res.Status, res.ExitCode, res.Reason = telemetry.StatusFailed, 1, err.Error()
		res.Stderr = telemetry.Output{Data: []byte(err.Error() + "\n"), Total: uint64(len(err.Error()) + 1)}
	default:
		res.Status = telemetry.StatusOK
	}
	return res
}

// marker names the file that says a request was taken: queued or running.
func (d *Dispatcher) marker(id string) string {
	return filepath.Join(d.opts.CacheDir, hashID(id)+".running")
}

// What a marker says of its request.
const (
	queued  = "queued"
	running = "" // what markers always said before they said queued
)

// mark writes c's marker, durably: its id, its expiry and whether it is
// queued or running. A state directory that cannot be written does not
// stop the request; Fault says so.
func (d *Dispatcher) mark(c telemetry.Command, state string) {
	err := atomicfile.WriteFile(d.marker(c.ID), fmt.Appendf(nil, "%s\n%d\n%s\n", c.ID, unixOrZero(c.ExpiresAt), state), 0o640)
	d.mu.Lock()
	d.fault = err
	d.mu.Unlock()
	if err != nil {
		d.opts.Log.Warn("request not marked as taken; a restart now would not know of it", "id", c.ID, "err", err)
	}
}

// interrupted answers requests that the previous process had taken when it
// ended: one that was running failed and is not run again; one still queued
// never ran and is refused, not cached, so the controller may send it again.
func (d *Dispatcher) interrupted() {
	matches, _ := filepath.Glob(filepath.Join(d.opts.CacheDir, "*.running"))
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		fields := strings.Split(strings.TrimSpace(string(data)), "\n")
		id := fields[0]
		if len(fields) > 2 && fields[2] == queued {
			os.Remove(m)
			d.refuse(telemetry.Command{ID: id}, "the agent stopped before this request ran; not run")
			continue
		}
		var expires time.Time
		if len(fields) > 1 {
			if sec, err := strconv.ParseInt(fields[1], 10, 64); err == nil && sec != 0 {
				expires = time.Unix(sec, 0)
			}
		}
		res := telemetry.CommandResult{ID: id, Status: telemetry.StatusFailed, ExitCode: -1,
			Reason: "the agent stopped while this request ran; it is not run again"}
		d.cache.put(d.opts.Node, res, expires)
		os.Remove(m)
		d.result(res)
	}
}
