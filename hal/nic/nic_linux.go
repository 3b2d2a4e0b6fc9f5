package nic

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// Reader reads links in one network namespace.
type Reader struct {
	sys string
	ns  netns.NsHandle // netns.None() for the caller's own namespace
	nl  *netlink.Handle
}

// Open returns a Reader for the namespace in opts. Close it when done.
func Open(opts Options) (*Reader, error) {
	r := &Reader{sys: opts.Sysfs, ns: netns.None()}
	if r.sys == "" {
		r.sys = "/sys"
	}
	if opts.Namespace != "" {
		ns, err := netns.GetFromPath(opts.Namespace)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", opts.Namespace, err)
		}
		r.ns = ns
	}
	// Only the route family: with no families named, the library opens
	// XFRM and netfilter sockets too, and a kernel built without them (a
	// minimal firmware kernel) refuses the whole handle.
	h, err := netlink.NewHandleAt(r.ns, unix.NETLINK_ROUTE)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	r.nl = h
	return r, nil
}

// Close releases the netlink socket and the namespace handle.
func (r *Reader) Close() error {
	if r.nl != nil {
		r.nl.Close()
	}
	if r.ns.IsOpen() {
		return r.ns.Close()
	}
	return nil
}

// Links lists every link with its addresses and counters. A failure to read
// speed or duplex of one link is not an error (many drivers have none).
func (r *Reader) Links() ([]Link, error) {
	nlLinks, err := r.nl.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list links: %w", err)
	}
	addrs, addrErr := r.nl.AddrList(nil, netlink.FAMILY_ALL)
	if addrErr != nil && !errors.Is(addrErr, netlink.ErrDumpInterrupted) {
		addrErr = fmt.Errorf("list addresses: %w", addrErr)
	} else {
		addrErr = nil
	}
	names := make(map[int]string, len(nlLinks))
	for _, l := range nlLinks {
		names[l.Attrs().Index] = text.EscapeString(l.Attrs().Name)
	}
	byIndex := make(map[int][]Address)
	for _, a := range addrs {
		byIndex[a.LinkIndex] = append(byIndex[a.LinkIndex], toAddress(a.IPNet, a.Scope))
	}
	links := make([]Link, 0, len(nlLinks))
	for _, l := range nlLinks {
		link := fromNetlink(l, names)
		link.Addresses = byIndex[link.Index]
		r.readSpeed(&link, l.Attrs().Name)
		links = append(links, link)
	}
	slices.SortFunc(links, func(a, b Link) int { return a.Index - b.Index })
	return links, addrErr
}

// fromNetlink makes the Link of l; names are every link's, by index, escaped.
func fromNetlink(l netlink.Link, names map[int]string) Link {
	a := l.Attrs()
	link := Link{
		Name:      names[a.Index],
		Index:     a.Index,
		Kind:      text.EscapeString(kind(l)),
		MTU:       a.MTU,
		AdminUp:   a.Flags&net.FlagUp != 0,
		OperState: a.OperState.String(),
		Carrier:   a.RawFlags&unix.IFF_LOWER_UP != 0,
		Master:    names[a.MasterIndex],
	}
	if len(a.HardwareAddr) > 0 {
		link.MAC = a.HardwareAddr.String()
	}
	if s := a.Statistics; s != nil {
		link.Counters = Counters{
			RxBytes: s.RxBytes, TxBytes: s.TxBytes, RxPackets: s.RxPackets, TxPackets: s.TxPackets,
			RxErrors: s.RxErrors, TxErrors: s.TxErrors, RxDropped: s.RxDropped, TxDropped: s.TxDropped,
		}
	}
	return link
}

// kind names what a link is, in the words an operator uses.
func kind(l netlink.Link) string {
	switch t := l.(type) {
	case *netlink.Tuntap:
		if t.Mode == netlink.TUNTAP_MODE_TAP {
			return "tap"
		}
		return "tun"
	case *netlink.Device:
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			return "loopback"
		}
		return "physical"
	}
	return l.Type()
}

func toAddress(n *net.IPNet, scope int) Address {
	a := Address{CIDR: n.String(), Family: "ipv6", Scope: netlink.Scope(scope).String()}
	if n.IP.To4() != nil {
		a.Family = "ipv4"
	}
	return a
}

// readSpeed fills speed and duplex from sysfs when sysfs shows this link,
// by its name as the kernel has it, and the driver reports them (a down link
// or a virtual one often does not).
func (r *Reader) readSpeed(l *Link, name string) {
	dir := filepath.Join(r.sys, "class", "net", name)
	ifindex, err := kfile.String(filepath.Join(dir, "ifindex"))
	if err != nil || ifindex != strconv.Itoa(l.Index) {
		return // not this namespace's sysfs, or no such link there
	}
	if s, err := kfile.String(filepath.Join(dir, "speed")); err == nil {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			l.SpeedMbps = n
		}
	}
	if d, err := kfile.String(filepath.Join(dir, "duplex")); err == nil && d != "unknown" {
		l.Duplex = text.EscapeString(d)
	}
}
