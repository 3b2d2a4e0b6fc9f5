package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestAgentStatusEndpoint reads the agent's /healthz and /status while the
// controller is up, and after it is gone: healthy while spooling within
// limits (a broker away for less than 30 s is not even a degradation), and
// /status says the uplink is disconnected and spooling. The host collector
// is off: on a machine without temperature sensors it degrades the agent.
func TestAgentStatusEndpoint(t *testing.T) {
	api, mqttAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	ctl, _ := start(t, edgectlBin, "serve", "--http", api, "--mqtt", mqttAddr)
	_, agentLog := start(t, agentBin, agentArgs(t, t.TempDir(), "tcp://"+mqttAddr, "st",
		strings.Replace(fastAgent, "host: 1s", "host: 0s", 1), "--http", httpAddr)...)

	base := "http://" + httpAddr
	var body string
	testenv.WaitFor(t, 15*time.Second, func() bool {
		var code int
		code, body = httpGet(base + "/healthz")
		return code == 200 && body == "ok\n"
	}, func() string { return "healthz: " + body + "\nagent:\n" + agentLog.String() })

	ctl.Process.Signal(syscall.SIGKILL) // the controller and its broker vanish
	ctl.Wait()
	type status struct {
		Health  string
		NextSeq uint64 `json:"next_seq"`
		Uplink  struct {
			State string
			Spool struct{ Disk int }
		}
	}
	var st status
	testenv.WaitFor(t, 15*time.Second, func() bool {
		code, b := httpGet(base + "/status")
		if code != 200 || json.Unmarshal([]byte(b), &st) != nil {
			return false
		}
		return st.Uplink.State == "disconnected" && st.Uplink.Spool.Disk > 0
	}, func() string { return "status: " + body })
	code, body := httpGet(base + "/healthz")
	if code != 200 || body != "ok\n" {
		t.Errorf("healthz while spooling: %d %q", code, body)
	}
	if st.Health != "ok" || st.NextSeq == 0 {
		t.Errorf("status %+v", st)
	}
}
