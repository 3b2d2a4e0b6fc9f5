package statsd

import (
	"strconv"
	"testing"
	"time"
)

// benchDatagram measures the parser thread's cost per metric in the steady
// state (existing series): one datagram of lines, each metric parsed and
// aggregated. Reported as ns/metric, and allocs/op per datagram.
func benchDatagram(b *testing.B, metrics int, lines ...string) {
	s := &Server{agg: newAggregator(1000, maxSamples)}
	var d []byte
	for _, l := range lines {
		d = append(append(d, l...), '\n')
	}
	now := time.Now()
	s.datagram(d, false, now)
	if got := s.metrics.Load(); got != uint64(metrics) {
		b.Fatalf("%d metrics accepted, want %d", got, metrics)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.datagram(d, false, now)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*metrics), "ns/metric")
	b.ReportMetric(float64(metrics)*float64(b.N)/b.Elapsed().Seconds(), "metrics/s")
}

// BenchmarkParseAndAggregate: one line of each type, with sample rate and
// tags in either order.
func BenchmarkParseAndAggregate(b *testing.B) {
	benchDatagram(b, 5,
		"storage.requests:1|c|@0.5|#env:prod,zone:a", "storage.queue:+1|g",
		"storage.latency:12.5|ms|#zone:a,env:prod", "storage.object_size:3072|h",
		"storage.clients:10.0.0.7|s")
}

// BenchmarkParseTagForms: tags as client libraries write them: a '#' before
// every tag, empty items, a second tag section, DogStatsD's container id and
// timestamp, non-ASCII values.
func BenchmarkParseTagForms(b *testing.B) {
	benchDatagram(b, 5,
		"storage.requests:1|c|#env:prod,#zone:a", "storage.requests:1|c|#env:prod,,#zone:a,",
		"storage.latency:12.5|ms|#zone:a|c:83c0a99c0a54|#env:prod", "storage.object_size:3072|d|#env:prod|T1700000000",
		"storage.température:21.5|g|#site:Zürich")
}

// BenchmarkParsePacked: DogStatsD's packed values (ten per line) and Etsy's
// several value|type sections after one name.
func BenchmarkParsePacked(b *testing.B) {
	benchDatagram(b, 24,
		"storage.latency:12.5:3:7:0.5:120:3000:10:2:9:1|ms|#zone:a,env:prod",
		"storage.object_size:3072:1024:4096:512:64:128:256:2048:8192:16|h",
		"storage.requests:1|c:12.5|ms:3|g|@0.5:1|c")
}

// BenchmarkFlush is the cost of one flush of 1000 counter series and 100
// timers with 100 samples each.
func BenchmarkFlush(b *testing.B) {
	a := newAggregator(10000, maxSamples)
	var s sample
	var p lineParser
	add := func(line string) {
		p.reset([]byte(line))
		p.next(&s)
		a.add(&s, time.Now())
	}
	fill := func() {
		for i := range 1000 {
			add("c" + strconv.Itoa(i) + ":1|c")
		}
		for i := range 100 {
			for v := range 100 {
				add("t" + strconv.Itoa(i) + ":" + strconv.Itoa(v) + "|ms")
			}
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		fill()
		b.StartTimer()
		a.flush(nil, time.Now())
	}
}
