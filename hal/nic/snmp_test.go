package nic

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadUDPStatsFixture(t *testing.T) {
	// testdata/snmp and snmp6 are copies of a real /proc/net (Linux 6.18).
	proc := t.TempDir()
	if err := os.Mkdir(filepath.Join(proc, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"snmp", "snmp6"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		// Make the counters distinguishable: v4 RcvbufErrors 7, v6 5.
		s := string(data)
		if name == "snmp" {
			s = strings.Replace(s, "Udp: 99 0 0 101 0", "Udp: 99 0 3 101 7", 1)
		} else {
			s = strings.Replace(s, "Udp6RcvbufErrors                	0", "Udp6RcvbufErrors                	5", 1)
		}
		if err := os.WriteFile(filepath.Join(proc, "net", name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadUDPStats(proc)
	if err != nil {
		t.Fatal(err)
	}
	if want := (UDPStats{InDatagrams: 99, InErrors: 3, RcvbufErrors: 12}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestParseSNMPRejectsMismatch(t *testing.T) {
	_, err := parseSNMP([]byte("Udp: A B\nUdp: 1\n"), "Udp")
	if err == nil || !strings.Contains(err.Error(), "2 names and 1 values") {
		t.Errorf("err = %v", err)
	}
	if _, err := parseSNMP([]byte("Tcp: A\nTcp: 1\n"), "Udp"); err == nil {
		t.Error("missing Udp lines accepted")
	}
}

func TestReadUDPStatsLive(t *testing.T) {
	if _, err := ReadUDPStats("/proc"); err != nil {
		t.Fatal(err)
	}
}
