package statsd

import (
	"bytes"
	"math"
	"strconv"
)

// kind is a StatsD metric type.
type kind uint8

const (
	counter   kind = iota + 1 // c
	gauge                     // g
	timer                     // ms
	histogram                 // h, and DogStatsD's d (distribution)
	set                       // s
)

// maxNameLen bounds a metric name; longer ones are refused, not truncated.
const maxNameLen = 250

// sample is one parsed line. Its byte slices point into the datagram, so a
// sample is only valid until the buffer is reused: parsing allocates nothing.
type sample struct {
	name  []byte
	value float64 // counters, gauges, timers, histograms
	raw   []byte  // the value's text: a set's member
	kind  kind
	delta bool    // a gauge written +N or -N changes the value instead of setting it
	rate  float64 // sample rate in (0, 1]; 1 when absent
	tags  []byte  // DogStatsD tags after '#', comma separated; nil when none
}

// reason says why a line was refused. Each has a counter.
type reason uint8

const (
	ok reason = iota
	badName
	noValue
	noType
	badType
	badValue
	badRate
	badTags
	truncated // the datagram was longer than the read buffer
	tooManySeries
	numReasons
)

var reasonNames = [numReasons]string{
	ok:            "ok",
	badName:       "bad_name",
	noValue:       "no_value",
	noType:        "no_type",
	badType:       "bad_type",
	badValue:      "bad_value",
	badRate:       "bad_sample_rate",
	badTags:       "bad_tags",
	truncated:     "truncated",
	tooManySeries: "too_many_series",
}

func (r reason) String() string { return reasonNames[r] }

// parseLine parses one line of the StatsD protocol with the DogStatsD
// extensions:
//
//	name:value|type[|@rate][|#tag:value,tag]
//
// where type is c, g, ms, h, d or s. Unknown '|' sections (DogStatsD's |c:
// container id, |T timestamp) are ignored so that newer clients still count.
func parseLine(line []byte, s *sample) reason {
	*s = sample{rate: 1}
	colon := bytes.IndexByte(line, ':')
	switch {
	case colon < 0:
		return noValue
	case colon == 0 || colon > maxNameLen:
		return badName
	}
	s.name = line[:colon]
	for _, b := range s.name {
		if b <= ' ' || b == 0x7f || b == '|' || b == '#' || b == '@' {
			return badName
		}
	}
	rest := line[colon+1:]
	bar := bytes.IndexByte(rest, '|')
	if bar < 0 {
		return noType
	}
	val := rest[:bar]
	typ, rest := cut(rest[bar+1:], '|')
	switch string(typ) {
	case "c":
		s.kind = counter
	case "g":
		s.kind = gauge
	case "ms":
		s.kind = timer
	case "h", "d":
		s.kind = histogram
	case "s":
		s.kind = set
	default:
		return badType
	}
	for len(rest) > 0 {
		var sec []byte
		sec, rest = cut(rest, '|')
		if len(sec) == 0 {
			return badType
		}
		switch sec[0] {
		case '@':
			r, err := strconv.ParseFloat(string(sec[1:]), 64)
			if err != nil || !(r > 0 && r <= 1) {
				return badRate
			}
			s.rate = r
		case '#':
			if !validTags(sec[1:]) {
				return badTags
			}
			s.tags = sec[1:]
		}
	}
	if len(val) == 0 {
		return badValue
	}
	if s.kind == set {
		s.raw = val
		return ok
	}
	if s.kind == gauge && (val[0] == '+' || val[0] == '-') {
		s.delta = true
	}
	v, err := strconv.ParseFloat(string(val), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return badValue
	}
	s.value = v
	return ok
}

// validTags reports whether tags is a comma-separated list of non-empty
// tags whose keys are non-empty and free of spaces and control bytes.
func validTags(tags []byte) bool {
	if len(tags) == 0 {
		return false
	}
	for len(tags) > 0 {
		var tag []byte
		tag, tags = cut(tags, ',')
		if len(tag) == 0 || tag[0] == ':' {
			return false
		}
		for _, b := range tag {
			if b < ' ' || b == 0x7f {
				return false
			}
		}
	}
	return true
}

// cut splits b at the first sep; rest is empty when there is none.
func cut(b []byte, sep byte) (before, rest []byte) {
	if i := bytes.IndexByte(b, sep); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}
