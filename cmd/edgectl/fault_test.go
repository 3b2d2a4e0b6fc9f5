package main

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// receiver is the controller side of a fault test: a persistent MQTT session
// that records every (node, seq) it receives.
type receiver struct {
	mu   sync.Mutex
	seqs map[uint64]int
	hb   map[uint64]telemetry.Heartbeat
	bad  int
}

func receive(t *testing.T, broker string) *receiver {
	t.Helper()
	r := &receiver{seqs: map[uint64]int{}, hb: map[uint64]telemetry.Heartbeat{}}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("receiver-%d", rand.Int())).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond)
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		c.Subscribe("edge/+/+", 1, func(_ mqtt.Client, m mqtt.Message) {
			env, err := telemetry.Decode(m.Payload())
			r.mu.Lock()
			defer r.mu.Unlock()
			if err != nil {
				r.bad++
				return
			}
			if env.Kind == telemetry.KindState {
				return
			}
			r.seqs[env.Seq]++
			if env.Kind == telemetry.KindHeartbeat {
				var hb telemetry.Heartbeat
				if env.DecodeBody(&hb) == nil {
					r.hb[env.Seq] = hb
				}
			}
		})
	})
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("receiver: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return r
}

func (r *receiver) has(seq uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seqs[seq] > 0
}

var loggedHeartbeat = regexp.MustCompile(`time=(\S+) level=DEBUG msg=heartbeat component=telemetry seq=(\d+)`)

// TestKilledRepeatedlyDuringOutage kills the agent with SIGKILL 20 times at
// random moments while the broker is down, restarting it each time on the
// same state directory. Every heartbeat that was queued at least one fsync
// interval before its kill must reach the controller once the broker is
// back, and the spool must open every time.
func TestKilledRepeatedlyDuringOutage(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	rcv := receive(t, m.URL)
	m.Stop() // the outage starts before the agent does

	args := agentArgs(t, t.TempDir(), m.URL, "victim", `heartbeat:
  interval: 1s
uplink:
  connect_timeout: 200ms
  keepalive: 2s
  flush_interval: 200ms
spool:
  fsync_interval: 20ms
collect:
  host: 1s
  smart: 0s
`, "--log-level", "debug")
	var durable []uint64 // heartbeats queued well before a kill
	for i := 0; i < 20; i++ {
		agent, log := start(t, agentBin, args...)
		time.Sleep(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
		killedAt := time.Now()
		agent.Process.Signal(syscall.SIGKILL)
		agent.Wait()
		for _, mm := range loggedHeartbeat.FindAllStringSubmatch(log.String(), -1) {
			at, err := time.Parse(time.RFC3339Nano, mm[1])
			seq, _ := strconv.ParseUint(mm[2], 10, 64)
			if err == nil && killedAt.Sub(at) > 100*time.Millisecond { // 5 fsync intervals of margin
				durable = append(durable, seq)
			}
		}
		if regexp.MustCompile(`level=ERROR.*spool|edgeagent run: `).MatchString(log.String()) {
			t.Fatalf("run %d: spool trouble:\n%s", i, log.String())
		}
	}
	if len(durable) < 20 {
		t.Fatalf("only %d heartbeats logged across 20 runs", len(durable))
	}
	m.Start()
	agent, _ := start(t, agentBin, args...)
	testenv.WaitFor(t, 60*time.Second, func() bool {
		for _, seq := range durable {
			if !rcv.has(seq) {
				return false
			}
		}
		return true
	}, func() string {
		missing := []uint64{}
		for _, seq := range durable {
			if !rcv.has(seq) {
				missing = append(missing, seq)
			}
		}
		rcv.mu.Lock()
		got := slices.Sorted(maps.Keys(rcv.seqs))
		rcv.mu.Unlock()
		return fmt.Sprintf("heartbeats never delivered: %v\nreceived: %v", missing, got)
	})
	agent.Process.Signal(syscall.SIGTERM)
	agent.Wait()
	t.Logf("%d heartbeats queued before 20 SIGKILLs during the outage, all delivered afterwards", len(durable))
}
