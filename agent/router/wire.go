package router

//go:generate go run github.com/tinylib/msgp@v1.6.5 -file wire.go -o wire_gen.go -tests=false

// The control socket's wire format, for daemons in any language: each message
// is a 4-byte big-endian length followed by a MessagePack map (at most 1 MiB):
//
//	{"type": "register", "service": NAME, "interval_ms": N}   service → agent, first
//	{"type": "ok"} or {"type": "error", "error": WHY}          agent → service, the answer
//	{"type": "heartbeat"}                                      service → agent, every interval_ms
//	{"type": "call", "id": ID, "payload": BYTES}               agent → service
//	{"type": "reply", "id": ID, "payload": BYTES}              service → agent
//	{"type": "error", "id": ID, "error": WHY}                  service → agent, a failed call
//
// A service that sends nothing for three intervals is deregistered; so is one
// whose connection closes, except when the agent reloads: the socket stays,
// and a service that connects and registers again within 5 s (or three
// intervals) keeps its registration. One connection per name at a time.

// Decoding is bounded: a payload (msgp counts bytes as an array) at most
// maxFrame, maps at most 8 fields.
//
//msgp:limit arrays:1048576 maps:8

// Frame is one message on the control socket.
type Frame struct {
	Type       string `msg:"type"`
	Service    string `msg:"service,omitempty"`
	IntervalMs int64  `msg:"interval_ms,omitempty"`
	ID         string `msg:"id,omitempty"`
	Payload    []byte `msg:"payload,omitempty"`
	Error      string `msg:"error,omitempty"`
}
