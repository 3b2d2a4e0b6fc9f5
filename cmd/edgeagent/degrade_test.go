package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// minikernel is internal/testenv/minikernel, built once: it runs the agent
// as if on a kernel without some netlink families or without IPv6.
var minikernel = sync.OnceValues(func() (string, error) {
	path := filepath.Join(filepath.Dir(binary), "minikernel")
	out, err := exec.Command("go", "build", "-o", path, "../../internal/testenv/minikernel").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build minikernel: %v\n%s", err, out)
	}
	return path, nil
})

// degraded is an agent started for a degradation test.
type degraded struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *testenv.Buffer
	http string
}

// startDegraded runs the agent in dir with the base config below plus extra,
// optionally under minikernel with wrap as its flags. The broker is not
// there: the uplink is degraded in every case, which the tests ignore.
func startDegraded(t *testing.T, dir, extra string, wrap ...string) *degraded {
	t.Helper()
	d := &degraded{t: t, http: testenv.FreePort(t)}
	cfg := filepath.Join(dir, "config.yaml")
	base := fmt.Sprintf(`node:
  id: degrade-test
paths:
  state_dir: %s
uplink:
  brokers: [tcp://127.0.0.1:1]
heartbeat:
  interval: 1s
http:
  listen: %s
statsd:
  listen: ""
collect:
  host: 1s
  disk: 1s
  net: 1s
  tunnel: 0s
  smart: 0s
  agent: 1s
`, filepath.Join(dir, "state"), d.http)
	if err := os.WriteFile(cfg, []byte(mergeYAML(base, extra)), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{binary, "run", "--config", cfg, "--log-level", "debug"}
	if len(wrap) > 0 {
		mk, err := minikernel()
		if err != nil {
			t.Fatal(err)
		}
		args = append(append(append([]string{mk}, wrap...), "--"), args...)
	}
	d.cmd = exec.Command(args[0], args[1:]...)
	d.log = &testenv.Buffer{}
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	waitStarted(t, d.log)
	return d
}

// mergeYAML lets extra replace whole top-level sections of base.
func mergeYAML(base, extra string) string {
	sections := regexp.MustCompile(`(?m)^[a-z_]+:`).FindAllString(extra, -1)
	for _, s := range sections {
		base = regexp.MustCompile(`(?ms)^`+regexp.QuoteMeta(s)+`.*?(^\S|\z)`).ReplaceAllString(base, "$1")
	}
	return base + extra
}

// healthz returns /healthz's status code and body, or 0 while it does not
// answer.
func (d *degraded) healthz() (int, string) {
	resp, err := http.Get("http://" + d.http + "/healthz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitProblem waits until /healthz reports a problem line starting with
// part and containing each of want, and checks that the agent is degraded,
// not unhealthy, and still running.
func (d *degraded) waitProblem(part string, want ...string) string {
	d.t.Helper()
	var code int
	var body, line string
	testenv.WaitFor(d.t, 20*time.Second, func() bool {
		code, body = d.healthz()
		line = problemLine(body, part)
		for _, w := range want {
			if !strings.Contains(line, w) {
				return false
			}
		}
		return line != ""
	}, func() string {
		return fmt.Sprintf("no problem %q with %q; /healthz %d:\n%s\nlog:\n%s", part, want, code, body, d.log.String())
	})
	if code != http.StatusOK || !strings.HasPrefix(body, "degraded\n") {
		d.t.Errorf("/healthz %d %q: an optional part missing must leave the agent degraded, not unhealthy", code, body)
	}
	d.t.Logf("reported: %s", line)
	return line
}

// waitRecovered waits until no problem starts with part.
func (d *degraded) waitRecovered(part string) {
	d.t.Helper()
	var body string
	testenv.WaitFor(d.t, 40*time.Second, func() bool {
		var code int
		code, body = d.healthz()
		return code != 0 && problemLine(body, part) == ""
	}, func() string { return fmt.Sprintf("%q still reported:\n%s\nlog:\n%s", part, body, d.log.String()) })
}

func problemLine(body, part string) string {
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, part+": ") {
			return l
		}
	}
	return ""
}

// stop ends the agent with SIGTERM; it must exit 0.
func (d *degraded) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		d.t.Fatalf("agent exit: %v\n%s", err, d.log.String())
	}
}

// collectorOK waits until /status shows the named collector has run
// without error.
func (d *degraded) collectorOK(name string) {
	d.t.Helper()
	testenv.WaitFor(d.t, 20*time.Second, func() bool {
		resp, err := http.Get("http://" + d.http + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Collectors []struct {
				Name      string `json:"name"`
				Runs      int    `json:"runs"`
				LastError string `json:"last_error"`
			} `json:"collectors"`
		}
		json.NewDecoder(resp.Body).Decode(&st)
		for _, c := range st.Collectors {
			if c.Name == name {
				return c.Runs > 1 && c.LastError == ""
			}
		}
		return false
	}, func() string { return "collector " + name + " never ran cleanly:\n" + d.log.String() })
}

// TestKernelWithoutXFRMOrNetfilterNetlink: the agent uses only the route
// family, so a kernel built without XFRM and netfilter netlink (a firmware
// kernel) does not even degrade it. Before, the netlink handle opened all
// three and the agent exited at start.
func TestKernelWithoutXFRMOrNetfilterNetlink(t *testing.T) {
	d := startDegraded(t, t.TempDir(), "", "-netlink", "xfrm,netfilter")
	d.collectorOK("net")
	if _, body := d.healthz(); problemLine(body, "collector net") != "" {
		t.Errorf("net degraded without XFRM and netfilter: %s", body)
	}
	d.stop()
}

// TestKernelWithoutRouteNetlink: no netlink at all costs the NIC figures
// and link events, with the reason, and nothing else.
func TestKernelWithoutRouteNetlink(t *testing.T) {
	d := startDegraded(t, t.TempDir(), "", "-netlink", "route,xfrm,netfilter,generic")
	d.waitProblem("collector net", "open netlink", "protocol not supported")
	d.collectorOK("disk")
	d.stop()
}

// TestKernelWithoutIPv6: a StatsD address that needs IPv6 is reported and
// tried again; the rest runs.
func TestKernelWithoutIPv6(t *testing.T) {
	d := startDegraded(t, t.TempDir(), "statsd:\n  listen: \"[::1]:18125\"\n", "-inet6")
	d.waitProblem("statsd", "address family not supported", "trying again")
	d.collectorOK("net")
	d.stop()
}

// TestStatsDPortHeld: 8125 is often held by another StatsD daemon. The
// agent starts without it, degraded, and takes the port when it is freed.
func TestStatsDPortHeld(t *testing.T) {
	held, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.LocalAddr().String()
	d := startDegraded(t, t.TempDir(), "statsd:\n  listen: "+addr+"\n  flush_interval: 1s\n")
	d.waitProblem("statsd", "address already in use")
	held.Close()
	d.waitRecovered("statsd")
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testenv.WaitFor(t, 10*time.Second, func() bool {
		c.Write([]byte("recovered.count:1|c"))
		return strings.Contains(d.log.String(), "recovered.count")
	}, func() string { return "StatsD not served after the port was freed:\n" + d.log.String() })
	d.stop()
}

// TestStatusPortHeld: the status endpoint's port held elsewhere; the
// heartbeat says so, and the endpoint comes up when the port is freed.
func TestStatusPortHeld(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.Addr().String()
	d := startDegraded(t, t.TempDir(), "http:\n  listen: "+addr+"\n")
	d.http = addr
	testenv.WaitFor(t, 20*time.Second, func() bool {
		return regexp.MustCompile(`msg=heartbeat .*health=degraded why=".*http: socket http: listen tcp ` +
			regexp.QuoteMeta(addr) + `: bind: address already in use; trying again`).MatchString(d.log.String())
	}, func() string { return "no heartbeat naming the held port:\n" + d.log.String() })
	held.Close()
	d.waitRecovered("http")
	d.stop()
}

// TestSmartctlMissing: without smartctl the agent cannot tell a dying
// disk; it says so, and recovers when smartctl appears.
func TestSmartctlMissing(t *testing.T) {
	real := testenv.LookPath(t, "smartctl")
	dir := t.TempDir()
	smartctl := filepath.Join(dir, "bin", "smartctl")
	d := startDegraded(t, dir, "collect:\n  host: 1s\n  smart: 1s\n  tunnel: 0s\ndisks:\n  smartctl: "+smartctl+"\n")
	d.waitProblem("collector smart", "disk health unreadable", "smartctl")
	os.MkdirAll(filepath.Dir(smartctl), 0o755)
	if err := os.Symlink(real, smartctl); err != nil {
		t.Fatal(err)
	}
	d.waitRecovered("collector smart")
	d.stop()
}

// TestNoTemperatureSensors: a sysfs without hwmon or thermal zones (a VM,
// a board whose driver is not loaded) degrades the host collector, which
// recovers when a sensor appears. The sysfs is a directory the test fills
// with a copy of a real hwmon sensor's files.
func TestNoTemperatureSensors(t *testing.T) {
	dir := t.TempDir()
	sysfs := filepath.Join(dir, "sys")
	os.MkdirAll(sysfs, 0o755)
	d := startDegraded(t, dir, "paths:\n  state_dir: "+filepath.Join(dir, "state")+"\n  sysfs: "+sysfs+"\n")
	d.waitProblem("collector host", "no temperature sensor")
	hwmon := filepath.Join(sysfs, "class", "hwmon", "hwmon0")
	os.MkdirAll(hwmon, 0o755)
	for name, content := range map[string]string{"name": "coretemp\n", "temp1_input": "41000\n", "temp1_label": "Package id 0\n",
		"temp1_max": "100000\n", "temp1_crit": "100000\n"} {
		os.WriteFile(filepath.Join(hwmon, name), []byte(content), 0o644)
	}
	d.waitRecovered("collector host")
	d.stop()
}

func mount(t *testing.T, args ...string) {
	t.Helper()
	testenv.Run(t, "mount", args...)
	target := args[len(args)-1]
	t.Cleanup(func() { exec.Command("umount", "-l", target).Run() })
}

// TestStateDirReadOnly: a data partition remounted read-only (a failing SD
// card) before the agent ever ran on it must not stop the agent: it runs
// from memory (the spool's directory cannot even be made) and says what is
// not persisted.
func TestStateDirReadOnly(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o750)
	mount(t, "--bind", state, state)
	testenv.Run(t, "mount", "-o", "remount,bind,ro", state)
	d := startDegraded(t, dir, "")
	d.waitProblem("state", "not persisted", "sequence numbers", "read-only file system")
	d.waitProblem("control socket", "read-only file system", "trying again")
	d.waitProblem("spool", "read-only file system")
	d.collectorOK("net")
	d.stop()
}

// TestStateDirFull: a full data partition; the agent runs, numbers its
// messages (the sequence file is overwritten in place) and says what is
// not persisted.
func TestStateDirFull(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o750)
	mount(t, "-t", "tmpfs", "-o", "size=256k", "tmpfs", state)
	filler, _ := os.Create(filepath.Join(state, "filler"))
	for _, err := filler.Write(make([]byte, 4096)); err == nil; _, err = filler.Write(make([]byte, 4096)) {
	}
	filler.Close()
	d := startDegraded(t, dir, "")
	d.waitProblem("state", "not persisted", "no space left on device")
	d.waitProblem("spool", "no space left on device")
	d.collectorOK("net")
	d.stop()
}

// TestNodeIDGeneratedOnceAndKept: without node.id, and with the
// provisioned id file empty (an image's /etc/machine-id before its first
// boot), the agent generates an id on its first start and keeps it; the
// host name alone is never the id.
func TestNodeIDGeneratedOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "machine-id"), nil, 0o444)
	extra := "node:\n  id: \"\"\n  id_file: " + filepath.Join(dir, "machine-id") + "\n"
	d := startDegraded(t, dir, extra)
	d.stop()
	kept, err := os.ReadFile(filepath.Join(dir, "state", "node-id"))
	if err != nil {
		t.Fatalf("no id kept in the state directory: %v\n%s", err, d.log.String())
	}
	id := strings.TrimSpace(string(kept))
	host, _ := os.Hostname()
	if !regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{12}$`).MatchString(id) || id == host {
		t.Fatalf("generated id %q: want the host name and 12 random hex digits", id)
	}
	d = startDegraded(t, dir, extra)
	d.stop()
	if !strings.Contains(d.log.String(), "node="+id) {
		t.Fatalf("second start did not use the kept id %s:\n%s", id, d.log.String())
	}
}

// TestNodeIDKeptAcrossUpgrade: a state directory an earlier version used
// (it has a sequence file, no kept id) keeps that version's id, the machine
// id or else the host name, so the upgrade does not make a new node.
func TestNodeIDKeptAcrossUpgrade(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "state"), 0o750)
	os.WriteFile(filepath.Join(dir, "state", "seq"), []byte("2001\n"), 0o640)
	want, _ := os.Hostname()
	if data, err := os.ReadFile("/etc/machine-id"); err == nil && len(strings.TrimSpace(string(data))) == 32 {
		want = strings.TrimSpace(string(data))
	}
	d := startDegraded(t, dir, "node:\n  id: \"\"\n")
	d.stop()
	kept, _ := os.ReadFile(filepath.Join(dir, "state", "node-id"))
	if got := strings.TrimSpace(string(kept)); got != want || !strings.Contains(d.log.String(), "node="+want) {
		t.Fatalf("kept id %q, want the earlier version's %q:\n%s", got, want, d.log.String())
	}
}

// TestTLSFilesMissingAtStart: TLS configured but its files absent at start
// is the one uplink problem that stops the agent: it could never reach its
// broker. The message says so and names the file; exit 2.
func TestTLSFilesMissingAtStart(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("uplink:\n  brokers: [ssl://127.0.0.1:8883]\n  ca_file: "+filepath.Join(dir, "ca.pem")+"\n"), 0o644)
	_, errOut, code := edgeagent(t, dir, "run", "--config", cfg, "--state-dir", filepath.Join(dir, "state"), "--node-id", "n", "--http", "", "--statsd", "")
	if code != 2 || !strings.Contains(errOut, "TLS is configured but its files cannot be read at start") ||
		!strings.Contains(errOut, "ca.pem") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
}

// TestReadOnlyRoot runs the agent in a mount namespace where every
// filesystem but /proc, /sys and /dev is read-only and only the state
// directory (a tmpfs) is writable: it must work normally, and write
// nothing anywhere else (a write elsewhere would fail, naming the path).
func TestReadOnlyRoot(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "unshare")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o750)
	port := testenv.FreePort(t)
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("node:\n  id: ro-root\nuplink:\n  brokers: [tcp://127.0.0.1:1]\nheartbeat:\n  interval: 1s\n"+
		"http:\n  listen: %s\nstatsd:\n  listen: %s\ncollect:\n  host: 1s\n  net: 1s\n  disk: 1s\n  agent: 1s\n", port, testenv.FreePort(t))), 0o644)
	script := `set -e
mount --make-rprivate /
for m in $(findmnt -rn -o TARGET | grep -v -e '^/proc' -e '^/sys' -e '^/dev' | sort -u); do
	mount -o remount,bind,ro "$m" 2>/dev/null || true
done
mount -t tmpfs -o size=16m tmpfs "$1"
touch /probe-root 2>/dev/null && { echo "root is writable"; exit 1; }
shift
exec "$@"`
	cmd := exec.Command("unshare", "--mount", "sh", "-c", script, "sh", state, binary, "run", "--config", cfg,
		"--state-dir", state, "--log-level", "debug")
	log := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	d := &degraded{t: t, cmd: cmd, log: log, http: port}
	waitStarted(t, log)
	d.collectorOK("net")
	d.collectorOK("disk")
	testenv.WaitFor(t, 10*time.Second, func() bool { return len(seqs(log.String())) >= 3 },
		func() string { return "no heartbeats:\n" + log.String() })
	_, body := d.healthz()
	for _, part := range []string{"state", "control socket", "statsd", "log"} {
		if line := problemLine(body, part); line != "" {
			t.Errorf("with a read-only root: %s", line)
		}
	}
	d.stop()
	if strings.Contains(log.String(), "read-only file system") {
		t.Errorf("the agent tried to write outside its state directory:\n%s", log.String())
	}
}

// TestOpenVPNUnreachable: an OpenVPN whose management socket is not there
// (the daemon is not running yet) and whose password file is missing: the
// agent starts, reports the tunnel down and itself degraded, naming both.
// Before, the missing password file stopped the agent at start, even with
// the tunnel collector off.
func TestOpenVPNUnreachable(t *testing.T) {
	dir := t.TempDir()
	tunnels := fmt.Sprintf("tunnels:\n  openvpn:\n    - name: vpn0\n      management: unix:%s\n      password_file: %s\n"+
		"    - name: vpn1\n      management: unix:%s\n",
		filepath.Join(dir, "vpn0.sock"), filepath.Join(dir, "vpn0.pw"), filepath.Join(dir, "vpn1.sock"))
	d := startDegraded(t, dir, tunnels)
	d.collectorOK("net")
	d.stop()
	d = startDegraded(t, dir, tunnels+"collect:\n  tunnel: 1s\n  net: 1s\n")
	line := d.waitProblem("collector tunnel", "openvpn vpn0", "openvpn vpn1")
	if !strings.Contains(line, "password file") || !strings.Contains(line, "unreachable") {
		t.Errorf("the reasons do not say what is missing: %s", line)
	}
	d.stop()
}

// TestKernelWithoutGenericNetlink: WireGuard is read through generic
// netlink (wgctrl opens it also for userspace devices); without it the
// tunnel collector is degraded, with the reason, and the rest runs.
func TestKernelWithoutGenericNetlink(t *testing.T) {
	testenv.RequireRoot(t)
	// A userspace WireGuard device, as wireguard-go announces one: a socket
	// in /var/run/wireguard.
	if _, err := os.Stat("/var/run/wireguard"); err != nil {
		os.MkdirAll("/var/run/wireguard", 0o755)
		t.Cleanup(func() { os.Remove("/var/run/wireguard") })
	}
	sock := fmt.Sprintf("/var/run/wireguard/edgetest%d.sock", os.Getpid())
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := startDegraded(t, t.TempDir(), "collect:\n  tunnel: 1s\n  net: 1s\n", "-netlink", "generic")
	d.waitProblem("collector tunnel", "wireguard", "protocol not supported")
	d.collectorOK("net")
	d.stop()
}

// TestUnreadableSpoolSegment: a spool segment that cannot be read (a bad
// flash block) is set aside and counted; the agent starts instead of
// crash-looping. (The read error here is EISDIR, a directory where the
// segment should be; uplink/spool's tests produce a real EIO.)
func TestUnreadableSpoolSegment(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "state", "spool", "00000000000000000007.seg"), 0o750)
	d := startDegraded(t, dir, "")
	testenv.WaitFor(t, 10*time.Second, func() bool {
		resp, err := http.Get("http://" + d.http + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Uplink struct {
				Spool struct{ Quarantined int }
			}
		}
		json.NewDecoder(resp.Body).Decode(&st)
		return st.Uplink.Spool.Quarantined == 1
	}, func() string { return "segment not quarantined:\n" + d.log.String() })
	if !strings.Contains(d.log.String(), "1 spool segments could not be read") {
		t.Errorf("no event says records were lost:\n%s", d.log.String())
	}
	d.collectorOK("net")
	d.stop()
}
