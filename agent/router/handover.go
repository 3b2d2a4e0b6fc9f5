package router

import (
	"context"
	"fmt"
	"time"
)

// Handover stops the router for a reload that hands the control socket to
// the agent's next image, and returns the registered services for Restore
// there. Serve stops accepting and leaves its listener open with its path in
// place; a new call fails at once saying the agent is reloading; calls that
// a service is answering get its reply until ctx ends, and that error after.
// Then every connection is closed, without a deregistration event, and the
// services are listed as reconnecting. Call it before cancelling the context
// Serve runs under; the router serves no more.
func (r *Router) Handover(ctx context.Context) []ServiceInfo {
	r.mu.Lock()
	if !r.handingOver() {
		close(r.handover)
	}
	r.mu.Unlock()
	r.accepting.Wait()
	answered := make(chan struct{})
	go func() { r.calls.Wait(); close(answered) }()
	select {
	case <-answered:
	case <-ctx.Done():
	}
	r.mu.Lock()
	for c := range r.conns {
		c.Close() // their handlers fail the calls still waiting
	}
	for _, s := range r.services {
		s.info.Reconnecting = true
		if s.back != nil { // restored and not back yet: the calls waiting fail now
			s.expire.Stop()
			close(s.back)
			s.back = nil
		}
	}
	out := r.list()
	r.mu.Unlock()
	<-answered
	return out
}

// Restore takes the services that the previous image's Handover returned
// (carried across exec) as reconnecting: Services lists them, a call to one
// waits for it, and one that registers again carries on without an event.
// One that has not within five seconds of Restore, or three of its
// heartbeat intervals if that is longer, is deregistered with an event.
// Call it before Serve.
func (r *Router) Restore(services []ServiceInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, info := range services {
		err := checkRegistration(info.Name, info.Interval)
		if err == nil && r.services[info.Name] != nil {
			err = fmt.Errorf("service %q is already registered", info.Name)
		}
		if err != nil {
			r.log.Warn("not restoring a service from the previous image", "reason", err)
			continue
		}
		info.Reconnecting = true
		s := &service{info: info, pending: map[string]chan Frame{}, back: make(chan struct{})}
		grace := max(r.grace, 3*info.Interval)
		s.expire = time.AfterFunc(grace, func() {
			r.giveUp(s, fmt.Sprintf("it did not register again within %s of the agent's reload", grace))
		})
		r.services[info.Name] = s
	}
}

// giveUp deregisters s, restored and not back, with an event saying why.
func (r *Router) giveUp(s *service, why string) {
	r.mu.Lock()
	gone := !r.handingOver() && r.services[s.info.Name] == s && s.conn == nil
	if gone {
		s.expire.Stop()
		delete(r.services, s.info.Name)
		close(s.back)
	}
	r.mu.Unlock()
	if gone {
		r.deregistered(s.info.Name, why)
	}
}
