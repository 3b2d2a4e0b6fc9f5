package uplink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// commandLog records the ids of the requests an uplink handed to OnCommand,
// taking delay over each.
type commandLog struct {
	delay time.Duration
	mu    sync.Mutex
	ids   []string
}

func (l *commandLog) onCommand(env telemetry.Envelope) bool {
	time.Sleep(l.delay)
	var c telemetry.Command
	env.DecodeBody(&c)
	l.mu.Lock()
	l.ids = append(l.ids, c.ID)
	l.mu.Unlock()
	return true
}

func (l *commandLog) got() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ids)
}

// controllerClient connects an MQTT client as the controller does, to send
// requests and read retained states.
func controllerClient(t *testing.T, broker, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// sendCommand publishes request id to node-a and reports whether the broker
// acknowledged it.
func sendCommand(c mqtt.Client, id string) bool {
	var e telemetry.Encoder
	now := time.Now()
	data, err := e.Encode(telemetry.Header{Node: "node-a", Seq: 1 << 40, Time: now, Kind: telemetry.KindCommand},
		telemetry.Command{ID: id, Node: "node-a", Name: "ping", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		panic(err)
	}
	tok := c.Publish("edge/node-a/cmd", 1, false, append([]byte(nil), data...))
	return tok.WaitTimeout(5*time.Second) && tok.Error() == nil
}

// retainedState reads the node's retained state as a controller that starts
// now would.
func retainedState(t *testing.T, broker string) telemetry.State {
	t.Helper()
	c := controllerClient(t, broker, "state-reader")
	got := make(chan []byte, 1)
	c.Subscribe("edge/node-a/state", 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case got <- m.Payload():
		default:
		}
	})
	select {
	case p := <-got:
		env, err := telemetry.Decode(p)
		if err != nil {
			t.Fatal(err)
		}
		var st telemetry.State
		if err := env.DecodeBody(&st); err != nil {
			t.Fatal(err)
		}
		return st
	case <-time.After(5 * time.Second):
		t.Fatal("no retained state")
	}
	return telemetry.State{}
}

// TestHandoverToNewImage ends one uplink with Handover while requests keep
// arriving, and starts a second on the same spool directory and sequence
// file, as the new image does after the exec:
//   - the broker holds the retained state upgrading, with the node's
//     deadline and next version, and the controller side never sees
//     offline: the clean disconnect dropped the last will;
//   - batches collected before Handover, never flushed by the first uplink,
//     and one passed to it after, are on flash when the spool is opened
//     again, and the second uplink delivers them;
//   - every request the broker accepted, before, during and after the hand-
//     over, reaches OnCommand of one image or the other: the first hands on
//     and acknowledges what it takes; those it received and did not hand on
//     (its OnCommand is slow here, so they queue up), and those published
//     while no image was connected, the broker delivers to the second.
func TestHandoverToNewImage(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	ctl := testenv.Subscribe(t, m.URL)
	dir := t.TempDir()
	oldCmds, newCmds := commandLog{delay: 50 * time.Millisecond}, commandLog{}
	old, oldSpool := newUplink(t, m.URL, dir, func(o *Options) {
		o.FlushInterval, o.Instance, o.OnCommand = time.Hour, "old", oldCmds.onCommand
	})
	run(t, old)
	testenv.WaitFor(t, 5*time.Second, func() bool { return old.Status().State == "connected" }, func() string { return old.Status().State })

	// Requests from the controller, 50 a second, until the new image has
	// taken some; the first one confirms the subscription.
	pub := controllerClient(t, m.URL, "edgectl")
	var (
		sentMu sync.Mutex
		sent   []string
	)
	send := func(id string) {
		if sendCommand(pub, id) {
			sentMu.Lock()
			sent = append(sent, id)
			sentMu.Unlock()
		}
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { send("probe"); return len(oldCmds.got()) > 0 },
		func() string { return "the first image never got a request" })
	stopSending := make(chan struct{})
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		for i := 0; ; i++ {
			select {
			case <-stopSending:
				return
			case <-time.After(20 * time.Millisecond):
				send(fmt.Sprintf("c-%d", i))
			}
		}
	}()

	sources := []string{"host", "disk", "net"}
	for _, s := range sources {
		old.Batch(telemetry.Batch{Source: s, Time: time.Now(), Points: []telemetry.Point{{Name: s + ".x", Value: 1}}})
	}
	for range 5 {
		old.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "before", New: "n", Message: "m"})
	}
	time.Sleep(300 * time.Millisecond) // requests go to the first image meanwhile
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := old.Handover(ctx, 90*time.Second+time.Millisecond, "v2.0.0"); err != nil {
		t.Fatalf("handover: %v", err)
	}
	if st := old.Status().State; st != "handed over" {
		t.Errorf("state after handover %q", st)
	}
	// A producer that runs on through the hand-over (StatsD) flushes its
	// last batch after it: straight to the spool, which the agent syncs
	// once more before the exec.
	old.Batch(telemetry.Batch{Source: "statsd", Time: time.Now(), Points: []telemetry.Point{{Name: "late", Value: 1}}})
	sources = append(sources, "statsd")
	if err := oldSpool.Sync(); err != nil {
		t.Fatal(err)
	}
	handedOver, unacknowledged := len(oldCmds.got()), len(old.inbound)
	if unacknowledged == 0 {
		t.Error("no request waited in the first image at the hand-over: the test does not show that they reach the second")
	}
	if st := retainedState(t, m.URL); st.State != "upgrading" || st.BackSec != 91 || st.NextVersion != "v2.0.0" {
		t.Errorf("retained state %+v, want upgrading back within 91 s to v2.0.0", st)
	}
	time.Sleep(time.Second) // requests wait at the broker; a last will would have fired by now

	// The new image: the spool and the sequence file from flash, a new instance.
	u, sp := newUplink(t, m.URL, dir, func(o *Options) { o.Instance, o.OnCommand = "new", newCmds.onCommand })
	var telemetrySeqs []uint64
	for {
		seq, rec, ok, err := sp.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if rec.Topic != "telemetry" {
			continue
		}
		env, err := telemetry.Decode(rec.Payload)
		if err != nil {
			t.Fatal(err)
		}
		batches, err := env.DecodeBatches()
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range batches {
			sources = slices.DeleteFunc(sources, func(s string) bool { return s == b.Source })
		}
		telemetrySeqs = append(telemetrySeqs, seq)
	}
	sp.Requeue()
	if len(sources) != 0 {
		t.Fatalf("batches of %v collected before the hand-over are not on flash", sources)
	}
	run(t, u)
	testenv.WaitFor(t, 10*time.Second, func() bool {
		got := ctl.Received()
		return slices.IndexFunc(telemetrySeqs, func(s uint64) bool { return !got.Has(s) }) < 0 && sp.Stats().Depth() == 0
	}, func() string {
		return fmt.Sprintf("telemetry %v not all delivered; spool %+v", telemetrySeqs, sp.Stats())
	})
	testenv.WaitFor(t, 10*time.Second, func() bool { return len(newCmds.got()) > 10 },
		func() string { return fmt.Sprintf("the new image got %d requests", len(newCmds.got())) })
	close(stopSending)
	<-sending

	testenv.WaitFor(t, 5*time.Second, func() bool { return len(ctl.Received().States) >= 3 }, func() string { return "states: " + strings.Join(ctl.Received().States, ", ") })
	if got := ctl.Received().States; !slices.Equal(got, []string{"online", "upgrading", "online"}) {
		t.Errorf("states seen by the controller %v, want online, upgrading, online", got)
	}
	sentMu.Lock()
	defer sentMu.Unlock()
	testenv.WaitFor(t, 10*time.Second, func() bool {
		return len(missing(sent, oldCmds.got(), newCmds.got())) == 0
	}, func() string {
		return fmt.Sprintf("%d of %d requests reached neither image: %v", len(missing(sent, oldCmds.got(), newCmds.got())), len(sent),
			missing(sent, oldCmds.got(), newCmds.got()))
	})
	if after := len(oldCmds.got()); after != handedOver {
		t.Errorf("the first image took %d requests after Handover returned", after-handedOver)
	}
	twice := 0
	for _, id := range newCmds.got() {
		if slices.Contains(oldCmds.got(), id) {
			twice++ // acknowledged as the session ended: the agent's cache answers it
		}
	}
	t.Logf("%d requests: %d to the first image, %d to the second (%d to both); %d received by the first and left to the second",
		len(sent), len(oldCmds.got()), len(newCmds.got()), twice, unacknowledged)
}

// missing lists the ids of sent that are in neither got.
func missing(sent []string, got ...[]string) []string {
	var out []string
	for _, id := range sent {
		if !slices.ContainsFunc(got, func(ids []string) bool { return slices.Contains(ids, id) }) {
			out = append(out, id)
		}
	}
	return out
}

// TestHandoverWithoutBroker: with no broker to tell, Handover still puts
// what was collected on flash, and says the controller was not told. Without
// Run it does nothing and says so when ctx ends.
func TestHandoverWithoutBroker(t *testing.T) {
	u, sp := newUplink(t, "tcp://127.0.0.1:1", t.TempDir(), func(o *Options) { o.FlushInterval = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := u.Handover(ctx, time.Minute, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("handover without Run: %v", err)
	}
	run(t, u)
	u.Batch(telemetry.Batch{Source: "host", Time: time.Now(), Points: []telemetry.Point{{Name: "host.load1", Value: 1}}})
	u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "s", New: "n", Message: "m"})
	err := u.Handover(context.Background(), time.Minute, "")
	if err == nil || !strings.Contains(err.Error(), "not connected to the broker") {
		t.Errorf("handover without a broker: %v", err)
	}
	if st := sp.Stats(); st.Disk != 2 || st.Memory != 0 {
		t.Errorf("spool after handover %+v, want the event and the batch on flash", st)
	}
}

// TestHandoverToHungBrokerIsOnFlashFirst: with a broker that stopped
// acknowledging (paused), Handover waits for the PUBACKs of what is in
// flight; everything it holds is on flash before it waits, so that a
// process killed meanwhile leaves it to the agent init starts again. (It
// wrote the spool only after the wait: a kill then lost the last flush.)
func TestHandoverToHungBrokerIsOnFlashFirst(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	u, sp := newUplink(t, m.URL, t.TempDir(), func(o *Options) { o.FlushInterval, o.PublishTimeout = time.Hour, 3*time.Second })
	run(t, u)
	testenv.WaitFor(t, 5*time.Second, func() bool { return u.Status().State == "connected" }, func() string { return u.Status().State })
	m.Pause()
	defer m.Resume()
	for range 3 {
		u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "s", New: "n", Message: "m"})
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return sp.Stats().InFlight == 3 },
		func() string { return fmt.Sprintf("spool %+v: the events are not in flight", sp.Stats()) })
	u.Batch(telemetry.Batch{Source: "statsd", Time: time.Now(), Points: []telemetry.Point{{Name: "app.requests", Value: 7}}})

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- u.Handover(ctx, time.Minute, "")
	}()
	testenv.WaitFor(t, 2*time.Second, func() bool { st := sp.Stats(); return st.Memory == 0 && st.Disk == 4 },
		func() string { return fmt.Sprintf("spool %+v while the hand-over waits: not all on flash", sp.Stats()) })
	select {
	case err := <-done:
		t.Fatalf("Handover returned (%v) before the in-flight publishes timed out: the test shows nothing", err)
	default:
	}
	m.Resume()
	if err := <-done; err != nil {
		t.Logf("handover: %v", err)
	}
}
