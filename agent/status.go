package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/agent/dispatch"
	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/collectors/statsd"
	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/update/handoff"
	"github.com/seed69aca190/edgeagent/uplink"
)

// status serves the local endpoint: /healthz for supervisors and load
// balancers, /status for people and scripts on the node.
type status struct {
	sched    *collectors.Scheduler
	uplink   *uplink.Uplink
	statsd   *statsd.Server
	sockets  *handoff.Registry
	seq      *seqfile.Counter
	node     string
	version  string
	spoolMax int64
	started  time.Time
	disp     *dispatch.Dispatcher // set once made
}

// spoolLimit is the share of spool.max_bytes beyond which spooling no longer
// counts as healthy: past it the oldest records are about to be dropped.
const spoolLimit = 0.9

func (s *status) serve(ctx context.Context, l net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /status", s.status)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("status endpoint stopped", "err", err)
	}
}

// problems lists why the node is not healthy; none means healthy.
func (s *status) problems() []string {
	var out []string
	if h, why := s.sched.Health(); h != telemetry.Healthy {
		out = append(out, fmt.Sprintf("collectors %s: %s", h, why))
	}
	up := s.uplink.Status()
	if up.State != "connected" {
		if used := float64(up.Spool.DiskBytes) / float64(s.spoolMax); used >= spoolLimit {
			out = append(out, fmt.Sprintf("uplink %s and the spool is %.0f%% full", up.State, 100*used))
		}
	}
	return out
}

func (s *status) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if p := s.problems(); len(p) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(p, "\n"))
		return
	}
	up := s.uplink.Status()
	if up.State == "connected" {
		fmt.Fprintln(w, "ok")
	} else {
		fmt.Fprintf(w, "ok (uplink %s; spooling %d records)\n", up.State, up.Spool.Depth())
	}
}

// report is what /status and the diag command show.
type report struct {
	Node          string              `json:"node"`
	Version       string              `json:"version"`
	UptimeSec     int64               `json:"uptime_sec"`
	Healthy       bool                `json:"healthy"`
	Problems      []string            `json:"problems,omitempty"`
	NextSeq       uint64              `json:"next_seq"`
	Uplink        uplink.Status       `json:"uplink"`
	Collectors    []collectors.Status `json:"collectors"`
	EventsDropped uint64              `json:"events_dropped"`
	// CommandsRefused counts the controller's requests refused (malformed,
	// expired, another node's, unknown or unsafe, queue full).
	CommandsRefused uint64           `json:"commands_refused"`
	StatsD          *statsd.Stats    `json:"statsd,omitempty"`
	Sockets         []handoff.Socket `json:"sockets"`
}

func (s *status) report() report {
	body := report{
		Node: s.node, Version: s.version, UptimeSec: int64(time.Since(s.started).Seconds()),
		NextSeq: s.seq.Peek(), Uplink: s.uplink.Status(), Collectors: s.sched.Status(),
		EventsDropped: s.sched.EventsDropped(), Sockets: s.sockets.Sockets(),
	}
	body.Problems = s.problems()
	body.Healthy = len(body.Problems) == 0
	if s.statsd != nil {
		st := s.statsd.Stats()
		body.StatsD = &st
	}
	if s.disp != nil {
		body.CommandsRefused = s.disp.Refused()
	}
	return body
}

func (s *status) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(s.report())
}
