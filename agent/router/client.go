package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Handler answers one call; its result or error goes back to the caller.
type Handler func(ctx context.Context, payload []byte) ([]byte, error)

// Register is the Go client for daemons: it connects to the agent's control
// socket, registers name, sends a heartbeat every interval and answers calls
// with handle (each in its own goroutine), until ctx is cancelled or the
// connection ends; it returns why it ended. Call it again to re-register.
func Register(ctx context.Context, socket, name string, interval time.Duration, handle Handler) error {
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if write(&Frame{Type: "heartbeat"}) != nil {
					cancel()
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
			return fmt.Errorf("service %s: %w", name, err)
		}
		if f.Type != "call" {
			continue
		}
		wg.Go(func() {
			out, err := handle(ctx, f.Payload)
			reply := &Frame{Type: "reply", ID: f.ID, Payload: out}
			if err != nil {
				reply = &Frame{Type: "error", ID: f.ID, Error: err.Error()}
			}
			if werr := write(reply); werr != nil && !errors.Is(werr, net.ErrClosed) {
				cancel()
			}
		})
	}
}
