package tunnel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/seed69aca190/edgeagent/internal/text"
)

// WireGuardPeer is one peer of a WireGuard interface.
type WireGuardPeer struct {
	PublicKey       string   `json:"public_key"`
	Endpoint        string   `json:"endpoint,omitempty"`
	AllowedIPs      []string `json:"allowed_ips,omitempty"`
	LastHandshake   int64    `json:"last_handshake,omitempty"` // unix seconds; absent when none yet
	HandshakeAgeSec int64    `json:"handshake_age_sec"`        // -1 when there was none
	KeepaliveSec    int      `json:"keepalive_sec,omitempty"`
	BytesIn         uint64   `json:"bytes_in"`
	BytesOut        uint64   `json:"bytes_out"`
	Verdict         string   `json:"verdict"`
	Reason          string   `json:"reason,omitempty"`
}

// WireGuard reads every WireGuard interface the process can see: kernel ones
// in its network namespace and userspace ones (wireguard-go) by their control
// sockets in /var/run/wireguard.
type WireGuard struct {
	// StaleAfter is the handshake age past which a peer that should carry
	// traffic is stale; zero means 3 minutes (a handshake is renewed every 2
	// minutes while traffic flows).
	StaleAfter time.Duration
	// SocketDir holds userspace devices' control sockets; empty means
	// /var/run/wireguard, where wireguard-go and wgctrl put them.
	SocketDir string
}

// Read lists the WireGuard tunnels with a verdict for each, judging
// handshake ages by the wall clock at now (a Tracker judges repeated readings
// by the monotonic clock instead). Devices are found one by one (kernel links
// of kind wireguard, and control sockets of userspace ones), so one broken
// device, such as the stale socket of a wireguard-go that crashed, is
// reported down without hiding the others.
func (w WireGuard) Read(now time.Time) ([]Tunnel, error) {
	return w.read(wallClock(now))
}

func (w WireGuard) read(a ager) ([]Tunnel, error) {
	names, err := w.deviceNames()
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, nil
	}
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wireguard control: %w", err)
	}
	defer c.Close()
	out := make([]Tunnel, 0, len(names))
	for _, name := range names {
		d, err := c.Device(name)
		if err != nil {
			out = append(out, Tunnel{Name: text.EscapeString(name), Type: "wireguard", Verdict: Down,
				Reason: text.EscapeString("read device: " + err.Error())})
			continue
		}
		out = append(out, w.tunnel(d, a))
	}
	return out, nil
}

// deviceNames lists kernel WireGuard links in this namespace and userspace
// devices by their control sockets.
func (w WireGuard) deviceNames() ([]string, error) {
	names, err := kernelDevices()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
	}
	dir := w.SocketDir
	if dir == "" {
		dir = "/var/run/wireguard"
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list wireguard sockets: %w", err)
	}
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".sock"); ok && !seen[name] {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, nil
}

func (w WireGuard) tunnel(d *wgtypes.Device, a ager) Tunnel {
	t := Tunnel{Name: text.EscapeString(d.Name), Type: "wireguard", ListenPort: d.ListenPort, PublicKey: d.PublicKey.String(), Verdict: Up}
	if len(d.Peers) == 0 {
		t.Verdict, t.Reason = Down, "no peers configured"
	}
	for _, p := range d.Peers {
		peer := w.peer(d.Name, p, a)
		t.BytesIn += peer.BytesIn
		t.BytesOut += peer.BytesOut
		if worse(peer.Verdict, t.Verdict) {
			t.Verdict, t.Reason = peer.Verdict, "peer "+peer.PublicKey+": "+peer.Reason
		}
		t.Peers = append(t.Peers, peer)
	}
	return t
}

func (w WireGuard) peer(device string, p wgtypes.Peer, a ager) WireGuardPeer {
	stale := w.StaleAfter
	if stale <= 0 {
		stale = 3 * time.Minute
	}
	peer := WireGuardPeer{
		PublicKey:       p.PublicKey.String(),
		KeepaliveSec:    int(p.PersistentKeepaliveInterval / time.Second),
		BytesIn:         uint64(p.ReceiveBytes),
		BytesOut:        uint64(p.TransmitBytes),
		HandshakeAgeSec: -1,
	}
	if p.Endpoint != nil {
		peer.Endpoint = p.Endpoint.String()
	}
	for _, ip := range p.AllowedIPs {
		peer.AllowedIPs = append(peer.AllowedIPs, ip.String())
	}
	expected := p.PersistentKeepaliveInterval > 0 // the operator asked for a live tunnel
	age := a.age("wireguard/"+device+"/"+peer.PublicKey, p.LastHandshakeTime, false)
	if p.LastHandshakeTime.IsZero() {
		if expected {
			peer.Verdict, peer.Reason = Down, "no handshake yet"
		} else {
			peer.Verdict, peer.Reason = Up, "idle: no handshake yet and no keepalive configured"
		}
		return peer
	}
	peer.LastHandshake = p.LastHandshakeTime.Unix()
	peer.HandshakeAgeSec = int64(age / time.Second)
	switch {
	case age <= stale:
		peer.Verdict = Up
	case expected:
		peer.Verdict, peer.Reason = Stale, fmt.Sprintf("last handshake %v ago, more than %v, with keepalive every %v",
			age.Truncate(time.Second), stale, p.PersistentKeepaliveInterval)
	default:
		peer.Verdict, peer.Reason = Up, fmt.Sprintf("idle: last handshake %v ago, no keepalive configured", age.Truncate(time.Second))
	}
	return peer
}

// worse reports whether verdict a is worse than b.
func worse(a, b string) bool {
	rank := map[string]int{Up: 0, Stale: 1, Down: 2}
	return rank[a] > rank[b]
}
