// Command edgeagent is the agent that runs on every storage appliance: it reports
// the node's disks, NICs and tunnels, runs what the controller asks and upgrades
// itself. Each subcommand lives in its own file.
package main

import (
	"os"

	"github.com/seed69aca190/edgeagent/internal/cli"
)

var commands = []cli.Command{
	runCommand,
	reloadCommand,
	updateCommand,
	selftestCommand,
	configCommand,
	inventoryCommand,
	pluginsCommand,
	cli.Version("edgeagent"),
}

func main() {
	os.Exit(cli.Main("edgeagent", "the storage appliance agent", commands, os.Args[1:], os.Stdout, os.Stderr))
}
