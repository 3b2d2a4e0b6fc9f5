// Package testenv decides what a test does when a prerequisite (a tool, root, a
// kernel feature) is missing: on a developer's machine it skips with the reason;
// under CI=true it fails, because a skipped integration test in CI hides a broken
// install step.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where nothing may skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips the test, or fails it under CI, explaining what is missing.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing under CI=true: "+format, args...)
	}
	t.Skipf("prerequisite missing: "+format, args...)
}

// LookPath returns the path of an executable the test needs, or calls Missing.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s not found in PATH (scripts/test installs it): %v", name, err)
	}
	return p
}
