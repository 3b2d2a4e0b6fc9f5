package statsd

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// metric is one metric of a parsed line, its slices as strings, for tables.
type metric struct {
	name  string
	value float64
	raw   string
	kind  kind
	delta bool
	rate  float64
	tags  string // the tags as nextTag yields them, joined by ','
	r     reason
}

func m(name string, v float64, k kind) metric { return metric{name: name, value: v, kind: k, rate: 1} }
func member(name, raw string) metric          { return metric{name: name, raw: raw, kind: set, rate: 1} }
func refused(r reason) metric                 { return metric{r: r} }
func (x metric) at(rate float64) metric       { x.rate = rate; return x }
func (x metric) tagged(tags string) metric    { x.tags = tags; return x }
func (x metric) signed() metric               { x.delta = true; return x }

// parseAll parses one line as the server does and returns its metrics.
func parseAll(line []byte) []metric {
	var p lineParser
	var s sample
	var out []metric
	for p.reset(trimLine(line)); ; {
		r, more := p.next(&s)
		if !more {
			return out
		}
		if r != ok {
			out = append(out, refused(r))
			continue
		}
		out = append(out, metric{name: string(s.name), value: s.value, raw: string(s.raw), kind: s.kind,
			delta: s.delta, rate: s.rate, tags: tagList(s.tags)})
	}
}

func tagList(tags []byte) string {
	var out []string
	for rest := tags; len(rest) > 0; {
		var tag []byte
		if tag, rest = nextTag(rest); len(tag) > 0 {
			out = append(out, string(tag))
		}
	}
	return strings.Join(out, ",")
}

type lineCase struct {
	ref  string // where the expectation comes from
	line string
	want []metric
}

func runLines(t *testing.T, cases []lineCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.line, func(t *testing.T) {
			if got := parseAll([]byte(tc.line)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s\n got %+v\nwant %+v", tc.ref, got, tc.want)
			}
		})
	}
}

// TestParseLine is the grammar itself: every type, the sections, and every
// refusal with its reason.
func TestParseLine(t *testing.T) {
	runLines(t, []lineCase{
		{"", "req:1|c", []metric{m("req", 1, counter)}},
		{"", "req:2.5|c|@0.1", []metric{m("req", 2.5, counter).at(0.1)}},
		{"", "temp:-3|g", []metric{m("temp", -3, gauge).signed()}},
		{"", "temp:+3|g", []metric{m("temp", 3, gauge).signed()}},
		{"", "temp:7|g", []metric{m("temp", 7, gauge)}},
		{"", "lat:12.5|ms|#env:prod,canary", []metric{m("lat", 12.5, timer).tagged("env:prod,canary")}},
		{"", "size:3|h", []metric{m("size", 3, histogram)}},
		{"", "size:3|d|@0.5|#a:b", []metric{m("size", 3, distribution).at(0.5).tagged("a:b")}},
		{"", "users:alice|s", []metric{member("users", "alice")}},
		{"", "cpu:1e3|g", []metric{m("cpu", 1000, gauge)}},
		{"surrounding whitespace is dropped, as Telegraf's parser() trims each line",
			" \treq:1|c \r", []metric{m("req", 1, counter)}},
		{"a tag section may come before the rate", "req:1|c|#a:b|@0.5", []metric{m("req", 1, counter).at(0.5).tagged("a:b")}},
		{"the last rate counts", "req:1|c|@0.5|@0.25", []metric{m("req", 1, counter).at(0.25)}},

		{"", "novalue", []metric{refused(noValue)}},
		{"", ":1|c", []metric{refused(badName)}},
		{"", "a\tb:1|c", []metric{refused(badName)}},
		{"", "a|b:1|c", []metric{refused(badName)}},
		{"a name beyond 250 bytes", strings.Repeat("n", maxNameLen+1) + ":1|c", []metric{refused(badName)}},
		{"", "x:1", []metric{refused(noType)}},
		{"", "x:1|q", []metric{refused(badType)}},
		{"", "x:1|", []metric{refused(badType)}},
		{"", "x:1|c||@0.5", []metric{refused(badSection)}},
		{"", "x:abc|c", []metric{refused(badValue)}},
		{"", "x:|c", []metric{refused(badValue)}},
		{"", "x:NaN|g", []metric{refused(badValue)}},
		{"", "x:Inf|ms", []metric{refused(badValue)}},
		{"", "x:1|c|@0", []metric{refused(badRate)}},
		{"", "x:1|c|@1.5", []metric{refused(badRate)}},
		{"", "x:1|c|@-0.5", []metric{refused(badRate)}},
		{"", "x:1|c|@", []metric{refused(badRate)}},
		{"a rate whose inverse overflows", "x:1|c|@1e-320", []metric{refused(badRate)}},
		{"an empty key", "x:1|c|#:v", []metric{refused(badTags)}},
		{"a control character in a tag", "x:1|c|#a:b\x01", []metric{refused(badTags)}},
		{"the type tag is the server's", "x:1|c|#metric_type:gauge", []metric{refused(reservedTag)}},
		{"the type tag is the server's", "x:1|c|#env:prod,#metric_type", []metric{refused(reservedTag)}},

		// Several values on a line: each is a metric, accepted or refused
		// by itself; what the values share refuses each of them.
		{"", "x:1:abc:3|ms", []metric{m("x", 1, timer), refused(badValue), m("x", 3, timer)}},
		{"", "x:1::3|ms", []metric{m("x", 1, timer), refused(badValue), m("x", 3, timer)}},
		{"", "x:1:2|ms|@2", []metric{refused(badRate), refused(badRate)}},
		{"", "x:1:2", []metric{refused(noType), refused(noType)}},
		{"", "a#b:1:2|ms", []metric{refused(badName), refused(badName)}},
		{"", "x:1|c:2|g|#:v", []metric{refused(badTags), refused(badTags)}},
		{"", "x:1|q:2|c", []metric{refused(badType), m("x", 2, counter)}},
		{"", "x:1|q|@0.5:2|c", []metric{refused(badType), m("x", 2, counter)}},
		{"tags apply to every group of the line, as Telegraf's parseStatsdLine applies them",
			"x:1|c:2|ms|#a:b", []metric{m("x", 1, counter).tagged("a:b"), m("x", 2, timer).tagged("a:b")}},
		{"a second tag section adds tags", "x:1|c|#a:b|c:id|#c:d", []metric{m("x", 1, counter).tagged("a:b,c:d")}},
		{"a set's member is all of its value: DogStatsD packs no sets", "clients:fe80::1|s", []metric{member("clients", "fe80::1")}},
		{"", "x:1:2|g", []metric{m("x", 1, gauge), m("x", 2, gauge)}},
		{"", "x:+1:-2|g", []metric{m("x", 1, gauge).signed(), m("x", -2, gauge).signed()}},
	})
}

// TestParseLineAsReferences holds the cases taken from the references users
// know, each citing its source: where they disagree, the comment says which
// one the server follows (docs/collectors.md has the same table).
func TestParseLineAsReferences(t *testing.T) {
	const container = "f76b5a1c03caa192580874b253c158010ade668cf03080a57aa8283919d56e75"
	runLines(t, []lineCase{
		// Etsy statsd, docs/metric_types.md.
		{"etsy metric_types.md: Counting", "gorets:1|c", []metric{m("gorets", 1, counter)}},
		{"etsy metric_types.md: Sampling", "gorets:1|c|@0.1", []metric{m("gorets", 1, counter).at(0.1)}},
		{"etsy metric_types.md: Timing", "glork:320|ms|@0.1", []metric{m("glork", 320, timer).at(0.1)}},
		{"etsy metric_types.md: Gauges", "gaugor:333|g", []metric{m("gaugor", 333, gauge)}},
		{"etsy metric_types.md: Gauges, a sign changes the value", "gaugor:-10|g", []metric{m("gaugor", -10, gauge).signed()}},
		{"etsy metric_types.md: Gauges, a sign changes the value", "gaugor:+4|g", []metric{m("gaugor", 4, gauge).signed()}},
		{"etsy metric_types.md: Sets", "uniques:765|s", []metric{member("uniques", "765")}},
		// Etsy stats.js: a line's ':'-separated "value|type[|@rate]" bits
		// are metrics each; lib/helpers.js is_valid_packet refuses a rate
		// that is not a number, and takes "+N" as a number for any type.
		{"etsy stats.js: bits after one key", "foo:1|c:2|ms", []metric{m("foo", 1, counter), m("foo", 2, timer)}},
		{"etsy helpers.js isValidSampleRate", "foo:1|c|@bar", []metric{refused(badRate)}},
		{"etsy helpers.js isValidSampleRate: no negative rate", "foo:1|ms|@-0.1", []metric{refused(badRate)}},
		{"etsy helpers.js isNumber('+10'); telegraf refuses (TestParse_InvalidLines)", "t:+10|ms", []metric{m("t", 10, timer)}},
		{"etsy stats.js inserts the text as a set member; telegraf refuses (TestParse_InvalidLines)", "s:+10|s", []metric{member("s", "+10")}},
		{"etsy helpers.js: a section that is not a rate is a bad line; so is statsd_exporter's 'empty component'",
			"foo:1|c|", []metric{refused(badSection)}},

		// statsd_exporter pkg/line/line_test.go TestLineToEvents and
		// bridge_test.go TestHandlePacket.
		{"statsd_exporter: simple counter", "foo:2|c", []metric{m("foo", 2, counter)}},
		{"statsd_exporter: gauge decrement", "foo:-10|g", []metric{m("foo", -10, gauge).signed()}},
		{"statsd_exporter: datadog tag extension", "foo:100|c|#tag1:bar,tag2:baz",
			[]metric{m("foo", 100, counter).tagged("tag1:bar,tag2:baz")}},
		{"statsd_exporter: datadog tag extension with # in all keys (as sent by datadog php client)",
			"foo:100|c|#tag1:bar,#tag2:baz", []metric{m("foo", 100, counter).tagged("tag1:bar,tag2:baz")}},
		{"statsd_exporter: datadog tag extension with empty tags (edge case)", "foo:100|c|#tag:value,,",
			[]metric{m("foo", 100, counter).tagged("tag:value")}},
		{"an empty tag between two (the issue's #a:b,,c:d); dropped as statsd_exporter drops it", "foo:1|c|#a:b,,c:d",
			[]metric{m("foo", 1, counter).tagged("a:b,c:d")}},
		{"statsd_exporter: datadog tag extension with sampling", "foo:100|c|@0.1|#tag1:bar,#tag2:baz",
			[]metric{m("foo", 100, counter).at(0.1).tagged("tag1:bar,tag2:baz")}},
		{"statsd_exporter: datadog tag extension with multiple colons (the value is foo:bar)", "foo:100|c|@0.1|#tag1:foo:bar",
			[]metric{m("foo", 100, counter).at(0.1).tagged("tag1:foo:bar")}},
		{"statsd_exporter drops a valueless tag, telegraf makes it 'true'; kept here with an empty value",
			"foo:100|c|#tag_without_a_value", []metric{m("foo", 100, counter).tagged("tag_without_a_value")}},
		{"statsd_exporter: datadog tag extension with invalid utf8 tag values", "foo:100|c|@0.1|#tag:\xc3\x28invalid",
			[]metric{refused(invalidUTF8)}},
		{"statsd_exporter: datadog tag extension with both valid and invalid utf8 tag values",
			"foo:100|c|@0.1|#tag1:valid,tag2:\xc3\x28invalid", []metric{refused(invalidUTF8)}},
		{"statsd_exporter: invalid utf8", "invalid\xc3\x28utf8:1|c", []metric{refused(invalidUTF8)}},
		{"invalid UTF-8 in a tag key", "foo:1|c|#\xff:v", []metric{refused(invalidUTF8)}},
		{"statsd_exporter: datadog timings with extended aggregation values", "foo_timing:0.5:120:3000:10:20000:0.01|ms|#tag1:bar,tag2:baz",
			[]metric{m("foo_timing", 0.5, timer).tagged("tag1:bar,tag2:baz"), m("foo_timing", 120, timer).tagged("tag1:bar,tag2:baz"),
				m("foo_timing", 3000, timer).tagged("tag1:bar,tag2:baz"), m("foo_timing", 10, timer).tagged("tag1:bar,tag2:baz"),
				m("foo_timing", 20000, timer).tagged("tag1:bar,tag2:baz"), m("foo_timing", 0.01, timer).tagged("tag1:bar,tag2:baz")}},
		{"statsd_exporter: datadog timings with extended aggregation values and sampling but without tags", "foo_timing:0.5:120|ms|@0.5",
			[]metric{m("foo_timing", 0.5, timer).at(0.5), m("foo_timing", 120, timer).at(0.5)}},
		{"statsd_exporter: datadog histogram with extended aggregation values and tags", "foo_histogram:0.5:120|h|#tag1:bar",
			[]metric{m("foo_histogram", 0.5, histogram).tagged("tag1:bar"), m("foo_histogram", 120, histogram).tagged("tag1:bar")}},
		{"statsd_exporter: datadog distribution with extended aggregation values", "foo_distribution:0.5:120|d|#tag1:bar",
			[]metric{m("foo_distribution", 0.5, distribution).tagged("tag1:bar"), m("foo_distribution", 120, distribution).tagged("tag1:bar")}},
		{"statsd_exporter refuses 'datadog counter with invalid extended aggregation values'; the DogStatsD docs pack every type but sets",
			"foo_counter:0.5:120|c", []metric{m("foo_counter", 0.5, counter), m("foo_counter", 120, counter)}},
		{"statsd_exporter bridge_test.go: combined multiline metrics", "foo:200|ms:300|ms:5|c|@0.1:6|g",
			[]metric{m("foo", 200, timer), m("foo", 300, timer), m("foo", 5, counter).at(0.1), m("foo", 6, gauge)}},
		{"statsd_exporter bridge_test.go: combined multiline metrics", "bar:1|c:5|ms", []metric{m("bar", 1, counter), m("bar", 5, timer)}},
		{"statsd_exporter: bad line", "foo", []metric{refused(noValue)}},
		{"statsd_exporter: bad component", "foo:1", []metric{refused(noType)}},
		{"statsd_exporter: bad value", "foo:1o|c", []metric{refused(badValue)}},
		{"statsd_exporter takes 'illegal sampling factor' as 1; refused here as etsy refuses it", "foo:1|c|@bar", []metric{refused(badRate)}},
		{"statsd_exporter takes 'zero sampling factor' as 1; refused here: the DogStatsD docs' rate is a share sent", "foo:2|c|@0",
			[]metric{refused(badRate)}},
		{"statsd_exporter: illegal stat type", "foo:2|t", []metric{refused(badType)}},
		{"statsd_exporter: empty metric name", ":100|ms", []metric{refused(badName)}},
		{"statsd_exporter: empty component", "foo:1|c|", []metric{refused(badSection)}},
		{"statsd_exporter: dogstatsd container ID extension (dropped here, as telegraf drops it by default)",
			"foo:100|c|#tag1:value|c:container123", []metric{m("foo", 100, counter).tagged("tag1:value")}},
		{"statsd_exporter: dogstatsd container ID with complex value", "foo:100|c|#tag1:value|c:sha256:abcd1234efgh5678",
			[]metric{m("foo", 100, counter).tagged("tag1:value")}},
		{"statsd_exporter: dogstatsd container ID with timer", "foo:1000|ms|#tag1:value|c:timer_container",
			[]metric{m("foo", 1000, timer).tagged("tag1:value")}},

		// Telegraf plugins/inputs/statsd/statsd_test.go.
		{"telegraf TestParse_DataDogTags: counter", "my_counter:1|c|#host:localhost,environment:prod,endpoint:/:tenant?/oauth/ro",
			[]metric{m("my_counter", 1, counter).tagged("host:localhost,environment:prod,endpoint:/:tenant?/oauth/ro")}},
		{"telegraf TestParse_DataDogTags: gauge", "my_gauge:10.1|g|#live", []metric{m("my_gauge", 10.1, gauge).tagged("live")}},
		{"telegraf TestParse_DataDogTags: timer", "my_timer:3|ms|@0.1|#live,host:localhost",
			[]metric{m("my_timer", 3, timer).at(0.1).tagged("live,host:localhost")}},
		{"telegraf TestParse_DataDogTags: empty tag set", "cpu:42|c|#", []metric{m("cpu", 42, counter)}},
		{"telegraf TestParse_DataDogContainerID: empty tag set", "cpu:42|c|#|c:" + container, []metric{m("cpu", 42, counter)}},
		{"telegraf TestParse_DataDogContainerID: set", "my_set:1|s|#host:localhost|c:" + container,
			[]metric{member("my_set", "1").tagged("host:localhost")}},
		{"telegraf TestParse_InvalidLines", "i.dont.have.a.pipe:45g", []metric{refused(noType)}},
		{"telegraf TestParse_InvalidLines", "i.dont.have.a.colon45|c", []metric{refused(noValue)}},
		{"telegraf TestParse_InvalidLines", "invalid.metric.type:45|e", []metric{refused(badType)}},
		{"telegraf TestParse_InvalidLines", "invalid.value:foobar|c", []metric{refused(badValue)}},
		{"telegraf TestParse_InvalidLines", "invalid.value:d11|c", []metric{refused(badValue)}},
		{"telegraf TestParse_InvalidLines", "invalid.value:1d1|c", []metric{refused(badValue)}},
		{"telegraf TestParse_InvalidLines refuses +10 on a histogram; taken as 10 here, as etsy and statsd_exporter take it",
			"invalid.plus.minus.non.gauge:+10|h", []metric{m("invalid.plus.minus.non.gauge", 10, histogram)}},
		{"telegraf TestParse_InvalidSampleRate: a section without '@' is ignored (etsy would refuse the line)",
			"invalid.sample.rate:45|c|0.1", []metric{m("invalid.sample.rate", 45, counter)}},
		{"telegraf TestParse_InvalidSampleRate takes a rate that does not parse as 1; refused here as etsy refuses it",
			"invalid.sample.rate.2:45|c|@foo", []metric{refused(badRate)}},
		{"telegraf TestParse_InvalidSampleRate: a rate on a gauge", "invalid.sample.rate:45|g|@0.1", []metric{m("invalid.sample.rate", 45, gauge).at(0.1)}},
		{"telegraf TestParse_InvalidSampleRate: a rate on a set", "invalid.sample.rate:45|s|@0.1", []metric{member("invalid.sample.rate", "45").at(0.1)}},
		{"telegraf TestParseScientificNotation", "scientific.notation:4.6968460083008E-5|ms", []metric{m("scientific.notation", 4.6968460083008e-5, timer)}},
		{"telegraf TestParse_Gauges", "scientific.notation:4.696E+5|g", []metric{m("scientific.notation", 469600, gauge)}},
		{"telegraf TestParse_MeasurementsWithMultipleValues", "valid.multiple.mixed:1|c:1|ms:2|s:1|g",
			[]metric{m("valid.multiple.mixed", 1, counter), m("valid.multiple.mixed", 1, timer),
				member("valid.multiple.mixed", "2"), m("valid.multiple.mixed", 1, gauge)}},
		{"telegraf TestParse_MeasurementsWithMultipleValues ignores the empty section of 0|ms|; refused here as etsy and statsd_exporter refuse it",
			"valid.multiple:0|ms|@0.1:0|ms|:1|ms", []metric{m("valid.multiple", 0, timer).at(0.1), refused(badSection), m("valid.multiple", 1, timer)}},

		// DogStatsD datagram docs (docs.datadoghq.com, "Datagram Format and
		// Shell Usage").
		{"dogstatsd docs: example datagrams", "page.views:1|c", []metric{m("page.views", 1, counter)}},
		{"dogstatsd docs: example datagrams", "fuel.level:0.5|g", []metric{m("fuel.level", 0.5, gauge)}},
		{"dogstatsd docs: example datagrams", "song.length:240|h|@0.5", []metric{m("song.length", 240, histogram).at(0.5)}},
		{"dogstatsd docs: example datagrams", "users.uniques:1234|s", []metric{member("users.uniques", "1234")}},
		{"dogstatsd docs: example datagrams", "users.online:1|c|#country:china", []metric{m("users.online", 1, counter).tagged("country:china")}},
		{"dogstatsd docs: example datagrams", "users.online:1|c|@0.5|#country:china",
			[]metric{m("users.online", 1, counter).at(0.5).tagged("country:china")}},
		{"dogstatsd docs: protocol v1.1, packed values", "page.views:1:2:32|d",
			[]metric{m("page.views", 1, distribution), m("page.views", 2, distribution), m("page.views", 32, distribution)}},
		{"dogstatsd docs: protocol v1.1, packed values", "song.length:240:234|h|@0.5",
			[]metric{m("song.length", 240, histogram).at(0.5), m("song.length", 234, histogram).at(0.5)}},
		{"dogstatsd docs: protocol v1.2, the container id is ignored", "page.views:1|c|#env:dev|c:" + container,
			[]metric{m("page.views", 1, counter).tagged("env:dev")}},
		{"dogstatsd docs: protocol v1.3, the timestamp is ignored (points carry the flush's time)", "page.views:15|c|#env:dev|T1656581400",
			[]metric{m("page.views", 15, counter).tagged("env:dev")}},

		// Names and tags that are UTF-8 but not ASCII are kept; spaces are
		// allowed (the series turns them into '_', see TestNames).
		{"non-ASCII name", "température.°C:21|g", []metric{m("température.°C", 21, gauge)}},
		{"non-ASCII name", "名前:1|c", []metric{m("名前", 1, counter)}},
		{"non-ASCII tag", "req:1|c|#city:Zürich", []metric{m("req", 1, counter).tagged("city:Zürich")}},
		{"etsy stats.js turns spaces into '_', statsd_exporter too; telegraf keeps them", "has space:1|c", []metric{m("has space", 1, counter)}},
	})
}

func TestSummaryPercentiles(t *testing.T) {
	a := newAggregator(10, maxSamples)
	// 1..100 in a scrambled order: the summary must not depend on arrival.
	for i := range 100 {
		feed(t, a, fmt.Sprintf("lat:%d|ms", (i*37)%100+1))
	}
	got := pointMap(a.flush(nil, time.Now()))
	want := map[string]float64{"lat.count": 100, "lat.sum": 5050, "lat.min": 1, "lat.max": 100,
		"lat.mean": 50.5, "lat.median": 50.5, "lat.p90": 90, "lat.p95": 95, "lat.p99": 99}
	diffPoints(t, got, want)
}

// TestMedian: an odd count's middle sample; an even count's two middle
// samples averaged, as etsy lib/process_metrics.js
// ((values[mid-1] + values[mid])/2) and telegraf running_stats.go median()
// compute it (statsd_exporter reports no median).
func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		values []string
		want   float64
	}{
		{[]string{"1", "11", "1", "1", "1"}, 1}, // telegraf TestParse_Timings: median 1
		{[]string{"3", "1", "2", "4"}, 2.5},
		{[]string{"7"}, 7},
		{[]string{"200", "300"}, 250},
	} {
		a := newAggregator(10, maxSamples)
		for _, v := range tc.values {
			feed(t, a, "t:"+v+"|ms")
		}
		if got := pointMap(a.flush(nil, time.Now()))["t.median"]; got != tc.want {
			t.Errorf("median of %v = %v, want %v", tc.values, got, tc.want)
		}
	}
}

// TestAggregatesAsTelegraf replays telegraf's statsd_test.go aggregate cases.
func TestAggregatesAsTelegraf(t *testing.T) {
	a := newAggregator(100, maxSamples)
	for _, line := range []string{
		// TestParse_Gauges
		"plus.minus:100|g", "plus.minus:-10|g", "plus.minus:+30|g",
		"plus.plus:100|g", "plus.plus:+100|g", "plus.plus:+100|g",
		"minus.minus:100|g", "minus.minus:-100|g", "minus.minus:-100|g",
		"lone.plus:+100|g", "lone.minus:-100|g", "overwrite:100|g", "overwrite:300|g",
		// TestParse_Counters
		"small.inc:1|c", "big.inc:100|c", "big.inc:1|c", "big.inc:100000|c", "big.inc:1000000|c", "small.inc:1|c",
		"zero.init:0|c", "sample.rate:1|c|@0.1", "sample.rate:1|c", "negative.test:100|c", "negative.test:-5|c",
		// TestParse_Sets
		"unique.user.ids:100|s", "unique.user.ids:100|s", "unique.user.ids:101|s", "unique.user.ids:102|s",
		"unique.user.ids:123456789|s", "oneuser.id:100|s", "oneuser.id:100|s",
		"scientific.notation.sets:4.696E+5|s", "scientific.notation.sets:4.696E+5|s", "scientific.notation.sets:4.697E+5|s",
		"string.sets:foobar|s", "string.sets:foobar|s", "string.sets:bar|s",
		// TestParse_Timings
		"test.timing:1|ms", "test.timing:11|ms", "test.timing:1|ms", "test.timing:1|ms", "test.timing:1|ms",
	} {
		feed(t, a, line)
	}
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{
		"plus.minus": 120, "plus.plus": 300, "minus.minus": -100, "lone.plus": 100, "lone.minus": -100, "overwrite": 300,
		"small.inc": 2, "big.inc": 1100101, "zero.init": 0, "sample.rate": 11, "negative.test": 95,
		"unique.user.ids": 4, "oneuser.id": 1, "scientific.notation.sets": 2, "string.sets": 2,
		"test.timing.count": 5, "test.timing.min": 1, "test.timing.max": 11, "test.timing.mean": 3, "test.timing.median": 1,
		"test.timing.sum": 15, "test.timing.p90": 11, "test.timing.p95": 11, "test.timing.p99": 11,
	})
}

// TestMultipleValuesAsSingleLines: telegraf TestParse_MeasurementsWithMultipleValues
// — several values on a line aggregate as the same values on lines of their
// own, whether Etsy's bits or DogStatsD's packed values.
func TestMultipleValuesAsSingleLines(t *testing.T) {
	single := []string{
		"valid.multiple:0|ms|@0.1", "valid.multiple:1|ms",
		"valid.multiple.duplicate:1|c", "valid.multiple.duplicate:1|c", "valid.multiple.duplicate:2|c", "valid.multiple.duplicate:1|c",
		"valid.multiple.duplicate:1|h", "valid.multiple.duplicate:1|h", "valid.multiple.duplicate:2|h", "valid.multiple.duplicate:1|h",
		"valid.multiple.duplicate:1|s", "valid.multiple.duplicate:1|s", "valid.multiple.duplicate:2|s", "valid.multiple.duplicate:1|s",
		"valid.multiple.duplicate:1|g", "valid.multiple.duplicate:1|g", "valid.multiple.duplicate:2|g", "valid.multiple.duplicate:1|g",
		"valid.multiple.mixed:1|c", "valid.multiple.mixed:1|ms", "valid.multiple.mixed:2|s", "valid.multiple.mixed:1|g",
		"packed:1|ms|#a:b", "packed:2|ms|#a:b", "packed:32|ms|#a:b",
	}
	multiple := []string{
		"valid.multiple:0|ms|@0.1:1|ms",
		"valid.multiple.duplicate:1|c:1|c:2|c:1|c",
		"valid.multiple.duplicate:1|h:1|h:2|h:1|h",
		"valid.multiple.duplicate:1|s:1|s:2|s:1|s",
		"valid.multiple.duplicate:1|g:1|g:2|g:1|g",
		"valid.multiple.mixed:1|c:1|ms:2|s:1|g",
		"packed:1:2:32|ms|#a:b",
	}
	flushOf := func(lines []string) map[string]float64 {
		a := newAggregator(100, maxSamples)
		for _, l := range lines {
			feed(t, a, l)
		}
		return identities(t, a.flush(nil, time.Now()))
	}
	want := flushOf(single)
	if got := flushOf(multiple); !reflect.DeepEqual(got, want) {
		t.Errorf("several values on a line\n got %v\nwant %v", got, want)
	}
	if want[`valid.multiple.count{metric_type="timing"}`] != 11 {
		t.Errorf("valid.multiple.count = %v, want 11 (10 at rate 0.1, and 1)", want[`valid.multiple.count{metric_type="timing"}`])
	}
}

// TestTypesStayApart: one name sent as several types is one series per
// type, and the points say the type in the metric_type tag with the values
// telegraf's parseStatsdLine gives it (counter, gauge, set, timing,
// histogram, distribution), so no two points share a name and tags.
func TestTypesStayApart(t *testing.T) {
	a := newAggregator(100, maxSamples)
	for _, l := range []string{"x:1|c", "x:5|g", "x:3|ms", "x:4|h", "x:6|d", "x:u|s", "x.count:9|c",
		"y:1|c|#env:prod", "y:2|g|#env:prod"} {
		feed(t, a, l)
	}
	got := identities(t, a.flush(nil, time.Now()))
	for id, v := range map[string]float64{
		`x{metric_type="counter"}`: 1, `x{metric_type="gauge"}`: 5, `x.count{metric_type="timing"}`: 1,
		`x.count{metric_type="histogram"}`: 1, `x.count{metric_type="distribution"}`: 1, `x{metric_type="set"}`: 1,
		`x.count{metric_type="counter"}`:      9,
		`y{env="prod",metric_type="counter"}`: 1, `y{env="prod",metric_type="gauge"}`: 2,
	} {
		if got[id] != v {
			t.Errorf("%s = %v, want %v", id, got[id], v)
		}
	}
}

// TestNames: a name with spaces is the name with '_' (etsy stats.js
// sanitizeKeyName, statsd_exporter's escaping), one series with the name as
// written so; names and tags in UTF-8 beyond ASCII stay as they are.
func TestNames(t *testing.T) {
	a := newAggregator(100, maxSamples)
	for _, l := range []string{"has space:1|c", "has_space:2|c", "température.°C:21|g|#city:Zürich"} {
		feed(t, a, l)
	}
	got := identities(t, a.flush(nil, time.Now()))
	want := map[string]float64{`has_space{metric_type="counter"}`: 3, `température.°C{city="Zürich",metric_type="gauge"}`: 21}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestGaugeDeltaAcrossFlushes(t *testing.T) {
	a := newAggregator(10, maxSamples)
	feed(t, a, "g:10|g")
	feed(t, a, "c:3|c")
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{"g": 10, "c": 3})
	// Nothing sent: an idle counter is neither reported nor kept, the gauge
	// is kept (unreported) so that a delta still applies to it.
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{})
	if len(a.series) != 1 {
		t.Errorf("%d series kept after an idle interval, want the gauge only", len(a.series))
	}
	feed(t, a, "g:-4|g")
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{"g": 6})
	// An hour later the gauge is forgotten.
	a.flush(nil, time.Now().Add(2*gaugeTTL))
	if len(a.series) != 0 {
		t.Errorf("%d series kept past the gauge TTL", len(a.series))
	}
}

// TestSumsStayFinite: a value that would take a sum beyond float64 is
// refused; the sum stays as it was.
func TestSumsStayFinite(t *testing.T) {
	a := newAggregator(10, maxSamples)
	var p lineParser
	var s sample
	var got []reason
	for _, l := range []string{"c:1.7e308|c", "c:1.7e308|c", "c:-1|c", "g:1.7e308|g", "g:+1.7e308|g",
		"t:1.7e308|ms", "t:1.7e308|ms", "t:2|ms",
		// a value the rate scales beyond float64, of either sign: the sum
		// would be infinite, and then NaN; a gauge takes no rate
		"r:1e308:-1e308:1|c|@1e-300", "k:1e308|g|@1e-300", "h:1e308|h|@0.5"} {
		for p.reset([]byte(l)); ; {
			if _, more := p.next(&s); !more {
				break
			}
			got = append(got, a.add(&s, time.Now()))
		}
	}
	want := []reason{ok, badValue, ok, ok, badValue, ok, badValue, ok, badValue, badValue, ok, ok, badValue}
	tiny := 1e-300
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	diffPoints(t, pointMap(a.flush(nil, time.Now())), map[string]float64{
		"c": 1.7e308 - 1, "g": 1.7e308, "t.count": 2, "t.sum": 1.7e308 + 2, "t.min": 2, "t.max": 1.7e308,
		"t.mean": (1.7e308 + 2) / 2, "t.median": (1.7e308 + 2) / 2, "t.p90": 1.7e308, "t.p95": 1.7e308, "t.p99": 1.7e308,
		"r": 1 / tiny, "k": 1e308,
	})
}

func TestSeriesLimit(t *testing.T) {
	a := newAggregator(2, maxSamples)
	var s sample
	var p lineParser
	for i, want := range []reason{ok, ok, tooManySeries} {
		p.reset(fmt.Appendf(nil, "m%d:1|c", i))
		p.next(&s)
		if r := a.add(&s, time.Now()); r != want {
			t.Errorf("series %d: %v, want %v", i, r, want)
		}
	}
}

// TestParseAndAddAllocateNothing guards the steady state: once a series
// exists, a line of any form is parsed and aggregated without allocating.
func TestParseAndAddAllocateNothing(t *testing.T) {
	a := newAggregator(100, maxSamples)
	lines := [][]byte{
		[]byte("req:1|c|@0.5|#env:prod,zone:a"), []byte("temp:+1|g"), []byte("lat:12|ms|#zone:a,env:prod"),
		[]byte("size:3|h"), []byte("users:alice|s"), []byte("dist:3|d|#a:b|c:container|T1700000000"),
		[]byte("req:1|c|#env:prod,#zone:a,,"), []byte("lat:1:2:3:4|ms|#zone:a,env:prod"), []byte("mixed:1|c:2|ms|@0.5:3|g"),
		[]byte("has space:1|c"), []byte("température.°C:21|g|#city:Zürich"),
	}
	var s sample
	var p lineParser
	run := func() {
		for _, l := range lines {
			for p.reset(l); ; {
				r, more := p.next(&s)
				if !more {
					break
				}
				if r != ok {
					t.Fatalf("%q: %v", l, r)
				}
				a.add(&s, time.Time{})
			}
		}
	}
	run() // create the series
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Errorf("%v allocations per %d lines, want 0", n, len(lines))
	}
}

// feed parses a line of one or more metrics into a, which must accept them.
func feed(t *testing.T, a *aggregator, line string) {
	t.Helper()
	var p lineParser
	var s sample
	for p.reset([]byte(line)); ; {
		r, more := p.next(&s)
		if !more {
			return
		}
		if r == ok {
			r = a.add(&s, time.Now())
		}
		if r != ok {
			t.Fatalf("%q: %v", line, r)
		}
	}
}

// pointMap is the points by name alone.
func pointMap(points []telemetry.Point) map[string]float64 {
	m := map[string]float64{}
	for _, p := range points {
		m[p.Name] = p.Value
	}
	return m
}

// identities is the points by name and every tag, `name{k="v",…}`; it fails
// the test when two points share one, or a point lacks its type.
func identities(t *testing.T, points []telemetry.Point) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, p := range points {
		id := identity(p)
		if _, dup := m[id]; dup {
			t.Errorf("two points are %s", id)
		}
		if p.Tags[typeTag] == "" {
			t.Errorf("point %s has no %s tag", id, typeTag)
		}
		m[id] = p.Value
	}
	return m
}

func identity(p telemetry.Point) string {
	var tags []string
	for k, v := range p.Tags {
		tags = append(tags, fmt.Sprintf("%s=%q", k, v))
	}
	slices.Sort(tags)
	return p.Name + "{" + strings.Join(tags, ",") + "}"
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

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		"req:1|c", "req:2|c|@0.1|#a:b,c", "t:-1|g", "l:1.5|ms", "s:x|s", "h:1|d|T123", "x:1|c||", "::|#",
		// Tags: empty section, empty items, a '#' before each, two sections,
		// the reserved key, invalid UTF-8, non-ASCII.
		"x:1|c|#", "x:1|c|#a:b,,c:d", "x:1|c|#a:b,#c:d", "x:1|c|#a:b|c:id|#c:d", "x:1|c|#metric_type:g",
		"x:1|c|#tag:\xc3\x28", "inv\xc3\x28:1|c", "temp.°C:1|g|#city:Zürich", "has space:1|c",
		// Several values: packed, Etsy's bits, both, a set with colons.
		"t:0.5:120:3000|ms|#a:b", "p:1:2:32|d", "foo:200|ms:300|ms:5|c|@0.1:6|g", "x:1:2|ms:3|c",
		"v:0|ms|@0.1:0|ms|:1|ms", "ip:fe80::1|s", "x:1|c|#a:b|c:sha256:ab|T1656581400:2|g",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		a := newAggregator(1000, 16)
		line = trimLine(line)
		if len(line) == 0 || bytes.IndexByte(line, '\n') >= 0 {
			return
		}
		var p lineParser
		var s sample
		n := 0
		for p.reset(line); ; n++ {
			r, more := p.next(&s)
			if !more {
				break
			}
			if r >= numReasons {
				t.Fatalf("reason %d out of range", r)
			}
			if r != ok {
				continue
			}
			if len(s.name) == 0 || len(s.name) > maxNameLen || !utf8.Valid(s.name) {
				t.Fatalf("accepted name %q", s.name)
			}
			for rest := s.tags; len(rest) > 0; {
				var tag []byte
				tag, rest = nextTag(rest)
				key, _, _ := bytes.Cut(tag, []byte{':'})
				if len(tag) > 0 && (!utf8.Valid(tag) || len(key) == 0 || string(key) == typeTag ||
					bytes.ContainsFunc(tag, func(r rune) bool { return r < ' ' || r == 0x7f })) {
					t.Fatalf("accepted tag %q", tag)
				}
			}
			if !(s.rate > 0 && s.rate <= 1) || math.IsNaN(s.value) || math.IsInf(s.value, 0) {
				t.Fatalf("accepted %+v", s)
			}
			if s.kind < counter || s.kind >= numKinds {
				t.Fatalf("kind %d", s.kind)
			}
			a.add(&s, time.Now())
		}
		// One metric at least, and at most one per ':' (the name's, and
		// one before each further value).
		if colons := bytes.Count(line, []byte{':'}); n < 1 || n > max(1, colons) {
			t.Fatalf("%d metrics from %q", n, line)
		}
		for _, pt := range a.flush(nil, time.Now()) {
			if math.IsNaN(pt.Value) || math.IsInf(pt.Value, 0) {
				t.Fatalf("point %s is %v from %q", pt.Name, pt.Value, line)
			}
			if !utf8.ValidString(pt.Name) {
				t.Fatalf("point name %q from %q", pt.Name, line)
			}
			for k, v := range pt.Tags {
				if !utf8.ValidString(k) || !utf8.ValidString(v) {
					t.Fatalf("point tag %q:%q from %q", k, v, line)
				}
			}
		}
	})
}

// FuzzDatagram feeds whole datagrams, truncated or not, through the server's
// line splitting, parsing and aggregation: every metric is either accepted or
// refused with a counted reason, and nothing panics.
func FuzzDatagram(f *testing.F) {
	f.Add([]byte("a:1|c\nb:2|g\r\nc:3|ms|@0.5|#x:y\n\n"), false)
	f.Add([]byte("a:1|c\nb:2|"), true)
	f.Add([]byte("foo:200|ms:300|ms:5|c|@0.1:6|g\nbar:1|c:5|ms\n p:1:2:3|d|#a:b,#c:d \n"), false)
	f.Add([]byte("valid_utf8:1|c\ninvalid\xc3\x28utf8:1|c"), false)
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
		// Each non-empty line is at least one metric and at most one per
		// ':'; a truncated datagram refuses its cut line once.
		lo, hi := uint64(0), uint64(0)
		lines := bytes.Split(d, []byte{'\n'})
		if trunc {
			lo, hi = 1, 1
			lines = lines[:len(lines)-1]
		}
		for _, l := range lines {
			if l = trimLine(l); len(l) > 0 {
				lo++
				hi += uint64(max(1, bytes.Count(l, []byte{':'})))
			}
		}
		if handled < lo || handled > hi {
			t.Fatalf("%d metrics counted for %d..%d in %q (truncated %v)", handled, lo, hi, d, trunc)
		}
		s.agg.flush(nil, time.Now())
	})
}
