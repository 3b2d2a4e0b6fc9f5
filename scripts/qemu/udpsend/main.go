// Command udpsend sends TEXT as one UDP datagram to ADDR (host:port). The
// QEMU appliance test puts it into the guest as a local StatsD client: the
// guest's BusyBox nc has no UDP mode and its ash no /dev/udp.
//
//	udpsend 127.0.0.1:8125 'app.requests:1|c'
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: udpsend ADDR TEXT")
		os.Exit(2)
	}
	c, err := net.Dial("udp", os.Args[1])
	if err == nil {
		_, err = c.Write([]byte(os.Args[2]))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "udpsend: %v\n", err)
		os.Exit(1)
	}
}
