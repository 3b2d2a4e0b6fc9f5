package agent

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/hal"
	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
)

// HALOptions turns the config into what the HAL needs, reading the
// OpenVPN management passwords from their files.
func HALOptions(cfg *config.Config, smart bool) (hal.Options, error) {
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
		t := tunnel.OpenVPN{Name: o.Name, Address: o.Management, Grace: cfg.Tunnels.OpenVPNGrace, Timeout: 5 * time.Second}
		if o.PasswordFile != "" {
			pw, err := os.ReadFile(o.PasswordFile)
			if err != nil {
				return opts, fmt.Errorf("tunnel %s: read password_file: %w", o.Name, err)
			}
			t.Password, _, _ = strings.Cut(strings.TrimRight(string(pw), "\r\n"), "\n")
		}
		opts.OpenVPN = append(opts.OpenVPN, t)
	}
	return opts, nil
}
