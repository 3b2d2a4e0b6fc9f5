// Command service is an example daemon for edgeagent's local service router:
// it registers under a name on the agent's control socket, keeps the
// registration alive with heartbeats, and answers each service.call from the
// controller by echoing the payload. A real storage daemon would answer with
// its own status or carry out the request.
//
//	go run ./examples/service --socket /var/lib/edgeagent/control.sock --name store
//	edgectl exec NODE service.call store hello     # prints "store: hello"
package main

import (
	"context"
	"flag"
	"fmt"
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
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "registering %q on %s\n", *name, *socket)
	err := router.Register(ctx, *socket, *name, *interval, func(_ context.Context, payload []byte) ([]byte, error) {
		return fmt.Appendf(nil, "%s: %s\n", *name, payload), nil
	})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}
