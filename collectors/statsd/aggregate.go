package statsd

import (
	"bytes"
	"hash/maphash"
	"math"
	"slices"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// gaugeTTL is how long a gauge nobody updates is remembered, so that a later
// +N/-N still applies to its last value.
const gaugeTTL = time.Hour

// series is the running aggregate of one metric name, type and tag set over
// the current flush interval.
type series struct {
	name    string
	kind    kind
	tags    map[string]string // the points' tags with the type tag; read-only, maybe shared
	touched bool              // updated since the last flush
	updated time.Time         // last update, for forgetting idle gauges

	value float64 // counter: the sum scaled by 1/rate; gauge: the current value

	// timers, histograms and distributions
	count, sum, min, max float64 // count and sum scaled by 1/rate
	samples              []float64
	seen                 int // samples offered to the reservoir this interval

	members map[uint64]struct{} // sets: hashes of the members seen
}

// aggregator folds samples into series. It is not safe for concurrent use;
// the server serialises access.
type aggregator struct {
	maxSeries  int
	maxSamples int // per timer per interval; beyond it a uniform reservoir
	series     map[string]*series
	tagScratch [][]byte // scratch for sorting tags
	last       lastKey
	seed       maphash.Seed
	rng        uint64 // xorshift state for reservoir sampling
	// typeOnly are the tags of an untagged series of each kind, shared by
	// all of them (points' tags are read-only).
	typeOnly [numKinds]map[string]string
}

// lastKey is the key and the series of the last metric looked up, for the
// next metric of the same line: a line's metrics share name and tags (packed
// values, Etsy's several types), so they neither sort tags nor look up a
// series twice.
type lastKey struct {
	key    []byte            // its first byte, the type, is set for each lookup
	series [numKinds]*series // by type; nil when not looked up
}

func newAggregator(maxSeries, maxSamples int) *aggregator {
	a := &aggregator{
		maxSeries:  maxSeries,
		maxSamples: maxSamples,
		series:     make(map[string]*series),
		seed:       maphash.MakeSeed(),
		rng:        0x9e3779b97f4a7c15,
	}
	for k := counter; k < numKinds; k++ {
		a.typeOnly[k] = map[string]string{typeTag: kindNames[k]}
	}
	return a
}

// add folds one sample in; it reports tooManySeries when the sample would
// start a series beyond the limit, badValue when it would take a sum beyond
// float64.
func (a *aggregator) add(s *sample, now time.Time) reason {
	ser, r := a.lookup(s)
	if r != ok {
		return r
	}
	// A sum that would leave float64 refuses the value (an infinite point
	// cannot go on the wire as JSON, and a later one of the other sign
	// would make it NaN).
	switch s.kind {
	case counter:
		v := ser.value + s.value/s.rate
		if math.IsInf(v, 0) {
			return badValue
		}
		ser.value = v
	case gauge:
		v := s.value
		if s.delta {
			v += ser.value
		}
		if math.IsInf(v, 0) {
			return badValue
		}
		ser.value = v
	case timer, histogram, distribution:
		count, sum := ser.count+1/s.rate, ser.sum+s.value/s.rate
		if math.IsInf(count, 0) || math.IsInf(sum, 0) {
			return badValue
		}
		ser.count, ser.sum = count, sum
		ser.min = min(ser.min, s.value)
		ser.max = max(ser.max, s.value)
		ser.seen++
		if len(ser.samples) < a.maxSamples {
			ser.samples = append(ser.samples, s.value)
		} else if j := a.random(ser.seen); j < a.maxSamples {
			ser.samples[j] = s.value // Algorithm R: every sample kept with equal chance
		}
	case set:
		ser.members[maphash.Bytes(a.seed, s.raw)] = struct{}{}
	}
	ser.touched, ser.updated = true, now
	return ok
}

// lookup returns the series of s, made when it is new.
func (a *aggregator) lookup(s *sample) (*series, reason) {
	l := &a.last
	if !s.sameLine {
		l.key = appendKeyBase(append(l.key[:0], 0), s, &a.tagScratch)
		l.series = [numKinds]*series{}
	} else if ser := l.series[s.kind]; ser != nil {
		return ser, ok
	}
	l.key[0] = byte(s.kind)
	ser := a.series[string(l.key)]
	if ser == nil {
		if len(a.series) >= a.maxSeries {
			return nil, tooManySeries
		}
		tags := a.typeOnly[s.kind]
		if s.tags != nil {
			tags = parseTags(s.tags, s.kind)
		}
		// After the type, the key has the name as the series reports it.
		ser = &series{name: string(l.key[1 : 1+len(s.name)]), kind: s.kind, tags: tags, min: math.Inf(1), max: math.Inf(-1)}
		if s.kind == set {
			ser.members = make(map[uint64]struct{})
		}
		a.series[string(l.key)] = ser
	}
	l.series[s.kind] = ser
	return ser, ok
}

// random returns a number in [0, n).
func (a *aggregator) random(n int) int {
	a.rng ^= a.rng << 13
	a.rng ^= a.rng >> 7
	a.rng ^= a.rng << 17
	return int(a.rng % uint64(n))
}

// flush appends the points of every series updated since the last flush and
// starts the next interval. Counters, timers and sets that were not updated
// are forgotten; gauges are kept for gaugeTTL.
func (a *aggregator) flush(points []telemetry.Point, now time.Time) []telemetry.Point {
	a.last.series = [numKinds]*series{} // some may go now (no line spans a flush anyway)
	for key, s := range a.series {
		if !s.touched {
			if s.kind != gauge || now.Sub(s.updated) > gaugeTTL {
				delete(a.series, key)
			}
			continue
		}
		s.touched = false
		switch s.kind {
		case counter:
			points = append(points, telemetry.Point{Name: s.name, Value: s.value, Tags: s.tags})
			s.value = 0
		case gauge:
			points = append(points, telemetry.Point{Name: s.name, Value: s.value, Tags: s.tags})
		case timer, histogram, distribution:
			points = s.appendSummary(points)
			s.count, s.sum, s.min, s.max, s.seen = 0, 0, math.Inf(1), math.Inf(-1), 0
			s.samples = s.samples[:0]
		case set:
			points = append(points, telemetry.Point{Name: s.name, Value: float64(len(s.members)), Tags: s.tags})
			clear(s.members)
		}
	}
	return points
}

// appendSummary appends count, sum, min, max, mean, median, p90, p95 and p99.
// Percentiles use the nearest-rank rule (the smallest sample with at least p%
// of the samples at or below it), so every reported value was really seen.
// The median of an even count is the mean of the two middle samples, as Etsy's
// server (lib/process_metrics.js) and Telegraf (running_stats.go) report it.
func (s *series) appendSummary(points []telemetry.Point) []telemetry.Point {
	slices.Sort(s.samples)
	stat := func(suffix string, v float64) {
		points = append(points, telemetry.Point{Name: s.name + suffix, Value: v, Tags: s.tags})
	}
	stat(".count", s.count)
	stat(".sum", s.sum)
	stat(".min", s.min)
	stat(".max", s.max)
	stat(".mean", s.sum/s.count)
	stat(".median", median(s.samples))
	stat(".p90", nearestRank(s.samples, 90))
	stat(".p95", nearestRank(s.samples, 95))
	stat(".p99", nearestRank(s.samples, 99))
	return points
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func nearestRank(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

// appendKeyBase appends the series key after its type's byte: the name as
// the series reports it (spaces become '_') and the tags sorted, so that the
// same tags in another order are the same series. Names and tags hold no 0
// byte, which separates them.
func appendKeyBase(key []byte, s *sample, scratch *[][]byte) []byte {
	start := len(key)
	key = append(key, s.name...)
	if s.space {
		for i := start; i < len(key); i++ {
			if key[i] == ' ' {
				key[i] = '_'
			}
		}
	}
	if s.tags == nil {
		return key
	}
	tags := (*scratch)[:0]
	for rest := s.tags; len(rest) > 0; {
		var tag []byte
		if tag, rest = nextTag(rest); len(tag) > 0 {
			tags = append(tags, tag)
		}
	}
	if len(tags) <= 12 { // a handful: insertion sort, inline
		for i := 1; i < len(tags); i++ {
			for j := i; j > 0 && bytes.Compare(tags[j-1], tags[j]) > 0; j-- {
				tags[j-1], tags[j] = tags[j], tags[j-1]
			}
		}
	} else {
		slices.SortFunc(tags, bytes.Compare)
	}
	for _, t := range tags {
		key = append(key, 0)
		key = append(key, t...)
	}
	*scratch = tags
	return key
}

// parseTags turns the tags of a line ("k:v,flag") into a map with the type
// tag; a tag without a value maps to "".
func parseTags(tags []byte, typ kind) map[string]string {
	m := map[string]string{typeTag: kindNames[typ]}
	for rest := tags; len(rest) > 0; {
		var tag []byte
		if tag, rest = nextTag(rest); len(tag) > 0 {
			k, v, _ := bytes.Cut(tag, []byte{':'})
			m[string(k)] = string(v)
		}
	}
	return m
}
