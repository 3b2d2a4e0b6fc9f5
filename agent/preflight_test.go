package agent

import (
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seed69aca190/edgeagent/agent/config"
)

// TestCheckReload: what checks but would stop the new image at its start
// refuses the reload, each with its key; what would start passes.
func TestCheckReload(t *testing.T) {
	dir := t.TempDir()
	running := config.Default()
	running.Paths.StateDir = filepath.Join(dir, "state")
	a := New(running, io.Discard)

	for _, c := range []struct {
		name string
		edit func(*config.Config)
		want []string // nil: passes
	}{
		{"unchanged", func(*config.Config) {}, nil},
		{"id file missing: the kept id serves", func(c *config.Config) { c.Node.IDFile = filepath.Join(dir, "none") }, nil},
		{"CA file missing", func(c *config.Config) { c.Uplink.CAFile = filepath.Join(dir, "ca.pem") }, []string{"uplink.ca_file", "no such file"}},
		{"id file unreadable", func(c *config.Config) { c.Node.IDFile = dir }, []string{"node.id_file", "is a directory"}},
		{"state directory moved", func(c *config.Config) { c.Paths.StateDir = filepath.Join(dir, "elsewhere") },
			[]string{"paths.state_dir", "takes a restart"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			next := config.Default()
			next.Paths.StateDir = running.Paths.StateDir + "/"
			c.edit(next)
			err := a.CheckReload(next)
			if c.want == nil {
				if err != nil {
					t.Errorf("refused: %v", err)
				}
				return
			}
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v, want it to say %q", err, w)
				}
			}
		})
	}
}
