package statsd

import (
	"bytes"
	"math"
	"strconv"
	"unicode/utf8"
)

// kind is a StatsD metric type.
type kind uint8

const (
	counter      kind = iota + 1 // c
	gauge                        // g
	timer                        // ms
	histogram                    // h
	distribution                 // d, DogStatsD's distribution, summarised here as h is
	set                          // s
	numKinds
)

// typeTag is the tag that says a point's StatsD type, so that one name sent
// as two types (a counter and a gauge) stays two series at the controller.
// Its name and values are Telegraf's statsd input's.
const typeTag = "metric_type"

var kindNames = [numKinds]string{
	counter: "counter", gauge: "gauge", timer: "timing", histogram: "histogram",
	distribution: "distribution", set: "set",
}

// maxNameLen bounds a metric name in bytes; longer ones are refused, not
// truncated.
const maxNameLen = 250

// sample is one metric: one value of a line. Its byte slices point into the
// datagram, so a sample is only valid until the buffer is reused: parsing
// allocates nothing.
type sample struct {
	name  []byte  // as sent; the series turns spaces into '_'
	value float64 // counters, gauges, timers, histograms, distributions
	raw   []byte  // the value's text: a set's member
	kind  kind
	delta bool    // a gauge written +N or -N changes the value instead of setting it
	rate  float64 // sample rate in (0, 1]; 1 when absent
	tags  []byte  // the line's tags, read with nextTag; nil when none
	space bool    // the name holds a space
	// sameLine says that the last metric the aggregator looked up came from
	// this one's line, so that its key stands (the server sets it).
	sameLine bool
}

// reason says why a metric was refused. Each has a counter.
type reason uint8

const (
	ok reason = iota
	badName
	invalidUTF8
	noValue
	noType
	badType
	badValue
	badRate
	badSection
	badTags
	reservedTag
	truncated // the datagram was longer than the read buffer
	tooManySeries
	numReasons
)

var reasonNames = [numReasons]string{
	ok:            "ok",
	badName:       "bad_name",
	invalidUTF8:   "invalid_utf8",
	noValue:       "no_value",
	noType:        "no_type",
	badType:       "bad_type",
	badValue:      "bad_value",
	badRate:       "bad_sample_rate",
	badSection:    "empty_section",
	badTags:       "bad_tags",
	reservedTag:   "reserved_tag",
	truncated:     "truncated",
	tooManySeries: "too_many_series",
}

func (r reason) String() string { return reasonNames[r] }

// lineParser hands out the metrics of one line in turn. A line is a name and
// one or more groups of values with their type and sections:
//
//	name:value[:value…]|type[|@rate][|#tag:value,tag][|c:container][|Tunix][:value…|type…]…
//
// Several values before one type are DogStatsD's packed form (v1.1): they
// share the group's type, rate and tags, each is a metric. A ':' after the
// type or the rate starts another group (Etsy's server and Telegraf read
// "name:1|c:2|ms" as two metrics). The tag sections apply to every metric of
// the line, as Telegraf applies them. A set takes all its values as one
// member, colons and all: DogStatsD packs no sets, and a member may be an IPv6
// address. Sections other than '@' and '#' (DogStatsD's container id and
// timestamp, and any newer one) are ignored, so that newer clients still
// count.
//
// Every metric is either accepted or refused with a reason, once: a bad name
// or bad tags refuse each metric of the line, a bad type or rate each of its
// group, a bad value only itself. A line without ':' is one refused metric.
type lineParser struct {
	name, tags []byte
	space      bool   // the name holds a space
	tagsRead   bool   // tags holds the line's tags, if any
	lineErr    reason // refuses every metric of the line
	rest       []byte // the groups not yet read
	pending    bool   // a group remains in rest
	vals       []byte // the current group's values not yet handed out
	inGroup    bool   // vals holds at least one more value
	kind       kind   // the current group's
	rate       float64
	grpErr     reason // refuses every metric of the current group
}

// reset starts on line, which is not empty.
func (p *lineParser) reset(line []byte) {
	*p = lineParser{}
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		// One metric, refused: hand it out as a group of one value.
		p.lineErr, p.inGroup = noValue, true
		return
	}
	p.name, p.rest, p.pending = line[:colon], line[colon+1:], true
	p.lineErr, p.space = checkName(p.name)
}

// next fills s with the next metric of the line and reports whether it was
// accepted; more is false when the line has no more metrics.
func (p *lineParser) next(s *sample) (r reason, more bool) {
	if !p.inGroup {
		if !p.pending {
			return ok, false
		}
		p.readGroup()
	}
	*s = sample{name: p.name, tags: p.tags, space: p.space, kind: p.kind, rate: p.rate}
	var v []byte
	if i := bytes.IndexByte(p.vals, ':'); i >= 0 && p.kind != set {
		v, p.vals = p.vals[:i], p.vals[i+1:]
	} else {
		v, p.vals, p.inGroup = p.vals, nil, false
	}
	switch {
	case p.lineErr != ok:
		return p.lineErr, true
	case p.grpErr != ok:
		return p.grpErr, true
	}
	return parseValue(v, s), true
}

// readGroup reads the next group from p.rest: its values, type and sections.
// The first one also finds the line's tags: in its sections, or else after it.
func (p *lineParser) readGroup() {
	p.kind, p.rate, p.grpErr, p.inGroup, p.pending = 0, 1, ok, true, false
	bar := bytes.IndexByte(p.rest, '|')
	if bar < 0 {
		p.vals, p.grpErr, p.tagsRead = p.rest, noType, true
		return
	}
	p.vals = p.rest[:bar]
	typ, term, rest := cutSection(p.rest[bar+1:], true)
	switch string(typ) {
	case "c":
		p.kind = counter
	case "g":
		p.kind = gauge
	case "ms":
		p.kind = timer
	case "h":
		p.kind = histogram
	case "d":
		p.kind = distribution
	case "s":
		p.kind = set
	default:
		p.grpErr = badType
	}
	for term == '|' {
		from := rest
		var sec []byte
		// A rate, or an empty section, may end where another group starts.
		sec, term, rest = cutSection(rest, len(rest) > 0 && (rest[0] == '@' || rest[0] == ':'))
		switch {
		case len(sec) == 0:
			p.grpErr = firstOf(p.grpErr, badSection)
		case sec[0] == '@':
			r, err := strconv.ParseFloat(string(sec[1:]), 64)
			if err != nil || !(r > 0 && r <= 1) || math.IsInf(1/r, 0) {
				p.grpErr = firstOf(p.grpErr, badRate)
			} else {
				p.rate = r
			}
		case sec[0] == '#' && !p.tagsRead:
			p.setTags(from[1:])
		}
		// Other sections are ignored.
	}
	if term == ':' {
		p.rest, p.pending = rest, true
	}
	if !p.tagsRead { // none in the first group's sections: after it, maybe
		p.tagsRead = true
		if i := tagStart(p.rest); p.pending && i >= 0 {
			p.setTags(p.rest[i:])
		}
	}
}

// setTags checks the line's tags, which start at tags and run to the end of
// the line; bad ones refuse every metric of the line.
func (p *lineParser) setTags(tags []byte) {
	p.tagsRead = true
	var r reason
	if p.tags, r = checkTags(tags); p.lineErr == ok {
		p.lineErr = r
	}
}

// firstOf keeps the first refusal.
func firstOf(first, then reason) reason {
	if first != ok {
		return first
	}
	return then
}

// cutSection splits off the section at the start of b. It ends at '|' or
// at the end of the line and, when colonEnds (the type, a rate, an empty
// section), at ':' where another group starts; a ':' inside tags or a
// container id is theirs. term is the byte that ended it, 0 at the end.
func cutSection(b []byte, colonEnds bool) (sec []byte, term byte, rest []byte) {
	for i, c := range b {
		if c == '|' || (c == ':' && colonEnds) {
			return b[:i], c, b[i+1:]
		}
	}
	return b, 0, nil
}

// parseValue parses one value of s's kind into s.
func parseValue(v []byte, s *sample) reason {
	if len(v) == 0 {
		return badValue
	}
	if s.kind == set {
		s.raw = v
		return ok
	}
	if s.kind == gauge && (v[0] == '+' || v[0] == '-') {
		s.delta = true
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return badValue
	}
	s.value = f
	return ok
}

// checkName reports why a metric name is refused, or ok. A name is valid
// UTF-8 (the wire carries only that; non-ASCII is fine) without control
// characters or the bytes that begin sections or other dialects' tags ('|',
// '#', '@'); spaces are allowed and become '_' in the series.
func checkName(name []byte) (r reason, space bool) {
	if len(name) == 0 || len(name) > maxNameLen {
		return badName, false
	}
	var class uint8
	for _, b := range name {
		class |= byteClass[b]
	}
	switch {
	case class&(control|nameStop) != 0:
		return badName, false
	case class&nonASCII != 0 && !utf8.Valid(name):
		return invalidUTF8, false
	}
	return ok, class&spaceByte != 0
}

// byteClass sorts the bytes that names and tags may not hold, and those that
// call for a UTF-8 check, so that one table load per byte tells them.
var byteClass = func() (t [256]uint8) {
	for b := range 256 {
		switch {
		case b < ' ' || b == 0x7f:
			t[b] = control
		case b == '|' || b == '#' || b == '@':
			t[b] = nameStop
		case b >= utf8.RuneSelf:
			t[b] = nonASCII
		case b == ' ':
			t[b] = spaceByte
		}
	}
	return t
}()

const (
	control   = 1 << iota // refused in names and tags
	nameStop              // refused in names
	nonASCII              // valid only as part of UTF-8
	spaceByte             // becomes '_' in a series name
)

// checkTags checks the tags of a line, which run from the first tag
// section to the end of the line, and returns them to be read with nextTag:
// nil when every tag section is empty. A tag is refused when its key is
// empty or the type tag's, or when it holds control characters or invalid
// UTF-8.
func checkTags(tags []byte) ([]byte, reason) {
	n := 0
	start, colon := 0, -1 // the tag's start and its first ':'
	var class uint8
	for i := 0; ; i++ {
		if i < len(tags) {
			if b := tags[i]; b != ',' && b != '|' {
				class |= byteClass[b]
				if b == ':' && colon < 0 {
					colon = i
				}
				continue
			}
		}
		// A tag ends at i; one '#' before it is dropped (as nextTag drops it).
		if start < i && tags[start] == '#' {
			start++
		}
		if tag := tags[start:i]; len(tag) > 0 {
			key := tag
			if colon >= 0 {
				key = tags[start:colon]
			}
			switch {
			case len(key) == 0 || class&control != 0:
				return nil, badTags
			case class&nonASCII != 0 && !utf8.Valid(tag):
				return nil, invalidUTF8
			case string(key) == typeTag:
				return nil, reservedTag
			}
			n++
		}
		if i == len(tags) {
			break
		}
		if tags[i] == '|' { // the end of a section: on to the next tag section
			j := tagStart(tags[i:])
			if j < 0 {
				break
			}
			i += j - 1
		}
		start, colon, class = i+1, -1, 0
	}
	if n == 0 {
		return nil, ok
	}
	return tags, ok
}

// tagStart returns where the first tag section's tags start in b (just
// after its "|#"), or -1. No section holds a '|', so a '#' after one always
// starts tags.
func tagStart(b []byte) int {
	for off := 0; ; {
		i := bytes.IndexByte(b[off:], '#')
		if i < 0 {
			return -1
		}
		if i += off; i > 0 && b[i-1] == '|' {
			return i + 1
		}
		off = i + 1
	}
}

// nextTag splits the first tag off tags, which start just after a '#' and
// run to the end of the line. Tags end at ',' and a tag section at '|'; the
// next section that starts with '#' continues them (DogStatsD sends one;
// Telegraf and statsd_exporter read a second one as more tags). A '#' before
// a tag is dropped, as statsd_exporter drops it: some clients write one before
// every tag. An empty tag is returned empty, for the caller to skip.
func nextTag(tags []byte) (tag, rest []byte) {
	for i, b := range tags {
		switch b {
		case ',':
			return trimHash(tags[:i]), tags[i+1:]
		case '|':
			if j := tagStart(tags[i:]); j >= 0 {
				return trimHash(tags[:i]), tags[i+j:]
			}
			return trimHash(tags[:i]), nil
		}
	}
	return trimHash(tags), nil
}

func trimHash(tag []byte) []byte {
	if len(tag) > 0 && tag[0] == '#' {
		return tag[1:]
	}
	return tag
}

// trimLine drops the whitespace around a line ('\r' of CRLF clients, spaces
// and tabs of hand-typed ones), as Telegraf trims its lines.
func trimLine(line []byte) []byte {
	for len(line) > 0 && isSpace(line[len(line)-1]) {
		line = line[:len(line)-1]
	}
	for len(line) > 0 && isSpace(line[0]) {
		line = line[1:]
	}
	return line
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' }

// cut splits b at the first sep; rest is empty when there is none.
func cut(b []byte, sep byte) (before, rest []byte) {
	if i := bytes.IndexByte(b, sep); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}
