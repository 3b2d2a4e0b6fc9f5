//go:build !linux

package handoff

import (
	"errors"
	"fmt"
)

// Exec is Linux's: see exec_linux.go.
func (r *Registry) Exec(path string, argv, env []string) error {
	return fmt.Errorf("exec %s: %w", path, errors.ErrUnsupported)
}

// closeOnExecAbove2 sets close-on-exec on every descriptor above 2.
func closeOnExecAbove2() error { return closeOnExecListed("/dev/fd") }
