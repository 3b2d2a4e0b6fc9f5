package release

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// testKey returns a fixed key for n, so that fuzz seeds and failures repeat.
func testKey(n byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{n}, ed25519.SeedSize))
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

var amd64 = Target{OS: "linux", Arch: "amd64"}

func sampleManifest() telemetry.Manifest {
	sum := sha256.Sum256([]byte("binary"))
	return telemetry.Manifest{
		Version: "1.4.0", OS: "linux", Arch: "amd64", Size: 6, SHA256: sum[:],
		URLs:     []string{"https://releases.example/edgeagent-1.4.0-amd64"},
		IssuedAt: now.Add(-time.Hour), ExpiresAt: now.Add(720 * time.Hour),
		Notes: "fixes the spool's torn tail",
	}
}

func sign(t testing.TB, m telemetry.Manifest, key ed25519.PrivateKey) []byte {
	t.Helper()
	signed, err := Sign(m, key)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func verifier(keys ...ed25519.PrivateKey) *Verifier {
	v := &Verifier{Now: func() time.Time { return now }, Running: amd64, Highest: "1.3.2"}
	for _, k := range keys {
		v.Trusted = append(v.Trusted, pub(k))
	}
	return v
}

func TestSignVerifyRoundTrip(t *testing.T) {
	key := testKey(1)
	want := sampleManifest()
	got, err := verifier(key).Manifest(sign(t, want, key))
	if err != nil {
		t.Fatal(err)
	}
	if !got.IssuedAt.Equal(want.IssuedAt) || !got.ExpiresAt.Equal(want.ExpiresAt) {
		t.Errorf("times: got %v, %v; want %v, %v", got.IssuedAt, got.ExpiresAt, want.IssuedAt, want.ExpiresAt)
	}
	got.IssuedAt, got.ExpiresAt, want.IssuedAt, want.ExpiresAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestSignRefusesMalformedManifests(t *testing.T) {
	for name, change := range map[string]func(*telemetry.Manifest){
		"no version":  func(m *telemetry.Manifest) { m.Version = "" },
		"no arch":     func(m *telemetry.Manifest) { m.Arch = "" },
		"size 0":      func(m *telemetry.Manifest) { m.Size = 0 },
		"short hash":  func(m *telemetry.Manifest) { m.SHA256 = m.SHA256[:31] },
		"no expiry":   func(m *telemetry.Manifest) { m.ExpiresAt = time.Time{} },
		"notes utf-8": func(m *telemetry.Manifest) { m.Notes = "\xff" },
	} {
		m := sampleManifest()
		change(&m)
		if _, err := Sign(m, testKey(1)); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

func TestKeyRotation(t *testing.T) {
	oldKey, newKey, stranger := testKey(1), testKey(2), testKey(3)
	v := verifier(oldKey, newKey)
	m := sampleManifest()
	for _, key := range []ed25519.PrivateKey{newKey, oldKey} {
		if _, err := v.Manifest(sign(t, m, key)); err != nil {
			t.Errorf("signed by trusted key %s: %v", KeyID(pub(key)), err)
		}
	}
	_, err := v.Manifest(sign(t, m, stranger))
	want := fmt.Sprintf("signed by key %s, which is not trusted (trusted: %s, %s)", KeyID(pub(stranger)), KeyID(pub(oldKey)), KeyID(pub(newKey)))
	checkRefusal(t, err, CheckSignature, want)

	// The old key retired: what it signed is refused from then on.
	_, err = verifier(newKey).Manifest(sign(t, m, oldKey))
	checkRefusal(t, err, CheckSignature, "which is not trusted")

	// A message without a kid is tried against every trusted key.
	payload, _ := encMode.Marshal(m)
	noKid := signWithHeaders(t, payload, newKey, cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmEdDSA})
	if _, err := v.Manifest(noKid); err != nil {
		t.Errorf("no kid, trusted key: %v", err)
	}
	_, err = verifier(oldKey).Manifest(noKid)
	checkRefusal(t, err, CheckSignature, "names no key and no trusted key verifies it")
}

func signWithHeaders(t *testing.T, payload []byte, key ed25519.PrivateKey, h cose.ProtectedHeader) []byte {
	t.Helper()
	signer, err := cose.NewSigner(cose.AlgorithmEdDSA, key)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := cose.Sign1(nil, signer, cose.Headers{Protected: h}, payload, nil)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func checkRefusal(t *testing.T, err error, check, reason string) {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("got %v, want a refusal by the %s check (%q)", err, check, reason)
	}
	if r.Check != check || !strings.Contains(r.Reason, reason) {
		t.Errorf("got refusal %s: %q\nwant          %s: containing %q", r.Check, r.Reason, check, reason)
	}
}

// signedPayload signs a manifest's CBOR after changing it as a map, for
// manifests that Sign would not sign.
func signedPayload(t *testing.T, change func(map[int]any)) []byte {
	t.Helper()
	var fields map[int]any
	raw, _ := encMode.Marshal(sampleManifest())
	if err := cbor.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	change(fields)
	payload, err := encMode.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := signPayload(payload, testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func TestManifestRefusals(t *testing.T) {
	key := testKey(1)
	with := func(change func(*telemetry.Manifest)) []byte {
		m := sampleManifest()
		change(&m)
		return sign(t, m, key)
	}
	valid := sign(t, sampleManifest(), key)
	tampered := bytes.Replace(valid, []byte("1.4.0"), []byte("9.4.0"), 1)
	if bytes.Equal(tampered, valid) {
		t.Fatal("version not found in the signed bytes")
	}
	es256 := func() []byte {
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(valid); err != nil {
			t.Fatal(err)
		}
		msg.Headers.RawProtected = nil
		msg.Headers.Protected[cose.HeaderLabelAlgorithm] = cose.AlgorithmES256
		b, err := msg.MarshalCBOR()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}()
	detached := func() []byte {
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(valid); err != nil {
			t.Fatal(err)
		}
		msg.Payload = nil
		b, err := msg.MarshalCBOR()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}()
	notManifest, err := signPayload([]byte{0x82, 0x01, 0x02}, key) // [1, 2]
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name          string
		signed        []byte
		highest       string
		running       Target
		check, reason string
	}{
		{"empty", nil, "", amd64, CheckSignature, "not a COSE_Sign1 message"},
		{"not CBOR", []byte("hello"), "", amd64, CheckSignature, "not a COSE_Sign1 message"},
		{"truncated", valid[:len(valid)-10], "", amd64, CheckSignature, "not a COSE_Sign1 message"},
		{"untagged", valid[1:], "", amd64, CheckSignature, "not a COSE_Sign1 message"},
		{"too large", append(valid, make([]byte, maxSigned)...), "", amd64, CheckSignature, "over the 65536-byte limit"},
		{"altered", tampered, "", amd64, CheckSignature, "does not verify"},
		{"alg ES256", es256, "", amd64, CheckSignature, "does not verify"},
		{"detached payload", detached, "", amd64, CheckSignature, "carries no payload"},
		{"payload not a manifest", notManifest, "", amd64, CheckSignature, "the signed payload is not a manifest"},
		{"payload not UTF-8", signedPayload(t, func(f map[int]any) { f[11] = "\xff" }), "", amd64, CheckSignature, "the signed payload is not a manifest"},
		{"expired", with(func(m *telemetry.Manifest) { m.ExpiresAt = now.Add(-2 * time.Hour) }), "", amd64,
			CheckExpiry, "expired 2h0m0s ago at 2026-11-24T10:00:00Z"},
		{"expires now", with(func(m *telemetry.Manifest) { m.ExpiresAt = now }), "", amd64, CheckExpiry, "expired 0s ago"},
		{"no expiry", signedPayload(t, func(f map[int]any) { delete(f, 9) }), "", amd64, CheckExpiry, "no expiry"},
		{"other arch", with(func(m *telemetry.Manifest) { m.Arch = "arm64" }), "", amd64,
			CheckTarget, "built for linux/arm64, this node is linux/amd64"},
		{"other ARM level", with(func(m *telemetry.Manifest) { m.Arch, m.ARM = "arm", "6" }), "", Target{"linux", "arm", "7"},
			CheckTarget, "built for linux/arm/v6, this node is linux/arm/v7"},
		{"no target", signedPayload(t, func(f map[int]any) { delete(f, 2) }), "", amd64, CheckTarget, "names no target"},
		{"size 0", signedPayload(t, func(f map[int]any) { f[5] = 0 }), "", amd64, CheckSize, "size of 0"},
		{"hash not 32 bytes", signedPayload(t, func(f map[int]any) { f[6] = []byte{1, 2, 3} }), "", amd64, CheckSHA256, "3 bytes long, not 32"},
		{"older", valid, "1.5.0", amd64, CheckVersion, "1.4.0 is not higher than 1.5.0, the highest this node committed, and the manifest does not allow a downgrade"},
		{"same", valid, "v1.4.0", amd64, CheckVersion, "not higher than v1.4.0"},
		{"dev build", with(func(m *telemetry.Manifest) { m.Version = "ac2e334-dirty" }), "", amd64, CheckVersion, "ac2e334-dirty is not a semver version"},
		{"shorthand", with(func(m *telemetry.Manifest) { m.Version = "1.4" }), "", amd64, CheckVersion, "not a semver version"},
		{"no version", signedPayload(t, func(f map[int]any) { delete(f, 1) }), "", amd64, CheckVersion, "names no version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := verifier(key)
			v.Highest, v.Running = tt.highest, tt.running
			_, err := v.Manifest(tt.signed)
			checkRefusal(t, err, tt.check, tt.reason)
		})
	}
}

func TestVersionAccepted(t *testing.T) {
	key := testKey(1)
	for _, tt := range []struct {
		version, highest string
		downgrade        bool
	}{
		{"1.4.0", "", false},
		{"1.4.0", "1.3.9", false},
		{"v1.4.0", "1.4.0-rc.1", false},
		{"1.4.0", "ac2e334", false}, // a dev build was committed: any release is higher
		{"1.3.0", "1.4.0", true},
		{"1.4.0", "1.4.0", true},
		{"ac2e334-dirty", "1.4.0", true},
	} {
		m := sampleManifest()
		m.Version, m.AllowDowngrade = tt.version, tt.downgrade
		v := verifier(key)
		v.Highest = tt.highest
		if _, err := v.Manifest(sign(t, m, key)); err != nil {
			t.Errorf("%s over %q (downgrade %v): %v", tt.version, tt.highest, tt.downgrade, err)
		}
	}
}

func TestRefusalKeepsTheSignedManifest(t *testing.T) {
	key := testKey(1)
	v := verifier(key)
	v.Highest = "2.0.0"
	m, err := v.Manifest(sign(t, sampleManifest(), key))
	if err == nil || m.Version != "1.4.0" {
		t.Errorf("got %q, %v; want the manifest of 1.4.0 and a refusal", m.Version, err)
	}
	m, _ = verifier(testKey(2)).Manifest(sign(t, sampleManifest(), key))
	if m.Version != "" {
		t.Errorf("an untrusted manifest was returned: %+v", m)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"1.4.0", "v1.4.0", 0},
		{"1.4.0", "1.3.9", 1},
		{"1.10.0", "1.9.0", 1},
		{"1.4.0-rc.1", "1.4.0", -1},
		{"1.4.0+build.5", "1.4.0", 0},
		{"ac2e334", "0.0.1", -1},
		{"1.4", "1.3.0", -1}, // a shorthand is not a release version
		{"ac2e334", "dirty", 0},
	} {
		if got := CompareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

// Binaries built by the tests, once per run (go's build cache makes later
// runs cheap): target name → path.
var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

var testTargets = map[string]Target{
	"amd64": {"linux", "amd64", ""},
	"arm64": {"linux", "arm64", ""},
	"armv7": {"linux", "arm", "7"},
	"armv6": {"linux", "arm", "6"},
}

func testBinary(t *testing.T, name string) string {
	t.Helper()
	testenv.LookPath(t, "go")
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "release-test")
		var wg sync.WaitGroup
		var mu sync.Mutex
		for n, tg := range testTargets {
			wg.Go(func() {
				cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(binDir, n), "./testdata/hello")
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+tg.OS, "GOARCH="+tg.Arch, "GOARM="+tg.ARM)
				if out, err := cmd.CombinedOutput(); err != nil {
					mu.Lock()
					binErr = fmt.Errorf("build %s: %v\n%s", n, err, out)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, name)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func TestBinaryTargets(t *testing.T) {
	for name, want := range testTargets {
		got, err := BinaryTarget(testBinary(t, name))
		if err != nil || got != want {
			t.Errorf("%s: got %v, %v; want %v", name, got, err, want)
		}
	}
	text := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(text, []byte("not a binary at all"), 0o644)
	if _, err := BinaryTarget(text); err == nil || !strings.Contains(err.Error(), "is not an ELF binary") {
		t.Errorf("a text file: %v", err)
	}
	if got := RunningTarget(); got.OS != runtime.GOOS || got.Arch != runtime.GOARCH || (got.ARM != "") != (runtime.GOARCH == "arm") {
		t.Errorf("RunningTarget() = %v", got)
	}
}

// manifestFor describes the binary at path, as edgectl release sign does.
func manifestFor(t *testing.T, path string) telemetry.Manifest {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := BinaryTarget(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	m := sampleManifest()
	m.OS, m.Arch, m.ARM, m.Size, m.SHA256 = tg.OS, tg.Arch, tg.ARM, uint64(len(data)), sum[:]
	return m
}

func TestVerifyBinary(t *testing.T) {
	key := testKey(1)
	amd, arm := testBinary(t, "amd64"), testBinary(t, "arm64")
	dir := t.TempDir()
	longer := filepath.Join(dir, "longer")
	data, _ := os.ReadFile(amd)
	os.WriteFile(longer, append(data, 0), 0o755)
	flipped := filepath.Join(dir, "flipped")
	data[len(data)/3] ^= 1 // in the code, not the headers
	os.WriteFile(flipped, data, 0o755)
	m := manifestFor(t, amd)
	lying := manifestFor(t, arm) // an arm64 binary, described as amd64
	lying.Arch = "amd64"
	olderDowngrade := m
	olderDowngrade.Version, olderDowngrade.AllowDowngrade = "1.0.0", true
	older := m
	older.Version = "1.0.0"
	expiredOther := manifestFor(t, arm)
	expiredOther.ExpiresAt = now.Add(-time.Minute)

	tests := []struct {
		name          string
		m             telemetry.Manifest
		bin           string
		check, reason string
	}{
		{"ok", m, amd, "", ""},
		{"downgrade allowed", olderDowngrade, amd, "", ""},
		{"arm64 offered to amd64", manifestFor(t, arm), arm, CheckTarget, "built for linux/arm64, this node is linux/amd64"},
		{"manifest lies about the arch", lying, arm, CheckTarget, "the binary is built for linux/arm64, the manifest says linux/amd64"},
		{"not ELF", m, "release_test.go", CheckTarget, "is not an ELF binary"},
		{"longer than declared", m, longer, CheckSize, fmt.Sprintf("the binary is %d bytes, the manifest says %d", m.Size+1, m.Size)},
		{"another build", m, flipped, CheckSHA256, "it is another build, or corrupt"},
		{"older, after the binary's checks", older, amd, CheckVersion, "not higher than 1.3.2"},
		{"expiry before target", expiredOther, arm, CheckExpiry, "expired 1m0s ago"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := verifier(key).Verify(sign(t, tt.m, key), tt.bin)
			if tt.check == "" {
				if err != nil || got.Version != tt.m.Version {
					t.Errorf("got %q, %v", got.Version, err)
				}
				return
			}
			checkRefusal(t, err, tt.check, tt.reason)
		})
	}
	if err := verifier(key).Binary(m, filepath.Join(dir, "missing")); err == nil || errors.As(err, new(*Refusal)) {
		t.Errorf("a missing file: %v, want an error that is not a refusal", err)
	}
}

// TestStandardCOSE checks the signed bytes without go-cose: a tagged
// COSE_Sign1 (RFC 9052 section 4.2) whose protected header holds alg EdDSA
// and the kid, and whose signature crypto/ed25519 (and openssl, where there
// is one) verifies over the Sig_structure built by hand.
func TestStandardCOSE(t *testing.T) {
	key := testKey(1)
	protected, payload, sig, tbs := decodeByHand(t, sign(t, sampleManifest(), key))
	wantProtected := map[int]any{1: int64(-8), 4: keyID(pub(key))}
	if !reflect.DeepEqual(protected, wantProtected) {
		t.Errorf("protected header %v, want %v", protected, wantProtected)
	}
	var m telemetry.Manifest
	if err := cbor.Unmarshal(payload, &m); err != nil || m.Version != "1.4.0" {
		t.Errorf("payload: %+v, %v", m, err)
	}
	if !ed25519.Verify(pub(key), tbs, sig) {
		t.Fatal("crypto/ed25519 does not verify the Sig_structure")
	}

	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Log("no openssl: the signature was not checked with it")
		return
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "release.key")
	if _, err := GenerateKey(keyFile); err != nil {
		t.Fatal(err)
	}
	fileKey, err := LoadPrivateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	_, _, sig, tbs = decodeByHand(t, sign(t, sampleManifest(), fileKey))
	tbsFile, sigFile := filepath.Join(dir, "tbs"), filepath.Join(dir, "sig")
	os.WriteFile(tbsFile, tbs, 0o644)
	os.WriteFile(sigFile, sig, 0o644)
	out, err := exec.Command(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", keyFile+".pub", "-rawin", "-in", tbsFile, "-sigfile", sigFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Signature Verified Successfully") {
		t.Errorf("openssl pkeyutl -verify: %v\n%s", err, out)
	}
}

// decodeByHand takes a COSE_Sign1 message apart with plain CBOR and builds
// its Sig_structure: ["Signature1", protected, external_aad, payload], the
// external_aad an empty byte string.
func decodeByHand(t *testing.T, signed []byte) (protected map[int]any, payload, sig, tbs []byte) {
	t.Helper()
	var tag cbor.RawTag
	if err := cbor.Unmarshal(signed, &tag); err != nil || tag.Number != 18 {
		t.Fatalf("not tag 18 (COSE_Sign1): %v, %d", err, tag.Number)
	}
	var msg struct {
		_           struct{} `cbor:",toarray"`
		Protected   []byte
		Unprotected map[int]any
		Payload     []byte
		Signature   []byte
	}
	if err := cbor.Unmarshal(tag.Content, &msg); err != nil {
		t.Fatal(err)
	}
	if err := cbor.Unmarshal(msg.Protected, &protected); err != nil {
		t.Fatal(err)
	}
	tbs, err := cbor.Marshal([]any{"Signature1", msg.Protected, []byte{}, msg.Payload})
	if err != nil {
		t.Fatal(err)
	}
	return protected, msg.Payload, msg.Signature, tbs
}
