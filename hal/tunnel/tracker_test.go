package tunnel

import (
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// fakeClock stands in for the wall and monotonic clocks: the wall clock can
// be stepped, as NTP does, while the monotonic one only moves on.
type fakeClock struct {
	wall time.Time
	mono time.Duration
}

func (c *fakeClock) read() (time.Time, time.Duration) { return c.wall, c.mono }

// pass lets d go by, with the wall clock stepped by step on the way.
func (c *fakeClock) pass(d, step time.Duration) {
	c.mono += d
	c.wall = c.wall.Add(d + step)
}

func fakeTracker() (*Tracker, *fakeClock) {
	clk := &fakeClock{wall: time.Unix(1795301700, 0), mono: time.Minute}
	return &Tracker{seen: map[string]sighting{}, clock: clk.read}, clk
}

// TestTrackerWireGuardClockSteps reads one peer (keepalive set, stale after
// 3 minutes) while the wall clock steps six hours either way between reads:
// no step changes a verdict or an age, a renewed handshake is young, and a
// handshake that stays old goes stale whatever the wall clock says. A second
// peer handshakes for the first time just before a step: its age is bounded
// by the time since the read that saw it without one.
func TestTrackerWireGuardClockSteps(t *testing.T) {
	tr, clk := fakeTracker()
	key, _ := wgtypes.GeneratePrivateKey()
	p := wgtypes.Peer{PublicKey: key.PublicKey(), PersistentKeepaliveInterval: 25 * time.Second,
		LastHandshakeTime: clk.wall.Add(-time.Minute)}
	key2, _ := wgtypes.GeneratePrivateKey()
	fresh := wgtypes.Peer{PublicKey: key2.PublicKey(), PersistentKeepaliveInterval: 25 * time.Second}
	w := WireGuard{}
	for i, step := range []struct {
		what        string
		pass, step  time.Duration
		handshake   time.Duration // when set, a new handshake this long before the read, by the clock then
		verdict     string
		age         int64
		fresh       string // the second peer's verdict
		freshShakes bool   // it handshakes just before this step
	}{
		{what: "first read", verdict: Up, age: 60, fresh: Down},
		{what: "clock stepped 6 h ahead", pass: 10 * time.Second, step: 6 * time.Hour, verdict: Up, age: 70, fresh: Up, freshShakes: true},
		{what: "clock stepped 6 h back", pass: 10 * time.Second, step: -6 * time.Hour, verdict: Up, age: 80, fresh: Up},
		{what: "handshake renewed", pass: 10 * time.Second, handshake: 5 * time.Second, verdict: Up, age: 5, fresh: Up},
		{what: "no handshake since, clock stepped 6 h back", pass: 200 * time.Second, step: -6 * time.Hour, verdict: Stale, age: 205, fresh: Stale},
		{what: "clock stepped 6 h ahead again", pass: 10 * time.Second, step: 6 * time.Hour, verdict: Stale, age: 215, fresh: Stale},
	} {
		if step.freshShakes {
			// By the clock before the step: the step comes after it.
			fresh.LastHandshakeTime = clk.wall.Add(2 * time.Second)
		}
		clk.pass(step.pass, step.step)
		if step.handshake > 0 {
			p.LastHandshakeTime = clk.wall.Add(-step.handshake)
		}
		got := w.peer("wg0", p, tr)
		if got.Verdict != step.verdict || got.HandshakeAgeSec != step.age {
			t.Errorf("%d %s: %s, age %d s (%s); want %s, %d s", i, step.what, got.Verdict, got.HandshakeAgeSec, got.Reason, step.verdict, step.age)
		}
		if got := w.peer("wg0", fresh, tr); got.Verdict != step.fresh || got.HandshakeAgeSec > 10*60 {
			t.Errorf("%d %s: second peer %s, age %d s (%s); want %s", i, step.what, got.Verdict, got.HandshakeAgeSec, got.Reason, step.fresh)
		}
	}
}

// TestTrackerOpenVPNClockSteps follows an OpenVPN outage (grace 30 s) through
// steps of the wall clock: stale within the grace whatever the clock says,
// down after it even with the clock stepped back, still down when the oldest
// state moves on in a history that no longer holds CONNECTED, and a new
// outage after a reconnection starts again.
func TestTrackerOpenVPNClockSteps(t *testing.T) {
	tr, clk := fakeTracker()
	o := OpenVPN{Name: "vpn0", Grace: 30 * time.Second}
	var since time.Time
	for i, step := range []struct {
		what       string
		pass, step time.Duration
		state      string
		outage     time.Duration // when set, an outage that began this long before the read, by the clock then
		floatBy    time.Duration // when set, the oldest state known moves this much later (floating)
		verdict    string
	}{
		{what: "connected", state: "CONNECTED", verdict: Up},
		{what: "reconnecting", pass: 10 * time.Second, state: "RECONNECTING", outage: 5 * time.Second, verdict: Stale},
		{what: "clock stepped 6 h ahead", pass: 10 * time.Second, step: 6 * time.Hour, state: "WAIT", verdict: Stale},
		{what: "clock stepped 6 h back", pass: 5 * time.Second, step: -6 * time.Hour, state: "RESOLVE", verdict: Stale},
		{what: "past the grace, clock stepped 6 h back", pass: 15 * time.Second, step: -6 * time.Hour, state: "WAIT", verdict: Down},
		{what: "CONNECTED went out of the history", pass: 10 * time.Second, state: "WAIT", floatBy: 40 * time.Second, verdict: Down},
		{what: "reconnected", pass: 10 * time.Second, state: "CONNECTED", verdict: Up},
		{what: "a new outage", pass: 10 * time.Second, state: "RECONNECTING", outage: 2 * time.Second, verdict: Stale},
	} {
		clk.pass(step.pass, step.step)
		floating := step.floatBy > 0
		switch {
		case step.state == "CONNECTED":
			since = time.Time{}
		case step.outage > 0:
			since = clk.wall.Add(-step.outage)
		case floating:
			since = since.Add(step.floatBy)
		}
		if v, reason := o.judge(step.state, tr.age("openvpn/vpn0", since, floating)); v != step.verdict {
			t.Errorf("%d %s: %s (%s); want %s", i, step.what, v, reason, step.verdict)
		}
	}
}

func TestTrackerForgets(t *testing.T) {
	tr, clk := fakeTracker()
	tr.age("openvpn/gone", clk.wall.Add(-time.Second), false)
	clk.pass(59*time.Minute, 0)
	tr.sweep()
	if len(tr.seen) != 1 {
		t.Fatal("forgot a tunnel read an hour ago")
	}
	clk.pass(2*time.Minute, 0)
	tr.sweep()
	if len(tr.seen) != 0 {
		t.Errorf("still remembers %v", tr.seen)
	}
}
