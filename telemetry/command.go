package telemetry

import "time"

// Command is a request from the controller to one node, on
// <prefix>/<node>/cmd. Each ID runs at most once on a node: a repeated ID is
// answered from the node's cache of recent results.
type Command struct {
	ID        string    `cbor:"1,keyasint" json:"id"`
	Node      string    `cbor:"2,keyasint" json:"node"` // the target; another node's request is refused
	Name      string    `cbor:"3,keyasint" json:"name"` // a built-in (ping, inventory, …) or a plugin's file name
	Args      []string  `cbor:"4,keyasint,omitempty" json:"args,omitempty"`
	IssuedAt  time.Time `cbor:"5,keyasint" json:"issued_at"`
	ExpiresAt time.Time `cbor:"6,keyasint" json:"expires_at"` // refused when it arrives later
	// TimeoutSec bounds the run; zero means the node's default (60 s).
	TimeoutSec uint32 `cbor:"7,keyasint,omitempty" json:"timeout_sec,omitempty"`
}

// Command statuses.
const (
	StatusOK       = "ok"
	StatusFailed   = "failed"    // ran and failed (non-zero exit, or an error)
	StatusRefused  = "refused"   // not run: malformed, expired, another node's, unknown, unsafe, queue full
	StatusTimedOut = "timed out" // killed at its deadline
)

// Output is one captured stream, capped: beyond the cap it is cut and flagged,
// and Total says how much there was.
type Output struct {
	Data      []byte `cbor:"1,keyasint" json:"data"`
	Truncated bool   `cbor:"2,keyasint,omitempty" json:"truncated,omitempty"`
	Total     uint64 `cbor:"3,keyasint" json:"total"`
}

// CommandResult answers a Command, on <prefix>/<node>/cmd/result.
type CommandResult struct {
	ID         string    `cbor:"1,keyasint" json:"id"`
	Status     string    `cbor:"2,keyasint" json:"status"`
	Reason     string    `cbor:"3,keyasint,omitempty" json:"reason,omitempty"` // why refused, failed or timed out
	ExitCode   int       `cbor:"4,keyasint" json:"exit_code"`
	Stdout     Output    `cbor:"5,keyasint" json:"stdout"`
	Stderr     Output    `cbor:"6,keyasint" json:"stderr"`
	Started    time.Time `cbor:"7,keyasint,omitempty" json:"started,omitzero"`
	DurationMs int64     `cbor:"8,keyasint" json:"duration_ms"`
	// Cached reports a repeated request answered from the cache, not run again.
	Cached bool `cbor:"9,keyasint,omitempty" json:"cached,omitempty"`
}
