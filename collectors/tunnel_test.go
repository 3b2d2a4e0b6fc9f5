package collectors

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestTunnelLinkVerdictEvents watches a real tun link in a namespace that is
// not there when the collector starts: runs fail, saying so, until it is.
// Then the link, first seen down, is an event; unchanged, it is not; a run
// that cannot read the links fails without taking it for gone, and the next
// one does not report it again. Deleted while down, it is no news.
func TestTunnelLinkVerdictEvents(t *testing.T) {
	ns := testenv.Netns(t)
	testenv.Run(t, "ip", "-n", ns, "tuntap", "add", "mode", "tun", "name", "vpn0")
	nsPath := filepath.Join(t.TempDir(), "vpn") // the namespace, once it is there
	c := NewTunnel(nil, tunnel.WireGuard{SocketDir: t.TempDir()}, nic.Options{Namespace: nsPath})
	defer c.Close()
	collect := func() ([]telemetry.Event, error) {
		rep := &Report{Time: time.Now()}
		err := c.Collect(context.Background(), rep)
		return rep.Events(), err
	}

	missing := "open network namespace " + nsPath + ": no such file or directory"
	if ev, err := collect(); err == nil || err.Error() != missing || len(ev) != 0 {
		t.Fatalf("namespace not there yet: %+v, %v; want no events and %q", ev, err, missing)
	}
	if err := os.Symlink("/var/run/netns/"+ns, nsPath); err != nil {
		t.Fatal(err)
	}
	ev, err := collect()
	if err != nil || len(ev) != 1 || ev[0].Subject != "vpn0" || ev[0].New != tunnel.Down || ev[0].Severity != telemetry.Critical {
		t.Fatalf("events %+v, %v; want vpn0 down", ev, err)
	}
	if ev, err := collect(); err != nil || len(ev) != 0 {
		t.Fatalf("unchanged tunnel: %+v, %v", ev, err)
	}

	// The links cannot be read for a run: vpn0 is not gone, and when it is
	// read again it is not news.
	c.Close()
	os.Remove(nsPath)
	if ev, err := collect(); err == nil || len(ev) != 0 {
		t.Fatalf("links unreadable: %+v, %v; want an error and no events", ev, err)
	}
	os.Symlink("/var/run/netns/"+ns, nsPath)
	if ev, err := collect(); err != nil || len(ev) != 0 {
		t.Fatalf("links readable again: %+v, %v", ev, err)
	}

	testenv.Run(t, "ip", "-n", ns, "link", "delete", "vpn0")
	// It was down already: disappearing changes nothing an operator must act on.
	if ev, err := collect(); err != nil || len(ev) != 0 {
		t.Fatalf("events %+v, %v after deleting a down tunnel", ev, err)
	}
}

// TestTunnelSourcesUnavailable configures sources that cannot be read: an
// OpenVPN management socket that is not there, a password file that is not
// there, a WireGuard socket directory that is a file. Each tunnel is reported
// down with its reason, and the run fails naming every source, so the agent
// reports itself degraded with why.
func TestTunnelSourcesUnavailable(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "wireguard")
	os.WriteFile(notDir, nil, 0o644)
	c := NewTunnel([]tunnel.OpenVPN{
		{Name: "vpn0", Address: "unix:" + dir + "/openvpn.sock"},
		{Name: "vpn1", Address: "unix:" + dir + "/openvpn.sock", PasswordFile: dir + "/mgmt.pw"},
	}, tunnel.WireGuard{SocketDir: notDir}, nic.Options{Namespace: "/var/run/netns/" + testenv.Netns(t)})
	defer c.Close()
	r := &Report{Time: time.Now()}
	err := c.Collect(context.Background(), r)
	want := "openvpn vpn0: management interface unreachable: dial unix " + dir + "/openvpn.sock: connect: no such file or directory\n" +
		"openvpn vpn1: password file: open " + dir + "/mgmt.pw: no such file or directory\n" +
		"list wireguard sockets: open " + notDir + ": not a directory"
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
	up := map[string]float64{}
	for _, p := range r.Points() {
		if p.Name == "tunnel.up" {
			up[p.Tags["tunnel"]] = p.Value
		}
	}
	ev := r.Events()
	if len(up) != 2 || up["vpn0"] != 0 || up["vpn1"] != 0 || len(ev) != 2 || ev[0].New != tunnel.Down || ev[1].New != tunnel.Down {
		t.Errorf("tunnel.up %v, events %+v; want vpn0 and vpn1 down", up, ev)
	}
}
