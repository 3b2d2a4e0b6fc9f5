package agent

import (
	"time"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/hal"
	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
)

// HALOptions turns the config into what the HAL needs. Nothing in it is
// read here: an OpenVPN password file is read at every reading of its
// tunnel, so one that is missing makes that tunnel down, with the reason,
// and the tunnel collector failing; it never stops the agent.
func HALOptions(cfg *config.Config, smart bool) hal.Options {
	opts := hal.Options{
		Sysfs:     cfg.Paths.Sysfs,
		Procfs:    cfg.Paths.Procfs,
		Disks:     disk.Options{IncludeLoop: cfg.Disks.IncludeLoop, IncludeRAM: cfg.Disks.IncludeRAM},
		WireGuard: tunnel.WireGuard{StaleAfter: cfg.Tunnels.WireGuardStaleAfter},
	}
	if smart {
		opts.Smart = &disk.SmartCtl{Path: cfg.Disks.Smartctl, Timeout: cfg.Disks.SmartTimeout}
	}
	for _, o := range cfg.Tunnels.OpenVPN {
		opts.OpenVPN = append(opts.OpenVPN, tunnel.OpenVPN{Name: o.Name, Address: o.Management, PasswordFile: o.PasswordFile,
			Grace: cfg.Tunnels.OpenVPNGrace, Timeout: 5 * time.Second})
	}
	return opts
}
