package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/seed69aca190/edgeagent/agent/dispatch"
	"github.com/seed69aca190/edgeagent/internal/cli"
)

var pluginsCommand = cli.Command{
	Name:    "plugins",
	Summary: "list the plugins the controller may run, and why any would be refused",
	Run:     listPlugins,
}

func listPlugins(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("plugins", "edgeagent plugins [--config PATH] [--json]",
		"List paths.plugin_dir with the verdict of the checks made before every run:\nexact names, regular executable files, owned by root or the agent, not\nwritable by group or others.", stdout)
	configPath := flags.String("config", defaultConfigPath, "YAML config file")
	asJSON := flags.Bool("json", false, "print JSON")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	cfg, ok := commandConfig(flags, *configPath, stderr)
	if !ok {
		return cli.ExitUsage
	}
	list, err := dispatch.Plugins(cfg.Paths.PluginDir)
	if err != nil {
		fmt.Fprintf(stderr, "edgeagent plugins: %v\n", err)
		return cli.ExitFailure
	}
	if *asJSON {
		json.NewEncoder(stdout).Encode(list)
		return cli.ExitOK
	}
	if len(list) == 0 {
		fmt.Fprintf(stdout, "no plugins in %s\n", cfg.Paths.PluginDir)
	}
	for _, p := range list {
		if p.Problem == "" {
			fmt.Fprintf(stdout, "%-24s ok\n", p.Name)
		} else {
			fmt.Fprintf(stdout, "%-24s refused: %s\n", p.Name, p.Problem)
		}
	}
	return cli.ExitOK
}
