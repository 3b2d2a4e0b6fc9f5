package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// binary is edgeagent built once for the tests that need a real process
// (signals, exit codes, what it writes).
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgeagent-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "edgeagent")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build edgeagent: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// edgeagent runs the binary in dir with args and returns stdout, stderr and
// the exit code.
func edgeagent(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run edgeagent %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

func TestVersion(t *testing.T) {
	out, _, code := edgeagent(t, "", "version", "--json")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var v struct{ Program, Version, Commit, Date, GOOS, GOARCH, Go_Version string }
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("version --json is not JSON: %v\n%s", err, out)
	}
	if v.Program != "edgeagent" || v.Version != "devel" || v.GOOS != runtime.GOOS || v.GOARCH != runtime.GOARCH || v.Go_Version != runtime.Version() {
		t.Errorf("version --json = %+v", v)
	}
	line, _, _ := edgeagent(t, "", "version")
	if want := "edgeagent devel (commit unknown, built unknown, " + runtime.GOOS + "/" + runtime.GOARCH; !strings.HasPrefix(line, want) {
		t.Errorf("version = %q, want prefix %q", line, want)
	}
}

func TestHelpOnEveryCommand(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"run", "--help"}, {"config", "--help"}, {"version", "--help"}} {
		out, errOut, code := edgeagent(t, "", args...)
		if code != 0 || !strings.Contains(out, "Usage: edgeagent") || errOut != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{{}, {"frobnicate"}, {"run", "--no-such-flag"}, {"version", "extra"}, {"config"}, {"config", "check"}, {"config", "lint"}} {
		_, errOut, code := edgeagent(t, "", args...)
		if code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and a message", args, code, errOut)
		}
	}
}

func TestConfigDefaultPassesCheck(t *testing.T) {
	dir := t.TempDir()
	def, _, code := edgeagent(t, dir, "config", "default")
	if code != 0 || !strings.Contains(def, "# edgeagent configuration") {
		t.Fatalf("config default: exit %d\n%s", code, def)
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(def), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := edgeagent(t, dir, "config", "check", path)
	if code != 0 || out != "ok\n" || errOut != "" {
		t.Errorf("config check of the default: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestConfigCheckInvalid(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(path, []byte("log:\n  level: verbose\npaths:\n  stat_dir: /x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := edgeagent(t, dir, "config", "check", path)
	want := path + `:2: log.level: "verbose" is not allowed; want one of debug, info, warn, error` + "\n" +
		path + `:4: paths.stat_dir: unknown key; did you mean "paths.state_dir"? (allowed here: plugin_dir, procfs, slots_dir, spool_dir, state_dir, sysfs)` + "\n"
	if code != 2 || out != "" || errOut != want {
		t.Errorf("exit %d, stdout %q\nstderr:\n%s\nwant:\n%s", code, out, errOut, want)
	}
	_, errOut, code = edgeagent(t, dir, "config", "check", filepath.Join(dir, "missing.yaml"))
	if code != 2 || !strings.Contains(errOut, "no such file") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	_, errOut, code := edgeagent(t, t.TempDir(), "run", "--log-level", "loud", "--broker", "tcp://ok:1883,ftp://x", "--config", "/nonexistent.yaml")
	if code != 2 || !strings.Contains(errOut, "read config") {
		t.Errorf("an explicit missing --config: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = edgeagent(t, t.TempDir(), "run", "--log-level", "loud", "--broker", "tcp://ok:1883,ftp://x")
	for _, want := range []string{
		`flag --log-level: log.level: "loud" is not allowed`,
		`flag --broker: uplink.brokers[1]: "ftp://x" is not allowed`,
	} {
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("exit %d, stderr %q; want exit 2 and %q", code, errOut, want)
		}
	}
}

// run starts "edgeagent run" in a fresh directory with HOME pointing there too,
// stops it with sig, and checks that it exits cleanly having written nothing
// outside its state directory.
func TestRunStopsCleanlyAndWritesOnlyStateDir(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(binary, "run", "--state-dir", "state", "--node-id", "test-node", "--log-level", "debug", "--statsd", "", "--http", "")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "HOME="+dir, "TMPDIR="+dir)
			var stderr testenv.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitStarted(t, &stderr)

			// A second agent on the same state directory is refused.
			_, errOut, code := edgeagent(t, dir, "run", "--state-dir", "state", "--node-id", "test-node", "--statsd", "", "--http", "")
			if code != 1 || !strings.Contains(errOut, fmt.Sprintf("in use by another edgeagent (pid %d)", cmd.Process.Pid)) {
				t.Errorf("second agent: exit %d, stderr %q", code, errOut)
			}

			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("exit after %v: %v\n%s", sig, err, stderr.String())
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("no exit 10s after %v\n%s", sig, stderr.String())
			}
			log := stderr.String()
			for _, want := range []string{"level=INFO msg=\"edgeagent started\"", "node=test-node", "msg=\"edgeagent stopping\""} {
				if !strings.Contains(log, want) {
					t.Errorf("log lacks %q:\n%s", want, log)
				}
			}

			var written []string
			filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if rel, _ := filepath.Rel(dir, p); rel != "." && !d.IsDir() {
					written = append(written, rel)
				}
				return nil
			})
			// No broker: the heartbeat queued in memory goes to the spool on the way out.
			if want := []string{"state/edgeagent.lock", "state/seq", "state/spool/00000000000000000001.seg"}; !slices.Equal(written, want) {
				t.Errorf("files written: %v; want only %v", written, want)
			}
		})
	}
}

func TestRunJSONLogs(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfg, []byte("log:\n  format: json\nnode:\n  id: json-node\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "run", "--config", cfg, "--state-dir", filepath.Join(dir, "state"), "--statsd", "", "--http", "")
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitStarted(t, &stderr)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(stderr.String(), "\n")
	var rec map[string]any
	if err := json.Unmarshal([]byte(first), &rec); err != nil || rec["msg"] != "edgeagent started" || rec["node"] != "json-node" {
		t.Errorf("first log line is not the JSON start record: %q (%v)", first, err)
	}
}

func waitStarted(t *testing.T, stderr *testenv.Buffer) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(stderr.String(), "edgeagent started") },
		func() string { return "log so far:\n" + stderr.String() })
}

func TestPluginsListsVerdicts(t *testing.T) {
	dir := t.TempDir()
	plugins := filepath.Join(dir, "plugins")
	os.Mkdir(plugins, 0o755)
	os.WriteFile(filepath.Join(plugins, "good"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(plugins, "open"), []byte("#!/bin/sh\n"), 0o755)
	os.Chmod(filepath.Join(plugins, "open"), 0o757) // past the umask
	os.WriteFile(filepath.Join(plugins, "notes.txt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(plugins, "n\xffme"), []byte("#!/bin/sh\n"), 0o755) // listed escaped, as a result would say it
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("paths:\n  plugin_dir: "+plugins+"\n"), 0o644)
	out, errOut, code := edgeagent(t, dir, "plugins", "--config", cfg)
	want := "good                     ok\n" +
		"notes.txt                refused: plugin notes.txt is not executable\n" +
		`n\xffme                  refused: "n\xffme" is not a plugin name (letters, digits, '.', '_' and '-'; no path)` + "\n" +
		"open                     refused: plugin open: is writable by group or others (mode 0757); chmod go-w\n"
	if code != 0 || out != want {
		t.Errorf("exit %d\n%s\nwant\n%s\nstderr %s", code, out, want, errOut)
	}
}
