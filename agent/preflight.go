package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/uplink"
)

// CheckReload reports why cfg, which checks (config.Validate), would still
// stop the new image of a reload at its start, leaving the node down until
// someone fixes the configuration: TLS files that cannot be read, a
// node.id_file that cannot be read, or a state directory other than the one
// this agent holds locked (the lock handed over would not cover it; that
// takes a restart). Run's reload check calls it, so that such a reload is
// refused and the agent runs on.
func (a *Agent) CheckReload(cfg *config.Config) error {
	var errs []error
	if now, next := filepath.Clean(a.cfg.Paths.StateDir), filepath.Clean(cfg.Paths.StateDir); now != next {
		errs = append(errs, fmt.Errorf("paths.state_dir: %s is not %s, the directory this agent holds; changing it takes a restart", next, now))
	}
	return errors.Join(append(errs, CheckStart(cfg))...)
}

// CheckStart reports what in cfg, which checks, would still stop an agent
// at its start: TLS files or a node id file it cannot read. An upgrade's
// pre-flight (edgeagent selftest) runs it in the new binary.
func CheckStart(cfg *config.Config) error {
	var errs []error
	u := cfg.Uplink
	if err := uplink.CheckTLS(uplink.Options{CAFile: u.CAFile, CertFile: u.CertFile, KeyFile: u.KeyFile}); err != nil {
		errs = append(errs, err)
	}
	if cfg.Node.ID == "" && cfg.Node.IDFile != "" {
		if _, err := readID(cfg.Node.IDFile); err != nil && !errors.Is(err, errNoID) && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("node.id_file: %w", err))
		}
	}
	return errors.Join(errs...)
}
