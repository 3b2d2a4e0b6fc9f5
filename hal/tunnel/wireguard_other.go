//go:build !linux

package tunnel

// kernelDevices finds none: only Linux has WireGuard in its kernel; other
// systems' userspace devices are found by their sockets.
func kernelDevices() ([]string, error) { return nil, nil }
