package main

import (
	"context"
	"encoding/json"
	"io"

	"github.com/seed69aca190/edgeagent/agent"
	"github.com/seed69aca190/edgeagent/diag"
	"github.com/seed69aca190/edgeagent/hal"
	"github.com/seed69aca190/edgeagent/internal/cli"
)

var inventoryCommand = cli.Command{
	Name:    "inventory",
	Summary: "print what the node has: disks, NICs and VPN tunnels",
	Run:     runInventory,
}

const inventoryHelp = `Print the disks (with partitions, filesystems and SMART health), network links
(with addresses and counters) and VPN tunnels (with a verdict: up, stale or
down) as the HAL sees them. Text fits an 80-column console; --json is for
machines. Parts that cannot be read are listed; the rest is still shown.`

func runInventory(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("inventory", "edgeagent inventory [--json] [--config PATH] [--no-smart]", inventoryHelp, stdout)
	configPath := flags.String("config", defaultConfigPath, "YAML config file (paths, tunnels to watch)")
	asJSON := flags.Bool("json", false, "print JSON")
	noSmart := flags.Bool("no-smart", false, "skip SMART health (it runs smartctl once per disk)")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	cfg, ok := commandConfig(flags, *configPath, stderr)
	if !ok {
		return cli.ExitUsage
	}
	inv := hal.Read(context.Background(), agent.HALOptions(cfg, !*noSmart))
	var err error
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(inv)
	} else {
		err = diag.WriteInventory(stdout, inv)
	}
	if err != nil {
		return cli.ExitFailure
	}
	return cli.ExitOK
}
