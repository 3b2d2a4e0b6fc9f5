package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// edgectlBin and agentBin are built once for the tests that run the system.
var edgectlBin, agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgectl-test")
	if err != nil {
		panic(err)
	}
	edgectlBin, agentBin = filepath.Join(dir, "edgectl"), filepath.Join(dir, "edgeagent")
	for bin, pkg := range map[string]string{edgectlBin: ".", agentBin: "../edgeagent"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// start runs a binary until the test ends and returns its combined output.
func start(t *testing.T, bin string, args ...string) (*exec.Cmd, *testenv.Buffer) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, &out
}

func fleetNodes(t *testing.T, api string) []controller.Node {
	t.Helper()
	out, err := exec.Command(edgectlBin, "nodes", "--json", "--server", "http://"+api).Output()
	if err != nil {
		return nil
	}
	var nodes []controller.Node
	if err := json.Unmarshal(out, &nodes); err != nil {
		t.Fatalf("nodes --json: %v\n%s", err, out)
	}
	return nodes
}

// fastAgent is the configuration test agents share: heartbeats and the host
// and disk collectors every second, no SMART.
const fastAgent = "heartbeat:\n  interval: 1s\nuplink:\n  keepalive: 2s\n  flush_interval: 1s\n" +
	"collect:\n  host: 1s\n  disk: 1s\n  smart: 0s\n"

// agentArgs writes yaml as an agent's configuration in dir and returns the
// arguments of 'edgeagent run' for node on broker, with its state in
// dir/state and StatsD and HTTP off; extra arguments follow (a later flag wins).
func agentArgs(t *testing.T, dir, broker, node, yaml string, extra ...string) []string {
	t.Helper()
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return append([]string{"run", "--config", cfg, "--state-dir", filepath.Join(dir, "state"), "--node-id", node,
		"--broker", broker, "--statsd", "", "--http", ""}, extra...)
}

// TestSystem runs the controller with its embedded broker, and against a real
// mosquitto, with one agent each: the node appears online with live
// utilization, its agent's instance and clock, and no conflict; the table
// fits 80 columns, and a killed agent turns offline
// within the keepalive window through its last will.
func TestSystem(t *testing.T) {
	for _, broker := range []string{"embedded", "mosquitto"} {
		t.Run(broker, func(t *testing.T) {
			api := testenv.FreePort(t)
			args := []string{"serve", "--http", api, "--heartbeat", "1s"}
			url := ""
			if broker == "embedded" {
				mqttAddr := testenv.FreePort(t)
				args = append(args, "--mqtt", mqttAddr)
				url = "tcp://" + mqttAddr
			} else {
				url = testenv.StartMosquitto(t, "").URL
				args = append(args, "--broker", url)
			}
			_, ctlLog := start(t, edgectlBin, args...)
			agent, agentLog := start(t, agentBin, agentArgs(t, t.TempDir(), url, "node-"+broker, fastAgent)...)

			var node controller.Node
			testenv.WaitFor(t, 20*time.Second, func() bool {
				nodes := fleetNodes(t, api)
				if len(nodes) != 1 {
					return false
				}
				node = nodes[0]
				_, cpu := node.Utilization["cpu_percent"]
				return node.Online && cpu && node.HeartbeatSeq > 0
			}, func() string {
				return fmt.Sprintf("node %+v\ncontroller:\n%s\nagent:\n%s", node, ctlLog.String(), agentLog.String())
			})
			if node.ID != "node-"+broker || node.Version != "devel" || node.Health == "" || node.Instance == "" ||
				node.NodeTime.IsZero() || node.Conflict != nil || time.Since(node.LastHeartbeat) > 5*time.Second {
				t.Errorf("node %+v", node)
			}
			table, err := exec.Command(edgectlBin, "nodes", "--server", "http://"+api).Output()
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(table)), "\n") {
				if n := len([]rune(line)); n > 80 {
					t.Errorf("table line of %d columns: %q", n, line)
				}
			}
			if !strings.Contains(string(table), "node-"+broker) || !strings.Contains(string(table), "online") {
				t.Errorf("table:\n%s", table)
			}

			killed := time.Now()
			agent.Process.Signal(syscall.SIGKILL)
			agent.Wait()
			testenv.WaitFor(t, 5*time.Second, func() bool {
				nodes := fleetNodes(t, api)
				return len(nodes) == 1 && !nodes[0].Online
			}, func() string { return "still online after SIGKILL:\n" + ctlLog.String() })
			t.Logf("offline %v after SIGKILL (keepalive 2s)", time.Since(killed).Round(time.Millisecond))
			out, _ := exec.Command(edgectlBin, "events", "--server", "http://"+api).Output()
			if !strings.Contains(string(out), "is offline (last will") {
				t.Errorf("events:\n%s", out)
			}
		})
	}
}
