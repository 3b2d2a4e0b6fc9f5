//go:build !linux

package disk

import (
	"errors"
	"fmt"
)

// fillUsage is Linux's: the mount points come from its mountinfo.
func (fs *Filesystem) fillUsage() error {
	return fmt.Errorf("statfs %s: %w", fs.MountPoint, errors.ErrUnsupported)
}
