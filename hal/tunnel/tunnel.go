package tunnel

import "github.com/seed69aca190/edgeagent/hal/nic"

// Verdicts.
const (
	Up    = "up"
	Stale = "stale"
	Down  = "down"
)

// Tunnel is one VPN tunnel and its verdict.
type Tunnel struct {
	Name           string `json:"name"`
	Type           string `json:"type"` // openvpn, wireguard, tun, tap, ipip, gre, vti, xfrm, …
	Verdict        string `json:"verdict"`
	Reason         string `json:"reason,omitempty"`
	State          string `json:"state,omitempty"` // OpenVPN's state, or the link's oper state
	Role           string `json:"role,omitempty"`  // OpenVPN: client or server
	LocalAddress   string `json:"local_address,omitempty"`
	RemoteAddress  string `json:"remote_address,omitempty"`
	BytesIn        uint64 `json:"bytes_in"`
	BytesOut       uint64 `json:"bytes_out"`
	StateSince     int64  `json:"state_since,omitempty"`     // unix seconds: when State was entered
	ConnectedSince int64  `json:"connected_since,omitempty"` // unix seconds, while connected
	// DisconnectedSince is when an OpenVPN tunnel that is not connected left
	// its last CONNECTED state (unix seconds).
	DisconnectedSince int64           `json:"disconnected_since,omitempty"`
	Clients           []OpenVPNClient `json:"clients,omitempty"`
	ListenPort        int             `json:"listen_port,omitempty"`
	PublicKey         string          `json:"public_key,omitempty"`
	Peers             []WireGuardPeer `json:"peers,omitempty"`
}

// tunnelKinds are the link kinds that carry tunnels. WireGuard links are
// reported by the WireGuard reader, with their peers, instead.
var tunnelKinds = map[string]bool{
	"tun": true, "tap": true, "ipip": true, "gre": true, "gretap": true, "ip6gre": true, "ip6gretap": true,
	"ip6tnl": true, "sit": true, "vti": true, "vti6": true, "xfrm": true,
}

// FromLinks returns a tunnel for every tunnel link among links, judged by its
// link state: down when set down or without carrier. Links named in skip are
// left out (they are reported by a richer reader, such as OpenVPN's tun).
func FromLinks(links []nic.Link, skip map[string]bool) []Tunnel {
	var out []Tunnel
	for _, l := range links {
		if !tunnelKinds[l.Kind] || skip[l.Name] {
			continue
		}
		t := Tunnel{Name: l.Name, Type: l.Kind, State: l.OperState,
			BytesIn: l.Counters.RxBytes, BytesOut: l.Counters.TxBytes}
		if len(l.Addresses) > 0 {
			t.LocalAddress = l.Addresses[0].CIDR
		}
		switch {
		case !l.AdminUp:
			t.Verdict, t.Reason = Down, "link is set down"
		case !l.Carrier:
			t.Verdict, t.Reason = Down, "link has no carrier (nothing attached to it)"
		default:
			t.Verdict = Up
		}
		out = append(out, t)
	}
	return out
}
