package release

import (
	"errors"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// fuzzSeeds are signed manifests: valid, and each kind of refusal.
func fuzzSeeds(t testing.TB) [][]byte {
	key := testKey(1)
	m := sampleManifest()
	arm := m
	arm.Arch, arm.ARM, arm.URLs, arm.AllowDowngrade = "arm", "7", nil, true
	expired := m
	expired.ExpiresAt = now.Add(-time.Hour)
	return [][]byte{sign(t, m, key), sign(t, arm, key), sign(t, expired, key), sign(t, m, testKey(2))}
}

// FuzzManifest feeds Verifier.Manifest arbitrary bytes: never a panic, every
// error a *Refusal, and nothing accepted that a trusted key did not sign in
// full form.
func FuzzManifest(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v := verifier(testKey(1), testKey(2))
		v.Highest = ""
		m, err := v.Manifest(data)
		if err != nil {
			if !errors.As(err, new(*Refusal)) {
				t.Fatalf("not a refusal: %v", err)
			}
			return
		}
		if m.Version == "" || m.OS == "" || m.Size == 0 || len(m.SHA256) != 32 || !now.Before(m.ExpiresAt) {
			t.Fatalf("accepted a malformed manifest: %+v", m)
		}
	})
}

// FuzzUpdateOffer decodes an offer as the agent does (the envelope, its body,
// then the signed manifest in it): never a panic, and an offer that decodes
// encodes to the same offer.
func FuzzUpdateOffer(f *testing.F) {
	var e telemetry.Encoder
	for _, s := range fuzzSeeds(f) {
		offer := telemetry.UpdateOffer{ID: "r-1", Manifest: s, URLs: []string{"http://10.0.0.1:8080/a"}, IssuedAt: now}
		data, err := e.Encode(telemetry.Header{Node: "n1", Seq: 7, Time: now, Kind: telemetry.KindUpdateOffer}, offer)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte(nil), data...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := telemetry.Decode(data)
		if err != nil || env.Kind != telemetry.KindUpdateOffer {
			return
		}
		var offer telemetry.UpdateOffer
		if err := env.DecodeBody(&offer); err != nil {
			return
		}
		var e telemetry.Encoder
		again, err := e.Encode(telemetry.Header{Node: env.Node, Seq: env.Seq, Time: env.Time, Kind: env.Kind}, offer)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", offer, err)
		}
		env2, err := telemetry.Decode(again)
		var offer2 telemetry.UpdateOffer
		if err == nil {
			err = env2.DecodeBody(&offer2)
		}
		if err != nil || offer2.ID != offer.ID || string(offer2.Manifest) != string(offer.Manifest) || !offer2.IssuedAt.Equal(offer.IssuedAt) {
			t.Fatalf("offer %+v came back as %+v (%v)", offer, offer2, err)
		}
		v := verifier(testKey(1))
		if _, err := v.Manifest(offer.Manifest); err != nil && !errors.As(err, new(*Refusal)) {
			t.Fatalf("not a refusal: %v", err)
		}
	})
}
