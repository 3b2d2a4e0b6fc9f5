// Package statsd is the embedded StatsD server that the node's own daemons
// send counters, gauges, timers, histograms and sets to, so that one process
// per node funnels every metric to the controller.
//
// The protocol is etsy StatsD with the DogStatsD extensions:
//
//	name:value[:value…]|type[|@rate][|#tag:value,tag][:value…|type…]     type: c g ms h d s
//
// several lines per datagram, several values per line (DogStatsD's packed
// values, Etsy's several value|type sections after one name), each value a
// metric. Per flush interval, counters report their sum scaled by 1/rate;
// gauges their value (+N/-N changes it; an idle gauge is not reported but
// remembered for an hour); sets the number of distinct members; timers,
// histograms and distributions name.count, .sum, .min, .max, .mean, .median,
// .p90, .p95 and .p99, percentiles by the nearest-rank rule over the samples
// received (up to 4096 per interval, then a uniform reservoir). Tags are
// kept, their order does not matter, and every point carries its type in the
// metric_type tag, so that one name sent as two types stays two series.
// Names and tags are valid UTF-8 or refused: the controller's decoder takes
// nothing else.
//
// Reading is apart from parsing: one goroutine reads up to 32 datagrams of up
// to 64 KiB per recvmmsg into recycled buffers mapped outside the Go heap,
// another parses them. Parsing and aggregating an existing series allocate
// nothing. Refused metrics are counted by reason (Stats) and never stop the
// server; the kernel's own drops, when the socket buffer overflows, are the
// host's UDP RcvbufErrors counter. docs/collectors.md says what each form
// does beside Etsy's server, Telegraf and statsd_exporter.
package statsd
