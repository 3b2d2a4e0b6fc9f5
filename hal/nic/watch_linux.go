package nic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/seed69aca190/edgeagent/internal/text"
)

// linkState is what Watch remembers of a link to tell what changed.
type linkState struct {
	name    string // escaped
	admin   bool
	carrier bool
	oper    string
}

// Watch sends an event on out for every link and address change in the
// reader's namespace until ctx is cancelled. It lists the links first, so only
// changes after the call are reported. When the socket overruns (the kernel
// drops notifications with ENOBUFS) it subscribes again, lists the links, and
// sends a Resynced event followed by the differences it found. Cancellation
// returns nil.
func (r *Reader) Watch(ctx context.Context, out chan<- Event, opts WatchOptions) error {
	known, err := r.snapshot()
	if err != nil {
		return err
	}
	resync := false
	for {
		sub, err := r.subscribe(opts)
		if err != nil {
			return err
		}
		if resync {
			// Subscribed again before listing, so nothing falls in between.
			cur, err := r.snapshot()
			if err != nil {
				sub.stop()
				return err
			}
			ok := send(ctx, out, Event{Time: time.Now(), Change: Resynced,
				Message: fmt.Sprintf("netlink notifications were lost (%s); links listed again", sub.lastErr())})
			for _, ev := range diff(known, cur) {
				ok = ok && send(ctx, out, ev)
			}
			known = cur
			if !ok {
				sub.stop()
				return nil
			}
		}
		r.pump(ctx, sub, known, out)
		sub.stop()
		if ctx.Err() != nil {
			return nil
		}
		resync = true
	}
}

type subscription struct {
	links chan netlink.LinkUpdate
	addrs chan netlink.AddrUpdate
	done  chan struct{}
	mu    sync.Mutex
	err   error
}

func (s *subscription) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

func (s *subscription) lastErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// stop closes both sockets and drains the channels, so netlink's receiving
// goroutines, which block on sending, can finish.
func (s *subscription) stop() {
	close(s.done)
	for range s.links {
	}
	for range s.addrs {
	}
}

func (r *Reader) subscribe(opts WatchOptions) (*subscription, error) {
	s := &subscription{
		links: make(chan netlink.LinkUpdate, 64),
		addrs: make(chan netlink.AddrUpdate, 64),
		done:  make(chan struct{}),
	}
	ns := r.ns
	if err := netlink.LinkSubscribeWithOptions(s.links, s.done, netlink.LinkSubscribeOptions{
		Namespace: &ns, ErrorCallback: s.setErr, ReceiveBufferSize: opts.ReceiveBuffer, ReceiveBufferForceSize: opts.ReceiveBuffer > 0,
	}); err != nil {
		return nil, fmt.Errorf("subscribe to link changes: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(s.addrs, s.done, netlink.AddrSubscribeOptions{
		Namespace: &ns, ErrorCallback: s.setErr, ReceiveBufferSize: opts.ReceiveBuffer, ReceiveBufferForceSize: opts.ReceiveBuffer > 0,
	}); err != nil {
		close(s.done)
		for range s.links {
		}
		return nil, fmt.Errorf("subscribe to address changes: %w", err)
	}
	return s, nil
}

// pump turns updates into events until ctx ends or either subscription breaks.
func (r *Reader) pump(ctx context.Context, s *subscription, known map[int]linkState, out chan<- Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-s.links:
			if !ok {
				return
			}
			if ev, ok := linkEvent(known, u); ok && !send(ctx, out, ev) {
				return
			}
		case u, ok := <-s.addrs:
			if !ok {
				return
			}
			if !send(ctx, out, addrEvent(known, u)) {
				return
			}
		}
	}
}

func send(ctx context.Context, out chan<- Event, ev Event) bool {
	select {
	case out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// linkEvent updates known from one notification and says what changed, if
// anything an operator cares about did.
func linkEvent(known map[int]linkState, u netlink.LinkUpdate) (Event, bool) {
	idx := int(u.Index)
	old, had := known[idx]
	if u.Header.Type == unix.RTM_DELLINK {
		delete(known, idx)
		name := old.name
		if name == "" {
			name = text.EscapeString(u.Attrs().Name)
		}
		return Event{Time: time.Now(), Link: name, Index: idx, Change: LinkRemoved, Old: old.oper,
			Message: fmt.Sprintf("link %s removed", name)}, true
	}
	cur := stateOf(u.Link)
	known[idx] = cur
	if !had {
		return Event{Time: time.Now(), Link: cur.name, Index: idx, Change: LinkAdded, New: cur.oper,
			Message: fmt.Sprintf("link %s added (%s)", cur.name, cur.oper)}, true
	}
	return changeEvent(idx, old, cur)
}

// changeEvent describes the most significant difference between two states of
// one link: admin state, then carrier, then operational state.
func changeEvent(idx int, old, cur linkState) (Event, bool) {
	ev := Event{Time: time.Now(), Link: cur.name, Index: idx, Old: old.oper, New: cur.oper}
	switch {
	case old.admin != cur.admin && cur.admin:
		ev.Change = AdminUp
	case old.admin != cur.admin:
		ev.Change = AdminDown
	case old.carrier != cur.carrier && cur.carrier:
		ev.Change = CarrierUp
	case old.carrier != cur.carrier:
		ev.Change = CarrierLost
	case old.oper != cur.oper:
		ev.Change = OperChanged
	default:
		return Event{}, false // counters, MTU or other attributes: not an event
	}
	ev.Message = fmt.Sprintf("link %s %s (oper %s -> %s)", cur.name, ev.Change, old.oper, cur.oper)
	return ev, true
}

func addrEvent(known map[int]linkState, u netlink.AddrUpdate) Event {
	name := known[u.LinkIndex].name
	ev := Event{Time: time.Now(), Link: name, Index: u.LinkIndex, Change: AddressRemoved, New: u.LinkAddress.String()}
	if u.NewAddr {
		ev.Change = AddressAdded
	}
	ev.Message = fmt.Sprintf("link %s %s %s", name, ev.Change, ev.New)
	return ev
}

// diff lists the events that turn the state before into the state after.
func diff(before, after map[int]linkState) []Event {
	var evs []Event
	for idx, old := range before {
		cur, ok := after[idx]
		if !ok {
			evs = append(evs, Event{Time: time.Now(), Link: old.name, Index: idx, Change: LinkRemoved, Old: old.oper,
				Message: fmt.Sprintf("link %s removed", old.name)})
			continue
		}
		if ev, ok := changeEvent(idx, old, cur); ok {
			evs = append(evs, ev)
		}
	}
	for idx, cur := range after {
		if _, ok := before[idx]; !ok {
			evs = append(evs, Event{Time: time.Now(), Link: cur.name, Index: idx, Change: LinkAdded, New: cur.oper,
				Message: fmt.Sprintf("link %s added (%s)", cur.name, cur.oper)})
		}
	}
	slices.SortFunc(evs, func(a, b Event) int { return a.Index - b.Index })
	return evs
}

// snapshot lists the links' states by index.
func (r *Reader) snapshot() (map[int]linkState, error) {
	links, err := r.nl.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list links: %w", err)
	}
	m := make(map[int]linkState, len(links))
	for _, l := range links {
		m[l.Attrs().Index] = stateOf(l)
	}
	return m, nil
}

func stateOf(l netlink.Link) linkState {
	a := l.Attrs()
	return linkState{name: text.EscapeString(a.Name), admin: a.Flags&net.FlagUp != 0, carrier: a.RawFlags&unix.IFF_LOWER_UP != 0, oper: a.OperState.String()}
}
