// Package nic reads the node's network links through netlink: kind, MAC, MTU,
// admin and operational state, carrier, master, addresses and the kernel's
// 64-bit counters, with speed and duplex from sysfs where the driver reports
// them. Watch turns netlink's multicast notifications into events as they
// happen (a carrier loss is seen in milliseconds, not at the next poll) and
// survives a netlink receive-buffer overrun by re-listing and reporting what
// changed meanwhile.
//
// Operational notes: a Reader works in the network namespace it was opened for
// (the agent's own by default, or one named by path such as
// /var/run/netns/vpn). sysfs shows the namespace of whoever mounted it, so
// speed and duplex are left unknown for links it does not show.
package nic
