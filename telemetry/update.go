package telemetry

import "time"

// Manifest describes one release of the agent's binary. It travels as the
// payload of a COSE_Sign1 message signed with Ed25519 (update/release signs
// and verifies it); a node installs nothing a trusted key did not sign.
type Manifest struct {
	Version string `cbor:"1,keyasint" json:"version"` // semver (1.4.0), or a dev build's git describe
	OS      string `cbor:"2,keyasint" json:"os"`      // GOOS: linux
	Arch    string `cbor:"3,keyasint" json:"arch"`    // GOARCH: amd64, arm64, arm
	// ARM is the ARM level (GOARM: 7) when Arch is arm.
	ARM       string    `cbor:"4,keyasint,omitempty" json:"arm,omitempty"`
	Size      uint64    `cbor:"5,keyasint" json:"size"`   // bytes of the binary
	SHA256    []byte    `cbor:"6,keyasint" json:"sha256"` // 32 bytes
	URLs      []string  `cbor:"7,keyasint,omitempty" json:"urls,omitempty"`
	IssuedAt  time.Time `cbor:"8,keyasint" json:"issued_at"`
	ExpiresAt time.Time `cbor:"9,keyasint" json:"expires_at"` // refused after
	// AllowDowngrade lets a node install a version not higher than the
	// highest it ever committed, or one that is not semver (a dev build).
	AllowDowngrade bool   `cbor:"10,keyasint,omitempty" json:"allow_downgrade,omitempty"`
	Notes          string `cbor:"11,keyasint,omitempty" json:"notes,omitempty"`
}

// UpdateOffer asks a node to install a release, on <prefix>/<node>/update.
type UpdateOffer struct {
	ID string `cbor:"1,keyasint" json:"id"` // the rollout's id, echoed in every status
	// Manifest is the signed manifest: COSE_Sign1 bytes, as signed.
	Manifest []byte `cbor:"2,keyasint" json:"manifest"`
	// URLs are where to fetch the artifact, tried before the manifest's own
	// (the controller serving it, a mirror): the manifest's hash makes any
	// source as good as another.
	URLs     []string  `cbor:"3,keyasint,omitempty" json:"urls,omitempty"`
	IssuedAt time.Time `cbor:"4,keyasint" json:"issued_at"`
}

// Update phases, in the order an upgrade goes through them; the last four
// end it.
const (
	PhaseOffered     = "offered"     // taken, not started yet
	PhaseDownloading = "downloading" // into the inactive slot; Percent and Bytes move
	PhaseVerifying   = "verifying"   // signature, expiry, target, size and hash, version
	PhasePreflight   = "preflight"   // the new binary's selftest against the live config
	PhaseSwitching   = "switching"   // the seamless reload into the new slot
	PhaseChecking    = "checking"    // the new version runs; waiting for it to be healthy
	PhaseCommitted   = "committed"   // healthy in time: the new slot is the committed one
	PhaseRolledBack  = "rolled back" // not healthy in time, or crashed: back on the old slot
	PhaseRefused     = "refused"     // a check failed; nothing was switched
	PhaseFailed      = "failed"      // could not complete (download, disk); nothing was switched
)

// UpdateStatus reports an upgrade's progress, on <prefix>/<node>/update/status,
// at most once a second while it moves and at every change of phase.
type UpdateStatus struct {
	ID      string `cbor:"1,keyasint" json:"id"` // the offer's
	Phase   string `cbor:"2,keyasint" json:"phase"`
	Version string `cbor:"3,keyasint,omitempty" json:"version,omitempty"` // the release's
	From    string `cbor:"4,keyasint,omitempty" json:"from,omitempty"`    // the version that ran when it began
	Percent int    `cbor:"5,keyasint,omitempty" json:"percent,omitempty"`
	Bytes   uint64 `cbor:"6,keyasint,omitempty" json:"bytes,omitempty"` // downloaded so far
	Total   uint64 `cbor:"7,keyasint,omitempty" json:"total,omitempty"`
	// Check names what refused it (signature, expiry, target, size,
	// sha256, version, preflight); Reason says why, for a person.
	Check  string `cbor:"8,keyasint,omitempty" json:"check,omitempty"`
	Reason string `cbor:"9,keyasint,omitempty" json:"reason,omitempty"`
	Slot   string `cbor:"10,keyasint,omitempty" json:"slot,omitempty"` // the slot it went to (or came back to)
	// Log is the end of the failed version's log, with a rollback.
	Log []string `cbor:"11,keyasint,omitempty" json:"log,omitempty"`
}
