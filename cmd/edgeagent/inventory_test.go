package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

type inventoryJSON struct {
	Disks []struct {
		Name        string
		Filesystems []struct {
			MountPoint string `json:"mount_point"`
		}
	}
	NICs []struct {
		Name, Kind string
		AdminUp    bool `json:"admin_up"`
		Carrier    bool
		Addresses  []struct{ CIDR string }
	}
	Tunnels []struct{ Name, Type, Verdict, Reason string }
}

// TestInventoryInNamespace runs the real binary inside a network namespace the
// test creates ("ip netns exec" also gives it that namespace's sysfs), with a
// veth pair and a userspace WireGuard interface in it.
func TestInventoryInNamespace(t *testing.T) {
	ns, peer := testenv.Netns(t), testenv.Netns(t)
	testenv.LookPath(t, "wireguard-go")
	testenv.Run(t, "ip", "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", peer)
	testenv.Run(t, "ip", "-n", ns, "addr", "add", "198.18.8.1/24", "dev", "va")
	testenv.Run(t, "ip", "-n", ns, "link", "set", "va", "up")

	wgName := "wgi" + strings.TrimPrefix(ns, "edgetest-")[:6]
	wg := exec.Command("ip", "netns", "exec", ns, "wireguard-go", "-f", wgName)
	if err := wg.Start(); err != nil {
		t.Fatal(err)
	}
	sock := "/var/run/wireguard/" + wgName + ".sock"
	t.Cleanup(func() { wg.Process.Kill(); wg.Wait(); os.Remove(sock) })
	testenv.WaitFor(t, 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil },
		func() string { return sock + " never appeared" })

	out := testenv.Run(t, "ip", "netns", "exec", ns, binary, "inventory", "--json", "--no-smart")
	var inv inventoryJSON
	if err := json.Unmarshal([]byte(out), &inv); err != nil {
		t.Fatalf("inventory --json: %v\n%s", err, out)
	}
	nics := map[string]int{}
	for i, n := range inv.NICs {
		nics[n.Name] = i
	}
	i, ok := nics["va"]
	if !ok || inv.NICs[i].Kind != "veth" || !inv.NICs[i].AdminUp || inv.NICs[i].Carrier ||
		len(inv.NICs[i].Addresses) == 0 || inv.NICs[i].Addresses[0].CIDR != "198.18.8.1/24" {
		t.Errorf("va (up, its peer down so no carrier): %+v", inv.NICs)
	}
	if _, ok := nics["eth0"]; ok {
		t.Errorf("the host's eth0 shows inside the namespace: %+v", inv.NICs)
	}
	var found bool
	for _, tun := range inv.Tunnels {
		if tun.Name == wgName {
			found = true
			if tun.Type != "wireguard" || tun.Verdict != "down" || tun.Reason != "no peers configured" {
				t.Errorf("wireguard tunnel: %+v", tun)
			}
		}
	}
	if !found {
		t.Errorf("%s not among the tunnels: %+v", wgName, inv.Tunnels)
	}
	if len(inv.Disks) == 0 {
		t.Errorf("no disks")
	}

	text := testenv.Run(t, "ip", "netns", "exec", ns, binary, "inventory", "--no-smart")
	for _, want := range []string{"DISKS (", "NICS (", "  va ", "TUNNELS (", wgName, "DOWN  no peers configured"} {
		if !strings.Contains(text, want) {
			t.Errorf("text inventory lacks %q:\n%s", want, text)
		}
	}
}
