package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// startAgent runs the agent with cfg, optionally handing it sock as the
// inherited "statsd" socket, and returns its log.
func startAgent(t *testing.T, dir, cfg string, sock *os.File) (*exec.Cmd, *testenv.Buffer) {
	t.Helper()
	args := []string{binary, "run", "--config", cfg, "--state-dir", filepath.Join(dir, "state"), "--log-level", "debug", "--http", ""}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = os.Environ()
	if sock != nil {
		// As systemd's socket activation: LISTEN_PID names the agent's pid,
		// which the shell has and hands over by exec.
		cmd = exec.Command("sh", append([]string{"-c", `LISTEN_PID=$$ exec "$@"`, "sh"}, args...)...)
		cmd.ExtraFiles = []*os.File{sock}
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=statsd")
	}
	var log testenv.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitStarted(t, &log)
	return cmd, &log
}

func stopAgent(t *testing.T, cmd *exec.Cmd, log *testenv.Buffer) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, log.String())
	}
}

var heartbeatSeq = regexp.MustCompile(`msg=heartbeat component=telemetry seq=(\d+)`)

func seqs(log string) []uint64 {
	var out []uint64
	for _, m := range heartbeatSeq.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		out = append(out, n)
	}
	return out
}

// TestRunHeartbeatsStatsDAndRestart runs the real agent twice on one state
// directory. The first run inherits its StatsD socket (LISTEN_FDS) and must
// aggregate what was queued on it before it started; heartbeat sequence
// numbers must keep rising across the restart.
func TestRunHeartbeatsStatsDAndRestart(t *testing.T) {
	dir := t.TempDir()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := udp.LocalAddr().String()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`node:
  id: restart-node
heartbeat:
  interval: 1s
statsd:
  listen: %s
  flush_interval: 1s
collect:
  smart: 0s
`, addr)), 0o644)
	// Queued before the agent exists: the inherited socket must deliver it.
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("app.requests:3|c\napp.requests:4|c|#env:test"))
	c.Close()
	sock, _ := udp.File()
	udp.Close()

	cmd, log := startAgent(t, dir, cfg, sock)
	sock.Close()
	testenv.WaitFor(t, 10*time.Second, func() bool {
		return regexp.MustCompile(`msg=batch component=telemetry source=statsd points=2 first="app.requests\{env=test,metric_type=counter\}=4 app.requests\{metric_type=counter\}=3"`).MatchString(log.String()) &&
			len(seqs(log.String())) >= 3
	}, func() string { return "no statsd batch or heartbeats:\n" + log.String() })
	if !regexp.MustCompile(`socket=statsd address=` + regexp.QuoteMeta(addr) + ` inherited=true`).MatchString(log.String()) {
		t.Errorf("statsd socket not inherited:\n%s", log.String())
	}
	stopAgent(t, cmd, log)
	first := seqs(log.String())

	cmd, log = startAgent(t, dir, cfg, nil)
	testenv.WaitFor(t, 10*time.Second, func() bool { return len(seqs(log.String())) >= 2 },
		func() string { return "no heartbeats after restart:\n" + log.String() })
	stopAgent(t, cmd, log)
	if !regexp.MustCompile(`socket=statsd address=` + regexp.QuoteMeta(addr) + ` inherited=false`).MatchString(log.String()) {
		t.Errorf("statsd not bound afresh on restart:\n%s", log.String())
	}
	all := append(first, seqs(log.String())...)
	for i := 1; i < len(all); i++ {
		if all[i] <= all[i-1] {
			t.Fatalf("heartbeat seq went from %d to %d across the restart: %v", all[i-1], all[i], all)
		}
	}
	t.Logf("heartbeat seqs: %v", all)
}
