package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/internal/cli"
)

var configCommand = cli.Command{
	Name:    "config",
	Summary: "print the default config, or check a config file",
	Run:     runConfig,
}

const configUsage = `edgeagent config default
       edgeagent config check PATH`

const configHelp = `default  prints the full default configuration, every key commented; a file
         needs only the keys it changes.
check    validates PATH: prints "ok" and exits 0, or prints one line per problem
         (file:line: key: what is wrong and what is allowed) and exits 2.`

func runConfig(args []string, stdout, stderr io.Writer) int {
	fs := cli.FlagSet("config", configUsage, configHelp, stdout)
	if ok, code := cli.Parse(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "config: want a subcommand, default or check (see --help)\n")
		return cli.ExitUsage
	}
	switch sub, rest := fs.Arg(0), fs.Args()[1:]; sub {
	case "default":
		if len(rest) != 0 {
			fmt.Fprintf(stderr, "config default: takes no arguments\n")
			return cli.ExitUsage
		}
		if _, err := stdout.Write(config.DefaultYAML()); err != nil {
			return cli.ExitFailure
		}
		return cli.ExitOK
	case "check":
		if len(rest) != 1 {
			fmt.Fprintf(stderr, "config check: want exactly one PATH, got %d arguments\n", len(rest))
			return cli.ExitUsage
		}
		return checkConfig(rest[0], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "config: unknown subcommand %q; want default or check\n", sub)
		return cli.ExitUsage
	}
}

func checkConfig(path string, stdout, stderr io.Writer) int {
	if _, err := config.Load(path); err != nil {
		printConfigError(stderr, err)
		return cli.ExitUsage
	}
	fmt.Fprintln(stdout, "ok")
	return cli.ExitOK
}

// printConfigError writes one line per problem, or the error itself when it is
// not about the file's contents (it could not be read).
func printConfigError(w io.Writer, err error) {
	problems := config.Problems(err)
	if problems == nil {
		fmt.Fprintln(w, err)
		return
	}
	for _, p := range problems {
		fmt.Fprintln(w, p)
	}
}

// commandConfig loads the configuration for a command with a --config flag
// (the defaults when the default file does not exist and the flag was not
// given); a problem is printed, and ok is false.
func commandConfig(flags *flag.FlagSet, path string, stderr io.Writer) (cfg *config.Config, ok bool) {
	explicit := false
	flags.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, err := loadConfig(path, explicit)
	if err != nil {
		fmt.Fprintf(stderr, "edgeagent %s: invalid configuration:\n", flags.Name())
		printConfigError(stderr, err)
		return nil, false
	}
	return cfg, true
}
