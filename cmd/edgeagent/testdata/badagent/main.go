// Command badagent is a bad new version of the agent for the upgrade tests
// (upgrade_test.go): it passes the pre-flight (selftest answers its version
// and ok), then, run as the agent, fails the way -X main.mode says:
//
//	crash  exits with status 2 at once, as a version that panics at start
//	hang   never does anything again (an image that hangs before it is healthy)
package main

import (
	"fmt"
	"os"
	"time"
)

// Set with -ldflags -X.
var (
	version = "0.0.0"
	mode    = "crash"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "selftest" {
		fmt.Printf("version %s\nplatform bad\nok\n", version)
		return
	}
	fmt.Fprintf(os.Stderr, "badagent %s: %s\n", version, mode)
	switch mode {
	case "hang":
		for {
			time.Sleep(time.Hour)
		}
	default:
		fmt.Fprintln(os.Stderr, "panic: badagent crashes at start")
		os.Exit(2)
	}
}
