package telemetry

import "time"

// The CBOR keys are small integers (the CDDL document names them): a telemetry
// batch repeats them for every point, and integers cost one byte where names
// cost five to fifteen.

// Point is one measured value. Names are dotted, lower case, subject first
// ("disk.write_bytes_per_sec"); what the value belongs to is in the tags
// ({"device": "sda"}), so that one name means one kind of thing fleet-wide.
type Point struct {
	Name  string            `cbor:"1,keyasint" json:"name"`
	Value float64           `cbor:"2,keyasint" json:"value"`
	Tags  map[string]string `cbor:"3,keyasint,omitempty" json:"tags,omitempty"`
}

// Batch is what one collector produced at one instant.
type Batch struct {
	Source string    `cbor:"1,keyasint" json:"source"` // the collector: host, disk, net, statsd, …
	Time   time.Time `cbor:"2,keyasint" json:"time"`
	Points []Point   `cbor:"3,keyasint" json:"points"`
}

// Severity says how urgently a person should look at an event.
type Severity string

// Severities, least urgent first.
const (
	Info     Severity = "info"
	Warning  Severity = "warning"
	Critical Severity = "critical"
)

// Event is a change of state, sent at once rather than with the next batch.
type Event struct {
	Time     time.Time `cbor:"1,keyasint" json:"time"`
	Severity Severity  `cbor:"2,keyasint" json:"severity"`
	Kind     string    `cbor:"3,keyasint" json:"kind"`    // link, tunnel, smart, filesystem, process, collector
	Subject  string    `cbor:"4,keyasint" json:"subject"` // what changed: eth0, /data, nginx
	Old      string    `cbor:"5,keyasint,omitempty" json:"old,omitempty"`
	New      string    `cbor:"6,keyasint" json:"new"`
	Message  string    `cbor:"7,keyasint" json:"message"`
	// Suppressed counts the events about this subject that were held back by
	// rate limiting since the previous one was sent.
	Suppressed uint64 `cbor:"8,keyasint,omitempty" json:"suppressed,omitempty"`
}

// Health is the one-word summary a heartbeat carries.
type Health string

// Health values.
const (
	Healthy  Health = "ok"       // every part works
	Degraded Health = "degraded" // some optional part is missing or failing; the rest reports
	Starting Health = "starting" // nothing collected yet
	// Unhealthy: the agent cannot do its job (it is about to lose data, or
	// cannot number or queue what it sends). Only this fails a health gate.
	Unhealthy Health = "unhealthy"
)

// Heartbeat proves the node is alive. The controller treats three missed
// heartbeats as offline.
type Heartbeat struct {
	Node    string    `cbor:"1,keyasint" json:"node"`
	Seq     uint64    `cbor:"2,keyasint" json:"seq"` // never goes backwards, also across restarts
	Time    time.Time `cbor:"3,keyasint" json:"time"`
	Version string    `cbor:"4,keyasint" json:"version"`
	Slot    string    `cbor:"5,keyasint,omitempty" json:"slot,omitempty"` // the slot running: a, b or factory
	// UptimeSec is the agent's; the host's is the host.uptime point.
	UptimeSec   int64     `cbor:"6,keyasint" json:"uptime_sec"`
	BootID      string    `cbor:"7,keyasint" json:"boot_id"`
	LastCollect time.Time `cbor:"8,keyasint,omitempty" json:"last_collect,omitzero"`
	SpoolDepth  uint64    `cbor:"9,keyasint" json:"spool_depth"`
	Dropped     uint64    `cbor:"10,keyasint" json:"dropped"` // records dropped by the spool, ever
	Health      Health    `cbor:"11,keyasint" json:"health"`
	// Why explains a health other than ok: one reason per part, "; " between.
	Why string `cbor:"12,keyasint,omitempty" json:"why,omitempty"`
	// Instance is random per start of the agent's process: two live
	// instances heard under one node id are two machines claiming it.
	Instance string `cbor:"13,keyasint,omitempty" json:"instance,omitempty"`
	// Rollback, in the first heartbeat after an upgrade was rolled back,
	// says which version did not stay and why.
	Rollback string `cbor:"14,keyasint,omitempty" json:"rollback,omitempty"`
}
