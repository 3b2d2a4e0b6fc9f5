package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
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
	sched   *collectors.Scheduler
	uplink  *uplink.Uplink
	statsd  func() *statsd.Server // nil until bound
	sockets *handoff.Registry
	seq     *seqfile.Counter
	health  *health
	node    string
	version string
	started time.Time
	disp    *dispatch.Dispatcher // set once made
}

// serve answers on l until ctx ends (nil) or the listener breaks. When ctx
// ends it stops accepting and returns once every connection it took has
// been answered and closed, within 2 s: a reload execs as soon as it
// returns, and the next image takes the connections not yet accepted.
func (s *status) serve(ctx context.Context, l net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /status", s.status)
	conns := openConns{changed: make(chan struct{}, 1)}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ConnState: conns.track,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		srv.Close()
		return err
	case <-ctx.Done():
	}
	// Not http.Server.Shutdown: it closes unanswered a connection whose
	// request it is still reading (the client reads EOF), and under load
	// a reload cut about one request in seventy so. Keep-alive off, each
	// connection closes once answered.
	srv.SetKeepAlivesEnabled(false)
	l.Close()
	<-served
	conns.waitClosed(2 * time.Second)
	srv.Close()
	return nil
}

// openConns counts the connections an http.Server has taken and not yet
// closed (its ConnState hook).
type openConns struct {
	mu      sync.Mutex
	n       int
	changed chan struct{} // poked at each close
}

func (o *openConns) track(_ net.Conn, state http.ConnState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch state {
	case http.StateNew:
		o.n++
	case http.StateClosed, http.StateHijacked:
		o.n--
		select {
		case o.changed <- struct{}{}:
		default:
		}
	}
}

// waitClosed waits until every connection is closed, or for at most d.
func (o *openConns) waitClosed(d time.Duration) {
	deadline := time.After(d)
	for {
		o.mu.Lock()
		n := o.n
		o.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-o.changed:
		case <-deadline:
			return
		}
	}
}

// healthEvery is how often the health is checked; a check older than
// healthStale says a probe is stuck.
const (
	healthEvery = 2 * time.Second
	healthStale = 15 * time.Second
)

// healthz answers supervisors: 200 while the agent does its job (healthy,
// starting or degraded, with the reasons), 503 when it is unhealthy.
func (s *status) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	probs := s.health.latest(healthStale)
	word, _ := s.health.verdict(probs)
	if word == telemetry.Unhealthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, word)
	for _, p := range probs {
		fmt.Fprintln(w, p)
	}
}

// report is what /status and the diag command show.
type report struct {
	Node          string              `json:"node"`
	Version       string              `json:"version"`
	UptimeSec     int64               `json:"uptime_sec"`
	Health        telemetry.Health    `json:"health"`
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
	probs := s.health.latest(healthStale)
	body.Health, _ = s.health.verdict(probs)
	for _, p := range probs {
		body.Problems = append(body.Problems, p.String())
	}
	if srv := s.statsd(); srv != nil {
		st := srv.Stats()
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
