//go:build edgeagent_noconnect

package main

import (
	"io"
	"slices"
)

// A build for the upgrade tests only (upgrade_test.go, a new version that
// never connects): the real agent, whose run points the uplink at a port
// nobody listens on. Only the arguments run parses change: os.Args, which a
// reload passes on to the next image (the rollback's), stays as init gave it.
func init() {
	for i, c := range commands {
		if c.Name == "run" {
			commands[i].Run = func(args []string, stdout, stderr io.Writer) int {
				return runAgent(append(slices.Clone(args), "--broker", "tcp://127.0.0.1:1"), stdout, stderr)
			}
		}
	}
}
