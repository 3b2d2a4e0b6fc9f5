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

// checkRegistration says why the agent refuses to register name with this
// heartbeat interval, or returns nil.
func checkRegistration(name string, interval time.Duration) error {
	switch {
	case !serviceName.MatchString(name):
		return fmt.Errorf("%q is not a service name (letters, digits, '.', '_', '-')", name)
	case interval < 10*time.Millisecond || interval > maxInterval:
		return fmt.Errorf("interval_ms %d: want 10 to %d", interval.Milliseconds(), maxInterval.Milliseconds())
	}
	return nil
}

// ServiceInfo is one registered service, as the services command shows it
// and as Handover returns it for the next image (in JSON, across exec).
type ServiceInfo struct {
	Name          string        `json:"name"`
	Since         time.Time     `json:"since"`
	Interval      time.Duration `json:"interval"`
	LastHeartbeat time.Time     `json:"last_heartbeat"`
	Calls         uint64        `json:"calls"`
	// Reconnecting reports whether the service has yet to register again
	// after the agent's reload.
	Reconnecting bool `json:"reconnecting,omitempty"`
}

// Router keeps the registered services. It is safe for concurrent use.
type Router struct {
	event func(telemetry.Event)
	log   *slog.Logger
	grace time.Duration // a restored service's least time to come back

	handover  chan struct{}  // closed when Handover begins
	accepting sync.WaitGroup // Serve's accept loops
	calls     sync.WaitGroup // calls sent to a service and not yet answered

	mu       sync.Mutex
	services map[string]*service
	conns    map[net.Conn]struct{} // every open connection, registered or not
}

type service struct {
	info    ServiceInfo
	conn    net.Conn   // nil while it reconnects after a reload; set once
	wmu     sync.Mutex // one writer at a time
	pending map[string]chan Frame

	// Of a restored service that has not registered again: calls wait for
	// back to close (when it registers, is given up or the router is handed
	// over); expire gives it up.
	back   chan struct{}
	expire *time.Timer
}

// New returns a router that reports registrations and losses through event.
func New(event func(telemetry.Event), log *slog.Logger) *Router {
	return &Router{event: event, log: log, grace: 5 * time.Second, handover: make(chan struct{}),
		services: map[string]*service{}, conns: map[net.Conn]struct{}{}}
}

// Serve accepts services on l until ctx ends, then closes l and every
// connection, deregistering each service with an event. Once Handover has
// begun it stops accepting instead and leaves l open, its path in place, for
// the next image: it returns when ctx ends, and l is the caller's.
func (r *Router) Serve(ctx context.Context, l net.Listener) error {
	dl, ok := l.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return fmt.Errorf("control socket: a %T cannot stop accepting without being closed", l)
	}
	r.mu.Lock()
	handing := r.handingOver()
	if !handing {
		r.accepting.Add(1)
	}
	r.mu.Unlock()
	if handing {
		return errors.New("control socket: the router was handed over")
	}
	var conns sync.WaitGroup
	defer conns.Wait()
	stop := make(chan struct{})
	var waker sync.WaitGroup
	waker.Go(func() {
		select {
		case <-r.handover:
			dl.SetDeadline(time.Unix(1, 0)) // wakes Accept, keeps l
		case <-ctx.Done():
			l.Close()
		case <-stop:
		}
	})
	var err error
	for err == nil {
		var c net.Conn
		if c, err = l.Accept(); err == nil {
			conns.Go(func() { r.handle(ctx, c) })
		}
	}
	close(stop)
	waker.Wait()
	handing = r.handingOver()
	if handing {
		dl.SetDeadline(time.Time{})
	}
	r.accepting.Done()
	switch {
	case handing:
		<-ctx.Done()
		return nil
	case ctx.Err() != nil:
		r.stop()
		return nil
	}
	return fmt.Errorf("control socket: %w", err)
}

func (r *Router) handingOver() bool {
	select {
	case <-r.handover:
		return true
	default:
		return false
	}
}

// stop ends every connection (each registered service is deregistered by
// its handler) and deregisters the services still reconnecting.
func (r *Router) stop() {
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	var waiting []*service
	for _, s := range r.services {
		if s.conn == nil {
			waiting = append(waiting, s)
		}
	}
	r.mu.Unlock()
	for _, s := range waiting {
		r.giveUp(s, "the agent stopped")
	}
}

// handle runs one connection: registration, then heartbeats and replies.
func (r *Router) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	r.mu.Lock()
	open := !r.handingOver() && ctx.Err() == nil // else the next image, or nobody, takes the service
	if open {
		r.conns[c] = struct{}{}
	}
	r.mu.Unlock()
	if !open {
		return
	}
	defer func() { r.mu.Lock(); delete(r.conns, c); r.mu.Unlock() }()
	if s := r.register(c); s != nil {
		r.drop(s, r.receive(ctx, s))
	}
}

// register reads the registration on c and answers it. It returns the
// service, or nil when it was refused or could not be told. A service
// reconnecting after a reload takes its place again without an event.
func (r *Router) register(c net.Conn) *service {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := readFrame(c)
	if err != nil {
		return nil
	}
	interval := time.Duration(f.IntervalMs) * time.Millisecond
	if f.Type != "register" {
		err = errors.New("register first: {type: register, service: NAME, interval_ms: N}")
	} else {
		err = checkRegistration(f.Service, interval)
	}
	if err != nil {
		writeFrame(c, &Frame{Type: "error", Error: err.Error()})
		return nil
	}
	now := time.Now()
	r.mu.Lock()
	s := r.services[f.Service]
	resumed := s != nil && s.conn == nil
	switch {
	case r.handingOver():
		r.mu.Unlock()
		return nil // its connection is closed: it registers with the next image
	case resumed:
		s.expire.Stop()
		close(s.back)
		s.back, s.info.Reconnecting = nil, false
	case s != nil:
		r.mu.Unlock()
		writeFrame(c, &Frame{Type: "error", Error: fmt.Sprintf("service %q is already registered", f.Service)})
		return nil
	default:
		s = &service{info: ServiceInfo{Name: f.Service, Since: now}, pending: map[string]chan Frame{}}
		r.services[f.Service] = s
	}
	s.conn, s.info.Interval, s.info.LastHeartbeat = c, interval, now
	s.wmu.Lock() // the answer goes before any call
	r.mu.Unlock()
	err = s.send(&Frame{Type: "ok"})
	s.wmu.Unlock()
	if err != nil {
		r.drop(s, "its connection failed: "+err.Error())
		return nil
	}
	if resumed {
		r.log.Info("service registered again after the reload", "service", f.Service, "interval", interval)
		return s
	}
	r.log.Info("service registered", "service", f.Service, "interval", interval)
	r.event(telemetry.Event{Time: now, Severity: telemetry.Info, Kind: "service", Subject: f.Service, New: "registered",
		Message: fmt.Sprintf("service %s registered (heartbeat every %s)", f.Service, interval)})
	return s
}

// receive reads heartbeats and replies from s until its connection ends,
// and returns why it ended.
func (r *Router) receive(ctx context.Context, s *service) string {
	interval := s.info.Interval
	for {
		s.conn.SetReadDeadline(time.Now().Add(3 * interval))
		f, err := readFrame(s.conn)
		if err != nil {
			var ne net.Error
			switch {
			case ctx.Err() != nil:
				return "the agent stopped"
			case errors.As(err, &ne) && ne.Timeout():
				return fmt.Sprintf("it missed three heartbeats (%s)", 3*interval)
			case !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "EOF"):
				return err.Error()
			}
			return "its connection closed"
		}
		var ch chan Frame
		r.mu.Lock()
		s.info.LastHeartbeat = time.Now()
		if f.Type == "reply" || f.Type == "error" {
			ch = s.pending[f.ID]
			delete(s.pending, f.ID) // one answer per call
		}
		r.mu.Unlock()
		if ch != nil {
			ch <- f
		}
	}
}

// drop deregisters s and tells whoever waits on it; why may quote what the
// service sent, and is escaped for the event. During a hand-over the
// service stays, for the next image, and no event is raised.
func (r *Router) drop(s *service, why string) {
	r.mu.Lock()
	handing := r.handingOver()
	answer := "service deregistered: " + why
	if handing {
		answer = errReloading.Error()
	} else if r.services[s.info.Name] == s {
		delete(r.services, s.info.Name)
	}
	for id, ch := range s.pending {
		ch <- Frame{Type: "error", ID: id, Error: answer}
		delete(s.pending, id)
	}
	r.mu.Unlock()
	s.conn.Close()
	if !handing {
		r.deregistered(s.info.Name, why)
	}
}

func (r *Router) deregistered(name, why string) {
	r.log.Warn("service deregistered", "service", name, "why", why)
	r.event(telemetry.Event{Time: time.Now(), Severity: telemetry.Warning, Kind: "service", Subject: name,
		Old: "registered", New: "deregistered", Message: fmt.Sprintf("service %s deregistered: %s", name, text.EscapeString(why))})
}

func (s *service) write(f *Frame) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.send(f)
}

// send writes f; the caller holds s.wmu.
func (s *service) send(f *Frame) error {
	s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return writeFrame(s.conn, f)
}

// ErrNotRegistered is returned by Call for a name no service holds.
var ErrNotRegistered = errors.New("not registered")

// errReloading is why a call fails once Handover has begun.
var errReloading = errors.New("the agent is reloading; call again")

// Call forwards payload to the service called name and returns its reply.
// A service reconnecting after the agent's reload is waited for, until ctx
// ends.
func (r *Router) Call(ctx context.Context, name string, payload []byte) ([]byte, error) {
	id := make([]byte, 8)
	rand.Read(id)
	f := Frame{Type: "call", ID: hex.EncodeToString(id), Payload: payload}
	ch := make(chan Frame, 1)
	s, err := r.await(ctx, name, f.ID, ch)
	if err != nil {
		return nil, err
	}
	defer r.calls.Done()
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

// await returns the connected service called name with ch waiting for the
// answer to call id, counted in r.calls. While the service reconnects after
// a reload it waits for it, until ctx ends.
func (r *Router) await(ctx context.Context, name, id string, ch chan Frame) (*service, error) {
	for {
		r.mu.Lock()
		s := r.services[name]
		switch {
		case r.handingOver():
			r.mu.Unlock()
			return nil, fmt.Errorf("service %s: %w", name, errReloading)
		case s == nil:
			r.mu.Unlock()
			return nil, fmt.Errorf("service %q is %w with this node's agent", name, ErrNotRegistered)
		case s.conn != nil:
			s.pending[id] = ch
			s.info.Calls++
			r.calls.Add(1)
			r.mu.Unlock()
			return s, nil
		}
		back := s.back
		r.mu.Unlock()
		select {
		case <-back:
		case <-ctx.Done():
			return nil, fmt.Errorf("service %s is reconnecting after the agent's reload and was not back in time: %w", name, ctx.Err())
		}
	}
}

// Services lists the registered services by name.
func (r *Router) Services() []ServiceInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.list()
}

func (r *Router) list() []ServiceInfo {
	out := make([]ServiceInfo, 0, len(r.services))
	for _, s := range r.services {
		out = append(out, s.info)
	}
	slices.SortFunc(out, func(a, b ServiceInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}
