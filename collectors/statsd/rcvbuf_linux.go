package statsd

import "golang.org/x/sys/unix"

// soRcvbufForce sets the receive buffer beyond net.core.rmem_max (as root).
const soRcvbufForce = unix.SO_RCVBUFFORCE
