package hal

import (
	"context"
	"fmt"
	"time"

	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// Options says where and what to read for an inventory.
type Options struct {
	Sysfs, Procfs string
	Disks         disk.Options
	Smart         *disk.SmartCtl // nil: no SMART (it is slow, and read hourly)
	OpenVPN       []tunnel.OpenVPN
	WireGuard     tunnel.WireGuard
}

// Inventory is everything the HAL sees at one moment.
type Inventory struct {
	Time       time.Time       `json:"time"`
	Disks      []disk.Disk     `json:"disks"`
	DiskStats  []disk.IOStats  `json:"-"`
	DiskHealth []disk.Health   `json:"disk_health,omitempty"`
	NICs       []nic.Link      `json:"nics"`
	Tunnels    []tunnel.Tunnel `json:"tunnels"`
	Errors     []string        `json:"errors,omitempty"` // what could not be read; the rest still was
}

// Read takes a full inventory. It never fails as a whole: each part that could
// not be read is named in Errors.
func Read(ctx context.Context, opts Options) Inventory {
	inv := Inventory{Time: time.Now(), Disks: []disk.Disk{}, NICs: []nic.Link{}, Tunnels: []tunnel.Tunnel{}}
	fail := func(what string, err error) {
		if err != nil {
			inv.Errors = append(inv.Errors, text.EscapeString(fmt.Sprintf("%s: %v", what, err))) // errors name paths
		}
	}

	fs := disk.NewFS(opts.Sysfs, opts.Procfs)
	disks, err := fs.Disks(opts.Disks)
	fail("disks", err)
	if disks != nil {
		inv.Disks = disks
	}
	inv.DiskStats, err = fs.DiskStats()
	fail("disk stats", err)
	if opts.Smart != nil {
		for _, d := range inv.Disks {
			if d.Kind == "disk" {
				inv.DiskHealth = append(inv.DiskHealth, opts.Smart.Health(ctx, "/dev/"+d.Name))
			}
		}
	}

	r, err := nic.Open(nic.Options{Sysfs: opts.Sysfs})
	fail("nics", err)
	if r != nil {
		links, err := r.Links()
		fail("nics", err)
		if links != nil {
			inv.NICs = links
		}
		r.Close()
	}

	for _, o := range opts.OpenVPN {
		inv.Tunnels = append(inv.Tunnels, o.Read(ctx, inv.Time))
	}
	wg, err := opts.WireGuard.Read(inv.Time)
	fail("wireguard", err)
	skip := map[string]bool{}
	for _, t := range wg {
		skip[t.Name] = true // wireguard-go's device is a tun link; report it once, with its peers
	}
	inv.Tunnels = append(inv.Tunnels, wg...)
	inv.Tunnels = append(inv.Tunnels, tunnel.FromLinks(inv.NICs, skip)...)
	return inv
}
