package collectors

import (
	"context"
	"errors"
	"time"

	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// Tunnel reports each VPN tunnel's verdict, handshake age and rates, and
// raises an event when a verdict changes.
type Tunnel struct {
	openvpn   []tunnel.OpenVPN
	wireguard tunnel.WireGuard
	links     *nic.Reader

	prev     map[string]tunnel.Tunnel
	prevTime time.Time
}

// NewTunnel returns the tunnel collector; links lists tun, gre and other
// tunnel links besides the OpenVPN and WireGuard instances named.
func NewTunnel(openvpn []tunnel.OpenVPN, wireguard tunnel.WireGuard, links *nic.Reader) *Tunnel {
	return &Tunnel{openvpn: openvpn, wireguard: wireguard, links: links, prev: map[string]tunnel.Tunnel{}}
}

// Name implements Collector.
func (*Tunnel) Name() string { return "tunnel" }

// Collect implements Collector.
func (t *Tunnel) Collect(ctx context.Context, r *Report) error {
	var tunnels []tunnel.Tunnel
	for _, o := range t.openvpn {
		tunnels = append(tunnels, o.Read(ctx, r.Time))
	}
	wg, errWG := t.wireguard.Read(r.Time)
	tunnels = append(tunnels, wg...)
	links, errLinks := t.links.Links()
	skip := map[string]bool{}
	for _, w := range wg {
		skip[w.Name] = true // wireguard-go's tun link is the same tunnel
	}
	tunnels = append(tunnels, tunnel.FromLinks(links, skip)...)

	secs := r.Time.Sub(t.prevTime).Seconds()
	cur := make(map[string]tunnel.Tunnel, len(tunnels))
	for _, tn := range tunnels {
		cur[tn.Name] = tn
		tags := []string{"tunnel", tn.Name, "type", tn.Type}
		r.Add("tunnel.up", bool01(tn.Verdict == tunnel.Up), tags...)
		r.Add("tunnel.stale", bool01(tn.Verdict == tunnel.Stale), tags...)
		if age, ok := worstHandshake(tn); ok {
			r.Add("tunnel.handshake_age_seconds", float64(age), tags...)
		}
		if tn.Role == "server" {
			r.Add("tunnel.clients", float64(len(tn.Clients)), tags...)
		}
		p, seen := t.prev[tn.Name]
		if seen && secs > 0 && tn.BytesIn >= p.BytesIn && tn.BytesOut >= p.BytesOut {
			r.Add("tunnel.rx_bytes_per_sec", float64(tn.BytesIn-p.BytesIn)/secs, tags...)
			r.Add("tunnel.tx_bytes_per_sec", float64(tn.BytesOut-p.BytesOut)/secs, tags...)
		}
		t.verdictEvent(r, p.Verdict, tn)
	}
	for name, p := range t.prev {
		if _, ok := cur[name]; !ok && p.Verdict != tunnel.Down {
			r.Event(telemetry.Critical, "tunnel", name, p.Verdict, tunnel.Down, "tunnel %s (%s) disappeared", name, p.Type)
		}
	}
	t.prev, t.prevTime = cur, r.Time
	return errors.Join(errWG, errLinks)
}

// verdictEvent reports a change of verdict. A tunnel first seen up is not
// news; first seen down or stale is.
func (t *Tunnel) verdictEvent(r *Report, old string, tn tunnel.Tunnel) {
	if tn.Verdict == old || (old == "" && tn.Verdict == tunnel.Up) {
		return
	}
	sev := telemetry.Info
	switch tn.Verdict {
	case tunnel.Down:
		sev = telemetry.Critical
	case tunnel.Stale:
		sev = telemetry.Warning
	}
	msg := "tunnel %s (%s) is %s"
	args := []any{tn.Name, tn.Type, tn.Verdict}
	if tn.Reason != "" {
		msg += ": %s"
		args = append(args, tn.Reason)
	}
	r.Event(sev, "tunnel", tn.Name, old, tn.Verdict, msg, args...)
}

// worstHandshake is the oldest last handshake among a WireGuard tunnel's
// peers that had one.
func worstHandshake(tn tunnel.Tunnel) (int64, bool) {
	worst, ok := int64(0), false
	for _, p := range tn.Peers {
		if p.HandshakeAgeSec >= 0 && p.LastHandshake != 0 {
			worst, ok = max(worst, p.HandshakeAgeSec), true
		}
	}
	return worst, ok
}
