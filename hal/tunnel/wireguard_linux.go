package tunnel

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// kernelDevices lists the links of kind wireguard in this namespace.
func kernelDevices() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list wireguard links: %w", err)
	}
	var names []string
	for _, l := range links {
		if l.Type() == "wireguard" {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}
