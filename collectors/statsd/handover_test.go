package statsd

import (
	"testing"
	"time"
)

// TestGaugesCrossAReload: the gauges one server remembered, restored into
// the next (as the next image of the agent does), keep +N/-N applying to
// the value the clients built up (Etsy: "a gauge ... will continue to be
// sent until it is changed"; a relative change needs the last value).
func TestGaugesCrossAReload(t *testing.T) {
	old, client, stop := serve(t, "udp", "127.0.0.1:0")
	client.Write([]byte("queue.depth:40|g\nqueue.depth:+2|g|#pool:a\nother:1|c"))
	waitDatagrams(t, old, 1)
	stop()
	gauges := old.Gauges()
	if len(gauges) != 2 {
		t.Fatalf("gauges %+v, want the two series of queue.depth", gauges)
	}

	next, client2, stop2 := serve(t, "udp", "127.0.0.1:0")
	next.RestoreGauges(gauges)
	client2.Write([]byte("queue.depth:+2|g\nqueue.depth:-1|g|#pool:a"))
	waitDatagrams(t, next, 1)
	got := flattened(t, stop2())
	if got[`queue.depth{metric_type="gauge"}`] != 42 || got[`queue.depth{metric_type="gauge",pool="a"}`] != 1 {
		t.Fatalf("after the reload: %v", got)
	}
}

func waitDatagrams(t *testing.T, s *Server, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Datagrams < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d datagrams read, want %d", s.Stats().Datagrams, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
