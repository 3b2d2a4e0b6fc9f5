// Package hal is the hardware abstraction layer: the only code in edgeagent that
// touches the operating system. Its subpackages read disks (hal/disk), network
// links through netlink (hal/nic) and VPN tunnels (hal/tunnel).
//
// Every reader of /sys or /proc takes its root directory as a value, so tests
// run against fixture trees copied from real machines; netlink code is tested in
// network namespaces the tests create.
//
// Everything a reader returns to be reported is text: a name the kernel, a
// drive or a daemon gave in bytes that are not valid UTF-8 (an interface, a
// mount point, a serial, a process's comm, a client's common name) is escaped
// where it is read, by internal/text's rule, because the controller refuses a
// message holding anything else. What is kept to use with the OS (a mount
// point to statfs, a device to ask) keeps its bytes until it is reported.
//
// hal imports nothing else of edgeagent but internal/text, a leaf.
package hal
