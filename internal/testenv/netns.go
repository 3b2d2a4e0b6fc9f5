package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
)

// Netns creates a network namespace for the test with "ip netns add" and
// deletes it when the test ends. It returns the namespace's name; its file is
// /var/run/netns/NAME.
func Netns(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	LookPath(t, "ip")
	b := make([]byte, 4)
	rand.Read(b)
	name := "edgetest-" + hex.EncodeToString(b)
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { Run(t, "ip", "netns", "delete", name) })
	return name
}
