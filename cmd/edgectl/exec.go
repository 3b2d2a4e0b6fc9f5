package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/cli"
	"github.com/seed69aca190/edgeagent/telemetry"
)

var execCommand = cli.Command{
	Name:    "exec",
	Summary: "run a built-in or plugin on a node (or every online node) and show its output",
	Run:     execute,
}

const execHelp = `Run NAME with ARGS on NODE and print its stdout and stderr as if it had run
here; exit with its exit code. Built-ins: ping, inventory, diag, collect,
loglevel, config.get, spool.stats; anything else is a plugin in the node's
plugin directory. Exit 124 when the request timed out on the node, 125 when the
node refused it (the reason goes to stderr). With --all, NAME runs on every
online node and a line per node summarises the outcome.`

// Exit codes for outcomes that have no exit code of their own, as timeout(1).
const (
	exitTimedOut = 124
	exitRefused  = 125
)

func execute(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("exec", "edgectl exec [--timeout D] [--server URL] (NODE | --all) NAME [ARGS...]", execHelp, stdout)
	timeout := flags.Duration("timeout", time.Minute, "how long the command may run on the node")
	all := flags.Bool("all", false, "run on every online node")
	server := flags.String("server", defaultServer, "the controller's HTTP API")
	if ok, code := cli.Parse(flags, args, stderr); !ok {
		return code
	}
	rest := flags.Args()
	if need := map[bool]int{true: 1, false: 2}[*all]; len(rest) < need {
		fmt.Fprintln(stderr, "exec: want NODE and NAME, or --all and NAME (see --help)")
		return cli.ExitUsage
	}
	req := controller.ExecRequest{TimeoutSec: uint32(timeout.Seconds())}
	if !*all {
		req.Node, req.Name, req.Args = rest[0], rest[1], rest[2:]
		res, err := post(*server, req)
		if err != nil {
			fmt.Fprintf(stderr, "edgectl exec: %v\n", err)
			return cli.ExitFailure
		}
		stdout.Write(res.Stdout.Data)
		stderr.Write(res.Stderr.Data)
		for _, o := range []struct {
			name string
			out  telemetry.Output
		}{{"stdout", res.Stdout}, {"stderr", res.Stderr}} {
			if o.out.Truncated {
				fmt.Fprintf(stderr, "edgectl exec: %s truncated: %d of %d bytes shown\n", o.name, len(o.out.Data), o.out.Total)
			}
		}
		return exitCode(res, stderr)
	}
	req.Name, req.Args = rest[0], rest[1:]
	var nodes []controller.Node
	if err := get(*server, "/api/nodes", &nodes); err != nil {
		fmt.Fprintf(stderr, "edgectl exec: %v\n", err)
		return cli.ExitFailure
	}
	type outcome struct {
		node string
		res  telemetry.CommandResult
		err  error
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
	)
	for _, n := range nodes {
		if !n.Online {
			continue
		}
		r := req
		r.Node = n.ID
		wg.Go(func() {
			res, err := post(*server, r)
			mu.Lock()
			outcomes = append(outcomes, outcome{n.ID, res, err})
			mu.Unlock()
		})
	}
	wg.Wait()
	failed := 0
	for _, o := range outcomes {
		line := ""
		switch {
		case o.err != nil:
			line = "error: " + o.err.Error()
		case o.res.Status == telemetry.StatusOK || o.res.Status == telemetry.StatusFailed:
			first, _, _ := strings.Cut(strings.TrimSpace(string(o.res.Stdout.Data)), "\n")
			line = fmt.Sprintf("%s, exit %d: %s", o.res.Status, o.res.ExitCode, clip(first, 50))
		default:
			line = o.res.Status + ": " + o.res.Reason
		}
		if o.err != nil || o.res.Status != telemetry.StatusOK {
			failed++
		}
		fmt.Fprintf(stdout, "%-20s %s\n", clip(o.node, 20), line)
	}
	fmt.Fprintf(stdout, "%d nodes, %d not ok\n", len(outcomes), failed)
	if failed > 0 {
		return cli.ExitFailure
	}
	return cli.ExitOK
}

func exitCode(res telemetry.CommandResult, stderr io.Writer) int {
	switch res.Status {
	case telemetry.StatusTimedOut:
		fmt.Fprintf(stderr, "edgectl exec: timed out on the node: %s\n", res.Reason)
		return exitTimedOut
	case telemetry.StatusRefused:
		fmt.Fprintf(stderr, "edgectl exec: refused by the node: %s\n", res.Reason)
		return exitRefused
	}
	if res.ExitCode < 0 {
		fmt.Fprintf(stderr, "edgectl exec: %s: %s\n", res.Status, res.Reason)
		return cli.ExitFailure
	}
	return res.ExitCode
}

func post(server string, req controller.ExecRequest) (telemetry.CommandResult, error) {
	var res telemetry.CommandResult
	body, _ := json.Marshal(req)
	c := http.Client{Timeout: time.Duration(req.TimeoutSec)*time.Second + time.Minute}
	resp, err := c.Post(strings.TrimSuffix(server, "/")+"/api/exec", "application/json", bytes.NewReader(body))
	if err != nil {
		return res, fmt.Errorf("controller at %s: %w (is 'edgectl serve' running?)", server, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return res, errors.New(strings.TrimSpace(string(msg)))
	}
	return res, json.NewDecoder(resp.Body).Decode(&res)
}

var servicesCommand = cli.Command{
	Name:    "services",
	Summary: "list the services registered with a node's service router",
	Run:     services,
}

func services(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("services", "edgectl services [--server URL] NODE",
		"List the daemons registered with NODE's local service router (the services built-in).", stdout)
	server := flags.String("server", defaultServer, "the controller's HTTP API")
	if ok, code := cli.Parse(flags, args, stderr); !ok {
		return code
	}
	if flags.NArg() != 1 {
		fmt.Fprintln(stderr, "services: want NODE (see --help)")
		return cli.ExitUsage
	}
	res, err := post(*server, controller.ExecRequest{Node: flags.Arg(0), Name: "services", TimeoutSec: 30})
	if err != nil {
		fmt.Fprintf(stderr, "edgectl services: %v\n", err)
		return cli.ExitFailure
	}
	if res.Status != telemetry.StatusOK {
		return exitCode(res, stderr)
	}
	var list []struct {
		Name          string
		Since         time.Time
		Interval      time.Duration
		LastHeartbeat time.Time `json:"last_heartbeat"`
		Calls         uint64
	}
	if err := json.Unmarshal(res.Stdout.Data, &list); err != nil {
		fmt.Fprintf(stderr, "edgectl services: the node's answer is not a service list: %v\n", err)
		return cli.ExitFailure
	}
	now := time.Now()
	fmt.Fprintf(stdout, "%-24s %10s %9s %9s %7s\n", "SERVICE", "UP", "HEARTBEAT", "LAST", "CALLS")
	for _, s := range list {
		fmt.Fprintf(stdout, "%-24s %10s %9s %9s %7d\n", clip(s.Name, 24), ago(now.Sub(s.Since)), s.Interval,
			ago(now.Sub(s.LastHeartbeat)), s.Calls)
	}
	return cli.ExitOK
}
