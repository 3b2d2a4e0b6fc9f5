package telemetry

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/seed69aca190/edgeagent/internal/text"
)

// junk returns random bytes as a string, more often than not invalid UTF-8.
func junk(r *rand.Rand) string {
	b := make([]byte, r.IntN(12))
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return string(b)
}

// fill sets every string reachable in v (fields, slice elements, map keys
// and values) with next() and returns how many of them are not valid UTF-8.
func fill(v reflect.Value, next func() string) int {
	bad := 0
	set := func(s string) string {
		if !utf8.ValidString(s) {
			bad++
		}
		return s
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(set(next()))
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			break
		}
		for i := range v.NumField() {
			bad += fill(v.Field(i), next)
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			break // bytes, not text
		}
		if v.Len() == 0 {
			v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		}
		for i := range v.Len() {
			bad += fill(v.Index(i), next)
		}
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for range 2 {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			bad += fill(k, next) + fill(e, next)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	}
	return bad
}

// TestEncoderEscapesWhatIsNotText puts random bytes into every string of
// every kind of message, the header's included: the strict decoder accepts
// each, the strings read back escaped, and each escaped one is counted.
func TestEncoderEscapesWhatIsNotText(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	next := func() string { return junk(r) }
	for range 200 {
		for _, kind := range []Kind{KindBatch, KindHeartbeat, KindEvent, KindState, KindCommand, KindCommandResult} {
			var body any
			switch kind {
			case KindBatch:
				body = &[]Batch{{Time: time.Unix(1, 0), Points: []Point{{Value: 1}, {Value: 2.5}}}}
			case KindHeartbeat:
				body = &Heartbeat{Time: time.Unix(1, 0)}
			case KindEvent:
				body = &Event{Time: time.Unix(1, 0)}
			case KindState:
				body = &State{}
			case KindCommand:
				body = &Command{IssuedAt: time.Unix(1, 0), ExpiresAt: time.Unix(2, 0)}
			case KindCommandResult:
				body = &CommandResult{Stdout: Output{Data: []byte("\xff")}}
			}
			var h Header
			bad := fill(reflect.ValueOf(&h).Elem(), next) + fill(reflect.ValueOf(body).Elem(), next)
			h.Kind, h.Time = kind, time.Unix(3, 0)
			if h.Node == "" {
				h.Node = "n" // Decode refuses an envelope without a node
			}
			var e Encoder
			data, err := e.Encode(h, reflect.ValueOf(body).Elem().Interface())
			if err != nil {
				t.Fatal(err)
			}
			// A batch's string table holds each string once: as many, or fewer.
			if n := e.Escaped(); n != uint64(bad) && (kind != KindBatch || n > uint64(bad) || (n == 0) != (bad == 0)) {
				t.Fatalf("%s: %d escaped, want %d", kind, n, bad)
			}
			env, err := Decode(data)
			if err != nil {
				t.Fatalf("%s refused: %v", kind, err)
			}
			if env.Node != text.EscapeString(h.Node) || env.Instance != text.EscapeString(h.Instance) {
				t.Fatalf("header %q %q became %q %q", h.Node, h.Instance, env.Node, env.Instance)
			}
			got := reflect.New(reflect.TypeOf(body).Elem())
			if kind == KindBatch {
				var bs []Batch
				bs, err = env.DecodeBatches()
				got.Elem().Set(reflect.ValueOf(bs))
			} else {
				err = env.DecodeBody(got.Interface())
			}
			if err != nil {
				t.Fatalf("%s body refused: %v", kind, err)
			}
			if want := escapedCopy(reflect.ValueOf(body).Elem()); !sameStrings(got.Elem(), want) {
				t.Fatalf("%s: decoded %+v, want %+v", kind, got.Elem(), want)
			}
		}
	}
}

// escapedCopy returns v with every string escaped, as it should arrive.
func escapedCopy(v reflect.Value) reflect.Value {
	c := reflect.New(v.Type()).Elem()
	switch v.Kind() {
	case reflect.String:
		c.SetString(text.EscapeString(v.String()))
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			c.Set(v)
			break
		}
		for i := range v.NumField() {
			c.Field(i).Set(escapedCopy(v.Field(i)))
		}
	case reflect.Slice:
		if v.IsNil() || v.Type().Elem().Kind() == reflect.Uint8 {
			c.Set(v)
			break
		}
		c.Set(reflect.MakeSlice(v.Type(), v.Len(), v.Len()))
		for i := range v.Len() {
			c.Index(i).Set(escapedCopy(v.Index(i)))
		}
	case reflect.Map:
		if v.IsNil() {
			break
		}
		c.Set(reflect.MakeMap(v.Type()))
		for it := v.MapRange(); it.Next(); {
			c.SetMapIndex(escapedCopy(it.Key()), escapedCopy(it.Value()))
		}
	default:
		c.Set(v)
	}
	return c
}

// sameStrings compares two values by their strings and numbers, ignoring
// times (the wire keeps whole seconds) and the nil-ness of empty slices.
func sameStrings(a, b reflect.Value) bool {
	return fmt.Sprintf("%q", strip(a)) == fmt.Sprintf("%q", strip(b))
}

func strip(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			return nil
		}
		var out []any
		for i := range v.NumField() {
			out = append(out, strip(v.Field(i)))
		}
		return out
	case reflect.Slice:
		var out []any
		for i := range v.Len() {
			out = append(out, strip(v.Index(i)))
		}
		return out
	case reflect.Map:
		m := map[string]any{}
		for it := v.MapRange(); it.Next(); {
			m[fmt.Sprint(strip(it.Key()))] = strip(it.Value())
		}
		return m
	}
	return v.Interface()
}

// TestValidBatchAllocatesNothing: the check that makes the safety net costs
// no allocation on valid text, the encoder's hot path.
func TestValidBatchAllocatesNothing(t *testing.T) {
	var e Encoder
	batches := []Batch{*sampleBatch()}
	h := Header{Node: "n", Seq: 1, Time: time.Unix(1, 0), Kind: KindBatch, Instance: "3f9a"}
	e.EncodeBatches(h, batches) // grow the buffers
	if n := testing.AllocsPerRun(100, func() { e.EncodeBatches(h, batches) }); n != 0 {
		t.Errorf("EncodeBatches: %v allocations, want 0", n)
	}
	if e.Escaped() != 0 {
		t.Errorf("valid text escaped %d times", e.Escaped())
	}
}

// FuzzEncodeText: whatever bytes a point, a tag, an event or a command
// result holds, the message decodes.
func FuzzEncodeText(f *testing.F) {
	f.Add("host.load1", "cpu", "total", "eth0")
	f.Add("disk\xff", "dev\\ice", "\xe2\x82", "\xed\xa0\x80")
	f.Fuzz(func(t *testing.T, name, key, value, subject string) {
		var e Encoder
		h := Header{Node: "n", Seq: 1, Time: time.Unix(1, 0)}
		for kind, body := range map[Kind]any{
			KindBatch: []Batch{{Source: subject, Time: time.Unix(1, 0), Points: []Point{
				{Name: name, Value: 1, Tags: map[string]string{key: value, value: key}}}}},
			KindEvent:         Event{Time: time.Unix(1, 0), Kind: name, Subject: subject, Old: key, New: value, Message: name + value},
			KindCommandResult: CommandResult{ID: key, Status: value, Reason: subject},
		} {
			h.Kind = kind
			data, err := e.Encode(h, body)
			if err != nil {
				t.Fatal(err)
			}
			env, err := Decode(data)
			if err == nil && kind == KindBatch {
				_, err = env.DecodeBatches()
			} else if err == nil {
				err = env.DecodeBody(&map[uint64]any{})
			}
			if err != nil {
				t.Fatalf("%s refused: %v", kind, err)
			}
		}
	})
}
