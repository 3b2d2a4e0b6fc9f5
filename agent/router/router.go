// Package router is the local service router: daemons on the node register
// with the agent over its unix control socket under a name, keep the
// registration alive with heartbeats, and answer calls that the controller
// addresses to them (the service.call command). The wire format is in
// wire.go; Register is the Go client.
package router

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
)

var serviceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Interval bounds: a service may not promise heartbeats rarer than this.
const maxInterval = time.Minute

// ServiceInfo is one registered service, as the services command shows it.
type ServiceInfo struct {
	Name          string        `json:"name"`
	Since         time.Time     `json:"since"`
	Interval      time.Duration `json:"interval"`
	LastHeartbeat time.Time     `json:"last_heartbeat"`
	Calls         uint64        `json:"calls"`
}

// Router keeps the registered services. It is safe for concurrent use.
type Router struct {
	event func(telemetry.Event)
	log   *slog.Logger

	mu       sync.Mutex
	services map[string]*service
}

type service struct {
	info    ServiceInfo
	conn    net.Conn
	wmu     sync.Mutex // one writer at a time
	pending map[string]chan Frame
}

// New returns a router that reports registrations and losses through event.
func New(event func(telemetry.Event), log *slog.Logger) *Router {
	return &Router{event: event, log: log, services: map[string]*service{}}
}

// Serve accepts services on l until ctx is cancelled.
func (r *Router) Serve(ctx context.Context, l net.Listener) error {
	go func() { <-ctx.Done(); l.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				r.closeAll()
				return nil
			}
			return fmt.Errorf("control socket: %w", err)
		}
		wg.Go(func() { r.handle(ctx, c) })
	}
}

func (r *Router) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.services {
		s.conn.Close()
	}
}

// handle runs one connection: registration, then heartbeats and replies.
func (r *Router) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := readFrame(c)
	if err != nil {
		return
	}
	interval := time.Duration(f.IntervalMs) * time.Millisecond
	switch {
	case f.Type != "register":
		writeFrame(c, &Frame{Type: "error", Error: "register first: {type: register, service: NAME, interval_ms: N}"})
		return
	case !serviceName.MatchString(f.Service):
		writeFrame(c, &Frame{Type: "error", Error: fmt.Sprintf("%q is not a service name (letters, digits, '.', '_', '-')", f.Service)})
		return
	case interval < 10*time.Millisecond || interval > maxInterval:
		writeFrame(c, &Frame{Type: "error", Error: fmt.Sprintf("interval_ms %d: want 10 to %d", f.IntervalMs, maxInterval.Milliseconds())})
		return
	}
	now := time.Now()
	s := &service{info: ServiceInfo{Name: f.Service, Since: now, Interval: interval, LastHeartbeat: now},
		conn: c, pending: map[string]chan Frame{}}
	r.mu.Lock()
	if _, taken := r.services[f.Service]; taken {
		r.mu.Unlock()
		writeFrame(c, &Frame{Type: "error", Error: fmt.Sprintf("service %q is already registered", f.Service)})
		return
	}
	r.services[f.Service] = s
	r.mu.Unlock()
	if err := s.write(&Frame{Type: "ok"}); err != nil {
		r.drop(s, "its connection failed")
		return
	}
	r.log.Info("service registered", "service", f.Service, "interval", interval)
	r.event(telemetry.Event{Time: now, Severity: telemetry.Info, Kind: "service", Subject: f.Service, New: "registered",
		Message: fmt.Sprintf("service %s registered (heartbeat every %s)", f.Service, interval)})

	why := "its connection closed"
read:
	for {
		c.SetReadDeadline(time.Now().Add(3 * interval))
		f, err := readFrame(c)
		if err != nil {
			var ne net.Error
			switch {
			case ctx.Err() != nil:
				why = "the agent stopped"
			case errors.As(err, &ne) && ne.Timeout():
				why = fmt.Sprintf("it missed three heartbeats (%s)", 3*interval)
			case !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "EOF"):
				why = err.Error()
			}
			break read
		}
		r.mu.Lock()
		s.info.LastHeartbeat = time.Now()
		ch := s.pending[f.ID]
		r.mu.Unlock()
		if (f.Type == "reply" || f.Type == "error") && ch != nil {
			ch <- f
		}
	}
	r.drop(s, why)
}

// drop deregisters s and tells whoever waits on it; why may quote what the
// service sent, and is escaped for the event.
func (r *Router) drop(s *service, why string) {
	r.mu.Lock()
	if r.services[s.info.Name] == s {
		delete(r.services, s.info.Name)
	}
	for id, ch := range s.pending {
		ch <- Frame{Type: "error", ID: id, Error: "service deregistered: " + why}
		delete(s.pending, id)
	}
	r.mu.Unlock()
	s.conn.Close()
	r.log.Warn("service deregistered", "service", s.info.Name, "why", why)
	r.event(telemetry.Event{Time: time.Now(), Severity: telemetry.Warning, Kind: "service", Subject: s.info.Name,
		Old: "registered", New: "deregistered", Message: fmt.Sprintf("service %s deregistered: %s", s.info.Name, text.EscapeString(why))})
}

func (s *service) write(f *Frame) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return writeFrame(s.conn, f)
}

// ErrNotRegistered is returned by Call for a name no service holds.
var ErrNotRegistered = errors.New("not registered")

// Call forwards payload to the service called name and returns its reply.
func (r *Router) Call(ctx context.Context, name string, payload []byte) ([]byte, error) {
	id := make([]byte, 8)
	rand.Read(id)
	f := Frame{Type: "call", ID: hex.EncodeToString(id), Payload: payload}
	ch := make(chan Frame, 1)
	r.mu.Lock()
	s := r.services[name]
	if s != nil {
		s.pending[f.ID] = ch
		s.info.Calls++
	}
	r.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("service %q is %w with this node's agent", name, ErrNotRegistered)
	}
	defer func() {
		r.mu.Lock()
		delete(s.pending, f.ID)
		r.mu.Unlock()
	}()
	if err := s.write(&f); err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	select {
	case reply := <-ch:
		if reply.Type == "error" { // the service's own words: text, escaped
			return nil, fmt.Errorf("service %s: %s", name, text.EscapeString(reply.Error))
		}
		return reply.Payload, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("service %s did not answer: %w", name, ctx.Err())
	}
}

// Services lists the registered services by name.
func (r *Router) Services() []ServiceInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ServiceInfo, 0, len(r.services))
	for _, s := range r.services {
		out = append(out, s.info)
	}
	slices.SortFunc(out, func(a, b ServiceInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}
