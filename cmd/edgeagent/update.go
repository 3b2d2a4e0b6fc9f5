package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/seed69aca190/edgeagent/agent"
	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/internal/buildinfo"
	"github.com/seed69aca190/edgeagent/internal/cli"
	"github.com/seed69aca190/edgeagent/update"
)

// decide runs the start-up decision (docs/upgrades.md) at a start that is
// not a reload: when another binary should run (the committed slot, a
// version on trial, the factory binary), it is exec'd in place with the
// same arguments. It returns false, with an exit code, only when that exec
// failed in a way that leaves nothing to run.
func decide(cfg *config.Config, stderr io.Writer) (int, bool) {
	if os.Getenv(update.DecidedEnv) != "" || agent.Reloaded() {
		os.Unsetenv(update.DecidedEnv) // not for plugins
		return 0, true
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("component", "update")
	exe, err := os.Executable()
	if err != nil {
		log.Warn("running binary unknown; no start-up decision", "err", err)
		return 0, true
	}
	dir := cfg.SlotsDir()
	d, _ := update.Decide(dir, exe, cfg.Update.Attempts, log)
	if d.Trial {
		if err := update.Watch(exe, dir, os.Getpid(), d.Slot, cfg.Update.HealthTimeout); err != nil {
			log.Warn("watchdog not started: a version that hangs will not be rolled back", "err", err)
		}
	}
	if !d.Exec {
		return 0, true
	}
	log.Info("start-up decision: running another binary", "slot", d.Slot, "binary", d.Binary)
	err = syscall.Exec(d.Binary, os.Args, append(os.Environ(), update.DecidedEnv+"=1"))
	log.Error("start-up decision: exec failed; running this binary", "binary", d.Binary, "err", err)
	return 0, true
}

var selftestCommand = cli.Command{
	Name:    "selftest",
	Summary: "check this binary can run with a configuration (an upgrade's pre-flight)",
	Run:     selftest,
}

const selftestHelp = `Check that this binary can run here with the configuration and flags run
would be given: the configuration checks, and what would stop an agent at its
start (TLS files, the node id file) reads. It prints the version and
platform, then "ok" (exit 0) or the problems (exit 1). It takes no lock and
writes nothing, so it can run beside the agent: an upgrade runs the new
binary's selftest with the running agent's arguments before switching to it.`

func selftest(args []string, stdout, stderr io.Writer) int {
	flags := newRunFlags("selftest", "edgeagent selftest [--config PATH] [run's flags]", selftestHelp, stdout)
	if ok, code := cli.ParseNoArgs(flags.FlagSet, args, stderr); !ok {
		return code
	}
	bi := buildinfo.Read("edgeagent")
	fmt.Fprintf(stdout, "version %s\nplatform %s\n", bi.Version, bi.Platform())
	cfg, err := flags.load()
	if err == nil {
		err = agent.CheckStart(cfg)
	}
	if err != nil {
		fmt.Fprintln(stdout, "configuration:")
		printConfigError(stdout, err)
		return cli.ExitFailure
	}
	fmt.Fprintln(stdout, "ok")
	return cli.ExitOK
}

var updateCommand = cli.Command{
	Name:    "update",
	Summary: "the A/B upgrade's state: update status [--json]",
	Run:     updateMain,
}

const updateHelp = `edgeagent update status [--json] [--config PATH] [--state-dir DIR]
  the slots, their versions, the running and committed slot, a version on
  trial and the last rollback, from the upgrade state in paths.slots_dir (it
  works whether the agent runs or not).`

func updateMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, updateHelp)
		return cli.ExitUsage
	}
	switch args[0] {
	case "status":
		return updateStatus(args[1:], stdout, stderr)
	case "watchdog":
		return watchdog(args[1:], stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, updateHelp)
		return cli.ExitOK
	}
	fmt.Fprintf(stderr, "edgeagent update: unknown subcommand %q\n%s\n", args[0], updateHelp)
	return cli.ExitUsage
}

func updateStatus(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("update status", "edgeagent update status [--json] [--config PATH] [--state-dir DIR]", updateHelp, stdout)
	asJSON := flags.Bool("json", false, "the state as JSON")
	configPath := flags.String("config", defaultConfigPath, "YAML config file")
	stateDir := flags.String("state-dir", "", "the agent's state directory (paths.state_dir)")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	explicit := false
	flags.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, err := loadConfig(*configPath, explicit)
	if err != nil {
		fmt.Fprintf(stderr, "edgeagent update status: %v\n", err)
		return cli.ExitUsage
	}
	if *stateDir != "" {
		cfg.Paths.StateDir = *stateDir
	}
	dir := cfg.SlotsDir()
	st, err := update.LoadState(dir)
	if err != nil {
		fmt.Fprintf(stderr, "edgeagent update status: %v\n", err)
		return cli.ExitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Dir string `json:"slots_dir"`
			*update.State
		}{dir, st})
		return cli.ExitOK
	}
	fmt.Fprintf(stdout, "slots directory  %s\n", dir)
	committed := st.Committed
	if committed == "" {
		committed = update.Factory
	}
	fmt.Fprintf(stdout, "committed        %s\n", committed)
	fmt.Fprintf(stdout, "highest version  %s\n", orNone(st.Highest))
	fmt.Fprintf(stdout, "factory binary   %s\n", orNone(st.Factory))
	for _, s := range update.Slots {
		info, ok := st.Slots[s]
		if !ok {
			fmt.Fprintf(stdout, "slot %s           empty\n", s)
			continue
		}
		fmt.Fprintf(stdout, "slot %s           %s (%d bytes, sha256 %.16s…)\n", s, info.Version, info.Size, info.SHA256)
	}
	if t := st.Trial; t != nil {
		fmt.Fprintf(stdout, "on trial         %s in slot %s, from %s, attempt %d, since %s\n", t.Version, t.Slot, t.From,
			t.Attempts, t.Began.UTC().Format(time.RFC3339))
	}
	if r := st.Rollback; r != nil {
		fmt.Fprintf(stdout, "last rollback    %s (slot %s) to %s at %s: %s\n", r.Version, r.Slot, r.To,
			r.At.UTC().Format(time.RFC3339), r.Reason)
	}
	return cli.ExitOK
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// watchdog is `edgeagent update watchdog [--detach] DIR PID SLOT TIMEOUT`,
// started by the agent itself (update.Watch).
func watchdog(args []string, stderr io.Writer) int {
	detach := len(args) > 0 && args[0] == "--detach"
	if detach {
		args = args[1:]
	}
	if len(args) != 4 {
		fmt.Fprintln(stderr, "edgeagent update watchdog: want DIR PID SLOT TIMEOUT")
		return cli.ExitUsage
	}
	pid, err1 := strconv.Atoi(args[1])
	timeout, err2 := time.ParseDuration(args[3])
	if err1 != nil || err2 != nil {
		fmt.Fprintln(stderr, "edgeagent update watchdog: bad PID or TIMEOUT")
		return cli.ExitUsage
	}
	runtime.GOMAXPROCS(1)
	if err := update.Watchdog(detach, args[0], pid, args[2], timeout); err != nil {
		fmt.Fprintf(stderr, "edgeagent update watchdog: %v\n", err)
		return cli.ExitFailure
	}
	return cli.ExitOK
}
