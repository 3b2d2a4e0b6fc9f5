package qemu

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
)

// arch is one target: scripts/build's name for it, Debian's, and the QEMU
// machine that runs its kernel.
type arch struct {
	name    string // scripts/build: arm64, armv7
	deb     string // Debian and the fetch cache: arm64, armhf
	goarch  string
	goarm   string
	qemu    string
	machine string
	cpu     string
}

var arches = []arch{
	{name: "arm64", deb: "arm64", goarch: "arm64", qemu: "qemu-system-aarch64", machine: "virt", cpu: "cortex-a57"},
	// Without highmem the PCIe window sits where armmp (no LPAE) can claim it.
	{name: "armv7", deb: "armhf", goarch: "arm", goarm: "7", qemu: "qemu-system-arm", machine: "virt,highmem=off", cpu: "cortex-a15"},
}

// kit is what scripts/qemu-fetch left in the cache for one architecture.
type kit struct {
	dir     string // vmlinuz, busybox, modules/, release
	release string // the kernel release and package versions, one line
}

// cacheDir is scripts/qemu-fetch's cache.
func cacheDir() string {
	if d := os.Getenv("EDGEAGENT_QEMU_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir() // $XDG_CACHE_HOME, else $HOME/.cache
	if err != nil {
		return ""
	}
	return filepath.Join(d, "edgeagent", "qemu")
}

// findKit returns the cached kernel and busybox of a, or calls Missing
// with what the last fetch said.
func findKit(t *testing.T, a arch) kit {
	t.Helper()
	k := kit{dir: filepath.Join(cacheDir(), a.deb)}
	for _, f := range []string{"vmlinuz", "busybox", "release", "modules/order"} {
		if _, err := os.Stat(filepath.Join(k.dir, f)); err == nil {
			continue
		}
		said := "it has not run"
		if log, err := os.ReadFile(filepath.Join(cacheDir(), "fetch.log")); err == nil {
			lines := strings.Split(strings.TrimSpace(string(log)), "\n")
			said = "its last run said:\n" + strings.Join(lines[max(0, len(lines)-8):], "\n")
		}
		testenv.Missing(t, "no %s kernel and busybox in %s: run scripts/qemu-fetch (scripts/setup runs it), "+
			"which fetches Debian's kernel and busybox-static for %s with apt-get; a mirror out of reach or a "+
			"foreign-architecture index briefly inconsistent (a mirror sync) stops it, and %s",
			a.deb, k.dir, a.deb, said)
	}
	release, _ := os.ReadFile(filepath.Join(k.dir, "release"))
	k.release = strings.Join(strings.Fields(string(release)), " ")
	return k
}

// applets are the BusyBox commands the guest has, as links in /bin: what its
// scripts use, and what a person at its console reaches for.
var applets = []string{
	"[", "ash", "cat", "chmod", "cp", "cttyhack", "cut", "date", "df", "dmesg", "echo", "env", "false",
	"findfs", "free", "grep", "halt", "head", "hostname", "hwclock", "insmod", "ip", "kill", "killall",
	"less", "ln", "logger", "ls", "lsmod", "mkdir", "mount", "mv", "pidof", "poweroff", "printf", "ps",
	"reboot", "rm", "sed", "setsid", "sh", "sleep", "sort", "start-stop-daemon", "stat", "switch_root",
	"sync", "syslogd", "tail", "test", "top", "touch", "tr", "true", "umount", "uname", "uptime",
	"usleep", "vi", "wc",
}

// guestTree builds the appliance's root file system in a new directory: the
// layout a Buildroot image has (the agent at /usr/bin/edgeagent, its init
// script as /etc/init.d/S95edgeagent, BusyBox init), the modules from the
// cache, and files (path in the guest → content) such as the configuration.
func guestTree(t *testing.T, a arch, k kit, b *binaries, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"bin", "sbin", "usr/bin", "etc/init.d", "etc/default", "etc/edgeagent",
		"lib/modules/edge", "usr/lib/edgeagent/plugins", "proc", "sys", "dev", "run", "tmp", "var", "data", "newroot", "root"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	copyFile(t, filepath.Join(k.dir, "busybox"), filepath.Join(root, "bin/busybox"), 0o755)
	for _, name := range applets {
		must(t, os.Symlink("busybox", filepath.Join(root, "bin", name)))
	}
	must(t, os.Symlink("../bin/busybox", filepath.Join(root, "sbin/init")))
	modules, err := os.ReadDir(filepath.Join(k.dir, "modules"))
	must(t, err)
	for _, m := range modules {
		copyFile(t, filepath.Join(k.dir, "modules", m.Name()), filepath.Join(root, "lib/modules/edge", m.Name()), 0o644)
	}
	for src, dst := range map[string]string{
		"guest/init":           "init",
		"guest/inittab":        "etc/inittab",
		"guest/rcS":            "etc/init.d/rcS",
		"guest/rcK":            "etc/init.d/rcK",
		"../init/S95edgeagent": "etc/init.d/S95edgeagent",
		"guest/sleeper":        "usr/lib/edgeagent/plugins/sleeper",
		b.agent[a.name]:        "usr/bin/edgeagent",
		b.udpsend[a.name]:      "usr/bin/udpsend",
	} {
		info, err := os.Stat(src)
		must(t, err)
		copyFile(t, src, filepath.Join(root, dst), info.Mode().Perm())
	}
	for dst, content := range files {
		must(t, os.WriteFile(filepath.Join(root, dst), []byte(content), 0o644))
	}
	return root
}

// stageOne lists what the tiny initramfs in front of a disk root needs:
// BusyBox, the modules and /init, which mounts the disk and switches to it.
func stageOne(rel string) bool {
	top, _, _ := strings.Cut(rel, "/")
	switch top {
	case "bin", "sbin", "lib", "init", "dev", "proc", "sys", "newroot":
		return true
	}
	return false
}

// initramfs packs root's entries that keep accepts (all when nil) into an
// uncompressed newc cpio archive, owned by root; the kernel unpacks that
// fastest, and QEMU loads it into memory either way.
func initramfs(t *testing.T, root string, keep func(rel string) bool) string {
	t.Helper()
	var list bytes.Buffer
	must(t, filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if keep == nil || keep(rel) {
			fmt.Fprintln(&list, rel)
		}
		return nil
	}))
	out := filepath.Join(t.TempDir(), "initramfs.cpio")
	f, err := os.Create(out)
	must(t, err)
	defer f.Close()
	cmd := exec.Command(testenv.LookPath(t, "cpio"), "-o", "-H", "newc", "-R", "0:0", "--quiet")
	var msg bytes.Buffer
	cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr = root, &list, f, &msg
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, msg.String())
	}
	return out
}

// ext4Image makes an ext4 file system image of size with label, holding
// root's tree when root is not empty.
func ext4Image(t *testing.T, root, label, size string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), label+".img")
	args := []string{"-q", "-F", "-t", "ext4", "-L", label, "-E", "root_owner=0:0"}
	if root != "" {
		args = append(args, "-d", root)
	}
	cmd := exec.Command(testenv.LookPath(t, "mke2fs"), append(args, img, size)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mke2fs %s: %v\n%s", label, err, out)
	}
	return img
}

// bootOptions describe one boot of a guest.
type bootOptions struct {
	initrd string
	disks  []string // raw images attached as virtio disks, read-only when the name says ro
	append string   // more kernel arguments
	rtc    string   // QEMU's -rtc base: utc, or a date such as 1970-01-01T00:00:00
	logs   string   // the agent's log files in the guest, shown at the end

	brokerPort string // where the guest's agent looks for the broker, on 10.0.2.2
}

// machine is a running guest, driven over its serial console.
type machine struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	in      io.WriteCloser
	console *testenv.Buffer // everything the serial console printed
	exited  chan struct{}
	started time.Time

	logs string // see bootOptions

	mu        sync.Mutex
	n         int // commands sent, to number their markers
	logsShown bool
}

// qemuArgs is the command line of a's virt machine for o, with console the
// arguments that connect its serial console.
func qemuArgs(a arch, k kit, o bootOptions, console ...string) []string {
	args := append([]string{
		"-M", a.machine, "-cpu", a.cpu, "-smp", "1", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
	}, console...)
	args = append(args,
		"-kernel", filepath.Join(k.dir, "vmlinuz"), "-initrd", o.initrd,
		"-append", strings.TrimSpace("console=ttyAMA0 quiet panic=-1 "+o.append),
		"-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0",
		"-device", "virtio-rng-device",
		"-rtc", "base="+o.rtc,
	)
	for i, d := range o.disks {
		drive := fmt.Sprintf("file=%s,if=none,format=raw,id=disk%d", d, i)
		if strings.Contains(filepath.Base(d), "root") {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=disk%d", i))
	}
	return args
}

// boot starts QEMU's virt machine for a with the cached kernel and o. The
// serial console is QEMU's standard input and output; the network is QEMU's
// user network, where the host is 10.0.2.2. The guest is killed when the
// test ends, and its console printed if the test failed (or ran with -v).
//
// With EDGEAGENT_QEMU_KEEP=DIR, the boot's images go to a directory under
// DIR before the guest starts, with a script that boots them again with the
// console on a terminal, and the console is written to console.log there as
// it happens (tail -f it).
func boot(t *testing.T, a arch, k kit, o bootOptions) *machine {
	t.Helper()
	bin := testenv.LookPath(t, a.qemu)
	args := qemuArgs(a, k, o, "-monitor", "none", "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console")
	m := &machine{t: t, name: a.name, cmd: exec.Command(bin, args...), console: new(testenv.Buffer),
		exited: make(chan struct{}), started: time.Now(), logs: o.logs}
	var console io.Writer = m.console
	if dir := os.Getenv("EDGEAGENT_QEMU_KEEP"); dir != "" {
		log := keep(t, filepath.Join(dir, strings.ReplaceAll(strings.TrimPrefix(t.Name(), "TestAppliance/"), "/", "-")), a, k, o)
		console = io.MultiWriter(m.console, log)
	}
	m.cmd.Stdout, m.cmd.Stderr = console, console
	var err error
	m.in, err = m.cmd.StdinPipe()
	must(t, err)
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", a.qemu, err)
	}
	go func() { m.cmd.Wait(); close(m.exited) }()
	t.Cleanup(func() {
		if t.Failed() {
			m.showLogs()
		}
		m.cmd.Process.Kill()
		<-m.exited
		if t.Failed() || testing.Verbose() {
			t.Logf("%s serial console (%s %s):\n%s", a.name, a.qemu, k.release, m.text())
		}
	})
	return m
}

// keep copies a boot's images into dir, writes dir/boot, which boots them
// again interactively, and returns dir/console.log for the console.
func keep(t *testing.T, dir string, a arch, k kit, o bootOptions) io.Writer {
	t.Helper()
	must(t, os.RemoveAll(dir))
	must(t, os.MkdirAll(dir, 0o755))
	copyFile(t, o.initrd, filepath.Join(dir, filepath.Base(o.initrd)), 0o644)
	o.initrd, o.disks = filepath.Base(o.initrd), slices.Clone(o.disks)
	for i, d := range o.disks {
		copyFile(t, d, filepath.Join(dir, filepath.Base(d)), 0o644)
		o.disks[i] = filepath.Base(d)
	}
	var script strings.Builder
	fmt.Fprintf(&script, `#!/bin/sh
# Boots the guest of %s again, as the test did, with its
# serial console on this terminal: Ctrl-A X quits QEMU, Ctrl-A C switches to
# its monitor. Its agent looks for the broker at 10.0.2.2:%s, which is this
# machine's 127.0.0.1:%s, so start the controller first, for example:
#   edgectl serve --mqtt 127.0.0.1:%s --heartbeat 1s
cd "$(dirname "$0")" || exit
exec %s`, t.Name(), o.brokerPort, o.brokerPort, o.brokerPort, a.qemu)
	args := qemuArgs(a, k, o, "-serial", "mon:stdio")
	for i := 0; i < len(args); i++ {
		line := shellQuote(args[i])
		if strings.HasPrefix(args[i], "-") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			i++
			line += " " + shellQuote(args[i])
		}
		script.WriteString(" \\\n\t" + line)
	}
	script.WriteString("\n")
	must(t, os.WriteFile(filepath.Join(dir, "boot"), []byte(script.String()), 0o755))
	log, err := os.Create(filepath.Join(dir, "console.log"))
	must(t, err)
	t.Cleanup(func() { log.Close() })
	t.Logf("EDGEAGENT_QEMU_KEEP: the images, the console log and a boot script are in %s", dir)
	return log
}

// text is the console output so far, without carriage returns.
func (m *machine) text() string { return strings.ReplaceAll(m.console.String(), "\r", "") }

// waitFor waits until the console printed s, and returns how long the boot
// has taken so far.
func (m *machine) waitFor(s string, timeout time.Duration) time.Duration {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(m.text(), s) {
		select {
		case <-m.exited:
			m.t.Fatalf("%s: QEMU exited (%v) before the console printed %q", m.name, m.cmd.ProcessState, s)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: the console did not print %q within %v", m.name, s, timeout)
		}
	}
	return time.Since(m.started)
}

// waitShell waits for the end of rcS and for the console's shell to answer.
func (m *machine) waitShell(timeout time.Duration) time.Duration {
	m.t.Helper()
	up := m.waitFor("rcS: up at", timeout)
	// The shell starts after rcS; a line typed before it may be lost, so
	// type until one is answered.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; !strings.Contains(m.text(), "@@SYNC\n"); i++ {
		if i%40 == 0 {
			io.WriteString(m.in, "echo '@@''SYNC'\n")
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: the console's shell did not answer within 30s", m.name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return up
}

// run types line into the guest's shell and returns what it printed and its
// exit status.
func (m *machine) run(line string, timeout time.Duration) (string, int) {
	m.t.Helper()
	out, code, err := m.try(line, timeout)
	if err != nil {
		m.t.Fatal(err)
	}
	return out, code
}

// try is run, returning an error where run fails the test.
func (m *machine) try(line string, timeout time.Duration) (string, int, error) {
	m.mu.Lock()
	m.n++
	n := m.n
	m.mu.Unlock()
	// The markers are typed split by quotes, so that the shell's echo of the
	// line never matches them; only what the commands print does.
	begin, end := fmt.Sprintf("@@BEGIN %d\n", n), fmt.Sprintf("@@END %d ", n)
	fmt.Fprintf(m.in, "echo '@@''BEGIN %d'; %s; echo \"@@\"\"END %d $?\"\n", n, line, n)
	deadline := time.Now().Add(timeout)
	for {
		text := m.text()
		if i := strings.Index(text, begin); i >= 0 {
			if j := strings.Index(text[i:], end); j >= 0 {
				rest := text[i+j+len(end):]
				if k := strings.IndexByte(rest, '\n'); k >= 0 {
					code, err := strconv.Atoi(strings.TrimSpace(rest[:k]))
					if err != nil {
						return "", 0, fmt.Errorf("%s: %q: unreadable exit status %q", m.name, line, rest[:k])
					}
					return text[i+len(begin) : i+j], code, nil
				}
			}
		}
		select {
		case <-m.exited:
			return "", 0, fmt.Errorf("%s: QEMU exited (%v) while running %q", m.name, m.cmd.ProcessState, line)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", 0, fmt.Errorf("%s: %q did not finish within %v", m.name, line, timeout)
		}
	}
}

// showLogs prints the agent's logs on the console, so that they are in its
// log; it is done once, by the test or else when a failed test ends.
func (m *machine) showLogs() {
	m.mu.Lock()
	shown := m.logsShown
	m.logsShown = true
	m.mu.Unlock()
	if !shown && m.logs != "" {
		m.try("tail -n 300 "+m.logs, 20*time.Second)
	}
}

// mustRun is run for a command that must succeed.
func (m *machine) mustRun(line string, timeout time.Duration) string {
	m.t.Helper()
	out, code := m.run(line, timeout)
	if code != 0 {
		m.t.Fatalf("%s: %q exited %d:\n%s", m.name, line, code, out)
	}
	return out
}

// poweroff shuts the guest down through init (rcK stops the services and
// unmounts the data partition) and waits for QEMU to exit.
func (m *machine) poweroff(timeout time.Duration) {
	m.t.Helper()
	m.showLogs()
	io.WriteString(m.in, "poweroff\n")
	select {
	case <-m.exited:
	case <-time.After(timeout):
		m.t.Errorf("%s: still running %v after poweroff", m.name, timeout)
	}
}

// shellQuote quotes s for sh when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./=:,@%+-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	must(t, err)
	must(t, os.WriteFile(dst, data, mode))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
