package telemetry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/seed69aca190/edgeagent/internal/text"
)

// Version is the schema version this package writes. A receiver decodes any
// version: keys it does not know are ignored (forward compatible).
const Version = 1

// Kind says what an envelope's body is.
type Kind uint8

// Kinds of message.
const (
	KindBatch         Kind = 1 // []Batch (DecodeBatches): every collector's points of one flush, on <prefix>/<node>/telemetry
	KindHeartbeat     Kind = 2 // Heartbeat, on …/heartbeat
	KindEvent         Kind = 3 // Event, on …/event
	KindState         Kind = 4 // State, on …/state (retained; the last will says offline)
	KindCommand       Kind = 5 // controller → node, on …/cmd
	KindCommandResult Kind = 6 // on …/cmd/result
	KindUpdateOffer   Kind = 7 // UpdateOffer, controller → node, on …/update
	KindUpdateStatus  Kind = 8 // UpdateStatus, on …/update/status
)

func (k Kind) String() string {
	names := [...]string{"", "batch", "heartbeat", "event", "state", "command", "command result", "update offer", "update status"}
	if int(k) < len(names) && k != 0 {
		return names[k]
	}
	return fmt.Sprintf("kind %d", k)
}

// State is the retained presence message: "online" on connect; "offline" as
// the last will, or from an agent that stops on purpose (Clean); "upgrading"
// from an agent that hands over to a new image of itself in the same process
// (an upgrade or a reload) and disconnects cleanly: the new image says
// "online" when it is back.
type State struct {
	State string `cbor:"1,keyasint" json:"state"` // online, offline or upgrading
	// Clean reports an offline state sent by an agent that stopped on purpose.
	Clean bool `cbor:"2,keyasint,omitempty" json:"clean,omitempty"`
	// BackSec, with upgrading, is within how many seconds of sending it the
	// node expects to be online again: a duration, not a time, because the
	// node's clock may be wrong. Zero: the node did not say.
	BackSec uint32 `cbor:"3,keyasint,omitempty" json:"back_sec,omitempty"`
	// NextVersion, with upgrading, is the version the new image runs, when
	// the node knows it.
	NextVersion string `cbor:"4,keyasint,omitempty" json:"next_version,omitempty"`
}

// Envelope wraps every message: who sent it, its place in the sender's
// sequence (de-duplication is by node, instance and seq), when, and what it
// carries.
type Envelope struct {
	V    uint            `cbor:"1,keyasint" json:"v"`
	Node string          `cbor:"2,keyasint" json:"node"`
	Seq  uint64          `cbor:"3,keyasint" json:"seq"`
	Time time.Time       `cbor:"4,keyasint" json:"time"`
	Kind Kind            `cbor:"5,keyasint" json:"kind"`
	Body cbor.RawMessage `cbor:"6,keyasint" json:"-"`
	// Unsynced reports that the sender's clock was below its time floor
	// when the message was made: its times are the floor's estimate.
	Unsynced bool `cbor:"7,keyasint,omitempty" json:"unsynced,omitempty"`
	// Instance is random per start of the sending process: the controller
	// de-duplicates by (node, instance, seq), so two machines claiming one
	// node id, or a node whose numbers repeat after a restart (its state
	// could not be written), are never taken for redeliveries.
	Instance string `cbor:"8,keyasint,omitempty" json:"instance,omitempty"`
}

// Header is what an envelope says about its body.
type Header struct {
	Node     string
	Seq      uint64
	Time     time.Time
	Kind     Kind
	Unsynced bool   // see Envelope.Unsynced
	Instance string // see Envelope.Instance
}

// MaxMessage is the largest encoded message a receiver accepts; larger input
// is refused before decoding. Batches are split well below it.
const MaxMessage = 256 << 10

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.EncOptions{
		Time:          cbor.TimeUnix, // tag 1 with integer seconds: the batches are 10 s apart
		TimeTag:       cbor.EncTagRequired,
		ShortestFloat: cbor.ShortestFloat16,
		IndefLength:   cbor.IndefLengthForbidden,
	}.EncMode()
	if err != nil {
		panic(err)
	}
	// Everything decoded comes from the network: strict, and bounded far
	// below the library's defaults (32 levels, 131072 elements).
	decMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TimeTag:          cbor.DecTagRequired,
		MaxNestedLevels:  8,
		MaxArrayElements: 16384,
		MaxMapPairs:      512,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// Encoder builds envelopes into a buffer it reuses: the bytes returned are
// valid until the next call. Batches, the bulk of the traffic, are written by
// hand: no allocation, and integral values as CBOR integers (a count costs one
// to five bytes, not a float).
//
// Every string an Encoder writes is valid UTF-8, which the receiver's strict
// decoder demands: one that is not (a name that reached telemetry without
// passing text.EscapeString where it was read) is escaped by that rule and
// counted (Escaped), so a missed boundary costs a count, never a message.
type Encoder struct {
	buf     []byte
	strings []string          // the message's string table, in order
	index   map[string]uint64 // string → its place in the table
	escaped uint64
}

// Escaped counts the strings the encoder had to escape because they were not
// valid UTF-8, over its life: each is a name or text that some reader let
// through unescaped (a bug to report; the message itself went out).
func (e *Encoder) Escaped() uint64 { return e.escaped }

// Encode wraps body, which must be the Go type that h.Kind names.
func (e *Encoder) Encode(h Header, body any) ([]byte, error) {
	if batches, ok := body.([]Batch); ok && h.Kind == KindBatch {
		return e.EncodeBatches(h, batches), nil
	}
	raw, err := encMode.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", h.Kind, err)
	}
	raw, n := escapeTexts(raw)
	e.escaped += n
	e.buf = append(e.header(h), raw...)
	return e.buf, nil
}

// EncodeBatches encodes one telemetry message; once its buffers have grown
// it allocates nothing (but to escape a string that is not valid UTF-8). Point names and tags are written once each into a
// string table that points refer to by index: names repeat across tags and
// nodes, and the table halves a message against JSON where plain CBOR saved
// only a third.
// h.Kind is taken to be KindBatch.
func (e *Encoder) EncodeBatches(h Header, batches []Batch) []byte {
	if e.index == nil {
		e.index = make(map[string]uint64)
	}
	clear(e.index)
	e.strings = e.strings[:0]
	for i := range batches {
		for j := range batches[i].Points {
			p := &batches[i].Points[j]
			e.intern(p.Name)
			for k, v := range p.Tags {
				e.intern(k)
				e.intern(v)
			}
		}
	}
	h.Kind = KindBatch
	b := appendHead(e.header(h), majorMap, 2)
	b = appendHead(appendUint(b, 1), majorArray, uint64(len(e.strings)))
	for _, s := range e.strings {
		b = e.appendText(b, s)
	}
	b = appendHead(appendUint(b, 2), majorArray, uint64(len(batches)))
	for i := range batches {
		b = e.appendBatch(b, &batches[i])
	}
	e.buf = b
	return b
}

func (e *Encoder) intern(s string) {
	if _, ok := e.index[s]; !ok {
		e.index[s] = uint64(len(e.strings))
		e.strings = append(e.strings, s)
	}
}

// header starts an envelope in the buffer, up to the body's key, which
// comes last.
func (e *Encoder) header(h Header) []byte {
	pairs := uint64(6)
	if h.Unsynced {
		pairs++
	}
	if h.Instance != "" {
		pairs++
	}
	b := appendHead(e.buf[:0], majorMap, pairs)
	b = appendUint(appendUint(b, 1), Version)
	b = e.appendText(appendUint(b, 2), h.Node)
	b = appendUint(appendUint(b, 3), h.Seq)
	b = appendTime(appendUint(b, 4), h.Time)
	b = appendUint(appendUint(b, 5), uint64(h.Kind))
	if h.Unsynced {
		b = append(appendUint(b, 7), majorSimple|21) // true
	}
	if h.Instance != "" {
		b = e.appendText(appendUint(b, 8), h.Instance)
	}
	return appendUint(b, 6)
}

// Decode checks and decodes an envelope; the body stays raw until
// DecodeBody, so a receiver can route by kind first.
func Decode(data []byte) (Envelope, error) {
	var env Envelope
	if len(data) > MaxMessage {
		return env, fmt.Errorf("message of %d bytes exceeds the %d-byte limit", len(data), MaxMessage)
	}
	if err := decMode.Unmarshal(data, &env); err != nil {
		return env, fmt.Errorf("decode envelope: %w", err)
	}
	switch {
	case env.V == 0:
		return env, errors.New("decode envelope: no schema version")
	case env.Kind == 0:
		return env, errors.New("decode envelope: no kind")
	case env.Node == "":
		return env, errors.New("decode envelope: no node")
	case len(env.Body) == 0:
		return env, errors.New("decode envelope: no body")
	}
	return env, nil
}

// DecodeBody decodes the envelope's body into v, which must fit its kind.
func (env Envelope) DecodeBody(v any) error {
	if err := decMode.Unmarshal(env.Body, v); err != nil {
		return fmt.Errorf("decode %s body: %w", env.Kind, err)
	}
	return nil
}

// CBOR major types, shifted into place.
const (
	majorUint   = 0 << 5
	majorNeg    = 1 << 5
	majorBytes  = 2 << 5
	majorText   = 3 << 5
	majorArray  = 4 << 5
	majorMap    = 5 << 5
	majorTag    = 6 << 5
	majorSimple = 7 << 5
)

func appendHead(b []byte, major byte, n uint64) []byte {
	switch {
	case n < 24:
		return append(b, major|byte(n))
	case n <= math.MaxUint8:
		return append(b, major|24, byte(n))
	case n <= math.MaxUint16:
		return append(b, major|25, byte(n>>8), byte(n))
	case n <= math.MaxUint32:
		return append(b, major|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, major|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func appendUint(b []byte, n uint64) []byte { return appendHead(b, majorUint, n) }

func appendText(b []byte, s string) []byte {
	return append(appendHead(b, majorText, uint64(len(s))), s...)
}

// appendText appends s as a text string, escaped (and counted) when it is
// not valid UTF-8.
func (e *Encoder) appendText(b []byte, s string) []byte {
	if !utf8.ValidString(s) {
		s = text.EscapeString(s)
		e.escaped++
	}
	return appendText(b, s)
}

// escapeTexts escapes every text string in the CBOR data item b that is not
// valid UTF-8, and says how many it escaped. b is encMode's output: well
// formed, definite lengths only. When every text string is valid, b is
// returned as it is.
func escapeTexts(b []byte) ([]byte, uint64) {
	var out []byte // b[:copied], its invalid texts escaped; nil until one is found
	copied, n := 0, uint64(0)
	for i, items := 0, 1; items > 0 && i < len(b); items-- {
		major, arg, size := readHead(b[i:])
		switch major {
		case majorArray:
			items += int(arg)
		case majorMap:
			items += 2 * int(arg)
		case majorTag:
			items++
		case majorBytes, majorText:
			content := b[i+size : i+size+int(arg)]
			if major == majorText && !utf8.Valid(content) {
				out = appendText(append(out, b[copied:i]...), text.Escape(content))
				copied = i + size + int(arg)
				n++
			}
			size += int(arg)
		}
		i += size
	}
	if n == 0 {
		return b, 0
	}
	return append(out, b[copied:]...), n
}

// readHead reads the head of the data item at the start of b: its major
// type, its argument (a length, a count, a value or a float's bits) and the
// head's size in bytes.
func readHead(b []byte) (major byte, arg uint64, size int) {
	major, info := b[0]&0xe0, b[0]&0x1f
	switch info {
	case 24:
		return major, uint64(b[1]), 2
	case 25:
		return major, uint64(binary.BigEndian.Uint16(b[1:])), 3
	case 26:
		return major, uint64(binary.BigEndian.Uint32(b[1:])), 5
	case 27:
		return major, binary.BigEndian.Uint64(b[1:]), 9
	}
	return major, uint64(info), 1 // below 24; encMode writes no indefinite lengths
}

// appendTime writes tag 1 (epoch time) with integer seconds.
func appendTime(b []byte, t time.Time) []byte {
	b = appendHead(b, majorTag, 1)
	return appendInt(b, t.Unix())
}

func appendInt(b []byte, n int64) []byte {
	if n >= 0 {
		return appendUint(b, uint64(n))
	}
	return appendHead(b, majorNeg, uint64(-1-n))
}

// appendNumber writes v as an integer when it is one (within ±2^53, where
// float64 is exact), else as the shortest float that holds it exactly.
func appendNumber(b []byte, v float64) []byte {
	if v == math.Trunc(v) && math.Abs(v) <= 1<<53 {
		return appendInt(b, int64(v))
	}
	if f := float32(v); float64(f) == v || math.IsNaN(v) {
		bits := math.Float32bits(f)
		return append(b, majorSimple|26, byte(bits>>24), byte(bits>>16), byte(bits>>8), byte(bits))
	}
	bits := math.Float64bits(v)
	return append(b, majorSimple|27, byte(bits>>56), byte(bits>>48), byte(bits>>40), byte(bits>>32),
		byte(bits>>24), byte(bits>>16), byte(bits>>8), byte(bits))
}

// appendBatch writes a batch as wireBatch describes it.
func (e *Encoder) appendBatch(b []byte, batch *Batch) []byte {
	b = appendHead(b, majorMap, 3)
	b = e.appendText(appendUint(b, 1), batch.Source)
	b = appendTime(appendUint(b, 2), batch.Time)
	b = appendHead(appendUint(b, 3), majorArray, uint64(len(batch.Points)))
	for i := range batch.Points {
		p := &batch.Points[i]
		pairs := uint64(2)
		if len(p.Tags) > 0 {
			pairs = 3
		}
		b = appendHead(b, majorMap, pairs)
		b = appendUint(appendUint(b, 1), e.index[p.Name])
		b = appendNumber(appendUint(b, 2), p.Value)
		if len(p.Tags) > 0 {
			b = appendHead(appendUint(b, 3), majorMap, uint64(len(p.Tags)))
			for k, v := range p.Tags {
				b = appendUint(appendUint(b, e.index[k]), e.index[v])
			}
		}
	}
	return b
}

// wireMessage is a telemetry message's body on the wire: the string table,
// then the batches whose points name their strings by index into it.
type wireMessage struct {
	Strings []string    `cbor:"1,keyasint"`
	Batches []wireBatch `cbor:"2,keyasint"`
}

type wireBatch struct {
	Source string      `cbor:"1,keyasint"`
	Time   time.Time   `cbor:"2,keyasint"`
	Points []wirePoint `cbor:"3,keyasint"`
}

type wirePoint struct {
	Name  uint64            `cbor:"1,keyasint"`
	Value float64           `cbor:"2,keyasint"`
	Tags  map[uint64]uint64 `cbor:"3,keyasint"`
}

// DecodeBatches decodes a telemetry message's body, resolving its string
// table; an index beyond the table is an error naming the point.
func (env Envelope) DecodeBatches() ([]Batch, error) {
	if env.Kind != KindBatch {
		return nil, fmt.Errorf("decode batches: message is a %s", env.Kind)
	}
	var w wireMessage
	if err := env.DecodeBody(&w); err != nil {
		return nil, err
	}
	str := func(i uint64, what string, b, p int) (string, error) {
		if i >= uint64(len(w.Strings)) {
			return "", fmt.Errorf("decode batch body: batch %d point %d: %s index %d beyond the %d strings", b, p, what, i, len(w.Strings))
		}
		return w.Strings[i], nil
	}
	out := make([]Batch, len(w.Batches))
	for bi, wb := range w.Batches {
		out[bi] = Batch{Source: wb.Source, Time: wb.Time, Points: make([]Point, len(wb.Points))}
		for pi, wp := range wb.Points {
			name, err := str(wp.Name, "name", bi, pi)
			if err != nil {
				return nil, err
			}
			p := Point{Name: name, Value: wp.Value}
			if len(wp.Tags) > 0 {
				p.Tags = make(map[string]string, len(wp.Tags))
				for k, v := range wp.Tags {
					ks, err := str(k, "tag key", bi, pi)
					if err != nil {
						return nil, err
					}
					vs, err := str(v, "tag value", bi, pi)
					if err != nil {
						return nil, err
					}
					p.Tags[ks] = vs
				}
			}
			out[bi].Points[pi] = p
		}
	}
	return out, nil
}
