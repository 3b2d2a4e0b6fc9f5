package collectors

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// Tunnel reports each VPN tunnel's verdict, handshake age and rates, and
// raises an event when a verdict changes. Ages are judged on the monotonic
// clock (tunnel.Tracker), so a step of the wall clock changes no verdict.
type Tunnel struct {
	openvpn   []tunnel.OpenVPN
	wireguard tunnel.WireGuard
	links     links
	tracker   *tunnel.Tracker

	prev map[string]seenTunnel
}

// seenTunnel is a tunnel as last read, and when.
type seenTunnel struct {
	tunnel.Tunnel
	at time.Time
}

// NewTunnel returns the tunnel collector of the OpenVPN instances and
// WireGuard devices named, and of the other tunnel links (tun, gre, …) of the
// network namespace linkOpts names (the agent's own when empty). Netlink is
// opened by the runs, so a kernel without it (or a namespace not there yet)
// fails the runs, not the start, and every run tries again.
func NewTunnel(openvpn []tunnel.OpenVPN, wireguard tunnel.WireGuard, linkOpts nic.Options) *Tunnel {
	return &Tunnel{openvpn: openvpn, wireguard: wireguard, links: links{opts: linkOpts}, tracker: tunnel.NewTracker(),
		prev: map[string]seenTunnel{}}
}

// Name implements Collector.
func (*Tunnel) Name() string { return "tunnel" }

// Close releases the netlink handle, if open.
func (t *Tunnel) Close() error { return t.links.Close() }

// Collect implements Collector. It reports every tunnel it could read, and
// fails, saying which, when a source could not be read: the links, an OpenVPN
// management interface (or its password file), WireGuard's control. A tunnel
// whose source failed is not taken for gone.
func (t *Tunnel) Collect(ctx context.Context, r *Report) error {
	var tunnels []tunnel.Tunnel
	var errs []error
	for _, o := range t.openvpn {
		tn, err := t.tracker.OpenVPN(ctx, o)
		if err != nil {
			errs = append(errs, fmt.Errorf("openvpn %s: %w", o.Name, err))
		}
		tunnels = append(tunnels, tn)
	}
	wg, errWG := t.tracker.WireGuard(t.wireguard)
	tunnels = append(tunnels, wg...)
	links, errLinks := t.links.list()
	skip := map[string]bool{}
	for _, w := range wg {
		skip[w.Name] = true // wireguard-go's tun link is the same tunnel
	}
	tunnels = append(tunnels, tunnel.FromLinks(links, skip)...)

	cur := make(map[string]seenTunnel, len(tunnels))
	for _, tn := range tunnels {
		cur[tn.Name] = seenTunnel{tn, r.Time}
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
		secs := r.Time.Sub(p.at).Seconds()
		if seen && secs > 0 && tn.BytesIn >= p.BytesIn && tn.BytesOut >= p.BytesOut {
			r.Add("tunnel.rx_bytes_per_sec", float64(tn.BytesIn-p.BytesIn)/secs, tags...)
			r.Add("tunnel.tx_bytes_per_sec", float64(tn.BytesOut-p.BytesOut)/secs, tags...)
		}
		t.verdictEvent(r, p.Verdict, tn)
	}
	for name, p := range t.prev {
		if _, ok := cur[name]; ok {
			continue
		}
		if p.Type == "wireguard" && errWG != nil || p.Type != "wireguard" && p.Type != "openvpn" && errLinks != nil {
			cur[name] = p // not read, not gone: judged again when its source is back
			continue
		}
		if p.Verdict != tunnel.Down {
			r.Event(telemetry.Critical, "tunnel", name, p.Verdict, tunnel.Down, "tunnel %s (%s) disappeared", name, p.Type)
		}
	}
	t.prev = cur
	return errors.Join(append(errs, errWG, errLinks)...)
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
