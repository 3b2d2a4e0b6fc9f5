// Package tunnel reports the node's VPN tunnels to the controller, whatever
// carries them: OpenVPN through its management interface, WireGuard through
// wgctrl (kernel or userspace wireguard-go), and any other tunnel link (tun,
// tap, ipip, gre, vti, xfrm) from its netlink state. Each tunnel gets a verdict
// (up, stale or down) with the reason, so an operator reads one word first.
//
// Operational notes: the OpenVPN management interface accepts one client at a
// time; Read connects, asks, and disconnects, so keep its interval well above
// its timeout. WireGuard's handshake is renewed every two minutes while
// traffic flows, so a handshake older than three minutes on a peer that should
// carry traffic (persistent keepalive set) means the tunnel is not working.
//
// Both report wall-clock stamps (when the OpenVPN state changed, when the
// last handshake was), and a node without a real-time clock has its clock
// stepped by NTP, by hours either way. A single Read judges by the wall clock;
// a collector reads through a Tracker, which ages each stamp on the monotonic
// clock from when it first saw it, so a step changes no verdict. An OpenVPN
// management password is read from its file at every reading.
package tunnel
