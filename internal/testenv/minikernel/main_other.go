//go:build !linux

package main

import (
	"fmt"
	"os"
)

// main says why it cannot help: seccomp filters are Linux's.
func main() {
	fmt.Fprintln(os.Stderr, "minikernel: runs only on Linux (seccomp)")
	os.Exit(2)
}
