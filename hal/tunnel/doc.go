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
package tunnel
