package statsd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// serve runs a server listening on network and address, with a flush
// interval that outlasts the test, so that everything sent lands in the final
// flush, made when stop ends Run. client is connected to it.
func serve(t *testing.T, network, address string) (s *Server, client net.Conn, stop func() []telemetry.Batch) {
	t.Helper()
	conn, err := net.ListenPacket(network, address)
	if err != nil {
		t.Fatal(err)
	}
	client, err = net.Dial(network, conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	var mu sync.Mutex
	var out []telemetry.Batch
	s = New(conn, Options{
		FlushInterval: time.Hour,
		ReadBuffer:    1 << 20,
		Emit:          func(b telemetry.Batch) { mu.Lock(); out = append(out, b); mu.Unlock() },
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return s, client, func() []telemetry.Batch {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		return out
	}
}

// traffic has every metric type, sample rates, gauge deltas, tags in either
// order, several metrics per datagram, and bad lines of every kind.
var traffic = []string{
	"req:1|c\nreq:1|c\nreq:1|c",
	"req:2|c|@0.5",             // counts as 4
	"req:1|c|#env:prod,zone:a", // a series of its own…
	"req:1|c|#zone:a,env:prod", // …the same one, tags reordered
	"temp:10|g\ntemp:+5|g",
	"temp:-3|g",
	"size:3|h|@0.5\nsize:5|h|@0.5",
	"dist:7|d",
	"users:alice|s\nusers:bob|s\r\nusers:alice|s",
	"bad\nx:1|q\nx:abc|c\nx:1|c|@2\n:1|c\nx:1|c|#\nx:1\n\n",
}

func expected() map[string]float64 {
	want := map[string]float64{
		"req": 7, "req{env=prod,zone=a}": 2, "temp": 12, "users": 2,
		"size.count": 4, "size.sum": 16, "size.min": 3, "size.max": 5, "size.mean": 4,
		"size.median": 3, "size.p90": 5, "size.p95": 5, "size.p99": 5,
		"dist.count": 1, "dist.sum": 7, "dist.min": 7, "dist.max": 7, "dist.mean": 7,
		"dist.median": 7, "dist.p90": 7, "dist.p95": 7, "dist.p99": 7,
		"lat.count": 100, "lat.sum": 5050, "lat.min": 1, "lat.max": 100, "lat.mean": 50.5,
		"lat.median": 50, "lat.p90": 90, "lat.p95": 95, "lat.p99": 99,
	}
	return want
}

// latency sends the timer values 1..100, ten per datagram, highest first.
func latency() []string {
	var out []string
	for d := 0; d < 10; d++ {
		var b strings.Builder
		for i := 0; i < 10; i++ {
			b.WriteString("lat:" + itoa(100-d*10-i) + "|ms\n")
		}
		out = append(out, b.String())
	}
	return out
}

const sentLines = 3 + 1 + 1 + 1 + 2 + 1 + 2 + 1 + 3 + 100 // good lines in traffic and latency

func flattened(batches []telemetry.Batch) map[string]float64 {
	got := map[string]float64{}
	for _, b := range batches {
		if b.Source != "statsd" {
			continue
		}
		for _, p := range b.Points {
			name := p.Name
			if len(p.Tags) > 0 {
				var tags []string
				for _, k := range []string{"env", "zone"} {
					if v, ok := p.Tags[k]; ok {
						tags = append(tags, k+"="+v)
					}
				}
				name += "{" + strings.Join(tags, ",") + "}"
			}
			got[name] = p.Value
		}
	}
	return got
}

func sendAll(t *testing.T, c net.Conn) {
	t.Helper()
	for _, d := range append(append([]string{}, traffic...), latency()...) {
		if _, err := c.Write([]byte(d)); err != nil {
			t.Fatal(err)
		}
	}
}

func checkServer(t *testing.T, s *Server, stop func() []telemetry.Batch) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, func() bool { return s.Stats().Metrics >= sentLines },
		func() string { return "metrics accepted: " + itoa(int(s.Stats().Metrics)) })
	// Give stragglers a moment to show up as extra (they must not).
	time.Sleep(50 * time.Millisecond)
	st := s.Stats()
	diffPoints(t, flattened(stop()), expected())
	if st.Metrics != sentLines {
		t.Errorf("accepted %d lines, want %d", st.Metrics, sentLines)
	}
	wantRejected := map[string]uint64{"no_value": 1, "bad_type": 1, "bad_value": 1, "bad_sample_rate": 1,
		"bad_name": 1, "bad_tags": 1, "no_type": 1}
	for reason, n := range st.Rejected {
		if n != wantRejected[reason] {
			t.Errorf("rejected[%s] = %d, want %d", reason, n, wantRejected[reason])
		}
	}
	if st.Datagrams != uint64(len(traffic)+10) {
		t.Errorf("datagrams = %d, want %d", st.Datagrams, len(traffic)+10)
	}
}

// TestUDPAggregatesExactly sends real datagrams over loopback and checks
// every flushed aggregate, percentiles included, and every rejection count.
func TestUDPAggregatesExactly(t *testing.T) {
	s, c, stop := serve(t, "udp", "127.0.0.1:0")
	sendAll(t, c)
	checkServer(t, s, stop)
	if s.Stats().ReadBuffer < 1<<20 && testenv.InCI() {
		t.Errorf("receive buffer %d, want at least the 1 MiB asked for (as root)", s.Stats().ReadBuffer)
	}
}

func TestUnixDatagramAggregatesExactly(t *testing.T) {
	s, c, stop := serve(t, "unixgram", filepath.Join(t.TempDir(), "statsd.sock"))
	sendAll(t, c)
	checkServer(t, s, stop)
}

// TestTruncatedDatagramKeepsCompleteLines sends a datagram longer than the
// read buffer: the complete lines count, the cut one is refused as truncated.
func TestTruncatedDatagramKeepsCompleteLines(t *testing.T) {
	s, c, stop := serve(t, "udp", "127.0.0.1:0")
	line := "big:1|c\n"
	d := strings.Repeat(line, maxDatagram/len(line)+10)
	if _, err := c.Write([]byte(d)); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return s.Stats().Datagrams == 1 }, func() string { return "no datagram" })
	got := flattened(stop())
	if want := float64(maxDatagram / len(line)); got["big"] != want {
		t.Errorf("big = %v, want %v complete lines", got["big"], want)
	}
	if n := s.Stats().Rejected["truncated"]; n != 1 {
		t.Errorf("truncated = %d, want 1", n)
	}
}
