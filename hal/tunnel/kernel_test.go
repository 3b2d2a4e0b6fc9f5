package tunnel

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
)

// pair makes two namespaces joined by a veth pair: a gets addrA, b gets addrB
// (both /24).
func pair(t *testing.T, addrA, addrB string) (a, b string) {
	a, b = testenv.Netns(t), testenv.Netns(t)
	testenv.Run(t, "ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b)
	testenv.Run(t, "ip", "-n", a, "addr", "add", addrA+"/24", "dev", "v0")
	testenv.Run(t, "ip", "-n", b, "addr", "add", addrB+"/24", "dev", "v1")
	for _, ns := range []string{a, b} {
		dev := map[string]string{a: "v0", b: "v1"}[ns]
		testenv.Run(t, "ip", "-n", ns, "link", "set", dev, "up")
		testenv.Run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	return a, b
}

// start runs a long-lived process inside namespace ns, stopping it at the end
// of the test; its output goes to log.
func start(t *testing.T, ns string, log *testenv.Buffer, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// stepped makes tr read the wall clock stepped by *step: this machine's clock
// is shared and cannot be stepped for a test.
func stepped(tr *Tracker, step *time.Duration) {
	clock := tr.clock
	tr.clock = func() (time.Time, time.Duration) {
		wall, mono := clock()
		return wall.Add(*step), mono
	}
}

// TestOpenVPNPair runs a real OpenVPN server and client (TLS with a throwaway
// CA), each in its own namespace, and reads both through their management
// sockets; the agent's password file is missing, wrong, then right. Then the
// server dies and, read through a Tracker whose wall clock is stepped six
// hours, the client's verdict goes stale, then down after the grace.
func TestOpenVPNPair(t *testing.T) {
	testenv.LookPath(t, "openvpn")
	testenv.LookPath(t, "openssl")
	srvNS, cliNS := pair(t, "198.18.4.1", "198.18.4.2")
	dir := t.TempDir()
	ssl := func(args ...string) { testenv.Run(t, "openssl", args...) }
	p := func(name string) string { return filepath.Join(dir, name) }
	ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", p("ca.key"),
		"-out", p("ca.crt"), "-days", "1", "-subj", "/CN=edgeagent-test-ca")
	for name, usage := range map[string]string{"server": "serverAuth", "client1": "clientAuth"} {
		os.WriteFile(p(name+".ext"), []byte("extendedKeyUsage="+usage+"\nkeyUsage=digitalSignature\n"), 0o600)
		ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", p(name+".key"),
			"-out", p(name+".csr"), "-subj", "/CN="+name)
		ssl("x509", "-req", "-in", p(name+".csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"), "-CAcreateserial",
			"-out", p(name+".crt"), "-days", "1", "-extfile", p(name+".ext"))
	}
	os.WriteFile(p("mgmt.pw"), []byte("s3cret\n"), 0o600)

	var srvLog, cliLog testenv.Buffer
	server := start(t, srvNS, &srvLog, "openvpn", "--dev", "tun", "--proto", "udp", "--local", "198.18.4.1", "--port", "1194",
		"--server", "198.18.5.0", "255.255.255.0", "--topology", "subnet", "--ca", p("ca.crt"), "--cert", p("server.crt"),
		"--key", p("server.key"), "--dh", "none", "--keepalive", "1", "3",
		"--management", p("server.sock"), "unix", p("mgmt.pw"))
	start(t, cliNS, &cliLog, "openvpn", "--client", "--dev", "tun", "--proto", "udp", "--remote", "198.18.4.1", "1194",
		"--nobind", "--ca", p("ca.crt"), "--cert", p("client1.crt"), "--key", p("client1.key"),
		"--ping", "1", "--ping-restart", "3", "--connect-retry", "1", "1", "--management", p("client.sock"), "unix")

	srv := OpenVPN{Name: "server", Address: "unix:" + p("server.sock"), PasswordFile: p("mgmt.pw"), Grace: 2 * time.Second}
	cli := OpenVPN{Name: "client", Address: "unix:" + p("client.sock"), Grace: 2 * time.Second}
	ctx := context.Background()
	var c Tunnel
	testenv.WaitFor(t, 30*time.Second, func() bool {
		c = cli.Read(ctx, time.Now())
		return c.Verdict == Up
	}, func() string { return fmt.Sprintf("client never connected: %+v\nclient log:\n%s", c, cliLog.String()) })
	if c.Role != "client" || c.State != "CONNECTED" || c.RemoteAddress != "198.18.4.1:1194" ||
		c.LocalAddress != "198.18.5.2" || c.BytesIn == 0 || c.ConnectedSince == 0 {
		t.Errorf("client tunnel: %+v", c)
	}
	s := srv.Read(ctx, time.Now())
	if s.Verdict != Up || s.Role != "server" || s.LocalAddress != "198.18.5.1" || len(s.Clients) != 1 ||
		s.Clients[0].CommonName != "client1" || s.Clients[0].VirtualAddress != "198.18.5.2" {
		t.Errorf("server tunnel: %+v", s)
	}

	// Traffic through the tunnel moves the client's counters.
	testenv.Run(t, "ip", "netns", "exec", cliNS, "ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.5.1")
	if c2 := cli.Read(ctx, time.Now()); c2.BytesOut <= c.BytesOut+3*84 {
		t.Errorf("client bytes out %d -> %d after 3 pings through the tunnel", c.BytesOut, c2.BytesOut)
	}

	// The agent's password file is read at each reading: missing, then
	// wrong, then right (with a CRLF ending).
	agent := OpenVPN{Address: srv.Address, PasswordFile: p("agent.pw")}
	if missing := agent.Read(ctx, time.Now()); missing.Verdict != Down ||
		missing.Reason != "password file: open "+p("agent.pw")+": no such file or directory" {
		t.Errorf("missing password file: %+v", missing)
	}
	os.WriteFile(p("agent.pw"), []byte("wrong\n"), 0o600)
	if bad := agent.Read(ctx, time.Now()); bad.Verdict != Down || !strings.Contains(bad.Reason, "refused the password") {
		t.Errorf("wrong password: %+v", bad)
	}
	os.WriteFile(p("agent.pw"), []byte("s3cret\r\nsecond line\n"), 0o600)
	if good := agent.Read(ctx, time.Now()); good.Verdict != Up {
		t.Errorf("password file rewritten: %+v", good)
	}
	if none := (OpenVPN{Address: srv.Address}).Read(ctx, time.Now()); !strings.Contains(none.Reason, "asks for a password and none is configured") {
		t.Errorf("no password: %+v", none)
	}
	if gone := (OpenVPN{Address: "unix:" + p("nothing.sock")}).Read(ctx, time.Now()); gone.Verdict != Down ||
		!strings.Contains(gone.Reason, "management interface unreachable") {
		t.Errorf("missing socket: %+v", gone)
	}

	// The server dies: the client notices within its ping-restart (3 s), is
	// stale while within its 2 s grace, then down. Judged by the wall clock,
	// with the clock stepped 6 h ahead the client would be down at once, and
	// with it stepped 6 h back the outage would be hidden.
	tr := NewTracker()
	var step time.Duration
	stepped(tr, &step)
	if c, err := tr.OpenVPN(ctx, cli); c.Verdict != Up || err != nil {
		t.Fatalf("client through a tracker: %+v, %v", c, err)
	}
	server.Process.Kill()
	step = 6 * time.Hour
	testenv.WaitFor(t, 20*time.Second, func() bool {
		c, _ = tr.OpenVPN(ctx, cli)
		return c.Verdict != Up
	}, func() string { return fmt.Sprintf("client never noticed: %+v", c) })
	if c.Verdict != Stale {
		t.Errorf("client just after the server died, clock 6 h ahead: %+v; want stale", c)
	}
	step = -6 * time.Hour
	testenv.WaitFor(t, 20*time.Second, func() bool {
		c, _ = tr.OpenVPN(ctx, cli)
		return c.Verdict == Down
	}, func() string { return fmt.Sprintf("client never judged down, clock 6 h back: %+v", c) })
	if c.State == "CONNECTED" || c.DisconnectedSince == 0 || !strings.Contains(c.Reason, "longer than the 2s grace period") {
		t.Errorf("client after the server died: %+v", c)
	}
}

// TestWireGuardPair runs two userspace WireGuard interfaces (wireguard-go) in
// two namespaces, passes traffic so they handshake, reads them through a
// Tracker whose wall clock steps six hours either way (the verdict stays up),
// then takes one side away and watches the other go stale with the clock six
// hours back. StaleAfter is shortened to keep it fast. One interface's name
// is not UTF-8: the tunnel is found under the name escaped.
func TestWireGuardPair(t *testing.T) {
	testenv.LookPath(t, "wireguard-go")
	nsA, nsB := pair(t, "198.18.6.1", "198.18.6.2")
	suffix := strings.TrimPrefix(nsA, "edgetest-")[:6]
	ifA, ifB := "wg\xff"+suffix, "wgb"+suffix // A's name is not UTF-8: it is reported escaped

	var logA, logB testenv.Buffer
	start(t, nsA, &logA, "wireguard-go", "-f", ifA)
	procB := start(t, nsB, &logB, "wireguard-go", "-f", ifB)
	for _, name := range []string{ifA, ifB} {
		sock := "/var/run/wireguard/" + name + ".sock"
		t.Cleanup(func() { os.Remove(sock) }) // a killed wireguard-go leaves it behind
		testenv.WaitFor(t, 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil },
			func() string { return sock + " never appeared:\n" + logA.String() + logB.String() })
	}

	keyA, _ := wgtypes.GeneratePrivateKey()
	keyB, _ := wgtypes.GeneratePrivateKey()
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	configure := func(dev string, key wgtypes.Key, port int, peer wgtypes.Key, endpoint, allowed string) {
		_, cidr, _ := net.ParseCIDR(allowed)
		peerAddr, err := net.ResolveUDPAddr("udp", endpoint)
		if err != nil {
			t.Fatal(err)
		}
		keepalive := time.Second
		err = wg.ConfigureDevice(dev, wgtypes.Config{PrivateKey: &key, ListenPort: &port, Peers: []wgtypes.PeerConfig{{
			PublicKey: peer, Endpoint: peerAddr, AllowedIPs: []net.IPNet{*cidr}, PersistentKeepaliveInterval: &keepalive}}})
		if err != nil {
			t.Fatalf("configure %s: %v", dev, err)
		}
	}
	configure(ifA, keyA, 51820, keyB.PublicKey(), "198.18.6.2:51821", "198.18.7.2/32")
	configure(ifB, keyB, 51821, keyA.PublicKey(), "198.18.6.1:51820", "198.18.7.1/32")
	testenv.Run(t, "ip", "-n", nsA, "addr", "add", "198.18.7.1/24", "dev", ifA)
	testenv.Run(t, "ip", "-n", nsB, "addr", "add", "198.18.7.2/24", "dev", ifB)
	testenv.Run(t, "ip", "-n", nsA, "link", "set", ifA, "up")
	testenv.Run(t, "ip", "-n", nsB, "link", "set", ifB, "up")
	testenv.Run(t, "ip", "netns", "exec", nsA, "ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.7.2")

	w := WireGuard{StaleAfter: 3 * time.Second}
	tr := NewTracker()
	var step time.Duration
	stepped(tr, &step)
	find := func() Tunnel {
		tunnels, err := tr.WireGuard(w)
		if err != nil {
			t.Fatal(err)
		}
		if bad := wiretest.InvalidText(tunnels); bad != "" {
			t.Fatalf("not text: %s", bad)
		}
		for _, tun := range tunnels {
			if tun.Name == text.EscapeString(ifA) {
				return tun
			}
		}
		t.Fatalf("%s not among %d WireGuard tunnels", ifA, len(tunnels))
		return Tunnel{}
	}
	a := find()
	if a.Verdict != Up || len(a.Peers) != 1 || a.Peers[0].HandshakeAgeSec < 0 || a.Peers[0].HandshakeAgeSec > 3 ||
		a.BytesIn == 0 || a.BytesOut == 0 || a.ListenPort != 51820 || a.Peers[0].Endpoint != "198.18.6.2:51821" ||
		a.Peers[0].KeepaliveSec != 1 || a.PublicKey != keyA.PublicKey().String() {
		t.Errorf("%s after traffic: %+v", ifA, a)
	}
	for _, step = range []time.Duration{6 * time.Hour, -6 * time.Hour} {
		if a = find(); a.Verdict != Up || a.Peers[0].HandshakeAgeSec > 3 {
			t.Errorf("%s with the clock stepped %v: %+v", ifA, step, a)
		}
	}

	// B disappears; A keeps sending keepalives that nobody answers, and its
	// last handshake ages past StaleAfter.
	procB.Process.Kill()
	testenv.WaitFor(t, 15*time.Second, func() bool { a = find(); return a.Verdict == Stale },
		func() string { return fmt.Sprintf("%s never went stale: %+v", ifA, a) })
	if !strings.Contains(a.Reason, "with keepalive every 1s") {
		t.Errorf("stale reason: %q", a.Reason)
	}
}
