// Package release signs and verifies the agent's releases.
//
// A release is a binary and its manifest (telemetry.Manifest): version,
// target, size, SHA-256, where to fetch it, when it expires. The manifest is
// the payload of a tagged COSE_Sign1 message (RFC 9052) signed with Ed25519,
// its key named by the protected kid header (KeyID), so any COSE tool can check
// it. Keys are PEM files (PKCS#8 private, PKIX public) that openssl reads.
//
// A node trusts a list of public keys; a release may be signed by any of them,
// which is how a key is rotated: sign with the new key while nodes still trust
// the old one, ship the new list, then drop the old key from it.
//
// Verifier checks a release in a fixed order (signature, expiry, target, size,
// sha256, version) and refuses with a *Refusal naming the check, whose names
// go on the wire in telemetry.UpdateStatus.Check. Everything it reads may come
// from an attacker: malformed input is a refusal, never a panic.
package release
