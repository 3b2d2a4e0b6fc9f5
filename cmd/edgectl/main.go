// Command edgectl is the reference controller: it keeps the fleet view, sends
// commands and rolls out upgrades, with an embedded MQTT broker so one machine
// can run the whole system.
package main

import (
	"os"

	"github.com/seed69aca190/edgeagent/internal/cli"
)

var commands = []cli.Command{
	serveCommand,
	nodesCommand,
	eventsCommand,
	execCommand,
	rolloutCommand,
	releaseCommand,
	servicesCommand,
	cli.Version("edgectl"),
}

func main() {
	os.Exit(cli.Main("edgectl", "the edgeagent reference controller", commands, os.Args[1:], os.Stdout, os.Stderr))
}
