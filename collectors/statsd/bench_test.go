package statsd

import (
	"strconv"
	"testing"
	"time"
)

// BenchmarkParseAndAggregate is the per-metric cost of the parser thread in
// the steady state: one line of each type, existing series. Reported as
// ns/metric and allocs/op (per metric).
func BenchmarkParseAndAggregate(b *testing.B) {
	lines := [][]byte{
		[]byte("storage.requests:1|c|@0.5|#env:prod,zone:a"), []byte("storage.queue:+1|g"),
		[]byte("storage.latency:12.5|ms|#zone:a,env:prod"), []byte("storage.object_size:3072|h"),
		[]byte("storage.clients:10.0.0.7|s"),
	}
	s := &Server{agg: newAggregator(1000, maxSamples)}
	var d []byte
	for _, l := range lines {
		d = append(append(d, l...), '\n')
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		s.datagram(d, false, now)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/metric")
	b.ReportMetric(float64(len(lines))*float64(b.N)/b.Elapsed().Seconds(), "metrics/s")
}

// BenchmarkFlush is the cost of one flush of 1000 counter series and 100
// timers with 100 samples each.
func BenchmarkFlush(b *testing.B) {
	a := newAggregator(10000, maxSamples)
	var s sample
	fill := func() {
		for i := range 1000 {
			parseLine([]byte("c"+strconv.Itoa(i)+":1|c"), &s)
			a.add(&s, time.Now())
		}
		for i := range 100 {
			for v := range 100 {
				parseLine([]byte("t"+strconv.Itoa(i)+":"+strconv.Itoa(v)+"|ms"), &s)
				a.add(&s, time.Now())
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
