package collectors

import (
	"context"
	"os"
	"runtime/metrics"

	"github.com/seed69aca190/edgeagent/collectors/statsd"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/hal/proc"
)

// AgentOptions say where the agent collector finds what it reports.
type AgentOptions struct {
	Sysfs, Procfs string
	Scheduler     *Scheduler
	StatsD        func() *statsd.Server // nil, or returning nil, while StatsD is off or not yet listening
	// Spool reports the store-and-forward queue's depth and the records it
	// ever dropped; nil reports nothing.
	Spool func() (depth, dropped uint64)
	// Escaped reports how many strings the uplink's encoder had to escape
	// (telemetry.Encoder.Escaped: a name that missed its boundary); nil
	// reports nothing.
	Escaped func() uint64
}

// Agent reports the agent itself: memory, goroutines, GC, each collector's
// timing and errors, the StatsD server's counters, the spool, and the
// strings the uplink had to escape.
type Agent struct {
	opts    AgentOptions
	fs      proc.FS
	samples []metrics.Sample
}

// NewAgent returns the agent collector.
func NewAgent(opts AgentOptions) *Agent {
	return &Agent{opts: opts, fs: proc.New(opts.Sysfs, opts.Procfs), samples: []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/sched/goroutines:goroutines"},
	}}
}

// Name implements Collector.
func (*Agent) Name() string { return "agent" }

func (a *Agent) statsd() *statsd.Server {
	if a.opts.StatsD == nil {
		return nil
	}
	return a.opts.StatsD()
}

// Collect implements Collector.
func (a *Agent) Collect(ctx context.Context, r *Report) error {
	// runtime/metrics reads without stopping the world, unlike ReadMemStats.
	metrics.Read(a.samples)
	r.Add("agent.heap_bytes", float64(a.samples[0].Value.Uint64()))
	r.Add("agent.go_memory_bytes", float64(a.samples[1].Value.Uint64()))
	r.Add("agent.gc_cycles", float64(a.samples[2].Value.Uint64()))
	r.Add("agent.goroutines", float64(a.samples[3].Value.Uint64()))
	self, err := a.fs.Process(os.Getpid())
	if err == nil {
		r.Add("agent.rss_bytes", float64(self.RSSBytes))
		r.Add("agent.cpu_seconds", self.CPUSeconds)
	}
	if s := a.opts.Scheduler; s != nil {
		for _, st := range s.Status() {
			tags := []string{"collector", st.Name}
			r.Add("agent.collector.duration_seconds", st.LastDuration.Seconds(), tags...)
			r.Add("agent.collector.runs", float64(st.Runs), tags...)
			r.Add("agent.collector.failures", float64(st.Failures), tags...)
			r.Add("agent.collector.skipped", float64(st.Skipped), tags...)
			r.Add("agent.collector.ok", bool01(st.LastError == "" && !st.Stuck), tags...)
		}
		r.Add("agent.events.dropped", float64(s.EventsDropped()))
	}
	if srv := a.statsd(); srv != nil {
		st := srv.Stats()
		r.Add("agent.statsd.datagrams", float64(st.Datagrams))
		r.Add("agent.statsd.metrics", float64(st.Metrics))
		r.Add("agent.statsd.series", float64(st.Series))
		r.Add("agent.statsd.read_buffer_bytes", float64(st.ReadBuffer))
		for reason, n := range st.Rejected {
			r.Add("agent.statsd.rejected", float64(n), "reason", reason)
		}
		// System-wide: the kernel does not count drops per socket here.
		if udp, err := nic.ReadUDPStats(a.opts.Procfs); err == nil {
			r.Add("agent.statsd.kernel_rcvbuf_errors", float64(udp.RcvbufErrors))
		}
	}
	if a.opts.Spool != nil {
		depth, dropped := a.opts.Spool()
		r.Add("agent.spool.depth", float64(depth))
		r.Add("agent.spool.dropped", float64(dropped))
	}
	if a.opts.Escaped != nil {
		r.Add("agent.uplink.escaped", float64(a.opts.Escaped()))
	}
	return err
}
