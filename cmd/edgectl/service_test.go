package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// TestServiceRouterEndToEnd: the example daemon registers with a real agent,
// answers a service.call sent through edgectl, shows in 'edgectl services',
// and when it hangs (SIGSTOP: no more heartbeats) it is deregistered with an
// event that reaches the controller, and calls get a clear answer.
func TestServiceRouterEndToEnd(t *testing.T) {
	daemon := filepath.Join(t.TempDir(), "service")
	if out, err := exec.Command("go", "build", "-o", daemon, "../../examples/service").CombinedOutput(); err != nil {
		t.Fatalf("build examples/service: %v\n%s", err, out)
	}
	api, mqttAddr := testenv.FreePort(t), testenv.FreePort(t)
	start(t, edgectlBin, "serve", "--http", api, "--mqtt", mqttAddr, "--heartbeat", "1s")
	dir := t.TempDir()
	socket := filepath.Join(dir, "state", "control.sock")
	start(t, agentBin, agentArgs(t, dir, "tcp://"+mqttAddr, "svc-node", fastAgent)...)
	testenv.WaitFor(t, 15*time.Second, func() bool {
		n := fleetNodes(t, api)
		_, err := os.Stat(socket)
		return len(n) == 1 && n[0].Online && err == nil
	}, func() string { return "node never online" })

	svc, svcLog := start(t, daemon, "--socket", socket, "--name", "store", "--interval", "200ms")
	ctl := func(args ...string) (string, int) {
		cmd := exec.Command(edgectlBin, args...)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	server := "--server=http://" + api
	var out string
	var code int
	testenv.WaitFor(t, 10*time.Second, func() bool {
		out, code = ctl("exec", server, "svc-node", "service.call", "store", "hello")
		return code == 0
	}, func() string { return out + "\n" + svcLog.String() })
	if out != "store: hello\n" {
		t.Errorf("service.call: %q", out)
	}
	if out, code := ctl("services", server, "svc-node"); code != 0 || !strings.Contains(out, "store") || !strings.Contains(out, "200ms") {
		t.Errorf("services: %d %q", code, out)
	}
	if out, code := ctl("exec", server, "svc-node", "service.call", "nobody"); code != 1 || !strings.Contains(out, `service "nobody" is not registered`) {
		t.Errorf("unregistered: %d %q", code, out)
	}

	svc.Process.Signal(syscall.SIGSTOP) // hung: connection open, no heartbeats
	defer svc.Process.Signal(syscall.SIGCONT)
	testenv.WaitFor(t, 10*time.Second, func() bool {
		out, _ := ctl("events", server)
		return strings.Contains(out, "service store deregistered: it missed three heartbeats")
	}, func() string { out, _ := ctl("events", server); return out })
	if out, code := ctl("exec", server, "svc-node", "service.call", "store", "again"); code == 0 || !strings.Contains(out, "not registered") {
		t.Errorf("call after deregistration: %d %q", code, out)
	}
}
