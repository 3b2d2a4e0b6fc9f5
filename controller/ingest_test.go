package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestSharedIngest runs two controllers on one mosquitto with a shared
// subscription: every message is ingested by exactly one of them.
func TestSharedIngest(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var fleets []*Fleet
	for i := range 2 {
		f := NewFleet(Options{})
		fleets = append(fleets, f)
		wg.Go(func() {
			NewIngest(IngestOptions{Broker: m.URL, ClientID: fmt.Sprintf("edgectl-%d", i), Share: "edgectl",
				TopicPrefix: "edge", Fleet: f, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}).Run(ctx)
		})
	}
	time.Sleep(500 * time.Millisecond) // both subscribed

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL).SetClientID("node-x"))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	var e telemetry.Encoder
	const n = 200
	for seq := uint64(1); seq <= n; seq++ {
		hb := telemetry.Heartbeat{Node: "node-x", Seq: seq, Time: time.Now(), Health: telemetry.Healthy}
		data, _ := e.Encode(telemetry.Header{Node: "node-x", Seq: seq, Time: hb.Time, Kind: telemetry.KindHeartbeat}, hb)
		pub.Publish("edge/node-x/heartbeat", 1, false, append([]byte(nil), data...)).WaitTimeout(5 * time.Second)
	}
	count := func() (a, b uint64) {
		for i, f := range fleets {
			for _, nd := range f.Nodes() {
				if i == 0 {
					a += nd.Messages + nd.Duplicates
				} else {
					b += nd.Messages + nd.Duplicates
				}
			}
		}
		return a, b
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { a, b := count(); return a+b >= n }, func() string {
		a, b := count()
		return fmt.Sprintf("ingested %d + %d of %d", a, b, n)
	})
	time.Sleep(200 * time.Millisecond)
	a, b := count()
	if a+b != n || a == 0 || b == 0 {
		t.Errorf("controllers ingested %d and %d of %d; want all, split between both", a, b, n)
	}
	t.Logf("shared subscription split %d messages %d/%d", n, a, b)
}
