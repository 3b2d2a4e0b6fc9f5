package disk

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// fillUsage asks the kernel for the filesystem's size and free space. The mount
// point is a path in this process's namespace, never below the sysfs root.
func (fs *Filesystem) fillUsage() error {
	var st unix.Statfs_t
	if err := unix.Statfs(fs.MountPoint, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", fs.MountPoint, err)
	}
	bsize := uint64(st.Frsize)
	if bsize == 0 {
		bsize = uint64(st.Bsize)
	}
	fs.TotalBytes = st.Blocks * bsize
	fs.UsedBytes = (st.Blocks - st.Bfree) * bsize
	fs.FreeBytes = st.Bavail * bsize
	fs.Inodes, fs.InodesFree = st.Files, st.Ffree
	return nil
}
