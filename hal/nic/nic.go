package nic

// Link is one network interface.
type Link struct {
	Name      string    `json:"name"`
	Index     int       `json:"index"`
	Kind      string    `json:"kind"` // physical, loopback, veth, bridge, bond, vlan, tun, tap, wireguard, ipip, gre, …
	MAC       string    `json:"mac,omitempty"`
	MTU       int       `json:"mtu"`
	AdminUp   bool      `json:"admin_up"`
	OperState string    `json:"oper_state"` // up, down, lower-layer-down, dormant, unknown, …
	Carrier   bool      `json:"carrier"`
	SpeedMbps int       `json:"speed_mbps,omitempty"` // 0 when the driver does not say
	Duplex    string    `json:"duplex,omitempty"`
	Master    string    `json:"master,omitempty"` // the bond or bridge this link is enslaved to
	Addresses []Address `json:"addresses,omitempty"`
	Counters  Counters  `json:"counters"`
}

// Address is an IP address on a link.
type Address struct {
	CIDR   string `json:"cidr"`
	Family string `json:"family"` // ipv4 or ipv6
	Scope  string `json:"scope"`  // global, link, host, …
}

// Counters are the kernel's 64-bit interface statistics.
type Counters struct {
	RxBytes   uint64 `json:"rx_bytes"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
	RxErrors  uint64 `json:"rx_errors"`
	TxErrors  uint64 `json:"tx_errors"`
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
}

// Options says where to read.
type Options struct {
	Sysfs     string // sysfs root for speed and duplex; empty means /sys
	Namespace string // network namespace file, such as /var/run/netns/vpn; empty means the caller's own
}
