package spool

//go:generate go run github.com/tinylib/msgp@v1.6.5 -file record.go -o record_gen.go -tests=false

// Decoding is bounded: a payload (msgp counts bytes as an array) at most
// MaxRecord, maps at most 8 fields.
//
//msgp:limit arrays:1048576 maps:8

// Record is one message waiting for the broker's acknowledgement. Its
// sequence number lives in the frame around it (see frame.go), so recovery
// can scan a segment without decoding records.
type Record struct {
	Topic   string `msg:"t"` // below <prefix>/<node>/: telemetry, event, heartbeat, …
	Payload []byte `msg:"p"` // the encoded envelope
	Queued  int64  `msg:"q"` // unix seconds when it was queued, for the backlog's age
}
