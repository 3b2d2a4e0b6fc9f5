// Package kfile reads files the kernel generates under /sys and /proc: their
// stat size is meaningless (0 or 4096), so reads are capped, never sized by stat.
package kfile

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// MaxSize caps one read; no sysfs attribute comes near it, and /proc files that
// can grow (mountinfo, diskstats) stay far below it on an appliance.
const MaxSize = 1 << 20

// Read returns the contents of path, at most MaxSize bytes.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, MaxSize)
	}
	return data, nil
}

// String returns the contents of path without surrounding white space.
func String(path string) (string, error) {
	data, err := Read(path)
	return strings.TrimSpace(string(data)), err
}

// Uint returns the contents of path as an unsigned decimal number.
func Uint(path string) (uint64, error) {
	s, err := String(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a number", path, s)
	}
	return n, nil
}
