// Command service is an example daemon for edgeagent's local service router:
// it registers under a name on the agent's control socket, keeps the
// registration alive with heartbeats, and answers each service.call from the
// controller by echoing the payload. A real storage daemon would answer with
// its own status or carry out the request.
//
//	go run ./examples/service --socket /var/lib/edgeagent/control.sock --name store
//	edgectl exec NODE service.call store hello     # prints "store: hello"
//
// It stays registered by itself (router.KeepRegistered): when its connection
// ends, because the agent reloaded, restarted or dropped it, or when the
// agent is not there yet, it registers again after 100 ms, then twice as
// long each time up to 2 s. Across a reload the agent keeps it registered,
// without an event. It logs each registration and loss on stderr
// (--log-level debug also each failed attempt), exits 0 on SIGINT or
// SIGTERM, and 2 when the name or interval is one the agent refuses.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/seed69aca190/edgeagent/agent/router"
)

func main() {
	socket := flag.String("socket", "/var/lib/edgeagent/control.sock", "the agent's control socket (control.socket)")
	name := flag.String("name", "example", "the service name to register")
	interval := flag.Duration("interval", time.Second, "heartbeat interval; three missed deregister the service")
	var level slog.Level
	flag.TextVar(&level, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	err := router.KeepRegistered(ctx, *socket, *name, *interval, func(_ context.Context, payload []byte) ([]byte, error) {
		return fmt.Appendf(nil, "%s: %s\n", *name, payload), nil
	}, log)
	if ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(2)
	}
}
