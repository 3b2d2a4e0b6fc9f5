package tunnel

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
)

// lines reads a saved management-interface answer (captured from a real
// OpenVPN 2.6.14 server and client pair on this project's VM) without its END.
func lines(t testing.TB, name string) []string {
	t.Helper()
	data, err := os.ReadFile("testdata/openvpn/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for l := range strings.SplitSeq(strings.TrimRight(string(data), "\r\n"), "\n") {
		if l = strings.TrimRight(l, "\r"); l != "END" {
			out = append(out, l)
		}
	}
	return out
}

func TestParseOpenVPNServer(t *testing.T) {
	var tun Tunnel
	if _, err := parseState(lines(t, "server-state.txt"), &tun); err != nil {
		t.Fatal(err)
	}
	if tun.State != "CONNECTED" || tun.LocalAddress != "198.18.3.1" || tun.RemoteAddress != "" || tun.ConnectedSince != 1795301664 {
		t.Errorf("server state: %+v", tun)
	}
	in, out, err := parseLoadStats(lines(t, "server-load-stats.txt")[0])
	if err != nil || in != 2065 || out != 2050 {
		t.Errorf("load-stats: %d, %d, %v", in, out, err)
	}
	role, clients, err := parseStatus3(lines(t, "server-status3.txt"))
	want := []OpenVPNClient{{CommonName: "client1", RealAddress: "198.18.2.2:33387", VirtualAddress: "198.18.3.2",
		BytesIn: 2065, BytesOut: 2024, ConnectedSince: 1795301664}}
	if err != nil || role != "server" || !sameJSON(clients, want) {
		t.Errorf("status 3: %s %+v %v", role, clients, err)
	}
}

func TestParseOpenVPNClient(t *testing.T) {
	var tun Tunnel
	if _, err := parseState(lines(t, "client-state.txt"), &tun); err != nil {
		t.Fatal(err)
	}
	if tun.State != "CONNECTED" || tun.LocalAddress != "198.18.3.2" || tun.RemoteAddress != "198.18.2.1:1194" {
		t.Errorf("client state: %+v", tun)
	}
	role, clients, err := parseStatus3(lines(t, "client-status3.txt"))
	if err != nil || role != "client" || clients != nil {
		t.Errorf("client status 3: %s %+v %v", role, clients, err)
	}
}

// A client that lost its server cycles through states; the outage counts from
// when it left CONNECTED, not from the latest state. Without CONNECTED in
// the history, the oldest state known is a floating start.
func TestParseOpenVPNStateHistory(t *testing.T) {
	var tun Tunnel
	history := []string{
		"1795301600,CONNECTING,,,,,,",
		"1795301601,CONNECTED,SUCCESS,198.18.5.2,198.18.4.1,1194,,",
		"1795301650,RECONNECTING,ping-restart,,,,,",
		"1795301651,RESOLVE,,,,,,",
		"1795301652,WAIT,,,,,,",
	}
	floating, err := parseState(history, &tun)
	if err != nil {
		t.Fatal(err)
	}
	if tun.State != "WAIT" || tun.StateSince != 1795301652 || tun.DisconnectedSince != 1795301650 || tun.ConnectedSince != 0 || floating {
		t.Errorf("after an outage: %+v, floating %v", tun, floating)
	}
	if floating, err := parseState(history[:1], &tun); err != nil || tun.DisconnectedSince != 1795301600 || !floating {
		t.Errorf("never connected: %+v, floating %v, %v", tun, floating, err)
	}
	if floating, err := parseState(history[2:], &tun); err != nil || tun.DisconnectedSince != 1795301650 || !floating {
		t.Errorf("CONNECTED gone out of the history: %+v, floating %v, %v", tun, floating, err)
	}
}

func TestParseOpenVPNMalformed(t *testing.T) {
	var tun Tunnel
	for _, bad := range [][]string{nil, {"garbage"}, {"x,CONNECTED,SUCCESS,1.2.3.4,,"}} {
		if _, err := parseState(bad, &tun); err == nil {
			t.Errorf("parseState(%q) succeeded", bad)
		}
	}
	for _, bad := range []string{"SUCCESS: nclients=0", "SUCCESS: bytesin=x,bytesout=1", "ERROR: unknown command"} {
		if _, _, err := parseLoadStats(bad); err == nil {
			t.Errorf("parseLoadStats(%q) succeeded", bad)
		}
	}
	if _, _, err := parseStatus3([]string{"TITLE\tx", "CLIENT_LIST\tc\t1.2.3.4:5"}); err == nil {
		t.Error("CLIENT_LIST without HEADER accepted")
	}
}

func TestOpenVPNJudge(t *testing.T) {
	now := time.Unix(1795301700, 0)
	o := OpenVPN{Grace: 30 * time.Second}
	for _, tt := range []struct {
		state   string
		since   int64
		verdict string
		reason  string
	}{
		{"CONNECTED", 1795301000, Up, ""},
		{"RECONNECTING", 1795301690, Stale, "not connected for 10s (now RECONNECTING), within the 30s grace period"},
		{"WAIT", 1795301600, Down, "not connected for 1m40s (now WAIT), longer than the 30s grace period"},
		{"EXITING", 1795301600, Down, "not connected for 1m40s (now EXITING), longer than the 30s grace period"},
	} {
		v, r := o.judge(tt.state, wallClock(now).age("", time.Unix(tt.since, 0), false))
		if v != tt.verdict || r != tt.reason {
			t.Errorf("%s since %d: %s %q; want %s %q", tt.state, tt.since, v, r, tt.verdict, tt.reason)
		}
	}
}

func TestWireGuardVerdicts(t *testing.T) {
	now := time.Unix(1795301700, 0)
	key, _ := wgtypes.GeneratePrivateKey()
	pub := key.PublicKey()
	_, allowed, _ := net.ParseCIDR("198.18.7.2/32")
	peer := func(handshake time.Duration, keepalive time.Duration) wgtypes.Peer {
		p := wgtypes.Peer{PublicKey: pub, PersistentKeepaliveInterval: keepalive, ReceiveBytes: 10, TransmitBytes: 20,
			Endpoint: &net.UDPAddr{IP: net.ParseIP("198.18.6.2"), Port: 51820}, AllowedIPs: []net.IPNet{*allowed}}
		if handshake >= 0 {
			p.LastHandshakeTime = now.Add(-handshake)
		}
		return p
	}
	w := WireGuard{}
	for _, tt := range []struct {
		name    string
		peer    wgtypes.Peer
		verdict string
		reason  string
	}{
		{"fresh handshake", peer(time.Minute, 25*time.Second), Up, ""},
		{"old handshake with keepalive", peer(4*time.Minute, 25*time.Second), Stale, "last handshake 4m0s ago, more than 3m0s, with keepalive every 25s"},
		{"old handshake, idle tunnel", peer(4*time.Minute, 0), Up, "idle: last handshake 4m0s ago, no keepalive configured"},
		{"never, keepalive set", peer(-1, 25*time.Second), Down, "no handshake yet"},
		{"never, idle", peer(-1, 0), Up, "idle: no handshake yet and no keepalive configured"},
	} {
		got := w.peer("wg0", tt.peer, wallClock(now))
		if got.Verdict != tt.verdict || got.Reason != tt.reason || got.Endpoint != "198.18.6.2:51820" || got.AllowedIPs[0] != "198.18.7.2/32" {
			t.Errorf("%s: %+v; want %s %q", tt.name, got, tt.verdict, tt.reason)
		}
	}
	dev := &wgtypes.Device{Name: "wg0", Peers: []wgtypes.Peer{peer(time.Minute, 25*time.Second), peer(4*time.Minute, 25*time.Second)}}
	if tun := w.tunnel(dev, wallClock(now)); tun.Verdict != Stale || !strings.HasPrefix(tun.Reason, "peer "+pub.String()+": last handshake") || tun.BytesIn != 20 {
		t.Errorf("device with one stale peer: %+v", tun)
	}
	if tun := w.tunnel(&wgtypes.Device{Name: "wg1"}, wallClock(now)); tun.Verdict != Down || tun.Reason != "no peers configured" {
		t.Errorf("device without peers: %+v", tun)
	}
}

func TestFromLinks(t *testing.T) {
	links := []nic.Link{
		{Name: "eth0", Kind: "physical", AdminUp: true, Carrier: true},
		{Name: "tun0", Kind: "tun", AdminUp: true, Carrier: true, OperState: "unknown", Counters: nic.Counters{RxBytes: 5, TxBytes: 7},
			Addresses: []nic.Address{{CIDR: "198.18.3.2/24"}}},
		{Name: "tun1", Kind: "tun", AdminUp: true, Carrier: false, OperState: "down"},
		{Name: "gre1", Kind: "gre", AdminUp: false},
		{Name: "tun9", Kind: "tun", AdminUp: true, Carrier: true},
	}
	got := FromLinks(links, map[string]bool{"tun9": true})
	want := []Tunnel{
		{Name: "tun0", Type: "tun", Verdict: Up, State: "unknown", LocalAddress: "198.18.3.2/24", BytesIn: 5, BytesOut: 7},
		{Name: "tun1", Type: "tun", Verdict: Down, Reason: "link has no carrier (nothing attached to it)", State: "down"},
		{Name: "gre1", Type: "gre", Verdict: Down, Reason: "link is set down"},
	}
	if !sameJSON(got, want) {
		g, _ := json.Marshal(got)
		t.Errorf("FromLinks = %s", g)
	}
}

func sameJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// FuzzOpenVPNAnswers feeds arbitrary answers to the management-interface
// reader through a connection, as OpenVPN speaks: it may refuse them, never
// panic, and everything it reports (the tunnel, why it refused) is text.
func FuzzOpenVPNAnswers(f *testing.F) {
	answer := func(name string) string { return strings.Join(lines(f, name), "\n") }
	f.Add("SUCCESS: password is correct", answer("server-state.txt"), answer("server-load-stats.txt"), answer("server-status3.txt"))
	f.Add("SUCCESS:", answer("client-state.txt"), answer("server-load-stats.txt"), answer("client-status3.txt"))
	f.Add("SUCCESS:", "1795301664,RECONNECTING,\xff,198.18.3.2,198.18.\xfe.1,1194,,", "SUCCESS: bytesin=1,bytesout=\xc0",
		"HEADER\tCLIENT_LIST\tCommon Name\tReal Address\nCLIENT_LIST\tcl\xffent\\1\t198.18.2.2:\xfe")
	f.Add("ERROR: bad password \xff", "", "", "")
	f.Fuzz(func(t *testing.T, login, state, stats, status string) {
		client, server := socketPair(t)
		defer client.Close()
		client.SetDeadline(time.Now().Add(5 * time.Second))
		go serveManagement(server, login, map[string]string{"state all": state + "\nEND\n", "load-stats": stats + "\n",
			"status 3": status + "\nEND\n"})
		var tun Tunnel
		_, err := (&mgmt{conn: client, r: bufio.NewReader(client)}).query("pw", &tun)
		if bad := wiretest.InvalidText(tun); bad != "" || (err != nil && !utf8.ValidString(err.Error())) {
			t.Fatalf("not text: %s %q", bad, err)
		}
	})
}

// serveManagement plays a management interface that asks for a password,
// answers it with login and its banner, then each command with its answer,
// until the connection closes.
func serveManagement(c net.Conn, login string, answers map[string]string) {
	defer c.Close()
	r := bufio.NewReader(c)
	fmt.Fprint(c, passwordPrompt)
	if _, err := r.ReadString('\n'); err != nil {
		return
	}
	fmt.Fprint(c, login+"\r\n>INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n")
	for {
		cmd, err := r.ReadString('\n')
		if err != nil {
			return
		}
		fmt.Fprint(c, answers[strings.TrimSpace(cmd)])
	}
}

// socketPair returns the two ends of a connected unix socket: unlike
// net.Pipe's they buffer, as the management interface's socket does.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "management")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return conns[0], conns[1]
}
