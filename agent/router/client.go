package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Handler answers one call; its result or error goes back to the caller.
// It should return when its ctx ends: the connection has.
type Handler func(ctx context.Context, payload []byte) ([]byte, error)

// Register is the Go client for daemons: it connects to the agent's control
// socket, registers name, sends a heartbeat every interval and answers calls
// with handle (each in its own goroutine), until ctx is cancelled or the
// connection ends; it returns why it ended. KeepRegistered calls it again
// whenever that happens.
func Register(ctx context.Context, socket, name string, interval time.Duration, handle Handler) error {
	return register(ctx, socket, name, interval, handle, func() {})
}

// Retry delays of KeepRegistered: an agent reloading in place is away for
// tens of milliseconds, and its socket stays.
const (
	firstRetry = 100 * time.Millisecond
	lastRetry  = 2 * time.Second
)

// KeepRegistered keeps name registered until ctx ends, then returns ctx's
// error. It registers as Register does and, whenever that ends (the agent
// reloaded, restarted or dropped the service) or fails (the agent is away
// or refuses), registers again: 100 ms later, then twice as long after each
// failure in a row, up to 2 s. After a reload the agent carries the
// registration on without an event if the service is back within five
// seconds or three of its heartbeat intervals, whichever is longer. log (nil:
// none) hears of each registration and loss, and of each attempt that
// failed (at debug level after the first in a row). A name or interval that
// the agent would refuse is returned at once.
func KeepRegistered(ctx context.Context, socket, name string, interval time.Duration, handle Handler, log *slog.Logger) error {
	if err := checkRegistration(name, interval); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("service", name, "socket", socket)
	wait, registered := firstRetry, false
	for {
		err := register(ctx, socket, name, interval, handle, func() {
			wait, registered = firstRetry, true
			log.Info("registered with the agent")
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case registered:
			log.Info("connection to the agent ended; registering again", "reason", err)
		case wait == firstRetry: // the first attempt that failed in a row
			log.Info("could not register; trying again", "reason", err, "in", wait)
		default:
			log.Debug("could not register; trying again", "reason", err, "in", wait)
		}
		registered = false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, lastRetry)
	}
}

// register is Register, calling registered once the agent has said yes.
func register(ctx context.Context, socket, name string, interval time.Duration, handle Handler, registered func()) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer c.Close()
	var wmu sync.Mutex
	write := func(f *Frame) error {
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		return writeFrame(c, f)
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, below: the heartbeat and the calls end with conn
	conn, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	context.AfterFunc(conn, func() { c.Close() })
	if err := write(&Frame{Type: "register", Service: name, IntervalMs: interval.Milliseconds()}); err != nil {
		return err
	}
	answer, err := readFrame(c)
	if err != nil {
		return fmt.Errorf("register %s: %w", name, err)
	}
	if answer.Type != "ok" {
		return fmt.Errorf("register %s: %s", name, answer.Error)
	}
	registered()
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-conn.Done():
				return
			case <-tick.C:
				if err := write(&Frame{Type: "heartbeat"}); err != nil {
					cancel(fmt.Errorf("heartbeat: %w", err))
					return
				}
			}
		}
	})
	for {
		f, err := readFrame(c)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if cause := context.Cause(conn); cause != nil {
				err = cause
			}
			return fmt.Errorf("service %s: %w", name, err)
		}
		if f.Type != "call" {
			continue
		}
		wg.Go(func() {
			out, err := handle(conn, f.Payload)
			reply := &Frame{Type: "reply", ID: f.ID, Payload: out}
			if err != nil {
				reply = &Frame{Type: "error", ID: f.ID, Error: err.Error()}
			}
			if werr := write(reply); werr != nil && !errors.Is(werr, net.ErrClosed) {
				cancel(fmt.Errorf("reply: %w", werr))
			}
		})
	}
}
