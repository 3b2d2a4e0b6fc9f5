package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/cli"
)

var serveCommand = cli.Command{
	Name:    "serve",
	Summary: "run the controller (with an embedded MQTT broker unless --broker is given)",
	Run:     serve,
}

const serveHelp = `Run the controller: it ingests what every node publishes, de-duplicates by
node, agent instance and sequence number, keeps the fleet view, marks a node
offline on its last will or after three missed heartbeats, and serves the view
over HTTP for 'edgectl nodes' and 'edgectl events'. Without --broker it embeds an MQTT broker
on --mqtt, so one machine runs the whole system; with --broker it connects to an
external one (and --share lets several controllers split its ingest).

'edgectl rollout' uploads a release's artifact to the controller, which keeps
it in --artifact-dir (by default a temporary directory removed at exit) and
serves it to the nodes at <--public-url>/artifacts/<sha256>. --public-url is
the API's address as the nodes reach it: it defaults to http://<--http>, which
nodes on other machines cannot reach when --http is 127.0.0.1 or 0.0.0.0.`

func serve(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("serve", "edgectl serve [flags]", serveHelp, stdout)
	mqttAddr := flags.String("mqtt", "127.0.0.1:1883", "address of the embedded broker")
	httpAddr := flags.String("http", "127.0.0.1:8080", "address of the HTTP API")
	broker := flags.String("broker", "", "external broker URL (tcp://, ssl://); disables the embedded one")
	share := flags.String("share", "", "shared-subscription group, for several controllers on one broker")
	prefix := flags.String("prefix", "edge", "topic prefix")
	heartbeat := flags.Duration("heartbeat", 10*time.Second, "the nodes' heartbeat interval; three missed = offline")
	clientID := flags.String("client-id", "", "MQTT client id (default edgectl-<host name>)")
	artifactDir := flags.String("artifact-dir", "", "where uploaded release artifacts are kept (default: a temporary directory)")
	publicURL := flags.String("public-url", "", "the HTTP API's base URL as nodes reach it, for artifact URLs (default http://<--http>)")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if *broker == "" {
		srv, err := embeddedBroker(*mqttAddr, log)
		if err != nil {
			fmt.Fprintf(stderr, "edgectl serve: %v\n", err)
			return cli.ExitFailure
		}
		defer srv.Close()
		*broker = "tcp://" + *mqttAddr
		log.Info("embedded MQTT broker listening", "address", *mqttAddr)
	}
	if *clientID == "" {
		host, _ := os.Hostname()
		*clientID = "edgectl-" + host
	}
	fleet := controller.NewFleet(controller.Options{HeartbeatInterval: *heartbeat, TopicPrefix: *prefix})
	ingest := controller.NewIngest(controller.IngestOptions{Broker: *broker, ClientID: *clientID, Share: *share,
		TopicPrefix: *prefix, Fleet: fleet, Log: log})
	l, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		fmt.Fprintf(stderr, "edgectl serve: %v\n", err)
		return cli.ExitFailure
	}
	artifacts, cleanup, err := artifactStore(*artifactDir)
	if err != nil {
		fmt.Fprintf(stderr, "edgectl serve: %v\n", err)
		return cli.ExitFailure
	}
	defer cleanup()
	if *publicURL == "" {
		*publicURL = "http://" + l.Addr().String()
	}
	handler := http.NewServeMux()
	handler.Handle("/", controller.API(fleet, ingest))
	rollouts := controller.RolloutAPI(controller.RolloutOptions{Fleet: fleet, Ingest: ingest, Artifacts: artifacts, PublicURL: *publicURL})
	for _, p := range []string{"/api/rollouts", "/api/rollouts/", "/api/artifacts", "/artifacts/"} {
		handler.Handle(p, rollouts)
	}
	api := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := api.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP API stopped", "err", err)
		}
	}()
	log.Info("HTTP API listening", "address", l.Addr().String(), "public_url", *publicURL)
	err = ingest.Run(ctx)
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	api.Shutdown(shut)
	if err != nil {
		fmt.Fprintf(stderr, "edgectl serve: %v\n", err)
		return cli.ExitFailure
	}
	return cli.ExitOK
}

// artifactStore opens the artifact directory, or a temporary one that the
// returned function removes.
func artifactStore(dir string) (*controller.Artifacts, func(), error) {
	cleanup := func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "edgectl-artifacts-")
		if err != nil {
			return nil, nil, fmt.Errorf("artifact directory: %w", err)
		}
		dir, cleanup = tmp, func() { os.RemoveAll(tmp) }
	}
	a, err := controller.NewArtifacts(dir)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return a, cleanup, nil
}

// embeddedBroker starts mochi-mqtt on addr, open to any client: the demo's
// broker on one machine. A fleet uses an external broker with TLS and ACLs.
func embeddedBroker(addr string, log *slog.Logger) (*mochi.Server, error) {
	srv := mochi.New(&mochi.Options{Logger: log.With("component", "broker"), InlineClient: false})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		return nil, fmt.Errorf("embedded broker on %s: %w", addr, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	select {
	case err := <-errc:
		if err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
	case <-time.After(100 * time.Millisecond):
	}
	return srv, nil
}
