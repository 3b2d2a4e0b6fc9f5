package telemetry

import (
	"encoding/hex"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

func sampleBatch() *Batch {
	return &Batch{Source: "host", Time: time.Unix(1763700000, 0), Points: []Point{
		{Name: "host.load1", Value: 0.25},
		{Name: "host.memory.total_bytes", Value: 25769803776},
		{Name: "host.cpu.busy_percent", Value: 12.345678901, Tags: map[string]string{"cpu": "total"}},
		{Name: "disk.read_iops", Value: -3, Tags: map[string]string{"device": "sda", "x": ""}},
		{Name: "big", Value: 1e300},
	}}
}

func TestBatchRoundTrip(t *testing.T) {
	var e Encoder
	data, err := e.Encode(Header{Node: "node-1", Seq: 42, Time: time.Unix(1763700001, 0), Kind: KindBatch}, []Batch{*sampleBatch(), {Source: "empty"}})
	if err != nil {
		t.Fatal(err)
	}
	env, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if env.V != Version || env.Node != "node-1" || env.Seq != 42 || env.Kind != KindBatch || env.Time.Unix() != 1763700001 {
		t.Fatalf("envelope %+v", env)
	}
	batches, err := env.DecodeBatches()
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != 2 || batches[1].Source != "empty" || len(batches[1].Points) != 0 {
		t.Fatalf("batches %+v", batches)
	}
	got, want := batches[0], sampleBatch()
	if got.Source != want.Source || !got.Time.Equal(want.Time) || !reflect.DeepEqual(got.Points, want.Points) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

func TestIntegralValuesAreIntegers(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{0, "00"}, {23, "17"}, {24, "1818"}, {-1, "20"}, {1 << 32, "1b0000000100000000"},
		{0.5, "fa3f000000"}, {0.1, "fb3fb999999999999a"},
	} {
		if got := hex.EncodeToString(appendNumber(nil, tc.v)); got != tc.want {
			t.Errorf("%v encodes as %s, want %s", tc.v, got, tc.want)
		}
	}
}

func TestOtherKindsRoundTrip(t *testing.T) {
	var e Encoder
	hb := Heartbeat{Node: "n", Seq: 7, Time: time.Unix(1763700000, 0).UTC(), Version: "v1", UptimeSec: 10, BootID: "b",
		Health: Degraded, Why: "disk failing", SpoolDepth: 3, Dropped: 1, Instance: "3f9a"}
	data, err := e.Encode(Header{Node: "n", Seq: 7, Time: hb.Time, Kind: KindHeartbeat, Unsynced: true, Instance: "3f9a"}, hb)
	if err != nil {
		t.Fatal(err)
	}
	env, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !env.Unsynced || env.Instance != "3f9a" {
		t.Errorf("header lost: unsynced %v, instance %q", env.Unsynced, env.Instance)
	}
	// Any standard decoder reads the hand-written header, flag included.
	var generic map[uint64]any
	if err := cbor.Unmarshal(data, &generic); err != nil || generic[7] != true || generic[8] != "3f9a" {
		t.Errorf("generic decode: %v, keys 7 and 8 = %v, %v", err, generic[7], generic[8])
	}
	var got Heartbeat
	if err := env.DecodeBody(&got); err != nil {
		t.Fatal(err)
	}
	got.Time = got.Time.UTC()
	if !reflect.DeepEqual(got, hb) {
		t.Fatalf("got %+v, want %+v", got, hb)
	}
}

// TestForwardCompatible decodes a message from a newer sender (schema v2,
// with envelope and body keys v1 does not know) with this v1 decoder.
func TestForwardCompatible(t *testing.T) {
	type hbV2 struct {
		Heartbeat
		Temperature float64  `cbor:"40,keyasint"`
		Labels      []string `cbor:"41,keyasint"`
	}
	type envV2 struct {
		Envelope
		Region string `cbor:"9,keyasint"`
	}
	body, err := encMode.Marshal(hbV2{Heartbeat: Heartbeat{Node: "n", Seq: 1, Time: time.Unix(1, 0), Health: Healthy}, Temperature: 41.5, Labels: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	data, err := encMode.Marshal(envV2{Envelope: Envelope{V: 2, Node: "n", Seq: 1, Time: time.Unix(1, 0), Kind: KindHeartbeat, Body: body}, Region: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	env, err := Decode(data)
	if err != nil {
		t.Fatalf("v2 envelope refused: %v", err)
	}
	var hb Heartbeat
	if err := env.DecodeBody(&hb); err != nil || env.V != 2 || hb.Health != Healthy || hb.Seq != 1 {
		t.Fatalf("v2 heartbeat: %+v, %v", hb, err)
	}
}

func TestDecoderIsStrictAndBounded(t *testing.T) {
	var e Encoder
	good, _ := e.Encode(Header{Node: "n", Seq: 1, Time: time.Unix(1, 0), Kind: KindState}, State{State: "online"})
	good = append([]byte(nil), good...)
	deep := "81"
	for range 10 {
		deep = "81" + deep
	}
	for _, tc := range []struct {
		name, hex, want string
	}{
		{"duplicate key", "a20101" + "0102", "duplicate map key"},
		{"indefinite map", "bf0101ff", "indefinite-length"},
		{"too deep", "a1" + "06" + deep + "00", "exceeded max nested level"},
		{"array too long", "a106" + "9a00010000", "exceeded max number of elements"},
		{"time without tag", "a5010102616e0301" + "0401" + "0504", "time"},
		{"not a map", "01", "cannot unmarshal"},
		{"truncated", hex.EncodeToString(good[:len(good)-2]), "unexpected EOF"},
		{"no body", "a401010261610301" + "0504", "no body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := hex.DecodeString(tc.hex)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Decode(data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Decode(make([]byte, MaxMessage+1)); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("oversize input: %v", err)
	}
	if _, err := Decode(good); err != nil {
		t.Errorf("good message refused: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	var e Encoder
	for kind, body := range map[Kind]any{KindBatch: []Batch{*sampleBatch()}, KindState: State{State: "offline"},
		KindEvent:     Event{Severity: Warning, Kind: "link", Subject: "eth0", New: "down"},
		KindHeartbeat: Heartbeat{Node: "n", Health: Healthy}} {
		data, _ := e.Encode(Header{Node: "n", Seq: 1, Time: time.Unix(1, 0), Kind: kind}, body)
		f.Add(append([]byte(nil), data...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := Decode(data)
		if err != nil {
			return
		}
		if env.Kind == KindBatch {
			checkBatches(t, env)
			return
		}
		var body any
		switch env.Kind {
		case KindHeartbeat:
			body = &Heartbeat{}
		case KindEvent:
			body = &Event{}
		default:
			body = &State{}
		}
		_ = env.DecodeBody(body)
	})
}

// checkBatches decodes a telemetry message; what is accepted must encode
// again and decode to the same points.
func checkBatches(t *testing.T, env Envelope) {
	bs, err := env.DecodeBatches()
	if err != nil {
		return
	}
	var e Encoder
	env2, err := Decode(e.EncodeBatches(Header{Node: env.Node, Seq: env.Seq, Time: env.Time, Kind: KindBatch}, bs))
	if err != nil {
		t.Fatalf("re-encoded batches refused: %v", err)
	}
	bs2, err := env2.DecodeBatches()
	if err != nil || len(bs2) != len(bs) {
		t.Fatalf("re-encoded batches: %d of %d, %v", len(bs2), len(bs), err)
	}
	for i := range bs {
		for j := range bs[i].Points {
			p1, p2 := bs[i].Points[j], bs2[i].Points[j]
			if p1.Name != p2.Name || !reflect.DeepEqual(p1.Tags, p2.Tags) ||
				(p1.Value != p2.Value && !(math.IsNaN(p1.Value) && math.IsNaN(p2.Value))) {
				t.Fatalf("point %+v became %+v", p1, p2)
			}
		}
	}
}

// BenchmarkEncodeBatch is the encode cost of one batch of 23 points, 11 of
// them tagged: the target is at most 2 allocations.
func BenchmarkEncodeBatch(b *testing.B) {
	var e Encoder
	batch := sampleBatch()
	for i := range 18 {
		batch.Points = append(batch.Points, Point{Name: fmt.Sprintf("net.metric%d", i), Value: float64(i) / 7,
			Tags: map[string]string{"link": "eth0"}})
	}
	batches := []Batch{*batch}
	t := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		e.EncodeBatches(Header{Node: "3d1219c7c4c5404aaa1f6d2a48adfda4", Seq: 123456, Time: t, Kind: KindBatch}, batches)
	}
}

func TestDecodeBatchesRejectsBadIndex(t *testing.T) {
	body, err := encMode.Marshal(wireMessage{Strings: []string{"a"}, Batches: []wireBatch{{Source: "s", Time: time.Unix(1, 0),
		Points: []wirePoint{{Name: 0, Value: 1}, {Name: 0, Value: 2, Tags: map[uint64]uint64{0: 5}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	env := Envelope{V: 1, Node: "n", Kind: KindBatch, Body: body}
	_, err = env.DecodeBatches()
	if err == nil || !strings.Contains(err.Error(), "batch 0 point 1: tag value index 5 beyond the 1 strings") {
		t.Fatalf("err = %v", err)
	}
}
