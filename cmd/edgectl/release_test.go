package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// releaseRun runs edgectl release with args and returns its stdout, stderr
// and exit code.
func releaseRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(edgectlBin, append([]string{"release"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// TestReleaseKeygenSignVerify makes two keys, signs the agent built for the
// tests and checks it by hand: accepted with the right key and binary,
// refused (exit 1, the check named) otherwise.
func TestReleaseKeygenSignVerify(t *testing.T) {
	dir := t.TempDir()
	oldKey, newKey := filepath.Join(dir, "old.key"), filepath.Join(dir, "new.key")
	for _, k := range []string{oldKey, newKey} {
		out, errOut, code := releaseRun(t, "keygen", "--out", k)
		if code != 0 || !strings.Contains(out, "wrote "+k+" (private, mode 0600) and "+k+".pub") {
			t.Fatalf("keygen: exit %d\n%s%s", code, out, errOut)
		}
	}
	if st, err := os.Stat(newKey); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %v, %v; want 0600", st.Mode(), err)
	}
	if _, errOut, code := releaseRun(t, "keygen", "--out", newKey); code != 1 || !strings.Contains(errOut, "file exists") {
		t.Errorf("keygen over an existing key: exit %d, %q", code, errOut)
	}

	manifest := filepath.Join(dir, "edgeagent.manifest")
	out, errOut, code := releaseRun(t, "sign", "--key", newKey, "--binary", agentBin, "--version", "1.4.0",
		"--url", "http://mirror.example/edgeagent", "--notes", "spool fixes", "--out", manifest)
	if code != 0 || !strings.Contains(out, "signed 1.4.0 for linux/") {
		t.Fatalf("sign: exit %d\n%s%s", code, out, errOut)
	}

	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("not a binary"), 0o644)
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"manifest only", []string{"--pub", newKey + ".pub", manifest}, 0,
			[]string{"version    1.4.0\n", "url        http://mirror.example/edgeagent\n", "notes      spool fixes\n", "ok (the manifest; give BIN to check the binary too)\n"}},
		{"with its binary", []string{"--pub", newKey + ".pub", manifest, agentBin}, 0, []string{"\nok\n"}},
		{"old and new key trusted", []string{"--pub", oldKey + ".pub", "--pub", newKey + ".pub", manifest, agentBin}, 0, []string{"\nok\n"}},
		{"another binary", []string{"--pub", newKey + ".pub", manifest, edgectlBin}, 1, []string{"refused by the size check: the binary is"}},
		{"not a binary", []string{"--pub", newKey + ".pub", manifest, text}, 1, []string{"refused by the target check: " + text + " is not an ELF binary"}},
		{"key not trusted", []string{"--pub", oldKey + ".pub", manifest}, 1, []string{"refused by the signature check: signed by key", "which is not trusted"}},
		{"older than committed", []string{"--pub", newKey + ".pub", "--highest", "1.5.0", manifest}, 1,
			[]string{"refused by the version check: 1.4.0 is not higher than 1.5.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := releaseRun(t, append([]string{"verify"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\n%s%s", code, tt.code, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s%s", w, out, errOut)
				}
			}
		})
	}
	if out, _, _ := releaseRun(t, "verify", "--pub", oldKey+".pub", manifest); strings.Contains(out, "version") {
		t.Errorf("a manifest by an untrusted key was shown:\n%s", out)
	}
}

func TestReleaseRefusals(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release.key")
	if _, errOut, code := releaseRun(t, "keygen", "--out", key); code != 0 {
		t.Fatal(errOut)
	}
	manifest := filepath.Join(dir, "m")
	sign := func(args ...string) (string, int) {
		_, errOut, code := releaseRun(t, append([]string{"sign", "--key", key, "--binary", agentBin, "--out", manifest}, args...)...)
		return errOut, code
	}
	if errOut, code := sign("--version", "ac2e334-dirty"); code != 2 || !strings.Contains(errOut, `--version "ac2e334-dirty" is not semver`) {
		t.Errorf("a dev version without --allow-downgrade: exit %d, %q", code, errOut)
	}
	if errOut, code := sign("--version", "1.4.0", "--expires", "-1h"); code != 2 || !strings.Contains(errOut, "want a positive duration") {
		t.Errorf("--expires -1h: exit %d, %q", code, errOut)
	}
	if errOut, code := sign("--version", "ac2e334-dirty", "--allow-downgrade", "--expires", "1s"); code != 0 {
		t.Fatalf("a dev version with --allow-downgrade: exit %d, %q", code, errOut)
	}
	out, _, code := releaseRun(t, "verify", "--pub", key+".pub", "--highest", "9.9.9", manifest)
	if code != 0 || !strings.Contains(out, "downgrade  allowed\n") {
		t.Errorf("downgrade allowed: exit %d\n%s", code, out)
	}
	time.Sleep(1100 * time.Millisecond)
	if out, _, code := releaseRun(t, "verify", "--pub", key+".pub", manifest); code != 1 || !strings.Contains(out, "refused by the expiry check: expired") {
		t.Errorf("expired: exit %d\n%s", code, out)
	}
	if _, errOut, code := releaseRun(t, "verify", "--pub", key, manifest); code != 2 || !strings.Contains(errOut, key+": block 1 is a PRIVATE KEY, want PUBLIC KEY") {
		t.Errorf("a private key as --pub: exit %d, %q", code, errOut)
	}
}
