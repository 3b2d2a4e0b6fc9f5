package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// FS reads block devices below a sysfs and a procfs root.
type FS struct {
	sys, proc string
}

// NewFS returns a reader rooted at sysfs (normally /sys) and procfs (/proc).
func NewFS(sysfs, procfs string) FS { return FS{sys: sysfs, proc: procfs} }

// Options chooses which kinds of block device the inventory includes.
type Options struct {
	IncludeLoop bool // attached loop devices (detached ones, of size 0, never)
	IncludeRAM  bool // ram and zram devices
}

// Disk is one block device that is a whole disk (not a partition). Its
// strings are text for reports: what the kernel or the drive gave that is not
// valid UTF-8 is escaped (internal/text), and such a name no longer opens
// the device.
type Disk struct {
	Name               string       `json:"name"`
	Dev                string       `json:"dev"`  // major:minor
	Kind               string       `json:"kind"` // disk, md, dm, loop or ram
	Transport          string       `json:"transport"`
	Model              string       `json:"model,omitempty"`
	Vendor             string       `json:"vendor,omitempty"`
	Serial             string       `json:"serial,omitempty"`
	WWN                string       `json:"wwn,omitempty"`
	Firmware           string       `json:"firmware,omitempty"`
	SizeBytes          uint64       `json:"size_bytes"`
	LogicalSectorSize  uint64       `json:"logical_sector_size,omitempty"`
	PhysicalSectorSize uint64       `json:"physical_sector_size,omitempty"`
	Rotational         bool         `json:"rotational"`
	Removable          bool         `json:"removable"`
	ReadOnly           bool         `json:"read_only"`
	Partitions         []Partition  `json:"partitions,omitempty"`
	Slaves             []string     `json:"slaves,omitempty"`  // members of an md or dm device
	Holders            []string     `json:"holders,omitempty"` // md or dm devices built on this one
	DMName             string       `json:"dm_name,omitempty"`
	MDLevel            string       `json:"md_level,omitempty"`
	BackingFile        string       `json:"backing_file,omitempty"` // of a loop device
	Filesystems        []Filesystem `json:"filesystems,omitempty"`  // mounted from the disk or its partitions
}

// Partition is one partition of a disk.
type Partition struct {
	Name        string `json:"name"`
	Dev         string `json:"dev"`
	Number      uint64 `json:"number"`
	StartSector uint64 `json:"start_sector"` // in 512-byte units, as the kernel counts
	SizeBytes   uint64 `json:"size_bytes"`
}

// Disks lists the whole disks the kernel knows, with their partitions and the
// filesystems mounted from them. Problems with single attributes are returned
// joined in the error, alongside every disk that could be read.
func (f FS) Disks(opts Options) ([]Disk, error) {
	blockDir := filepath.Join(f.sys, "block")
	entries, err := os.ReadDir(blockDir)
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	var disks []Disk
	var errs []error
	for _, e := range entries {
		// Excluded kinds are known by name: skip them before reading anything
		// (an appliance may have dozens of idle loop devices).
		if kind, _ := classify(e.Name(), ""); (kind == "loop" && !opts.IncludeLoop) || (kind == "ram" && !opts.IncludeRAM) {
			continue
		}
		d, err := f.readDisk(e.Name())
		if err != nil {
			errs = append(errs, err)
		}
		if d == nil || !opts.wants(d) {
			continue
		}
		disks = append(disks, *d)
	}
	mounts, err := f.Mounts()
	if err != nil {
		errs = append(errs, err)
	}
	for i := range disks {
		errs = append(errs, disks[i].attachFilesystems(mounts)...)
	}
	return disks, errors.Join(errs...)
}

func (o Options) wants(d *Disk) bool {
	switch d.Kind {
	case "loop":
		return o.IncludeLoop && d.SizeBytes > 0
	case "ram":
		return o.IncludeRAM
	}
	return true
}

// attrReader reads attributes of one sysfs directory, remembering the first
// real error; a missing attribute (older kernel, other driver) is not one.
// What it returns is text, escaped (internal/text): a model or serial is
// whatever bytes the drive's firmware put there.
type attrReader struct {
	errs []error
}

func (r *attrReader) str(path string) string {
	s, err := kfile.String(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.errs = append(r.errs, err)
	}
	return text.EscapeString(s)
}

func (r *attrReader) uint(path string) uint64 {
	s := r.str(path)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s: %q is not a number", path, s))
	}
	return n
}

func (r *attrReader) links(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.errs = append(r.errs, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, text.EscapeString(e.Name()))
	}
	return names
}

func (f FS) readDisk(name string) (*Disk, error) {
	link := filepath.Join(f.sys, "block", name)
	dir, err := filepath.EvalSymlinks(link)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", link, err)
	}
	var r attrReader
	d := &Disk{Name: text.EscapeString(name)}
	d.Dev = r.str(filepath.Join(dir, "dev"))
	d.SizeBytes = r.uint(filepath.Join(dir, "size")) * 512 // always 512-byte sectors
	d.Kind, d.Transport = classify(name, devicePath(f.sys, dir))
	d.LogicalSectorSize = r.uint(filepath.Join(dir, "queue", "logical_block_size"))
	d.PhysicalSectorSize = r.uint(filepath.Join(dir, "queue", "physical_block_size"))
	d.Rotational = r.str(filepath.Join(dir, "queue", "rotational")) == "1"
	d.Removable = r.str(filepath.Join(dir, "removable")) == "1"
	d.ReadOnly = r.str(filepath.Join(dir, "ro")) == "1"

	dev := filepath.Join(dir, "device")
	d.Model = firstOf(&r, filepath.Join(dev, "model"), filepath.Join(dev, "name")) // name: MMC
	d.Vendor = r.str(filepath.Join(dev, "vendor"))
	d.Serial = firstOf(&r, filepath.Join(dir, "serial"), filepath.Join(dev, "serial"))
	d.WWN = firstOf(&r, filepath.Join(dir, "wwid"), filepath.Join(dev, "wwid"))
	d.Firmware = firstOf(&r, filepath.Join(dev, "firmware_rev"), filepath.Join(dev, "rev"), filepath.Join(dev, "fwrev"))
	d.DMName = r.str(filepath.Join(dir, "dm", "name"))
	d.MDLevel = r.str(filepath.Join(dir, "md", "level"))
	d.BackingFile = r.str(filepath.Join(dir, "loop", "backing_file"))
	d.Slaves = r.links(filepath.Join(dir, "slaves"))
	d.Holders = r.links(filepath.Join(dir, "holders"))

	entries, err := os.ReadDir(dir)
	if err != nil {
		r.errs = append(r.errs, err)
	}
	for _, e := range entries {
		pdir := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(pdir, "partition")); err != nil {
			continue
		}
		d.Partitions = append(d.Partitions, Partition{
			Name:        text.EscapeString(e.Name()),
			Dev:         r.str(filepath.Join(pdir, "dev")),
			Number:      r.uint(filepath.Join(pdir, "partition")),
			StartSector: r.uint(filepath.Join(pdir, "start")),
			SizeBytes:   r.uint(filepath.Join(pdir, "size")) * 512,
		})
	}
	slices.SortFunc(d.Partitions, func(a, b Partition) int { return int(a.Number) - int(b.Number) })
	if len(r.errs) > 0 {
		return d, fmt.Errorf("disk %s: %w", name, errors.Join(r.errs...))
	}
	return d, nil
}

func firstOf(r *attrReader, paths ...string) string {
	for _, p := range paths {
		if s := r.str(p); s != "" {
			return s
		}
	}
	return ""
}

// devicePath is the device's place in the sysfs device tree, such as
// /devices/pci0000:00/0000:00:02.0/virtio1/block/vda.
func devicePath(sys, resolved string) string {
	if rel, err := filepath.Rel(sys, resolved); err == nil {
		return "/" + filepath.ToSlash(rel)
	}
	return resolved
}

// classify tells the kind of block device and how it is attached, from its name
// and its place in the device tree.
func classify(name, path string) (kind, transport string) {
	switch {
	case strings.HasPrefix(name, "loop"):
		return "loop", "loop"
	case strings.HasPrefix(name, "zram"), strings.HasPrefix(name, "ram"):
		return "ram", "ram"
	case strings.HasPrefix(name, "md"):
		return "md", "md"
	case strings.HasPrefix(name, "dm-"):
		return "dm", "dm"
	}
	switch {
	case strings.Contains(path, "/nvme/") || strings.Contains(path, "/nvme-subsystem/"):
		return "disk", "nvme"
	case strings.Contains(path, "/mmc_host/"):
		return "disk", "mmc"
	case strings.Contains(path, "/usb"):
		return "disk", "usb"
	case strings.Contains(path, "/end_device-"):
		return "disk", "sas"
	case strings.Contains(path, "/ata"):
		return "disk", "sata"
	case strings.Contains(path, "/virtio"):
		return "disk", "virtio"
	case strings.Contains(path, "/host") && strings.Contains(path, "/target"):
		return "disk", "scsi"
	case strings.HasPrefix(path, "/devices/virtual/"):
		return "disk", "virtual"
	}
	return "disk", "unknown"
}
