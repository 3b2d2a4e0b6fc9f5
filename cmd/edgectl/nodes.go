package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/cli"
)

var nodesCommand = cli.Command{
	Name:    "nodes",
	Summary: "list the fleet: state (online, offline, upgrading), version, slot, heartbeat and utilization",
	Run:     nodes,
}

var eventsCommand = cli.Command{
	Name:    "events",
	Summary: "show the fleet's events (--follow to keep watching)",
	Run:     events,
}

const defaultServer = "http://127.0.0.1:8080"

// get decodes a JSON answer of the controller's API.
func get(server, path string, v any) error {
	c := http.Client{Timeout: 90 * time.Second}
	resp, err := c.Get(strings.TrimSuffix(server, "/") + path)
	if err != nil {
		return fmt.Errorf("controller at %s: %w (is 'edgectl serve' running?)", server, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("controller at %s: %s: %s", server, resp.Status, strings.TrimSpace(string(body)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func nodes(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("nodes", "edgectl nodes [--json] [--server URL]", "List every node the controller knows.", stdout)
	asJSON := flags.Bool("json", false, "print JSON")
	server := flags.String("server", defaultServer, "the controller's HTTP API")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	var list []controller.Node
	if err := get(*server, "/api/nodes", &list); err != nil {
		fmt.Fprintf(stderr, "edgectl nodes: %v\n", err)
		return cli.ExitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(list)
		return cli.ExitOK
	}
	writeNodes(stdout, list, time.Now())
	return cli.ExitOK
}

// writeNodes prints the fleet as a table that fits 80 columns, then a note
// for each node that is upgrading (a reload says no new version), for each
// claimed by two agents, and for each whose clock is unsynced or off the
// controller's by a minute or more (SEEN is by the controller's).
func writeNodes(w io.Writer, list []controller.Node, now time.Time) {
	fmt.Fprintf(w, "%-20s %-9s %-11s %-4s %8s %5s %5s %5s %5s\n", "NODE", "STATE", "VERSION", "SLOT", "HB SEQ", "SEEN", "CPU%", "MEM%", "DISK%")
	for _, n := range list {
		seen := "-"
		if !n.LastHeartbeat.IsZero() {
			seen = ago(now.Sub(n.LastHeartbeat))
		}
		pct := func(k string) string {
			if v, ok := n.Utilization[k]; ok {
				return fmt.Sprintf("%.1f", v)
			}
			return "-"
		}
		fmt.Fprintf(w, "%-20s %-9s %-11s %-4s %8d %5s %5s %5s %5s\n", clip(n.ID, 20), n.State, clip(orDash(n.Version), 11),
			clip(orDash(n.Slot), 4), n.HeartbeatSeq, seen, pct("cpu_percent"), pct("memory_percent"), pct("disk_percent"))
	}
	for _, n := range list {
		if u := n.Upgrading; u != nil {
			doing := "reloading"
			if u.To != "" && u.To != n.Version {
				doing = "upgrading to " + clip(u.To, 16)
			}
			fmt.Fprintf(w, "%s: %s for %s, due back within %s\n", clip(n.ID, 20), doing, ago(now.Sub(u.Since)), ago(max(u.Until.Sub(now), 0)))
		}
		if c := n.Conflict; c != nil {
			fmt.Fprintf(w, "%s: claimed by two live agents for %s:\n", clip(n.ID, 20), ago(now.Sub(c.Since)))
			for _, in := range c.Instances {
				fmt.Fprintf(w, "  instance %s, boot %s, heard %s ago\n", clip(in.ID, 16), clip(orDash(in.BootID), 8), ago(now.Sub(in.LastHeard)))
			}
		}
		if n.NodeTime.IsZero() {
			continue
		}
		off, how := n.NodeTime.Sub(n.LastHeartbeat), "ahead"
		if off < 0 {
			off, how = -off, "behind"
		}
		if !n.Unsynced && off < time.Minute {
			continue
		}
		clock := n.NodeTime.UTC().Format("2006-01-02 15:04Z")
		if n.Unsynced {
			clock += " unsynced"
		}
		fmt.Fprintf(w, "%s: clock %s, %s %s\n", clip(n.ID, 20), clock, ago(off), how)
	}
}

func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 100*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func events(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("events", "edgectl events [--follow] [--json] [--server URL]", "Show the fleet's events, oldest first.", stdout)
	follow := flags.Bool("follow", false, "keep printing new events")
	asJSON := flags.Bool("json", false, "print one JSON object per line")
	server := flags.String("server", defaultServer, "the controller's HTTP API")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	var after uint64
	for {
		path := fmt.Sprintf("/api/events?after=%d", after)
		if *follow {
			path += "&wait=30s"
		}
		var list []controller.EventRecord
		if err := get(*server, path, &list); err != nil {
			fmt.Fprintf(stderr, "edgectl events: %v\n", err)
			return cli.ExitFailure
		}
		for _, e := range list {
			if *asJSON {
				json.NewEncoder(stdout).Encode(e)
			} else {
				fmt.Fprintf(stdout, "%s %-8s %-16s %s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Severity, clip(e.Node, 16), e.Message)
			}
			after = e.ID
		}
		if !*follow {
			return cli.ExitOK
		}
	}
}
