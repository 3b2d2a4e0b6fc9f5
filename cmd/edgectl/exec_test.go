package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// TestExecEndToEnd runs commands through the controller on a real agent:
// the built-in ping, the example plugin shipped in examples/plugins, a plugin
// that fails with output on both streams, a refused name, and --all.
func TestExecEndToEnd(t *testing.T) {
	api, mqttAddr := testenv.FreePort(t), testenv.FreePort(t)
	start(t, edgectlBin, "serve", "--http", api, "--mqtt", mqttAddr, "--heartbeat", "1s")
	dir := t.TempDir()
	plugins := filepath.Join(dir, "plugins")
	os.Mkdir(plugins, 0o755)
	example, err := os.ReadFile("../../examples/plugins/system-summary")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(plugins, "system-summary"), example, 0o755)
	os.WriteFile(filepath.Join(plugins, "fails"), []byte("#!/bin/sh\necho out; echo err >&2; exit 3\n"), 0o755)
	os.WriteFile(filepath.Join(plugins, "flood"), []byte("#!/bin/sh\nhead -c 1073741824 /dev/zero\n"), 0o755)
	agent, _ := start(t, agentBin, agentArgs(t, dir, "tcp://"+mqttAddr, "exec-node", fastAgent+"paths:\n  plugin_dir: "+plugins+"\n")...)
	testenv.WaitFor(t, 15*time.Second, func() bool {
		n := fleetNodes(t, api)
		return len(n) == 1 && n[0].Online
	}, func() string { return "node never online" })

	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(edgectlBin, append([]string{"exec", "--server", "http://" + api, "--timeout", "20s"}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
	}
	if out, errOut, code := run("exec-node", "ping"); code != 0 || out != "pong from exec-node (edgeagent devel)\n" || errOut != "" {
		t.Errorf("ping: %d %q %q", code, out, errOut)
	}
	if out, _, code := run("exec-node", "system-summary"); code != 0 || !strings.Contains(out, "host:") || !strings.Contains(out, "filesystems:") {
		t.Errorf("system-summary: %d %q", code, out)
	}
	if out, errOut, code := run("exec-node", "fails"); code != 3 || out != "out\n" || errOut != "err\n" {
		t.Errorf("fails: %d %q %q", code, out, errOut)
	}
	if _, errOut, code := run("exec-node", "../../bin/sh", "-c", "id"); code != exitRefused || !strings.Contains(errOut, "is not a plugin name") {
		t.Errorf("path: %d %q", code, errOut)
	}
	// 1 GiB of output: cut at 64 KiB, flagged, and the agent's memory stays put.
	if out, errOut, code := run("exec-node", "flood"); code != 0 || len(out) != 64<<10 ||
		!strings.Contains(errOut, "stdout truncated: 65536 of 1073741824 bytes shown") {
		t.Errorf("flood: %d, %d bytes, %q", code, len(out), errOut)
	}
	status, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(agent.Process.Pid), "status"))
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			t.Logf("agent peak RSS after a plugin printed 1 GiB: %d KiB", kb)
			if kb > 64<<10 {
				t.Errorf("agent peak RSS %d KiB", kb)
			}
		}
	}
	if out, _, code := run("--all", "ping"); code != 0 || !strings.Contains(out, "exec-node") || !strings.Contains(out, "1 nodes, 0 not ok") {
		t.Errorf("--all: %d %q", code, out)
	}
}
