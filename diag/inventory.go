package diag

import (
	"fmt"
	"io"
	"strings"

	"github.com/seed69aca190/edgeagent/hal"
	"github.com/seed69aca190/edgeagent/hal/disk"
)

// Width is the widest line diag writes: a serial console's 80 columns.
const Width = 80

// WriteInventory renders what the HAL sees as plain text for a console.
func WriteInventory(w io.Writer, inv hal.Inventory) error {
	p := &printer{w: w}
	health := map[string]disk.Health{}
	for _, h := range inv.DiskHealth {
		health[strings.TrimPrefix(h.Device, "/dev/")] = h
	}

	p.line("DISKS (%d)", len(inv.Disks))
	for _, d := range inv.Disks {
		id := d.Model
		if d.Serial != "" {
			id = strings.TrimSpace(id + " " + d.Serial)
		}
		smart := ""
		if h, ok := health[d.Name]; ok {
			smart = "smart " + h.Status
		}
		p.line("  %-10s %-7s %10s  %-24s %s", d.Name, d.Transport, humanBytes(d.SizeBytes), clip(id, 24), smart)
		for _, part := range d.Partitions {
			p.line("    %-12s %10s  start %d", part.Name, humanBytes(part.SizeBytes), part.StartSector)
		}
		for _, f := range d.Filesystems {
			if f.UsageError != "" {
				p.line("    %-20s %-6s %s", clip(f.MountPoint, 20), f.Type, clip(f.UsageError, 48))
				continue
			}
			p.line("    %-20s %-6s %10s used of %10s (%s), inodes %s", clip(f.MountPoint, 20), f.Type,
				humanBytes(f.UsedBytes), humanBytes(f.TotalBytes), percent(f.UsedBytes, f.TotalBytes), percent(f.Inodes-f.InodesFree, f.Inodes))
		}
	}

	p.line("")
	p.line("NICS (%d)", len(inv.NICs))
	for _, l := range inv.NICs {
		state := "down"
		if l.AdminUp {
			state = l.OperState
		}
		carrier := "no-carrier"
		if l.Carrier {
			carrier = "carrier"
		}
		speed := ""
		if l.SpeedMbps > 0 {
			speed = fmt.Sprintf("%dMb/s %s", l.SpeedMbps, l.Duplex)
		}
		p.line("  %-15s %-9s %-16s %-10s mtu %-5d %s", clip(l.Name, 15), l.Kind, state, carrier, l.MTU, speed)
		var addrs []string
		for _, a := range l.Addresses {
			if a.Scope != "link" {
				addrs = append(addrs, a.CIDR)
			}
		}
		if l.Master != "" {
			addrs = append([]string{"master " + l.Master}, addrs...)
		}
		if len(addrs) > 0 {
			p.line("    %s", clip(strings.Join(addrs, " "), Width-4))
		}
		c := l.Counters
		p.line("    rx %s %d pkts, tx %s %d pkts, errors %d/%d, drops %d/%d",
			humanBytes(c.RxBytes), c.RxPackets, humanBytes(c.TxBytes), c.TxPackets, c.RxErrors, c.TxErrors, c.RxDropped, c.TxDropped)
	}

	p.line("")
	p.line("TUNNELS (%d)", len(inv.Tunnels))
	for _, t := range inv.Tunnels {
		p.line("  %-15s %-9s %-5s %s", clip(t.Name, 15), t.Type, strings.ToUpper(t.Verdict), clip(t.Reason, Width-35))
		if t.LocalAddress != "" || t.RemoteAddress != "" {
			p.line("    local %s remote %s, in %s out %s", t.LocalAddress, t.RemoteAddress, humanBytes(t.BytesIn), humanBytes(t.BytesOut))
		}
		for _, peer := range t.Peers {
			age := "never"
			if peer.HandshakeAgeSec >= 0 {
				age = fmt.Sprintf("%ds ago", peer.HandshakeAgeSec)
			}
			p.line("    peer %s %s handshake %s", clip(peer.PublicKey, 15), peer.Endpoint, age)
		}
		for _, c := range t.Clients {
			p.line("    client %s %s via %s", clip(c.CommonName, 24), c.VirtualAddress, c.RealAddress)
		}
	}

	if len(inv.Errors) > 0 {
		p.line("")
		p.line("NOT READ (%d)", len(inv.Errors))
		for _, e := range inv.Errors {
			for _, part := range wrap(e, Width-4) {
				p.line("  %s", part)
			}
		}
	}
	return p.err
}

type printer struct {
	w   io.Writer
	err error
}

// line writes one line, cut to Width so a console never wraps it.
func (p *printer) line(format string, args ...any) {
	if p.err != nil {
		return
	}
	s := strings.TrimRight(fmt.Sprintf(format, args...), " ")
	_, p.err = fmt.Fprintln(p.w, clip(s, Width))
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n < 4 {
		return s[:n]
	}
	return s[:n-3] + "..."
}

func wrap(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, exp := float64(n), 0
	for v >= unit && exp < 5 {
		v /= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[exp-1])
}

func percent(part, total uint64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", float64(part)*100/float64(total))
}
