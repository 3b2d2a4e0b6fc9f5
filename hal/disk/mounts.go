package disk

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// Mount is one line of /proc/self/mountinfo, with the kernel's bytes (its
// octal escapes undone): a path that statfs can use, not yet text to report.
type Mount struct {
	Dev        string // major:minor of the device mounted
	Root       string // the part of the filesystem mounted here (bind mounts)
	MountPoint string
	FSType     string
	Source     string
	ReadOnly   bool
}

// Filesystem is a mounted filesystem with its usage. Its strings are text
// for reports, escaped where a mount point is not valid UTF-8.
type Filesystem struct {
	Device     string `json:"device"` // the disk or partition it lives on
	MountPoint string `json:"mount_point"`
	Type       string `json:"type"`
	ReadOnly   bool   `json:"read_only"`
	TotalBytes uint64 `json:"total_bytes"`
	UsedBytes  uint64 `json:"used_bytes"`
	FreeBytes  uint64 `json:"free_bytes"` // available to unprivileged users
	Inodes     uint64 `json:"inodes"`
	InodesFree uint64 `json:"inodes_free"`
	UsageError string `json:"usage_error,omitempty"`
}

// Mounts reads the mount table of the process's mount namespace.
func (f FS) Mounts() ([]Mount, error) {
	path := filepath.Join(f.proc, "self", "mountinfo")
	data, err := kfile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	m, err := parseMountinfo(data)
	if err != nil {
		return m, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// parseMountinfo parses the format of proc(5) mountinfo:
// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
func parseMountinfo(data []byte) ([]Mount, error) {
	var mounts []Mount
	var bad []string
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		fields := strings.Fields(line)
		sep := -1
		for j := 6; j < len(fields); j++ {
			if fields[j] == "-" {
				sep = j
				break
			}
		}
		if len(fields) < 7 || sep < 0 || sep+2 >= len(fields) {
			bad = append(bad, strconv.Itoa(i+1))
			continue
		}
		mounts = append(mounts, Mount{
			Dev:        fields[2],
			Root:       unescapeOctal(fields[3]),
			MountPoint: unescapeOctal(fields[4]),
			FSType:     fields[sep+1],
			Source:     unescapeOctal(fields[sep+2]),
			ReadOnly:   hasOption(fields[5], "ro"),
		})
	}
	if len(bad) > 0 {
		return mounts, fmt.Errorf("malformed line(s) %s", strings.Join(bad, ", "))
	}
	return mounts, nil
}

func hasOption(opts, want string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// unescapeOctal undoes the kernel's escaping of space, tab, newline and
// backslash in mountinfo (\040, \011, \012, \134).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// attachFilesystems adds the filesystems mounted from d or its partitions,
// with their usage: one per device, as df shows them, so bind mounts (a
// directory of the same filesystem mounted elsewhere) do not repeat it. The
// mount of the filesystem's root is preferred, else the first one.
func (d *Disk) attachFilesystems(mounts []Mount) []error {
	devs := map[string]string{d.Dev: d.Name}
	for _, p := range d.Partitions {
		devs[p.Dev] = p.Name
	}
	chosen := map[string]Mount{}
	var order []string
	for _, m := range mounts {
		if _, ok := devs[m.Dev]; !ok {
			continue
		}
		prev, seen := chosen[m.Dev]
		if !seen {
			order = append(order, m.Dev)
		}
		if !seen || (prev.Root != "/" && m.Root == "/") {
			chosen[m.Dev] = m
		}
	}
	var errs []error
	for _, dev := range order {
		m := chosen[dev]
		fs := Filesystem{Device: devs[dev], MountPoint: m.MountPoint, Type: text.EscapeString(m.FSType), ReadOnly: m.ReadOnly}
		if err := fs.fillUsage(); err != nil { // with the kernel's bytes
			fs.UsageError = text.EscapeString(err.Error())
			errs = append(errs, fmt.Errorf("disk %s: %w", d.Name, err))
		}
		fs.MountPoint = text.EscapeString(fs.MountPoint)
		d.Filesystems = append(d.Filesystems, fs)
	}
	return errs
}
