package diag

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/hal"
	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// inventory is a node with one of everything, including values long enough to
// be cut at 80 columns.
func inventory() hal.Inventory {
	return hal.Inventory{
		Time: time.Unix(1795301700, 0),
		Disks: []disk.Disk{{
			Name: "sda", Transport: "sata", Model: "Hitachi HDS721050DLE630", Serial: "MSK423Y20S3HBC", SizeBytes: 500107862016,
			Partitions: []disk.Partition{{Name: "sda1", SizeBytes: 500106813440, StartSector: 2048}},
			Filesystems: []disk.Filesystem{
				{Device: "sda1", MountPoint: "/srv/storage/pool-with-a-very-long-name", Type: "xfs", TotalBytes: 500 << 30, UsedBytes: 460 << 30, Inodes: 1000, InodesFree: 900},
				{Device: "sda1", MountPoint: "/mnt/gone", Type: "ext4", UsageError: "statfs /mnt/gone: no such file or directory"},
			},
		}},
		DiskHealth: []disk.Health{{Device: "/dev/sda", Status: disk.SmartFailing}},
		NICs: []nic.Link{
			{Name: "eth0", Kind: "physical", AdminUp: true, OperState: "up", Carrier: true, MTU: 1500, SpeedMbps: 1000, Duplex: "full",
				Addresses: []nic.Address{{CIDR: "198.18.0.10/24", Scope: "universe"}, {CIDR: "fe80::1/64", Scope: "link"}},
				Counters:  nic.Counters{RxBytes: 5 << 30, RxPackets: 4000000, TxBytes: 1 << 30, TxPackets: 900000}},
			{Name: "eth1", Kind: "physical", MTU: 1500, OperState: "down", Master: "bond0"},
		},
		Tunnels: []tunnel.Tunnel{
			{Name: "controller", Type: "openvpn", Verdict: tunnel.Down, State: "WAIT",
				Reason: "not connected for 2m0s (now WAIT), longer than the 30s grace period"},
			{Name: "wg0", Type: "wireguard", Verdict: tunnel.Stale, Reason: "peer abc: last handshake 4m0s ago",
				Peers: []tunnel.WireGuardPeer{{PublicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", Endpoint: "198.18.6.2:51820", HandshakeAgeSec: 240}}},
		},
		Errors: []string{"nics: list addresses: a netlink error that is long enough that it must be wrapped onto a second line"},
	}
}

func TestWriteInventoryGolden(t *testing.T) {
	var b bytes.Buffer
	if err := WriteInventory(&b, inventory()); err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(b.String(), "\n") {
		if len(l) > Width {
			t.Errorf("line %d is %d columns: %q", i+1, len(l), l)
		}
	}
	const golden = "testdata/inventory.golden"
	if *update {
		os.WriteFile(golden, b.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("output differs from %s (go test ./diag -update to accept):\n%s", golden, b.String())
	}
}
