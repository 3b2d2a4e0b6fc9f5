package statsd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
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
// order and as clients write them, several values on a line, several metrics
// per datagram, and bad lines of every kind.
var traffic = []string{
	"req:1|c\nreq:1|c\nreq:1|c",
	"req:2|c|@0.5",                // counts as 4
	"req:1|c|#env:prod,zone:a",    // a series of its own…
	"req:1|c|#zone:a,env:prod",    // …the same one, tags reordered
	"req:1|c|#env:prod,#zone:a,,", // …and again: a '#' before a tag and empty tags are dropped
	"temp:10|g\ntemp:+5|g",
	"temp:-3|g",
	"size:3|h|@0.5\nsize:5|h|@0.5",
	"dist:7|d",
	"users:alice|s\nusers:bob|s\r\nusers:alice|s",
	"both:1|c\nboth:7|g",               // one name, two types: two series told apart by the type tag
	"multi:200|ms:300|ms:5|c|@0.1:6|g", // statsd_exporter bridge_test.go: combined multiline metrics
	"packed:1:2:3|ms|#env:prod",        // DogStatsD protocol v1.1
	"x:1|c|#",                          // an empty tag section
	"bad\nx:1|q\nx:abc|c\nx:1|c|@2\n:1|c\nx:1|c|#:v\nx:1\nbad\xc3\x28name:1|c\nx:1|c|#metric_type:gauge\nx:1|c|\n\n",
}

const sentMetrics = 26 + 100 // good metrics in traffic and latency

var wantRejected = map[string]uint64{"no_value": 1, "bad_type": 1, "bad_value": 1, "bad_sample_rate": 1,
	"bad_name": 1, "bad_tags": 1, "no_type": 1, "invalid_utf8": 1, "reserved_tag": 1, "empty_section": 1}

// summary adds the points of one timer, histogram or distribution to want.
func summary(want map[string]float64, name, tags string, count, sum, lo, hi, mean, median, p90, p95, p99 float64) {
	for i, stat := range []string{"count", "sum", "min", "max", "mean", "median", "p90", "p95", "p99"} {
		want[name+"."+stat+"{"+tags+"}"] = []float64{count, sum, lo, hi, mean, median, p90, p95, p99}[i]
	}
}

func expected() map[string]float64 {
	want := map[string]float64{
		`req{metric_type="counter"}`: 7, `req{env="prod",metric_type="counter",zone="a"}`: 3,
		`temp{metric_type="gauge"}`: 12, `users{metric_type="set"}`: 2,
		`both{metric_type="counter"}`: 1, `both{metric_type="gauge"}`: 7,
		`multi{metric_type="counter"}`: 50, `multi{metric_type="gauge"}`: 6,
		`x{metric_type="counter"}`: 1,
	}
	summary(want, "size", `metric_type="histogram"`, 4, 16, 3, 5, 4, 4, 5, 5, 5)
	summary(want, "dist", `metric_type="distribution"`, 1, 7, 7, 7, 7, 7, 7, 7, 7)
	summary(want, "multi", `metric_type="timing"`, 2, 500, 200, 300, 250, 250, 300, 300, 300)
	summary(want, "packed", `env="prod",metric_type="timing"`, 3, 6, 1, 3, 2, 2, 3, 3, 3)
	summary(want, "lat", `metric_type="timing"`, 100, 5050, 1, 100, 50.5, 50.5, 90, 95, 99)
	return want
}

// latency sends the timer values 1..100, ten per datagram, highest first.
func latency() []string {
	var out []string
	for d := 0; d < 10; d++ {
		var b strings.Builder
		for i := 0; i < 10; i++ {
			fmt.Fprintf(&b, "lat:%d|ms\n", 100-d*10-i)
		}
		out = append(out, b.String())
	}
	return out
}

// flattened is the points of the StatsD batches by name and tags.
func flattened(t *testing.T, batches []telemetry.Batch) map[string]float64 {
	t.Helper()
	var points []telemetry.Point
	for _, b := range batches {
		if b.Source == "statsd" {
			points = append(points, b.Points...)
		}
	}
	return identities(t, points)
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
	testenv.WaitFor(t, 10*time.Second, func() bool { return s.Stats().Metrics >= sentMetrics },
		func() string { return fmt.Sprintf("metrics accepted: %d", s.Stats().Metrics) })
	// Give stragglers a moment to show up as extra (they must not).
	time.Sleep(50 * time.Millisecond)
	st := s.Stats()
	diffPoints(t, flattened(t, stop()), expected())
	if st.Metrics != sentMetrics {
		t.Errorf("accepted %d metrics, want %d", st.Metrics, sentMetrics)
	}
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

// TestLargeUDPDatagram: a 60 KB datagram, as loopback clients with a large
// buffer send (Telegraf and statsd_exporter read 64 KiB), arrives whole.
// Then short ones still do, read in batches again.
func TestLargeUDPDatagram(t *testing.T) {
	s, c, stop := serve(t, "udp", "127.0.0.1:0")
	const lines = 7500
	if _, err := c.Write([]byte(strings.Repeat("big:1|c\n", lines))); err != nil { // 60,000 bytes
		t.Fatal(err)
	}
	for range 100 {
		if _, err := c.Write([]byte("small:1|c")); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return s.Stats().Datagrams == 101 },
		func() string { return fmt.Sprintf("%d datagrams", s.Stats().Datagrams) })
	got := flattened(t, stop())
	if got[`big{metric_type="counter"}`] != lines || got[`small{metric_type="counter"}`] != 100 {
		t.Errorf("big = %v, small = %v; want %d and 100", got[`big{metric_type="counter"}`], got[`small{metric_type="counter"}`], lines)
	}
	if n := s.Stats().Rejected["truncated"]; n != 0 {
		t.Errorf("truncated = %d, want 0", n)
	}
}

// TestTruncatedDatagramKeepsCompleteLines sends a unix datagram longer than
// the read buffer (no UDP datagram is): the complete lines count, the cut
// one is refused as truncated.
func TestTruncatedDatagramKeepsCompleteLines(t *testing.T) {
	s, c, stop := serve(t, "unixgram", filepath.Join(t.TempDir(), "statsd.sock"))
	line := "bg:1|c\n" // 7 bytes: the buffer ends inside a line
	d := strings.Repeat(line, maxDatagram/len(line)+100)
	if _, err := c.Write([]byte(d)); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return s.Stats().Datagrams == 1 }, func() string { return "no datagram" })
	got := flattened(t, stop())
	if want := float64(maxDatagram / len(line)); got[`bg{metric_type="counter"}`] != want {
		t.Errorf("bg = %v, want %v complete lines", got[`bg{metric_type="counter"}`], want)
	}
	if n := s.Stats().Rejected["truncated"]; n != 1 {
		t.Errorf("truncated = %d, want 1", n)
	}
}

// TestDatagramsAsReferences: whole packets from the references, valid and
// invalid lines mixed; what is valid counts, what is not is refused by
// reason, and no line spoils another.
func TestDatagramsAsReferences(t *testing.T) {
	for _, tc := range []struct {
		ref, packet string
		want        map[string]float64
		rejected    map[string]uint64
	}{
		{"etsy metric_types.md: Multi-Metric Packets", "gorets:1|c\nglork:320|ms\ngaugor:333|g\nuniques:765|s",
			map[string]float64{`gorets{metric_type="counter"}`: 1, `glork.count{metric_type="timing"}`: 1,
				`gaugor{metric_type="gauge"}`: 333, `uniques{metric_type="set"}`: 1}, nil},
		{"statsd_exporter bridge_test.go: some invalid utf8", "valid_utf8:1|c\ninvalid\xc3\x28utf8:1|c",
			map[string]float64{`valid_utf8{metric_type="counter"}`: 1}, map[string]uint64{"invalid_utf8": 1}},
		{"statsd_exporter bridge_test.go: multiple metrics with invalid datadog utf8 tag values",
			"foo:200|c|#tag:value\nfoo:300|c|#tag:\xc3\x28invalid",
			map[string]float64{`foo{metric_type="counter",tag="value"}`: 200}, map[string]uint64{"invalid_utf8": 1}},
		{"statsd_exporter bridge_test.go: combined multiline metrics", "foo:200|ms:300|ms:5|c|@0.1:6|g\nbar:1|c:5|ms",
			map[string]float64{`foo.count{metric_type="timing"}`: 2, `foo.sum{metric_type="timing"}`: 500,
				`foo{metric_type="counter"}`: 50, `foo{metric_type="gauge"}`: 6,
				`bar{metric_type="counter"}`: 1, `bar.count{metric_type="timing"}`: 1}, nil},
		{"mixed: a bad line between good ones", "a:1|c\nb:x|c\nc:2|g\n\nd\ne:1:2|ms|#k:v",
			map[string]float64{`a{metric_type="counter"}`: 1, `c{metric_type="gauge"}`: 2, `e.count{k="v",metric_type="timing"}`: 2},
			map[string]uint64{"bad_value": 1, "no_value": 1}},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			s := &Server{agg: newAggregator(100, maxSamples)}
			s.datagram([]byte(tc.packet), false, time.Now())
			got := identities(t, s.agg.flush(nil, time.Now()))
			for id, w := range tc.want {
				if got[id] != w {
					t.Errorf("%s = %v, want %v", id, got[id], w)
				}
			}
			for reason, n := range s.Stats().Rejected {
				if n != tc.rejected[reason] {
					t.Errorf("rejected[%s] = %d, want %d", reason, n, tc.rejected[reason])
				}
			}
		})
	}
}

// TestFlushDecodesAtTheController: lines with invalid UTF-8 are refused, so
// the flush the encoder writes needs nothing escaped, the controller's strict
// decoder takes it, and names and tags beyond ASCII arrive as sent.
func TestFlushDecodesAtTheController(t *testing.T) {
	var batches []telemetry.Batch
	s := &Server{agg: newAggregator(100, maxSamples), opts: Options{Emit: func(b telemetry.Batch) { batches = append(batches, b) }}}
	s.datagram([]byte("température.°C:21|g|#site:Zürich\nbad\xff:1|c\nx:1|c|#k:\xc3\x28\n名前:1|c|#env:prod"), false, time.Now())
	s.flush()
	var enc telemetry.Encoder
	msg := enc.EncodeBatches(telemetry.Header{Node: "n1", Seq: 1, Time: time.Now()}, batches)
	if n := enc.Escaped(); n != 0 {
		t.Errorf("the encoder escaped %d strings", n)
	}
	env, err := telemetry.Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := env.DecodeBatches()
	if err != nil {
		t.Fatal(err)
	}
	got := flattened(t, decoded)
	want := map[string]float64{`température.°C{metric_type="gauge",site="Zürich"}`: 21, `名前{env="prod",metric_type="counter"}`: 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded %v, want %v", got, want)
	}
	if n := s.Stats().Rejected["invalid_utf8"]; n != 2 {
		t.Errorf("invalid_utf8 = %d, want 2", n)
	}
}
