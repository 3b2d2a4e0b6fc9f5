package statsd

import (
	"bytes"
	"hash/maphash"
	"math"
	"slices"
	"strings"
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
	tags    map[string]string
	touched bool      // updated since the last flush
	updated time.Time // last update, for forgetting idle gauges

	value float64 // counter: the sum scaled by 1/rate; gauge: the current value

	// timers and histograms
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
	key        []byte   // scratch for the series key
	tagScratch [][]byte // scratch for sorting tags
	seed       maphash.Seed
	rng        uint64 // xorshift state for reservoir sampling
}

func newAggregator(maxSeries, maxSamples int) *aggregator {
	return &aggregator{
		maxSeries:  maxSeries,
		maxSamples: maxSamples,
		series:     make(map[string]*series),
		seed:       maphash.MakeSeed(),
		rng:        0x9e3779b97f4a7c15,
	}
}

// add folds one sample in; it reports tooManySeries when the sample would
// start a series beyond the limit.
func (a *aggregator) add(s *sample, now time.Time) reason {
	a.key = appendKey(a.key[:0], s, &a.tagScratch)
	ser := a.series[string(a.key)]
	if ser == nil {
		if len(a.series) >= a.maxSeries {
			return tooManySeries
		}
		ser = &series{name: string(s.name), kind: s.kind, tags: parseTags(s.tags), min: math.Inf(1), max: math.Inf(-1)}
		if s.kind == set {
			ser.members = make(map[uint64]struct{})
		}
		a.series[string(a.key)] = ser
	}
	ser.touched, ser.updated = true, now
	switch s.kind {
	case counter:
		ser.value += s.value / s.rate
	case gauge:
		if s.delta {
			ser.value += s.value
		} else {
			ser.value = s.value
		}
	case timer, histogram:
		ser.count += 1 / s.rate
		ser.sum += s.value / s.rate
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
	return ok
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
		case timer, histogram:
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
// of the samples at or below it), so every reported value was really seen;
// the median is the 50th percentile by the same rule.
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
	stat(".median", nearestRank(s.samples, 50))
	stat(".p90", nearestRank(s.samples, 90))
	stat(".p95", nearestRank(s.samples, 95))
	stat(".p99", nearestRank(s.samples, 99))
	return points
}

func nearestRank(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

// appendKey appends the series key: name, type and the tags sorted, so that
// the same tags in another order are the same series.
func appendKey(key []byte, s *sample, scratch *[][]byte) []byte {
	key = append(key, s.name...)
	key = append(key, 0, byte(s.kind))
	if s.tags == nil {
		return key
	}
	tags := (*scratch)[:0]
	for rest := s.tags; len(rest) > 0; {
		var tag []byte
		tag, rest = cut(rest, ',')
		tags = append(tags, tag)
	}
	// Insertion sort: a handful of tags, and no allocation.
	for i := 1; i < len(tags); i++ {
		for j := i; j > 0 && bytes.Compare(tags[j-1], tags[j]) > 0; j-- {
			tags[j-1], tags[j] = tags[j], tags[j-1]
		}
	}
	for _, t := range tags {
		key = append(key, 0)
		key = append(key, t...)
	}
	*scratch = tags
	return key
}

// parseTags turns "k:v,flag" into a map; a tag without a value maps to "".
func parseTags(tags []byte) map[string]string {
	if tags == nil {
		return nil
	}
	m := make(map[string]string)
	for _, t := range strings.Split(string(tags), ",") {
		k, v, _ := strings.Cut(t, ":")
		m[k] = v
	}
	return m
}
