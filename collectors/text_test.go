package collectors

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/hal/disk"
	"github.com/seed69aca190/edgeagent/hal/nic"
	"github.com/seed69aca190/edgeagent/hal/tunnel"
	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/internal/wiretest"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestReportAnyBytesReachTheController puts random bytes into everything a
// run's Report carries (point names, tag keys and values, every field of an
// event): each batch and event, encoded as the uplink encodes it, is taken
// by the controller. Nothing escaped these at a boundary, so the encoder
// did, and counted it.
func TestReportAnyBytesReachTheController(t *testing.T) {
	r := rand.New(rand.NewPCG(20, 26))
	junk := func() string { return wiretest.Junk(r, r.IntN(16), "") }
	escaped := uint64(0)
	for range 300 {
		rep := &Report{Time: time.Now()}
		rep.Add(junk(), r.NormFloat64(), junk(), junk(), junk(), junk())
		rep.Add("fixed.name", 1, "tag", junk())
		rep.Event(telemetry.Severity(junk()), junk(), junk(), junk(), junk(), "%s: %s", junk(), junk())
		escaped += wiretest.Send(t, telemetry.KindBatch, []telemetry.Batch{{Source: junk(), Time: rep.Time, Points: rep.Points()}})
		for _, e := range rep.Events() {
			escaped += wiretest.Send(t, telemetry.KindEvent, e)
		}
	}
	if escaped == 0 {
		t.Error("300 rounds of random bytes and nothing was escaped: the test feeds text")
	}
}

// TestCollectorsReportNamesAsText runs the collectors as the agent does
// (through a scheduler, with a heartbeat) over sources that name things in
// random bytes: a disk's name, model and serial, its diskstats line, a
// mount point and filesystem type in mountinfo, a sensor's chip and label,
// smartctl's message, a pid file, an OpenVPN management socket's path, and
// real veth and tun links in a namespace. Every batch, event and heartbeat
// they produce is taken by the controller, and none needed the encoder's
// escaping: each name was made text where it was read.
func TestCollectorsReportNamesAsText(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.Netns(t)
	r := rand.New(rand.NewPCG(19, 70))
	seq, err := seqfile.Open(filepath.Join(t.TempDir(), "seq"), 100, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 6 {
		src := newJunkSources(t, r, round)
		testenv.Run(t, "ip", "-n", ns, "link", "add", "name", fmt.Sprint(round)+wiretest.Junk(r, 1+r.IntN(8), wiretest.NotInLinkName),
			"type", "veth", "peer", "name", fmt.Sprint("p", round))
		testenv.Run(t, "ip", "-n", ns, "tuntap", "add", "mode", "tun", "name", fmt.Sprint("t", round)+wiretest.Junk(r, 1+r.IntN(8), wiretest.NotInLinkName))

		rec := &recorder{}
		s := New(Options{Sink: rec, Log: quiet()})
		n := NewNet(nic.Options{Namespace: "/var/run/netns/" + ns})
		tun := NewTunnel([]tunnel.OpenVPN{{Name: "vpn", Address: "unix:" + src.socket}}, tunnel.WireGuard{SocketDir: t.TempDir()},
			nic.Options{Namespace: "/var/run/netns/" + ns})
		for _, c := range []Collector{
			NewDisk(src.sys, src.proc, disk.Options{}, 0), // every filesystem is full: an event naming it
			NewSmart(src.sys, src.proc, disk.Options{}, disk.SmartCtl{Path: src.smartctl}),
			NewHost(src.sys, "/proc"),
			NewProcesses(src.sys, src.proc, []Service{{Name: "svc", PIDFile: src.pidFile}}),
			n, tun,
		} {
			s.Add(c, time.Hour, 10*time.Second)
		}
		start(t, s)
		for run := range 2 { // rates need two readings
			src.tick(t, run)
			s.CollectNow()
			testenv.WaitFor(t, 20*time.Second, func() bool {
				for _, st := range s.Status() {
					if st.Runs < uint64(run+1) {
						return false
					}
				}
				return true
			}, func() string { return fmt.Sprintf("%+v", s.Status()) })
		}
		n.Close()
		tun.Close()
		hb := s.heartbeat(HeartbeatOptions{Node: "n", Seq: seq, Started: time.Now()})

		rec.mu.Lock()
		batches, events := rec.batches, rec.events
		rec.mu.Unlock()
		points := 0
		for _, b := range batches {
			points += len(b.Points)
		}
		if points < 20 || len(events) < 4 || hb.Why == "" {
			t.Fatalf("round %d: %d points, events %+v, why %q: the sources were not read", round, points, events, hb.Why)
		}
		escaped := wiretest.Send(t, telemetry.KindBatch, batches) + wiretest.Send(t, telemetry.KindHeartbeat, hb)
		for _, e := range events {
			escaped += wiretest.Send(t, telemetry.KindEvent, e)
		}
		if escaped > 0 {
			t.Fatalf("round %d: the encoder escaped %d strings that a reader let through: %s%s%s", round, escaped,
				wiretest.InvalidText(batches), wiretest.InvalidText(events), wiretest.InvalidText(hb))
		}
	}
}

// junkSources is a sysfs and procfs tree, a smartctl and an OpenVPN socket
// path, naming everything in random bytes.
type junkSources struct {
	sys, proc, smartctl, pidFile, socket string
	disk                                 string
}

func newJunkSources(t *testing.T, r *rand.Rand, round int) *junkSources {
	t.Helper()
	dir := t.TempDir()
	name := func(avoid string) string { return wiretest.Junk(r, 1+r.IntN(10), avoid) }
	const space = " \t\n\v\f\r"
	s := &junkSources{sys: filepath.Join(dir, "sys"), proc: filepath.Join(dir, "proc"), smartctl: filepath.Join(dir, "smartctl"),
		pidFile: filepath.Join(dir, "svc.pid"), socket: filepath.Join(dir, name("/\x00")+".sock"),
		disk: fmt.Sprint("sd", round) + name("/\x00"+space)}
	mount := filepath.Join(dir, name("/\x00")) // statfs of a directory reads the filesystem it is on
	dev := filepath.Join(s.sys, "devices/virtual/block", s.disk)
	chip := filepath.Join(s.sys, "devices/platform/chip/hwmon/hwmon0")
	// smartctl's JSON, with its message in bytes that are not UTF-8 (but not what JSON escapes).
	smart := `{"json_format_version":[1,0],"smartctl":{"messages":[{"string":"` + name(`"\`+"\x00\x01\x02\x03\x04\x05\x06\x07\x08"+space) +
		`"}],"exit_status":8},"smart_status":{"passed":false},"temperature":{"current":41}}`
	for path, data := range map[string]string{
		filepath.Join(dev, "dev"): "8:0\n", filepath.Join(dev, "size"): "2048\n",
		filepath.Join(dev, "device/model"): name("") + "\n", filepath.Join(dev, "serial"): name(""),
		filepath.Join(chip, "name"): name("\n") + "\n", filepath.Join(chip, "temp1_input"): "45000\n",
		filepath.Join(chip, "temp1_label"): name("") + "\n",
		filepath.Join(s.proc, "self/mountinfo"): fmt.Sprintf("36 1 8:0 / %s rw - %s %s rw\n", octal(mount), name("/\x00"+space),
			name(space)),
		filepath.Join(dir, "smart.json"): smart, s.smartctl: "#!/bin/sh\ncat " + filepath.Join(dir, "smart.json") + "\n",
		s.pidFile: name(""), filepath.Join(mount, ".keep"): "",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		filepath.Join(s.sys, "block", s.disk):      "../devices/virtual/block/" + s.disk,
		filepath.Join(s.sys, "class/hwmon/hwmon0"): "../../devices/platform/chip/hwmon/hwmon0",
	} {
		os.MkdirAll(filepath.Dir(link), 0o755)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// tick writes the disk's diskstats line, its counters moved on by run.
func (s *junkSources) tick(t *testing.T, run int) {
	n := 1000 * (run + 1)
	line := fmt.Sprintf("   8       0 %s %d 0 %d 10 %d 0 %d 10 0 20 20\n", s.disk, n, 8*n, n, 8*n)
	if err := os.WriteFile(filepath.Join(s.proc, "diskstats"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

// octal escapes a path as mountinfo does: space, tab, newline and backslash.
func octal(path string) string {
	return strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(path)
}
