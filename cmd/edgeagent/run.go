package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/seed69aca190/edgeagent/agent"
	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/internal/cli"
)

var runCommand = cli.Command{
	Name:    "run",
	Summary: "start the agent daemon",
	Run:     runAgent,
}

const defaultConfigPath = "/etc/edgeagent/config.yaml"

// runOverrides maps each flag of "run" to the config key it sets.
var runOverrides = []struct{ flag, key, help string }{
	{"node-id", "node.id", "node identity (default: node.id_file, else the id generated once and kept in the state directory)"},
	{"broker", "uplink.brokers", "MQTT broker URL; comma-separated for failover"},
	{"state-dir", "paths.state_dir", "directory for everything the agent writes"},
	{"statsd", "statsd.listen", "StatsD listen address (host:port or unix:PATH; empty disables)"},
	{"http", "http.listen", "status endpoint listen address (host:port; empty disables)"},
	{"log-level", "log.level", "debug, info, warn or error"},
}

const runHelp = `Start the agent daemon. It runs until SIGINT or SIGTERM, then stops cleanly.
Configuration comes from --config (default ` + defaultConfigPath + `, or the
built-in defaults when that file does not exist); the flags below override keys
of it, so a node can be started without a file. Everything the agent writes goes
under the state directory.`

// runFlags are run's flags, which selftest takes too (an upgrade's
// pre-flight runs the new binary with the running agent's arguments).
type runFlags struct {
	*flag.FlagSet
	configPath *string
	values     map[string]*string
}

func newRunFlags(name, synopsis, help string, stdout io.Writer) runFlags {
	f := runFlags{FlagSet: cli.FlagSet(name, synopsis, help, stdout), values: map[string]*string{}}
	f.configPath = f.String("config", defaultConfigPath, "YAML config file")
	for _, o := range runOverrides {
		f.values[o.flag] = f.String(o.flag, "", o.help+" ("+o.key+")")
	}
	return f
}

func (f runFlags) load() (*config.Config, error) {
	return loadRunConfig(f.FlagSet, *f.configPath, f.values)
}

func runAgent(args []string, stdout, stderr io.Writer) int {
	flags := newRunFlags("run", "edgeagent run [--config PATH] [flags]", runHelp, stdout)
	if ok, code := cli.ParseNoArgs(flags.FlagSet, args, stderr); !ok {
		return code
	}

	cfg, err := flags.load()
	if err != nil {
		fmt.Fprintln(stderr, "edgeagent run: invalid configuration:")
		printConfigError(stderr, err)
		return cli.ExitUsage
	}
	if code, ok := decide(cfg, stderr); !ok {
		return code
	}

	if os.Getenv("GOGC") == "" {
		// The agent's live heap is well under 1 MiB, so Go's 4 MiB minimum
		// heap target lets garbage from 10 s collections pile up for minutes:
		// RSS peaked at 12.0 MiB over 5 minutes, and at 9.7 MiB with half the
		// target, for no measurable CPU (0.060 % and 0.063 % of a core idle;
		// scripts/bench/footprint).
		debug.SetGCPercent(50)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	a := agent.New(cfg, stderr)
	// SIGUSR1 reloads (a new image of the binary in this process, the
	// configuration read again); SIGHUP applies what can change in place.
	// Both read the configuration as this start did, flags included.
	load := flags.load
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sig := <-sigs:
				if sig == syscall.SIGUSR1 {
					a.Reload(func() error {
						cfg, err := load()
						if err != nil {
							return err
						}
						return a.CheckReload(cfg)
					})
				} else {
					a.Reconfigure(load)
				}
			}
		}
	}()
	err = a.Run(ctx)
	switch {
	case err == nil || errors.Is(err, context.Canceled):
		return cli.ExitOK
	case errors.Is(err, agent.ErrUnusable):
		fmt.Fprintf(stderr, "edgeagent run: %v\n", err)
		return cli.ExitUsage
	}
	fmt.Fprintf(stderr, "edgeagent run: %v\n", err)
	return cli.ExitFailure
}

// loadConfig loads the config file; when the path was not given explicitly and
// the default file does not exist, the built-in defaults apply.
func loadConfig(path string, explicit bool) (*config.Config, error) {
	cfg, err := config.Load(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return config.Default(), nil
	}
	return cfg, err
}

// loadRunConfig loads the config file (or the defaults when the default file
// does not exist), then applies the flags that were given.
func loadRunConfig(flags *flag.FlagSet, path string, values map[string]*string) (*config.Config, error) {
	explicit := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { explicit[f.Name] = true })

	cfg, err := loadConfig(path, explicit["config"])
	if err != nil {
		return nil, err
	}
	var problems []config.Problem
	for _, o := range runOverrides {
		if !explicit[o.flag] {
			continue
		}
		vals := []string{*values[o.flag]}
		switch o.flag {
		case "broker":
			vals = strings.Split(vals[0], ",")
		case "state-dir":
			// A relative directory on the command line means relative to here.
			if abs, err := filepath.Abs(vals[0]); err == nil {
				vals[0] = abs
			}
		}
		if err := cfg.Override("--"+o.flag, o.key, vals...); err != nil {
			if config.Problems(err) == nil {
				return nil, err
			}
			problems = append(problems, config.Problems(err)...)
		}
	}
	if len(problems) > 0 {
		return nil, &config.Error{Problems: problems}
	}
	return cfg, cfg.Validate()
}
