package main

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

var loggedHeartbeat = regexp.MustCompile(`time=(\S+) level=DEBUG msg=heartbeat component=telemetry seq=(\d+)`)

// TestKilledRepeatedlyDuringOutage kills the agent with SIGKILL 20 times at
// random moments while the broker is down, restarting it each time on the
// same state directory. Every heartbeat that was queued at least one fsync
// interval before its kill must reach the controller once the broker is
// back, and the spool must open every time.
func TestKilledRepeatedlyDuringOutage(t *testing.T) {
	m := testenv.StartMosquitto(t, "")
	rcv := testenv.Subscribe(t, m.URL)
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
	missing := func() []uint64 {
		got := rcv.Received()
		return slices.DeleteFunc(slices.Clone(durable), got.Has)
	}
	testenv.WaitFor(t, 60*time.Second, func() bool { return len(missing()) == 0 }, func() string {
		return fmt.Sprintf("heartbeats never delivered: %v\nreceived: %v", missing(), rcv.Received().Sorted())
	})
	agent.Process.Signal(syscall.SIGTERM)
	agent.Wait()
	t.Logf("%d heartbeats queued before 20 SIGKILLs during the outage, all delivered afterwards", len(durable))
}
