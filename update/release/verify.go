package release

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/veraison/go-cose"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// Checks, in the order Verifier makes them; the names go on the wire in
// telemetry.UpdateStatus.Check.
const (
	CheckSignature = "signature"
	CheckExpiry    = "expiry"
	CheckTarget    = "target"
	CheckSize      = "size"
	CheckSHA256    = "sha256"
	CheckVersion   = "version"
)

// Refusal is why a release was refused: the check that failed and, for a
// person, why.
type Refusal struct {
	Check  string
	Reason string
}

func (r *Refusal) Error() string { return "refused by the " + r.Check + " check: " + r.Reason }

func refuse(check, format string, args ...any) *Refusal {
	return &Refusal{Check: check, Reason: fmt.Sprintf(format, args...)}
}

// maxSigned bounds a signed manifest: a few hundred bytes, more with notes.
const maxSigned = 64 << 10

// Verifier checks releases for one node.
type Verifier struct {
	Trusted []ed25519.PublicKey // a release signed by any of them is authentic
	Now     func() time.Time    // nil: time.Now
	Running Target              // the node's: RunningTarget()
	// Highest is the highest version the node ever committed, "" if none: a
	// release must be higher unless its manifest allows a downgrade.
	Highest string
}

// Manifest makes the checks that need only the signed manifest, in order:
// signature by a trusted key, expiry, target against Running, the form of
// size and sha256, and version against Highest. The agent calls it before it
// downloads anything. Every error is a *Refusal. Once the signature
// verified, the manifest is returned even with a refusal, so that a status
// can name the release that was refused.
func (v *Verifier) Manifest(signed []byte) (telemetry.Manifest, error) {
	m, err := v.manifest(signed)
	if err != nil {
		return m, err
	}
	return m, v.version(m)
}

// Binary checks the binary at path against a manifest that Manifest
// accepted: its target (ELF header and Go build information) is the
// manifest's, then its size, then its SHA-256. A file it cannot read is an
// error, not a *Refusal.
func (v *Verifier) Binary(m telemetry.Manifest, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	bt, err := binaryTarget(f, path)
	if err != nil {
		return refuse(CheckTarget, "%v", err)
	}
	if mt := manifestTarget(m); bt != mt {
		return refuse(CheckTarget, "the binary is built for %s, the manifest says %s", bt, mt)
	}
	if uint64(st.Size()) != m.Size {
		return refuse(CheckSize, "the binary is %d bytes, the manifest says %d", st.Size(), m.Size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size())); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if sum := h.Sum(nil); !bytes.Equal(sum, m.SHA256) {
		return refuse(CheckSHA256, "the binary's SHA-256 is %x, the manifest says %x: it is another build, or corrupt", sum, m.SHA256)
	}
	return nil
}

// Verify makes every check of a release, in order: signature, expiry,
// target (the manifest's, then the binary's), size, sha256, version. As with
// Manifest, the manifest is returned once its signature verified; as with
// Binary, a file it cannot read is an error, not a *Refusal.
func (v *Verifier) Verify(signed []byte, binary string) (telemetry.Manifest, error) {
	m, err := v.manifest(signed)
	if err != nil {
		return m, err
	}
	if err := v.Binary(m, binary); err != nil {
		return m, err
	}
	return m, v.version(m)
}

// manifest makes the checks before the binary's: signature, expiry, target,
// and the form of size and sha256.
func (v *Verifier) manifest(signed []byte) (telemetry.Manifest, error) {
	var m telemetry.Manifest
	payload, err := v.signature(signed)
	if err != nil {
		return m, err
	}
	if err := decMode.Unmarshal(payload, &m); err != nil {
		return telemetry.Manifest{}, refuse(CheckSignature, "the signed payload is not a manifest: %v", err)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	switch t := now(); {
	case m.ExpiresAt.IsZero():
		return m, refuse(CheckExpiry, "the manifest has no expiry")
	case !t.Before(m.ExpiresAt):
		return m, refuse(CheckExpiry, "expired %s ago at %s", t.Sub(m.ExpiresAt).Round(time.Second), m.ExpiresAt.UTC().Format(time.RFC3339))
	}
	switch mt := manifestTarget(m); {
	case m.OS == "" || m.Arch == "":
		return m, refuse(CheckTarget, "the manifest names no target")
	case mt != v.Running:
		return m, refuse(CheckTarget, "built for %s, this node is %s", mt, v.Running)
	}
	if m.Size == 0 {
		return m, refuse(CheckSize, "the manifest declares a size of 0")
	}
	if len(m.SHA256) != sha256.Size {
		return m, refuse(CheckSHA256, "the manifest's SHA-256 is %d bytes long, not %d", len(m.SHA256), sha256.Size)
	}
	return m, nil
}

// signature returns the payload of a COSE_Sign1 message signed by a trusted
// key: the one its kid names, or any when it names none.
func (v *Verifier) signature(signed []byte) ([]byte, error) {
	if len(signed) > maxSigned {
		return nil, refuse(CheckSignature, "the signed manifest is %d bytes, over the %d-byte limit", len(signed), maxSigned)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(signed); err != nil {
		return nil, refuse(CheckSignature, "not a COSE_Sign1 message: %v", err)
	}
	if msg.Payload == nil {
		return nil, refuse(CheckSignature, "the COSE_Sign1 message carries no payload")
	}
	candidates := v.Trusted
	kid, hasKid := msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte)
	if !hasKid {
		kid, hasKid = msg.Headers.Unprotected[cose.HeaderLabelKeyID].([]byte)
	}
	if hasKid {
		candidates = nil
		for _, k := range v.Trusted {
			if bytes.Equal(keyID(k), kid) {
				candidates = append(candidates, k)
			}
		}
		if len(candidates) == 0 {
			return nil, refuse(CheckSignature, "signed by key %x, which is not trusted (trusted: %s)", kid, v.trustedIDs())
		}
	}
	if len(v.Trusted) == 0 {
		return nil, refuse(CheckSignature, "no key is trusted")
	}
	var last error
	for _, k := range candidates {
		if len(k) != ed25519.PublicKeySize {
			last = fmt.Errorf("trusted key of %d bytes is not an Ed25519 public key", len(k))
			continue
		}
		verifier, err := cose.NewVerifier(cose.AlgorithmEdDSA, k)
		if err != nil {
			last = err
			continue
		}
		if last = msg.Verify(nil, verifier); last == nil {
			return msg.Payload, nil
		}
	}
	if hasKid {
		return nil, refuse(CheckSignature, "the signature by key %x does not verify (%v): the manifest was altered after signing", kid, last)
	}
	return nil, refuse(CheckSignature, "names no key and no trusted key verifies it (%v; trusted: %s)", last, v.trustedIDs())
}

func (v *Verifier) trustedIDs() string {
	if len(v.Trusted) == 0 {
		return "none"
	}
	ids := make([]string, len(v.Trusted))
	for i, k := range v.Trusted {
		ids[i] = hex.EncodeToString(keyID(k))
	}
	return strings.Join(ids, ", ")
}

// version refuses a release not higher than Highest, and one that is not
// semver, unless its manifest allows a downgrade.
func (v *Verifier) version(m telemetry.Manifest) error {
	switch {
	case m.Version == "":
		return refuse(CheckVersion, "the manifest names no version")
	case m.AllowDowngrade:
		return nil
	case !IsSemver(m.Version):
		return refuse(CheckVersion, "%s is not a semver version (a dev build?); only a manifest that allows a downgrade may install it", m.Version)
	case v.Highest != "" && CompareVersions(m.Version, v.Highest) <= 0:
		return refuse(CheckVersion, "%s is not higher than %s, the highest this node committed, and the manifest does not allow a downgrade", m.Version, v.Highest)
	}
	return nil
}
