package collectors

import (
	"context"
	"time"

	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// Net reports per-link state, rates, errors and drops, and passes link
// changes on as events the moment netlink announces them.
type Net struct {
	links    links
	prev     map[string]nic.Counters
	prevTime time.Time
}

// NewNet returns the collector of the links of the namespace opts names
// (the agent's own when empty). Netlink is opened by the runs, so a kernel
// without it (or a namespace not there yet) fails the runs, not the start,
// and every run tries again.
func NewNet(opts nic.Options) *Net {
	return &Net{links: links{opts: opts}, prev: map[string]nic.Counters{}}
}

// Name implements Collector.
func (*Net) Name() string { return "net" }

// Close releases the netlink handle, if open.
func (n *Net) Close() error { return n.links.Close() }

// Collect implements Collector.
func (n *Net) Collect(ctx context.Context, r *Report) error {
	links, err := n.links.list()
	if err != nil {
		return err
	}
	secs := r.Time.Sub(n.prevTime).Seconds()
	cur := make(map[string]nic.Counters, len(links))
	for _, l := range links {
		tags := []string{"link", l.Name, "kind", l.Kind}
		r.Add("net.up", bool01(linkUp(l)), tags...)
		r.Add("net.carrier", bool01(l.Carrier), tags...)
		if l.SpeedMbps > 0 {
			r.Add("net.speed_mbps", float64(l.SpeedMbps), tags...)
		}
		c := l.Counters
		cur[l.Name] = c
		p, ok := n.prev[l.Name]
		if !ok || secs <= 0 || c.RxBytes < p.RxBytes || c.TxBytes < p.TxBytes {
			continue // new link, first run, or counters reset
		}
		r.Add("net.rx_bytes_per_sec", float64(c.RxBytes-p.RxBytes)/secs, tags...)
		r.Add("net.tx_bytes_per_sec", float64(c.TxBytes-p.TxBytes)/secs, tags...)
		r.Add("net.rx_packets_per_sec", float64(c.RxPackets-p.RxPackets)/secs, tags...)
		r.Add("net.tx_packets_per_sec", float64(c.TxPackets-p.TxPackets)/secs, tags...)
		// Errors and drops are rare: counts over the interval read better than rates.
		r.Add("net.rx_errors", float64(delta(p.RxErrors, c.RxErrors)), tags...)
		r.Add("net.tx_errors", float64(delta(p.TxErrors, c.TxErrors)), tags...)
		r.Add("net.rx_dropped", float64(delta(p.RxDropped, c.RxDropped)), tags...)
		r.Add("net.tx_dropped", float64(delta(p.TxDropped, c.TxDropped)), tags...)
	}
	n.prev, n.prevTime = cur, r.Time
	return nil
}

// Watch implements Watcher: netlink link and address changes become events.
// It watches on a netlink socket of its own.
func (n *Net) Watch(ctx context.Context, emit func(telemetry.Event)) error {
	r, err := nic.Open(n.links.opts)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make(chan nic.Event, 64)
	errc := make(chan error, 1)
	go func() { errc <- r.Watch(ctx, out, nic.WatchOptions{}) }()
	for {
		select {
		case err := <-errc:
			return err
		case ev := <-out:
			if ev.Change == nic.Resynced {
				continue // an internal recovery; the differences follow as events
			}
			emit(telemetry.Event{Time: ev.Time, Severity: linkSeverity(ev.Change), Kind: "link",
				Subject: ev.Link, Old: ev.Old, New: changeState(ev), Message: ev.Message})
		}
	}
}

func linkSeverity(c nic.Change) telemetry.Severity {
	switch c {
	case nic.CarrierLost, nic.AdminDown, nic.LinkRemoved:
		return telemetry.Warning
	}
	return telemetry.Info
}

// changeState is the event's new state: the oper state for link changes, the
// change itself (with the address) otherwise.
func changeState(ev nic.Event) string {
	switch ev.Change {
	case nic.AddressAdded, nic.AddressRemoved:
		return string(ev.Change) + " " + ev.New
	}
	if ev.New != "" {
		return ev.New
	}
	return string(ev.Change)
}

// linkUp reports whether a link passes traffic: oper state up, or unknown
// (loopback, tun, some drivers never say) while administratively up with carrier.
func linkUp(l nic.Link) bool {
	return l.OperState == "up" || (l.OperState == "unknown" && l.AdminUp && l.Carrier)
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// delta is cur-prev for a counter, or 0 when it went back (a reset).
func delta(prev, cur uint64) uint64 {
	if cur < prev {
		return 0
	}
	return cur - prev
}
