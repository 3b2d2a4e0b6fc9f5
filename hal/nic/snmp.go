package nic

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
)

// UDPStats are the kernel's system-wide UDP counters (IPv4 and IPv6 added),
// from /proc/net/snmp and /proc/net/snmp6.
type UDPStats struct {
	InDatagrams uint64 `json:"in_datagrams"`
	InErrors    uint64 `json:"in_errors"`
	// RcvbufErrors counts datagrams dropped because a socket's receive buffer
	// was full: the loss a UDP server cannot see itself.
	RcvbufErrors uint64 `json:"rcvbuf_errors"`
}

// ReadUDPStats reads the UDP counters under the procfs root. snmp6 is
// optional (a kernel without IPv6 has none).
func ReadUDPStats(procfs string) (UDPStats, error) {
	var s UDPStats
	data, err := kfile.Read(filepath.Join(procfs, "net/snmp"))
	if err != nil {
		return s, err
	}
	v4, err := parseSNMP(data, "Udp")
	if err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(procfs, "net/snmp"), err)
	}
	s.InDatagrams, s.InErrors, s.RcvbufErrors = v4["InDatagrams"], v4["InErrors"], v4["RcvbufErrors"]
	if data, err := kfile.Read(filepath.Join(procfs, "net/snmp6")); err == nil {
		v6 := parseSNMP6(data, "Udp6")
		s.InDatagrams += v6["InDatagrams"]
		s.InErrors += v6["InErrors"]
		s.RcvbufErrors += v6["RcvbufErrors"]
	}
	return s, nil
}

// parseSNMP reads the pair of lines "Proto: names…" / "Proto: values…".
func parseSNMP(data []byte, proto string) (map[string]uint64, error) {
	prefix := proto + ":"
	var header []string
	for line := range strings.Lines(string(data)) {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != prefix {
			continue
		}
		if header == nil {
			header = fields[1:]
			continue
		}
		if len(fields)-1 != len(header) {
			return nil, fmt.Errorf("%s has %d names and %d values", proto, len(header), len(fields)-1)
		}
		m := make(map[string]uint64, len(header))
		for i, name := range header {
			n, err := strconv.ParseUint(fields[i+1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %q is not a counter", proto, name, fields[i+1])
			}
			m[name] = n
		}
		return m, nil
	}
	return nil, fmt.Errorf("no %s counters", proto)
}

// parseSNMP6 reads "Udp6InDatagrams 42" lines for one protocol prefix.
func parseSNMP6(data []byte, proto string) map[string]uint64 {
	m := map[string]uint64{}
	for line := range bytes.Lines(data) {
		fields := strings.Fields(string(line))
		if len(fields) != 2 {
			continue
		}
		name, found := strings.CutPrefix(fields[0], proto)
		if !found {
			continue
		}
		if n, err := strconv.ParseUint(fields[1], 10, 64); err == nil {
			m[name] = n
		}
	}
	return m
}
