package nic

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
)

// watcher runs Watch in the background and collects its events.
type watcher struct {
	t      *testing.T
	events chan Event
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startWatch(t *testing.T, r *Reader, opts WatchOptions, buffer int) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{t: t, events: make(chan Event, buffer), cancel: cancel}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		if err := r.Watch(ctx, w.events, opts); err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); w.wg.Wait() })
	return w
}

// expect waits up to within for an event matching link and change, skipping
// others, and returns it with how long it took.
func (w *watcher) expect(link string, change Change, within time.Duration) (Event, time.Duration) {
	w.t.Helper()
	start := time.Now()
	deadline := time.After(within)
	var seen []string
	for {
		select {
		case ev := <-w.events:
			if ev.Link == link && ev.Change == change {
				return ev, time.Since(start)
			}
			seen = append(seen, ev.Message)
		case <-deadline:
			w.t.Fatalf("no %s event for %s within %v; saw %q", change, link, within, seen)
		}
	}
}

func open(t *testing.T, ns string) *Reader {
	t.Helper()
	r, err := Open(Options{Namespace: "/var/run/netns/" + ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func find(links []Link, name string) *Link {
	for i := range links {
		if links[i].Name == name {
			return &links[i]
		}
	}
	return nil
}

// TestVethInNamespace exercises the real kernel: a veth pair between two
// namespaces the test creates (va in the watched one, vb in its peer),
// addresses, traffic, down and up from either side, and deletion.
func TestVethInNamespace(t *testing.T) {
	ns, peer := testenv.Netns(t), testenv.Netns(t)
	testenv.LookPath(t, "ping")
	r := open(t, ns)
	w := startWatch(t, r, WatchOptions{}, 256)
	ip := func(n string, args ...string) { testenv.Run(t, "ip", append([]string{"-n", n}, args...)...) }

	ip(ns, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", peer)
	w.expect("va", LinkAdded, 2*time.Second)
	ip(ns, "addr", "add", "198.18.0.1/24", "dev", "va")
	ip(peer, "addr", "add", "198.18.0.2/24", "dev", "vb")
	ip(ns, "link", "set", "va", "up")
	ip(peer, "link", "set", "vb", "up")
	if ev, _ := w.expect("va", AddressAdded, 2*time.Second); ev.New != "198.18.0.1/24" {
		t.Errorf("address event: %+v", ev)
	}
	w.expect("va", AdminUp, 2*time.Second)
	testenv.WaitFor(t, 5*time.Second, func() bool {
		links, _ := r.Links()
		va := find(links, "va")
		return va != nil && va.Carrier && va.OperState == "up"
	}, func() string { return "va never came up" })

	before, err := r.Links()
	if err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2")
	links, err := r.Links()
	if err != nil {
		t.Fatal(err)
	}
	va := find(links, "va")
	if va == nil || find(links, "vb") != nil {
		t.Fatalf("links in the namespace: %+v", links)
	}
	if va.Kind != "veth" || !va.AdminUp || !va.Carrier || va.MTU != 1500 || len(va.MAC) != 17 {
		t.Errorf("va: %+v", va)
	}
	// The second address is the IPv6 link-local one the kernel adds.
	if len(va.Addresses) != 2 || va.Addresses[0].CIDR != "198.18.0.1/24" || va.Addresses[0].Family != "ipv4" ||
		va.Addresses[0].Scope != "universe" || va.Addresses[1].Family != "ipv6" || va.Addresses[1].Scope != "link" {
		t.Errorf("va addresses: %+v", va.Addresses)
	}
	if lo := find(links, "lo"); lo == nil || lo.Kind != "loopback" || lo.AdminUp {
		t.Errorf("lo: %+v", lo)
	}
	vaBefore := find(before, "va")
	if sent := va.Counters.TxPackets - vaBefore.Counters.TxPackets; sent < 3 {
		t.Errorf("va sent %d packets during 3 pings", sent)
	}
	if got := va.Counters.RxBytes - vaBefore.Counters.RxBytes; got < 3*98 {
		t.Errorf("va received %d bytes, want at least 3 ICMP echo replies of 98 bytes", got)
	}

	// The far end goes down: va loses its carrier. The kernel's linkwatch
	// defers a carrier loss (not an urgent event) until at most one second
	// (HZ) after its previous run, so the bound is that second plus slack for
	// a loaded machine; admin changes are urgent and arrive at once.
	const carrierBound = time.Second + 250*time.Millisecond
	ip(peer, "link", "set", "vb", "down")
	ev, took := w.expect("va", CarrierLost, carrierBound)
	if ev.Old != "up" || ev.New != "down" {
		t.Errorf("carrier event: %+v", ev)
	}
	t.Logf("carrier loss reported %v after the command returned", took)
	ip(ns, "link", "set", "va", "down")
	_, took = w.expect("va", AdminDown, time.Second)
	t.Logf("admin down reported %v after the command returned", took)
	ip(ns, "link", "set", "va", "up")
	w.expect("va", AdminUp, time.Second)
	ip(peer, "link", "set", "vb", "up")
	_, took = w.expect("va", CarrierUp, carrierBound)
	t.Logf("carrier up reported %v after the command returned", took)

	// Deleting the far end takes va with it.
	ip(peer, "link", "delete", "vb")
	w.expect("va", LinkRemoved, time.Second)
	links, err = r.Links()
	if err != nil {
		t.Fatal(err)
	}
	if find(links, "va") != nil {
		t.Errorf("deleted veth still listed: %+v", links)
	}
}

// TestWatchSurvivesOverrun fills a tiny netlink receive buffer while nobody
// reads, so the kernel drops notifications; Watch must resync and still
// account for every link.
func TestWatchSurvivesOverrun(t *testing.T) {
	ns := testenv.Netns(t)
	r := open(t, ns)
	w := startWatch(t, r, WatchOptions{ReceiveBuffer: 4096}, 0) // unbuffered: Watch blocks until we read

	const pairs = 100
	var batch strings.Builder
	for i := range pairs {
		fmt.Fprintf(&batch, "link add a%d type veth peer name b%d\n", i, i)
	}
	testenv.Run(t, "sh", "-c", fmt.Sprintf("printf '%%s' '%s' | ip -n %s -batch -", batch.String(), ns))

	added := map[string]bool{}
	resynced := false
	timeout := time.After(20 * time.Second)
	for len(added) < 2*pairs {
		select {
		case ev := <-w.events:
			switch ev.Change {
			case Resynced:
				resynced = true
			case LinkAdded:
				added[ev.Link] = true
			}
		case <-timeout:
			t.Fatalf("after 20s: %d of %d links reported added, resynced %v", len(added), 2*pairs, resynced)
		}
	}
	if !resynced {
		t.Errorf("no resync: %d notifications fitted a 4 KiB buffer; the test did not force an overrun", 2*pairs)
	}
}

// TestLinkNamesAreText names real links with random bytes (any but what the
// kernel refuses in a name): Links and Watch
// report them escaped, everything else about them read as for any link.
func TestLinkNamesAreText(t *testing.T) {
	ns, peer := testenv.Netns(t), testenv.Netns(t)
	r := open(t, ns)
	w := startWatch(t, r, WatchOptions{}, 256)
	rnd := rand.New(rand.NewPCG(10, 28))
	var names []string
	for i := range 10 {
		name := fmt.Sprintf("%d", i) + wiretest.Junk(rnd, 1+rnd.IntN(12), wiretest.NotInLinkName)
		testenv.Run(t, "ip", "-n", ns, "link", "add", "name", name, "type", "veth", "peer", "name", fmt.Sprintf("p%d", i), "netns", peer)
		testenv.Run(t, "ip", "-n", ns, "link", "set", name, "up")
		w.expect(text.EscapeString(name), LinkAdded, 2*time.Second)
		names = append(names, name)
	}
	links, err := r.Links()
	if err != nil {
		t.Fatal(err)
	}
	if bad := wiretest.InvalidText(links); bad != "" {
		t.Fatalf("not text: %s", bad)
	}
	for _, name := range names {
		if l := find(links, text.EscapeString(name)); l == nil || l.Kind != "veth" || !l.AdminUp {
			t.Errorf("%q: %+v", name, l)
		}
	}
	testenv.Run(t, "ip", "-n", ns, "link", "delete", names[0])
	w.expect(text.EscapeString(names[0]), LinkRemoved, 2*time.Second)
}
