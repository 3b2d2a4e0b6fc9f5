package collectors

import (
	"context"
	"time"

	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// HeartbeatOptions configure the heartbeat.
type HeartbeatOptions struct {
	Node, Version, Slot, BootID string
	Interval                    time.Duration
	Seq                         *seqfile.Counter
	Started                     time.Time
	// Spool reports the store-and-forward queue's depth and the records it
	// ever dropped; nil reports zeros.
	Spool func() (depth, dropped uint64)
}

// RunHeartbeat sends a heartbeat at once and then every interval, with the
// scheduler's health, until ctx is cancelled. A beat whose sequence number
// cannot be reserved on disk is skipped rather than sent with a number that
// could repeat after a restart.
func (s *Scheduler) RunHeartbeat(ctx context.Context, opts HeartbeatOptions) {
	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
	for {
		if hb, err := s.heartbeat(opts); err != nil {
			s.log.Error("heartbeat skipped", "err", err)
		} else {
			s.opts.Sink.Heartbeat(hb)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *Scheduler) heartbeat(opts HeartbeatOptions) (telemetry.Heartbeat, error) {
	seq, err := opts.Seq.Next()
	if err != nil {
		return telemetry.Heartbeat{}, err
	}
	now := time.Now()
	health, why := s.Health()
	hb := telemetry.Heartbeat{
		Node: opts.Node, Seq: seq, Time: now, Version: opts.Version, Slot: opts.Slot,
		UptimeSec: int64(now.Sub(opts.Started).Seconds()), BootID: opts.BootID,
		LastCollect: s.LastSuccess(), Health: health, Why: why,
	}
	if opts.Spool != nil {
		hb.SpoolDepth, hb.Dropped = opts.Spool()
	}
	return hb, nil
}
