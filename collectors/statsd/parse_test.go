package statsd

import (
	"bytes"
	"math"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

func TestParseLine(t *testing.T) {
	for _, tc := range []struct {
		line  string
		want  sample
		tags  string
		fails reason
	}{
		{line: "req:1|c", want: sample{name: []byte("req"), value: 1, kind: counter, rate: 1}},
		{line: "req:2.5|c|@0.1", want: sample{name: []byte("req"), value: 2.5, kind: counter, rate: 0.1}},
		{line: "temp:-3|g", want: sample{name: []byte("temp"), value: -3, kind: gauge, delta: true, rate: 1}},
		{line: "temp:+3|g", want: sample{name: []byte("temp"), value: 3, kind: gauge, delta: true, rate: 1}},
		{line: "temp:7|g", want: sample{name: []byte("temp"), value: 7, kind: gauge, rate: 1}},
		{line: "lat:12.5|ms|#env:prod,canary", tags: "env:prod,canary",
			want: sample{name: []byte("lat"), value: 12.5, kind: timer, rate: 1}},
		{line: "size:3|h", want: sample{name: []byte("size"), value: 3, kind: histogram, rate: 1}},
		{line: "size:3|d|@0.5|#a:b", tags: "a:b", want: sample{name: []byte("size"), value: 3, kind: histogram, rate: 0.5}},
		{line: "users:alice|s", want: sample{name: []byte("users"), kind: set, rate: 1}},
		{line: "a.b-c_d:1|c|c:container|T1700000000", want: sample{name: []byte("a.b-c_d"), value: 1, kind: counter, rate: 1}},
		{line: "cpu:1e3|g", want: sample{name: []byte("cpu"), value: 1000, kind: gauge, rate: 1}},

		{line: "novalue", fails: noValue},
		{line: ":1|c", fails: badName},
		{line: "has space:1|c", fails: badName},
		{line: "x:1", fails: noType},
		{line: "x:1|q", fails: badType},
		{line: "x:1|", fails: badType},
		{line: "x:1|c||@0.5", fails: badType},
		{line: "x:abc|c", fails: badValue},
		{line: "x:|c", fails: badValue},
		{line: "x:NaN|g", fails: badValue},
		{line: "x:Inf|ms", fails: badValue},
		{line: "x:1|c|@0", fails: badRate},
		{line: "x:1|c|@1.5", fails: badRate},
		{line: "x:1|c|@x", fails: badRate},
		{line: "x:1|c|#", fails: badTags},
		{line: "x:1|c|#a,,b", fails: badTags},
		{line: "x:1|c|#:v", fails: badTags},
	} {
		t.Run(tc.line, func(t *testing.T) {
			var got sample
			r := parseLine([]byte(tc.line), &got)
			if r != tc.fails {
				t.Fatalf("reason = %v, want %v", r, tc.fails)
			}
			if r != ok {
				return
			}
			if string(got.name) != string(tc.want.name) || got.value != tc.want.value || got.kind != tc.want.kind ||
				got.delta != tc.want.delta || got.rate != tc.want.rate || string(got.tags) != tc.tags {
				t.Errorf("got %+v (tags %q), want %+v (tags %q)", got, got.tags, tc.want, tc.tags)
			}
			if got.kind == set && string(got.raw) != "alice" {
				t.Errorf("set member = %q", got.raw)
			}
		})
	}
}

func TestSummaryPercentiles(t *testing.T) {
	a := newAggregator(10, maxSamples)
	var s sample
	// 1..100 in a scrambled order: the summary must not depend on arrival.
	for i := range 100 {
		v := (i*37)%100 + 1
		if r := parseLine([]byte("lat:"+itoa(v)+"|ms"), &s); r != ok {
			t.Fatal(r)
		}
		a.add(&s, time.Now())
	}
	got := pointMap(a.flush(nil, time.Now()))
	want := map[string]float64{"lat.count": 100, "lat.sum": 5050, "lat.min": 1, "lat.max": 100,
		"lat.mean": 50.5, "lat.median": 50, "lat.p90": 90, "lat.p95": 95, "lat.p99": 99}
	diffPoints(t, got, want)
}

func TestGaugeDeltaAcrossFlushes(t *testing.T) {
	a := newAggregator(10, maxSamples)
	var s sample
	feed := func(line string) {
		if r := parseLine([]byte(line), &s); r != ok {
			t.Fatal(r)
		}
		a.add(&s, time.Now())
	}
	feed("g:10|g")
	feed("c:3|c")
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{"g": 10, "c": 3})
	// Nothing sent: an idle counter is neither reported nor kept, the gauge
	// is kept (unreported) so that a delta still applies to it.
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{})
	if len(a.series) != 1 {
		t.Errorf("%d series kept after an idle interval, want the gauge only", len(a.series))
	}
	feed("g:-4|g")
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{"g": 6})
	// An hour later the gauge is forgotten.
	a.flush(nil, time.Now().Add(2*gaugeTTL))
	if len(a.series) != 0 {
		t.Errorf("%d series kept past the gauge TTL", len(a.series))
	}
}

func TestSeriesLimit(t *testing.T) {
	a := newAggregator(2, maxSamples)
	var s sample
	for i, want := range []reason{ok, ok, tooManySeries} {
		parseLine([]byte("m"+itoa(i)+":1|c"), &s)
		if r := a.add(&s, time.Now()); r != want {
			t.Errorf("series %d: %v, want %v", i, r, want)
		}
	}
}

// TestParseAndAddAllocateNothing guards the steady state: once a series
// exists, a line of any type is parsed and aggregated without allocating.
func TestParseAndAddAllocateNothing(t *testing.T) {
	a := newAggregator(100, maxSamples)
	lines := [][]byte{
		[]byte("req:1|c|@0.5|#env:prod,zone:a"), []byte("temp:+1|g"), []byte("lat:12|ms|#zone:a,env:prod"),
		[]byte("size:3|h"), []byte("users:alice|s"),
	}
	var s sample
	run := func() {
		for _, l := range lines {
			parseLine(l, &s)
			a.add(&s, time.Time{})
		}
	}
	run() // create the series
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Errorf("%v allocations per %d lines, want 0", n, len(lines))
	}
}

func pointMap(points []telemetry.Point) map[string]float64 {
	m := map[string]float64{}
	for _, p := range points {
		m[p.Name] = p.Value
	}
	return m
}

func diffPoints(t *testing.T, got, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9 {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected point %s = %v", k, g)
		}
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{"req:1|c", "req:2|c|@0.1|#a:b,c", "t:-1|g", "l:1.5|ms", "s:x|s", "h:1|d|T123", "x:1|c||", "::|#"} {
		f.Add([]byte(s))
	}
	a := newAggregator(1000, 16)
	f.Fuzz(func(t *testing.T, line []byte) {
		var s sample
		r := parseLine(line, &s)
		if r >= numReasons {
			t.Fatalf("reason %d out of range", r)
		}
		if r != ok {
			return
		}
		if len(s.name) == 0 || len(s.name) > maxNameLen {
			t.Fatalf("accepted name %q", s.name)
		}
		if !(s.rate > 0 && s.rate <= 1) || math.IsNaN(s.value) || math.IsInf(s.value, 0) {
			t.Fatalf("accepted %+v", s)
		}
		if s.kind < counter || s.kind > set {
			t.Fatalf("kind %d", s.kind)
		}
		a.add(&s, time.Now())
		for _, p := range a.flush(nil, time.Now()) {
			if math.IsNaN(p.Value) {
				t.Fatalf("point %s is NaN from %q", p.Name, line)
			}
		}
	})
}

// FuzzDatagram feeds whole datagrams, truncated or not, through the server's
// line splitting, parsing and aggregation: every line is either accepted or
// refused with a counted reason, and nothing panics.
func FuzzDatagram(f *testing.F) {
	f.Add([]byte("a:1|c\nb:2|g\r\nc:3|ms|@0.5|#x:y\n\n"), false)
	f.Add([]byte("a:1|c\nb:2|"), true)
	s := &Server{agg: newAggregator(100, 16)}
	f.Fuzz(func(t *testing.T, d []byte, trunc bool) {
		counted := func() uint64 {
			n := s.metrics.Load()
			for r := range s.rejected {
				n += s.rejected[r].Load()
			}
			return n
		}
		before := counted()
		s.datagram(d, trunc, time.Now())
		handled := counted() - before
		lines := uint64(0)
		for _, l := range bytes.Split(d, []byte{'\n'}) {
			if len(bytes.TrimSuffix(l, []byte{'\r'})) > 0 {
				lines++
			}
		}
		// Every non-empty line is accepted or refused once; a truncated
		// datagram counts itself once and drops its cut line.
		if handled > lines+1 || (!trunc && handled != lines) {
			t.Fatalf("%d lines counted for %d in %q (truncated %v)", handled, lines, d, trunc)
		}
		s.agg.flush(nil, time.Now())
	})
}
