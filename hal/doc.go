// Package hal is the hardware abstraction layer: the only code in edgeagent that
// touches the operating system. Its subpackages read disks (hal/disk), network
// links through netlink (hal/nic) and VPN tunnels (hal/tunnel).
//
// Every reader of /sys or /proc takes its root directory as a value, so tests
// run against fixture trees copied from real machines; netlink code is tested in
// network namespaces the tests create. hal imports nothing else of edgeagent.
package hal
