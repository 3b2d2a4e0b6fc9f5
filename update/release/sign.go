package release

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// The manifest's CBOR is written and read as telemetry's codec does (its
// modes are not exported): times as tag 1 with integer seconds, definite
// lengths, and a strict, bounded decoder, since a manifest comes from the
// network.
var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.EncOptions{
		Time:        cbor.TimeUnix,
		TimeTag:     cbor.EncTagRequired,
		IndefLength: cbor.IndefLengthForbidden,
	}.EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TimeTag:          cbor.DecTagRequired,
		MaxNestedLevels:  8,
		MaxArrayElements: 1024,
		MaxMapPairs:      64,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// KeyID names a public key: the hex of the first 8 bytes of the SHA-256 of
// its raw 32 bytes. It is the kid header of what the key signs, and what
// refusals and edgectl show.
func KeyID(pub ed25519.PublicKey) string { return hex.EncodeToString(keyID(pub)) }

func keyID(pub ed25519.PublicKey) []byte {
	sum := sha256.Sum256(pub)
	return sum[:8]
}

// Sign returns m signed by key as a tagged COSE_Sign1 message: alg EdDSA and
// the key's kid in the protected header, m's CBOR as the payload. It refuses
// a manifest that no node would accept for its form (no version, target or
// expiry, a hash that is not 32 bytes, text that is not UTF-8).
func Sign(m telemetry.Manifest, key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("sign manifest: not an Ed25519 private key (%d bytes)", len(key))
	}
	if err := checkForm(m); err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	payload, err := encMode.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	return signPayload(payload, key)
}

// signPayload signs any payload; tests use it to sign malformed manifests.
func signPayload(payload []byte, key ed25519.PrivateKey) ([]byte, error) {
	signer, err := cose.NewSigner(cose.AlgorithmEdDSA, key)
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	headers := cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm: cose.AlgorithmEdDSA,
		cose.HeaderLabelKeyID:     keyID(key.Public().(ed25519.PublicKey)),
	}}
	// Ed25519 is deterministic: it reads no randomness.
	signed, err := cose.Sign1(nil, signer, headers, payload, nil)
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	return signed, nil
}

// checkForm reports what makes m a manifest that no node would accept.
func checkForm(m telemetry.Manifest) error {
	switch {
	case m.Version == "":
		return errors.New("no version")
	case m.OS == "" || m.Arch == "":
		return errors.New("no target")
	case m.Size == 0:
		return errors.New("size 0")
	case len(m.SHA256) != sha256.Size:
		return fmt.Errorf("sha256 of %d bytes, want %d", len(m.SHA256), sha256.Size)
	case m.ExpiresAt.IsZero():
		return errors.New("no expiry")
	}
	for _, s := range append([]string{m.Version, m.OS, m.Arch, m.ARM, m.Notes}, m.URLs...) {
		if !utf8.ValidString(s) {
			return fmt.Errorf("%q is not valid UTF-8", s)
		}
	}
	return nil
}
