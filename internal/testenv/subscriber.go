package testenv

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// Received is what a test's controller side got from the nodes.
type Received struct {
	Seqs       map[uint64]int // sequence number → times received
	Kinds      map[telemetry.Kind]int
	Heartbeats map[uint64]telemetry.Heartbeat // by sequence number
	States     []string                       // presence messages, in order
	Bad        int                            // messages that did not decode
}

// Has reports whether seq arrived.
func (r Received) Has(seq uint64) bool { return r.Seqs[seq] > 0 }

// Sorted lists the sequence numbers that arrived.
func (r Received) Sorted() []uint64 { return slices.Sorted(maps.Keys(r.Seqs)) }

// Subscriber is a controller side for tests: a persistent MQTT session on
// edge/#, so the broker keeps its messages across a restart, that records
// every message by sequence number.
type Subscriber struct {
	mu  sync.Mutex
	got Received
}

// Subscribe connects a Subscriber to broker until the test ends.
func Subscribe(t testing.TB, broker string) *Subscriber {
	t.Helper()
	s := &Subscriber{got: Received{Seqs: map[uint64]int{}, Kinds: map[telemetry.Kind]int{},
		Heartbeats: map[uint64]telemetry.Heartbeat{}}}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("test-controller-%d", rand.Int())).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond)
	subscribed := make(chan error, 1)
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		tok := c.Subscribe("edge/#", 1, s.record)
		go func() {
			tok.WaitTimeout(5 * time.Second)
			select {
			case subscribed <- tok.Error():
			default: // a reconnect's subscription; nobody waits for it
			}
		}()
	})
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("test controller connect: %v", tok.Error())
	}
	// The broker must hold the subscription before the test stops it, or the
	// session it saves has none and the backlog finds no one.
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("test controller subscribe: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("test controller: no SUBACK within 10s")
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return s
}

func (s *Subscriber) record(_ mqtt.Client, m mqtt.Message) {
	env, err := telemetry.Decode(m.Payload())
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.got.Bad++
		return
	}
	if env.Kind == telemetry.KindState {
		var st telemetry.State
		env.DecodeBody(&st)
		s.got.States = append(s.got.States, st.State)
		return
	}
	s.got.Seqs[env.Seq]++
	s.got.Kinds[env.Kind]++
	if env.Kind == telemetry.KindHeartbeat {
		var hb telemetry.Heartbeat
		if env.DecodeBody(&hb) == nil {
			s.got.Heartbeats[env.Seq] = hb
		}
	}
}

// Received returns a copy of what arrived so far.
func (s *Subscriber) Received() Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Received{Seqs: maps.Clone(s.got.Seqs), Kinds: maps.Clone(s.got.Kinds), Heartbeats: maps.Clone(s.got.Heartbeats),
		States: slices.Clone(s.got.States), Bad: s.got.Bad}
}
