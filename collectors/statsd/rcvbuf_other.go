//go:build !linux

package statsd

import "golang.org/x/sys/unix"

// soRcvbufForce: only Linux can force past its limit; elsewhere the plain
// option is asked for.
const soRcvbufForce = unix.SO_RCVBUF
