// Package scripts holds the project's shell scripts; its tests run them for real:
// scripts/build must produce static, stamped, bit-identical binaries that the
// arm64 and armv7 targets actually run (under qemu-user-static).
package scripts

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// The arm64 agent must fit the appliance's budget with every feature in.
const maxAgentBytesArm64 = 15 << 20

var arches = []struct {
	name, goarch, goarm, qemu string
}{
	{"amd64", "amd64", "", ""},
	{"arm64", "arm64", "", "qemu-aarch64-static"},
	{"armv7", "arm", "7", "qemu-arm-static"},
}

var (
	distOnce sync.Once
	distDir  string
	distErr  error
	distLog  []byte
)

// dist runs scripts/build once for all tests into a temporary directory.
func dist(t *testing.T) string {
	t.Helper()
	distOnce.Do(func() {
		distDir, distErr = os.MkdirTemp("", "edgeagent-dist")
		if distErr == nil {
			distLog, distErr = build(t, "..", distDir, nil)
		}
	})
	if distErr != nil {
		t.Fatalf("scripts/build: %v\n%s", distErr, distLog)
	}
	return distDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if distDir != "" {
		os.RemoveAll(distDir)
	}
	os.Exit(code)
}

func build(t *testing.T, root, out string, env []string) ([]byte, error) {
	testenv.LookPath(t, "git")
	cmd := exec.Command(filepath.Join(root, "scripts", "build"))
	cmd.Env = append(append(os.Environ(), "OUT_DIR="+out), env...)
	return cmd.CombinedOutput()
}

func git(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", ".."}, args...)...).Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

func TestBuildIsStaticStrippedAndStamped(t *testing.T) {
	fileCmd := testenv.LookPath(t, "file")
	dir := dist(t)

	sums := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
	sums.Dir = dir
	if out, err := sums.CombinedOutput(); err != nil {
		t.Errorf("SHA256SUMS does not verify: %v\n%s", err, out)
	}

	for _, a := range arches {
		for _, cmd := range []string{"edgeagent", "edgectl"} {
			bin := filepath.Join(dir, cmd+"-linux-"+a.name)
			out, err := exec.Command(fileCmd, bin).Output()
			if err != nil {
				t.Fatalf("file %s: %v", bin, err)
			}
			if desc := string(out); !strings.Contains(desc, "statically linked") || !strings.Contains(desc, ", stripped") {
				t.Errorf("%s is not a static, stripped binary: %s", bin, desc)
			}
			st, err := os.Stat(bin)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s-linux-%s: %d bytes (%.1f MiB)", cmd, a.name, st.Size(), float64(st.Size())/(1<<20))
			if cmd == "edgeagent" && a.name == "arm64" && st.Size() > maxAgentBytesArm64 {
				t.Errorf("%s is %d bytes, over the %d-byte budget", bin, st.Size(), maxAgentBytesArm64)
			}
		}
	}
}

// TestBuildIsReproducible builds again from a copy of the tree at another path
// with an empty build cache: every output byte must be the same.
func TestBuildIsReproducible(t *testing.T) {
	first := dist(t)

	copyRoot := filepath.Join(t.TempDir(), "elsewhere", "edgeagent")
	files := strings.Split(git(t, "ls-files", "--cached", "--others", "--exclude-standard"), "\n")
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join("..", f))
		if os.IsNotExist(err) {
			continue // deleted in the work tree but not yet in the index
		}
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(filepath.Join("..", f))
		dst := filepath.Join(copyRoot, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(git(t, "rev-parse", "--show-toplevel"), ".git"), copyRoot).CombinedOutput(); err != nil {
		t.Fatalf("copy .git: %v\n%s", err, out)
	}

	second := t.TempDir()
	if out, err := build(t, copyRoot, second, []string{"GOCACHE=" + t.TempDir()}); err != nil {
		t.Fatalf("second build: %v\n%s", err, out)
	}
	a, _ := os.ReadFile(filepath.Join(first, "SHA256SUMS"))
	b, err := os.ReadFile(filepath.Join(second, "SHA256SUMS"))
	if err != nil || len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("builds differ (%v):\nfirst:\n%s\nsecond:\n%s", err, a, b)
	}
}

type versionJSON struct {
	Program, Version, Commit, Date, GOOS, GOARCH, GOARM string
	GoVersion                                           string `json:"go_version"`
}

// TestBinariesRunOnEveryArch runs each built binary, under qemu-user for the ARM
// targets: version reports the target and the stamp; config check accepts the
// default config and rejects a bad one naming the key.
func TestBinariesRunOnEveryArch(t *testing.T) {
	dir := dist(t)
	wantVersion := git(t, "describe", "--tags", "--always", "--dirty")
	wantCommit := git(t, "rev-parse", "HEAD")
	goMod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	var toolchain string
	for _, l := range strings.Split(string(goMod), "\n") {
		if v, ok := strings.CutPrefix(l, "toolchain "); ok {
			toolchain = v
		}
	}

	for _, a := range arches {
		t.Run(a.name, func(t *testing.T) {
			run := func(bin string, args ...string) (string, string, int) {
				t.Helper()
				argv := append([]string{filepath.Join(dir, bin+"-linux-"+a.name)}, args...)
				if a.qemu != "" {
					argv = append([]string{testenv.LookPath(t, a.qemu)}, argv...)
				}
				cmd := exec.Command(argv[0], argv[1:]...)
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				if err := cmd.Run(); err != nil {
					if _, ok := err.(*exec.ExitError); !ok {
						t.Fatalf("%v: %v", argv, err)
					}
				}
				return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
			}

			for _, bin := range []string{"edgeagent", "edgectl"} {
				out, errOut, code := run(bin, "version", "--json")
				var v versionJSON
				if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
					t.Fatalf("%s version --json: exit %d\n%s%s", bin, code, out, errOut)
				}
				want := versionJSON{Program: bin, Version: wantVersion, Commit: wantCommit, Date: v.Date,
					GOOS: "linux", GOARCH: a.goarch, GOARM: a.goarm, GoVersion: toolchain}
				if v != want || !strings.HasSuffix(v.Date, "Z") {
					t.Errorf("%s version --json = %+v\nwant %+v", bin, v, want)
				}
			}

			def, _, code := run("edgeagent", "config", "default")
			cfg := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(cfg, []byte(def), 0o644); code != 0 || err != nil {
				t.Fatalf("config default: exit %d, %v", code, err)
			}
			if out, errOut, code := run("edgeagent", "config", "check", cfg); code != 0 || out != "ok\n" {
				t.Errorf("config check of the default: exit %d, %q %q", code, out, errOut)
			}
			if err := os.WriteFile(cfg, []byte("uplink:\n  keepalive: 30\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := run("edgeagent", "config", "check", cfg)
			if want := cfg + `:2: uplink.keepalive: "30" has no unit`; code != 2 || !strings.HasPrefix(errOut, want) {
				t.Errorf("config check of a bad file: exit %d, stderr %q; want exit 2 and %q", code, errOut, want)
			}
		})
	}
}

// TestBuildStampsReleaseVersion builds a release (VERSION=1.4.0) and checks
// that both binaries report it; a VERSION that is not semver is refused before
// anything is built.
func TestBuildStampsReleaseVersion(t *testing.T) {
	testenv.LookPath(t, "git")
	run := func(version string) (string, []byte, error) {
		out := t.TempDir()
		cmd := exec.Command("./build", "amd64")
		cmd.Env = append(os.Environ(), "OUT_DIR="+out, "VERSION="+version)
		log, err := cmd.CombinedOutput()
		return out, log, err
	}
	dir, log, err := run("1.4.0")
	if err != nil {
		t.Fatalf("VERSION=1.4.0 scripts/build amd64: %v\n%s", err, log)
	}
	for _, bin := range []string{"edgeagent", "edgectl"} {
		out, err := exec.Command(filepath.Join(dir, bin+"-linux-amd64"), "version", "--json").Output()
		var v versionJSON
		if err != nil || json.Unmarshal(out, &v) != nil || v.Version != "1.4.0" || v.Commit != git(t, "rev-parse", "HEAD") {
			t.Errorf("%s version --json: %v\n%s", bin, err, out)
		}
	}

	for _, bad := range []string{"1.4", "01.4.0", "1.4.0-01", "1.4.0 ", "release-7"} {
		dir, log, err := run(bad)
		want := "scripts/build: VERSION=" + bad + " is not a semver version"
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 || !strings.HasPrefix(string(log), want) {
			t.Errorf("VERSION=%q: %v, output %q; want exit 2 and %q", bad, err, log, want)
		}
		if built, _ := os.ReadDir(dir); len(built) != 0 {
			t.Errorf("VERSION=%q: built %d files anyway", bad, len(built))
		}
	}
}
