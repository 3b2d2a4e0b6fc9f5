// Package qemu boots the agent the way an appliance's firmware does and checks
// it from both ends. For arm64 and armv7, QEMU's virt machine runs Debian's
// kernel with an initramfs built here from Debian's busybox-static, the
// cross-built agent at /usr/bin/edgeagent and scripts/init/S95edgeagent,
// started by BusyBox init through /etc/inittab and rcS. The host runs
// 'edgectl serve' with its embedded broker, which the guest reaches through
// QEMU's user network; the test types commands at the guest's serial console.
//
// Two boots per architecture: one with the root file system in the initramfs
// and the clock right, one with a read-only ext4 root, a separate data
// partition and the clock at 1970 (no RTC battery, no NTP yet), where the
// clock is then stepped six hours forward and back.
//
// The kernels and busybox come from scripts/qemu-fetch's cache; without them
// the test skips (fails under CI=true) and says how to fetch them. The
// guest's console is printed when a test fails, or with -v.
package qemu

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/buildinfo"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// heartbeat is the guests' heartbeat interval, short so the test is fast.
const heartbeat = time.Second

// Generous: TCG emulation on two shared cores.
const (
	bootTimeout    = 90 * time.Second
	commandTimeout = 60 * time.Second
	onlineTimeout  = 90 * time.Second
)

func TestAppliance(t *testing.T) {
	for _, a := range arches {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel() // one QEMU per architecture: a TCG guest keeps one core busy
			k := findKit(t, a)
			for _, tool := range []string{a.qemu, "cpio", "mke2fs"} {
				testenv.LookPath(t, tool)
			}
			b := build(t)
			t.Logf("%s: %s; binaries built in %v", a.name, k.release, b.took.Round(time.Millisecond))
			t.Run("initramfs", func(t *testing.T) { bootInitramfs(t, a, k, b) })
			t.Run("readonly-1970", func(t *testing.T) { bootReadOnly1970(t, a, k, b) })
		})
	}
}

// bootInitramfs: the root file system is the initramfs and the clock is
// right. The agent comes up from init, works, and the init script stops it
// cleanly, leaving nothing running.
func bootInitramfs(t *testing.T, a arch, k kit, b *binaries) {
	c := startController(t, b, heartbeat)
	tree := guestTree(t, a, k, b, guestFiles(t, c, "syslog"))
	m := boot(t, a, k, bootOptions{initrd: initramfs(t, tree, nil), rtc: "utc",
		logs: "/var/log/messages /var/log/edgeagent.stderr", brokerPort: c.port})
	up := m.waitShell(bootTimeout)

	node := checkAgent(t, m, c, up)
	for _, r := range c.watch.from(node) {
		if r.env.Unsynced {
			t.Errorf("%s: a %v says unsynced, but the guest's clock is right", r.topic, r.env.Kind)
			break
		}
	}
	if a.name == "arm64" { // one architecture is enough, and keeps the test within its minute
		reloadInPlace(t, m, c, node)
	}

	if out, code := m.run("/etc/init.d/S95edgeagent start", commandTimeout); code != 0 || !strings.Contains(out, "already running") {
		t.Errorf("S95edgeagent start while running exited %d:\n%s", code, out)
	}
	// A plugin still running when the agent stops must not outlive it.
	plugin := exec.Command(c.bin, "exec", "--server", c.api, "--timeout", "5m", node, "sleeper")
	must(t, plugin.Start())
	t.Cleanup(func() { plugin.Process.Kill(); plugin.Wait() })
	if out, code := m.run("i=0; until pidof sleep; do i=$((i+1)); [ $i -lt 100 ] || break; usleep 100000; done", commandTimeout); code != 0 {
		t.Errorf("the sleeper plugin did not start within 10s:\n%s", out)
	}

	stopAt := time.Now()
	out, code := m.run("/etc/init.d/S95edgeagent stop", commandTimeout)
	took := time.Since(stopAt)
	if code != 0 || !strings.Contains(out, "Stopping edgeagent: OK") {
		t.Errorf("S95edgeagent stop exited %d after %v:\n%s", code, took, out)
	}
	t.Logf("S95edgeagent stop returned in %v", took.Round(time.Millisecond))
	testenv.WaitFor(t, 10*time.Second, func() bool {
		nodes := c.nodes(t)
		return len(nodes) == 1 && !nodes[0].Online
	}, func() string { return fmt.Sprintf("still online after stop: %+v", c.nodes(t)) })
	clean := slices.ContainsFunc(c.events(t), func(e controller.EventRecord) bool {
		return e.Node == node && e.New == "offline" && strings.Contains(e.Message, "stopping cleanly")
	})
	if !clean {
		t.Errorf("no clean-stop offline event for %s: %+v", node, c.events(t))
	}
	if out, code := m.run("pidof edgeagent sleep", commandTimeout); code != 1 {
		t.Errorf("pidof edgeagent sleep after stop exited %d (want 1, none): %s", code, out)
	}
	if out, code := m.run("/etc/init.d/S95edgeagent status", commandTimeout); code != 3 {
		t.Errorf("S95edgeagent status after stop exited %d (want 3, not running): %s", code, out)
	}
	m.poweroff(30 * time.Second)
}

// bootReadOnly1970: the root file system is a read-only ext4 disk, the state
// directory is on a separate data partition, and the clock reads 1970. The
// agent works all the same, says its clock is unsynced, refuses a request
// that expired before its time floor, and steps of the clock by six hours
// either way neither stall nor flood its heartbeats.
func bootReadOnly1970(t *testing.T, a arch, k kit, b *binaries) {
	c := startController(t, b, heartbeat)
	tree := guestTree(t, a, k, b, guestFiles(t, c, "/data/edgeagent.log"))
	m := boot(t, a, k, bootOptions{
		initrd: initramfs(t, tree, stageOne),
		disks:  []string{ext4Image(t, tree, "edgeroot", "48M"), ext4Image(t, "", "edgedata", "32M")},
		// No IPv6 either, as firmware kernels often have: no /proc/net/snmp6.
		append: "edge.root=LABEL=edgeroot ipv6.disable=1",
		rtc:    "1970-01-02T00:00:00", // a day in: stepping back stays after the boot
		logs:   "/data/edgeagent.log /var/log/edgeagent.stderr",

		brokerPort: c.port,
	})
	up := m.waitShell(bootTimeout)

	if year := strings.TrimSpace(m.mustRun("date -u +%Y", commandTimeout)); year != "1970" {
		t.Fatalf("the guest's clock reads %s, not 1970", year)
	}
	mounts := m.mustRun("cat /proc/mounts", commandTimeout)
	if !hasMount(mounts, "/", "ro") || !hasMount(mounts, "/data", "rw") {
		t.Fatalf("want / read-only and /data read-write:\n%s", mounts)
	}

	if out := m.mustRun("ls /proc/net/snmp6 2>&1; true", commandTimeout); !strings.Contains(out, "No such file") {
		t.Errorf("the kernel booted with ipv6.disable=1 has /proc/net/snmp6: %s", out)
	}
	node := checkAgent(t, m, c, up)
	if why := c.nodes(t)[0].Why; strings.Contains(why, "snmp") || strings.Contains(why, "address family") {
		t.Errorf("without IPv6 the agent is degraded for it: %s", why)
	}

	var stamped, unsynced int
	for _, r := range c.watch.from(node) {
		if r.env.Kind == telemetry.KindHeartbeat || r.env.Kind == telemetry.KindBatch {
			stamped++
			if r.env.Unsynced {
				unsynced++
			}
		}
	}
	if stamped == 0 || unsynced != stamped {
		t.Errorf("%d of %d heartbeats and batches carry unsynced=true; with the clock at 1970 all must", unsynced, stamped)
	}

	refusesExpired(t, m, c, node)
	clockJumps(t, m, c, node)

	// A restart comes back as the same node: its id is kept on the data
	// partition.
	out, code := m.run("/etc/init.d/S95edgeagent restart", commandTimeout)
	restarted := time.Now() // the old process is gone: a heartbeat from now on is the new one's
	if code != 0 || !strings.Contains(out, "Stopping edgeagent: OK") || !strings.Contains(out, "Starting edgeagent: OK") {
		t.Errorf("S95edgeagent restart exited %d:\n%s", code, out)
	}
	testenv.WaitFor(t, onlineTimeout, func() bool {
		nodes := c.nodes(t)
		return len(nodes) == 1 && nodes[0].ID == node && nodes[0].Online &&
			slices.ContainsFunc(c.watch.heartbeats(node), func(at time.Time) bool { return at.After(restarted) })
	}, func() string { return fmt.Sprintf("not back as %s after a restart: %+v", node, c.nodes(t)) })

	if out, code := m.run("/etc/init.d/S95edgeagent stop", commandTimeout); code != 0 {
		t.Errorf("S95edgeagent stop exited %d:\n%s", code, out)
	}
	m.poweroff(30 * time.Second)
}

// checkAgent checks what both boots share: init started the agent, its
// inventory lists eth0, the controller has it online with live figures, it
// answers a ping through the controller, and StatsD sent inside the guest
// reaches the controller. It returns the node's id.
func checkAgent(t *testing.T, m *machine, c *ctl, up time.Duration) string {
	if !strings.Contains(m.text(), "Starting edgeagent: OK") {
		t.Errorf("rcS did not report the agent started")
	}
	if out, code := m.run("/etc/init.d/S95edgeagent status", commandTimeout); code != 0 {
		t.Fatalf("S95edgeagent status exited %d after boot: %s", code, out)
	}

	var node controller.Node
	testenv.WaitFor(t, onlineTimeout, func() bool {
		nodes := c.nodes(t)
		if len(nodes) != 1 {
			return false
		}
		node = nodes[0]
		_, cpu := node.Utilization["cpu_percent"]
		_, mem := node.Utilization["memory_percent"]
		return node.Online && node.HeartbeatSeq > 0 && cpu && mem
	}, func() string { return fmt.Sprintf("no node online with CPU and memory figures: %+v", c.nodes(t)) })
	t.Logf("%s: rcS done %v after QEMU started; the node was online with figures %v after", m.name,
		up.Round(100*time.Millisecond), time.Since(m.started).Round(100*time.Millisecond))
	if node.Health == string(telemetry.Unhealthy) {
		t.Errorf("node %s is unhealthy: %s", node.ID, node.Why)
	}
	t.Logf("node %s: health %s (%s), version %s, utilization %v", node.ID, node.Health, node.Why, node.Version, node.Utilization)

	// The node id is generated once and kept in the state directory when
	// node.id is not configured (and it is not, here).
	if id := strings.TrimSpace(m.mustRun("cat /data/edgeagent/node-id 2>/dev/null || echo '(no such file)'", commandTimeout)); id != node.ID {
		t.Errorf("the state directory's node-id holds %q; the node calls itself %q", id, node.ID)
	}

	out := m.mustRun("edgeagent inventory --json --no-smart", commandTimeout)
	var inv struct {
		NICs []struct {
			Name string `json:"name"`
		} `json:"nics"`
	}
	if i, j := strings.IndexByte(out, '{'), strings.LastIndexByte(out, '}'); i < 0 || j < i || json.Unmarshal([]byte(out[i:j+1]), &inv) != nil {
		t.Errorf("edgeagent inventory --json printed no JSON:\n%s", out)
	} else if !slices.ContainsFunc(inv.NICs, func(n struct {
		Name string `json:"name"`
	}) bool {
		return n.Name == "eth0"
	}) {
		t.Errorf("the inventory lists no eth0:\n%s", out)
	}

	if out, code := c.exec(node.ID, "ping"); code != 0 || !strings.Contains(out, "pong from "+node.ID) {
		t.Errorf("edgectl exec %s ping exited %d:\n%s", node.ID, code, out)
	}

	m.mustRun("udpsend 127.0.0.1:8125 'qemu.guest.requests:3|c'", commandTimeout)
	testenv.WaitFor(t, 30*time.Second, func() bool {
		p, ok := c.watch.point(node.ID, "qemu.guest.requests")
		return ok && p.Value == 3
	}, func() string { return "the StatsD counter sent in the guest did not reach the controller" })
	return node.ID
}

// reloadInPlace: the init script's reload re-executes the agent in the
// same process. The pid stays (pidof before and after), the controller never
// has the node offline (upgrading, then online again on the new image's
// heartbeat), and StatsD sent in the guest while it reloads all counts.
func reloadInPlace(t *testing.T, m *machine, c *ctl, node string) {
	before := strings.TrimSpace(m.mustRun("pidof edgeagent", commandTimeout))
	instance := c.nodes(t)[0].Instance
	const sent = 20
	began := time.Now()
	// A datagram every 20 ms or so (udpsend's own start takes longer here),
	// from before the reload to after it.
	out, code := m.run(fmt.Sprintf("(i=0; while [ $i -lt %d ]; do udpsend 127.0.0.1:8125 'qemu.reload.sent:1|c'; i=$((i+1)); usleep 20000; done) & "+
		"usleep 200000; /etc/init.d/S95edgeagent reload; rc=$?; wait; (exit $rc)", sent), commandTimeout)
	took := time.Since(began)
	if code != 0 || !strings.Contains(out, "Reloading edgeagent: OK (pid "+before+", image 1)") {
		t.Errorf("S95edgeagent reload exited %d:\n%s", code, out)
	}
	if after := strings.TrimSpace(m.mustRun("pidof edgeagent", commandTimeout)); after != before {
		t.Errorf("pidof edgeagent: %s before the reload, %s after", before, after)
	}
	testenv.WaitFor(t, onlineTimeout, func() bool {
		nodes := c.nodes(t)
		return len(nodes) == 1 && nodes[0].Online && nodes[0].Instance != instance
	}, func() string {
		return fmt.Sprintf("not online with the new image's heartbeat after the reload: %+v", c.nodes(t))
	})
	testenv.WaitFor(t, 30*time.Second, func() bool { return c.watch.counter(node, "qemu.reload.sent") >= sent },
		func() string {
			return fmt.Sprintf("%v of the %d StatsD counts sent during the reload reached the controller",
				c.watch.counter(node, "qemu.reload.sent"), sent)
		})
	if n := c.watch.counter(node, "qemu.reload.sent"); n != sent {
		t.Errorf("%v StatsD counts at the controller, %d sent", n, sent)
	}
	for _, e := range c.events(t) {
		if e.Node == node && e.New == "offline" {
			t.Errorf("the controller had the node offline: %+v", e)
		}
	}
	if states := c.watch.states(node, began); !slices.Equal(states, []string{"upgrading", "online"}) {
		t.Errorf("states since the reload %v, want upgrading then online", states)
	}
	t.Logf("S95edgeagent reload: pid %s kept, %d StatsD counts sent during it all counted; %v with the sender",
		before, sent, took.Round(time.Millisecond))
}

// refusesExpired sends a request that expired a year before the agent's
// build date, so before its time floor whatever the clock says: the node
// must refuse it, while the guest's clock reads 1970.
func refusesExpired(t *testing.T, m *machine, c *ctl, node string) {
	var bi buildinfo.Info
	out := m.mustRun("edgeagent version --json", commandTimeout)
	if i := strings.IndexByte(out, '{'); i < 0 || json.Unmarshal([]byte(out[i:]), &bi) != nil {
		t.Fatalf("edgeagent version --json:\n%s", out)
	}
	built, err := time.Parse(time.RFC3339, bi.Date)
	if err != nil {
		t.Fatalf("the agent's build date %q: %v (scripts/build stamps it)", bi.Date, err)
	}
	id := make([]byte, 12)
	for i := range id {
		id[i] = byte(rand.N(256))
	}
	expired := built.AddDate(-1, 0, 0)
	cmd := telemetry.Command{ID: hex.EncodeToString(id), Node: node, Name: "ping",
		IssuedAt: expired.Add(-time.Minute), ExpiresAt: expired}
	must(t, c.watch.send(cmd))
	var res telemetry.CommandResult
	testenv.WaitFor(t, 30*time.Second, func() bool {
		var ok bool
		res, ok = c.watch.result(node, cmd.ID)
		return ok
	}, func() string { return "no answer to a request that expired at " + expired.Format(time.RFC3339) })
	if res.Status != telemetry.StatusRefused || !strings.Contains(res.Reason, "expired") {
		t.Errorf("a request that expired at %s (a year before the build date %s), sent while the guest's clock reads %s: %s %q; want refused as expired",
			expired.Format(time.RFC3339), bi.Date, strings.TrimSpace(m.mustRun("date -u +%FT%TZ", commandTimeout)), res.Status, res.Reason)
	}
	if out, code := c.exec(node, "ping"); code != 0 {
		t.Errorf("edgectl exec %s ping after the expired request exited %d:\n%s", node, code, out)
	}
}

// jumpWindow is how long heartbeats are watched after each step of the clock.
const jumpWindow = 12 * time.Second

// clockJumps steps the guest's clock six hours forward, then six hours back,
// and checks the heartbeats' cadence at the controller after each step.
func clockJumps(t *testing.T, m *machine, c *ctl, node string) {
	steps := []struct{ name, cmd string }{
		{"forward", `date -u -s "@$(($(date +%s) + 21600))"`},
		{"back", `date -u -s "@$(($(date +%s) - 21600))"`},
	}
	for _, s := range steps {
		from := time.Now()
		out := m.mustRun(s.cmd, commandTimeout)
		time.Sleep(jumpWindow - time.Since(from))
		to := time.Now()
		cadence(t, "six hours "+s.name+" ("+strings.TrimSpace(out)+")", c.watch.heartbeats(node), from, to)
	}
	nodes := c.nodes(t)
	if len(nodes) != 1 || !nodes[0].Online {
		t.Errorf("after the clock steps: %+v", nodes)
	}
}

// cadence checks the heartbeats that arrived between from and to: no gap of
// more than three intervals (a stall), and no more than twice as many as the
// interval makes (a flood).
func cadence(t *testing.T, what string, beats []time.Time, from, to time.Time) {
	var in []time.Time
	for _, b := range beats {
		if !b.Before(from) && !b.After(to) {
			in = append(in, b)
		}
	}
	gap, last := time.Duration(0), from
	for _, b := range append(in, to) {
		gap, last = max(gap, b.Sub(last)), b
	}
	want := int(to.Sub(from) / heartbeat)
	t.Logf("clock %s: %d heartbeats in %v (%d expected), longest gap %v", what, len(in),
		to.Sub(from).Round(time.Millisecond), want, gap.Round(time.Millisecond))
	if gap > 3*heartbeat+heartbeat/2 {
		t.Errorf("clock %s: heartbeats stalled: a gap of %v (interval %v)", what, gap.Round(time.Millisecond), heartbeat)
	}
	if len(in) > 2*want {
		t.Errorf("clock %s: heartbeats flooded: %d in %v (interval %v)", what, len(in), to.Sub(from).Round(time.Millisecond), heartbeat)
	}
}

// hasMount reports whether the /proc/mounts text has dir mounted with opt
// among its first options (ro or rw).
func hasMount(mounts, dir, opt string) bool {
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == dir && f[0] != "rootfs" && slices.Contains(strings.Split(f[3], ","), opt) {
			return true
		}
	}
	return false
}

// guestFiles returns the agent's configuration for a guest of c, with the
// log going to logOutput (syslog or a file), and the init script's settings,
// which keep the agent's standard error too. The state directory is
// /data/edgeagent (the data partition when there is one); the node id is
// left to the agent, as in an image that serves every node.
func guestFiles(t *testing.T, c *ctl, logOutput string) map[string]string {
	t.Helper()
	yaml := fmt.Sprintf(`log:
  output: %s
paths:
  state_dir: /data/edgeagent
uplink:
  brokers: [tcp://10.0.2.2:%s]
  keepalive: 5s
  flush_interval: 1s
statsd:
  flush_interval: 1s
heartbeat:
  interval: %s
collect:
  host: 2s
  disk: 2s
  net: 2s
  agent: 5s
`, logOutput, c.port, heartbeat)
	if _, err := config.Parse("guest config", []byte(yaml)); err != nil {
		t.Fatalf("the guest's configuration is not valid:\n%v\n%s", err, yaml)
	}
	return map[string]string{
		"etc/hostname":              "appliance\n",
		"etc/edgeagent/config.yaml": yaml,
		"etc/default/edgeagent":     "EDGEAGENT_STDERR=/var/log/edgeagent.stderr\n",
	}
}
