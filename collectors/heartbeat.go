package collectors

import (
	"context"
	"time"

	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// HeartbeatOptions configure the heartbeat.
type HeartbeatOptions struct {
	Node, Version, Slot, BootID, Instance string
	Interval                              time.Duration
	Seq                                   *seqfile.Counter
	Started                               time.Time
	// Spool reports the store-and-forward queue's depth and the records it
	// ever dropped; nil reports zeros.
	Spool func() (depth, dropped uint64)
	// Health is the agent's one-word health and why; nil reports the
	// collectors' own (Scheduler.Health).
	Health func() (telemetry.Health, string)
	// Rollback, when set, returns the news of a rollback once (see
	// telemetry.Heartbeat.Rollback).
	Rollback func() string
}

// RunHeartbeat sends a heartbeat at once and then every interval until ctx
// is cancelled.
func (s *Scheduler) RunHeartbeat(ctx context.Context, opts HeartbeatOptions) {
	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
	for {
		s.opts.Sink.Heartbeat(s.heartbeat(opts))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *Scheduler) heartbeat(opts HeartbeatOptions) telemetry.Heartbeat {
	now := time.Now()
	health := s.Health
	if opts.Health != nil {
		health = opts.Health
	}
	h, why := health()
	hb := telemetry.Heartbeat{
		Node: opts.Node, Seq: opts.Seq.Next(), Time: now, Version: opts.Version, Slot: opts.Slot,
		UptimeSec: int64(now.Sub(opts.Started).Seconds()), BootID: opts.BootID, Instance: opts.Instance,
		LastCollect: s.LastSuccess(), Health: h, Why: why,
	}
	if opts.Spool != nil {
		hb.SpoolDepth, hb.Dropped = opts.Spool()
	}
	if opts.Rollback != nil {
		hb.Rollback = opts.Rollback()
	}
	return hb
}
