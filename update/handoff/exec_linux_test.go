package handoff

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"golang.org/x/sys/unix"
)

func init() {
	roles["reload"] = reloadRole
	roles["fds"] = func() { say("fds %s", fdList()) }
	roles["child"] = childRole
	roles["sweep"] = sweepRole
	roles["badexec"] = badExecRole
	roles["busy"] = busyRole
	roles["afterbusy"] = afterBusyRole
	roles["gap"] = gapRole
}

// The roles' side.

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func die(format string, args ...any) {
	say("error: "+format, args...)
	os.Exit(1)
}

// fdList lists this process's descriptors as fd=target, in order.
func fdList() string {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		die("%v", err)
	}
	var fds []int
	for _, e := range entries {
		fd, _ := strconv.Atoi(e.Name())
		fds = append(fds, fd)
	}
	slices.Sort(fds)
	var list []string
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil { // not: the directory's own, closed
			list = append(list, fmt.Sprintf("%d=%s", fd, target))
		}
	}
	return strings.Join(list, " ")
}

// startTime is field 22 of /proc/self/stat: when the process started, in
// clock ticks since boot. execve does not change it.
func startTime() string {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		die("%v", err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[19]
}

// command reads one line from stdin a byte at a time: what follows it stays
// in the pipe for the next image.
func command() string {
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := os.Stdin.Read(b); err != nil {
			die("read command: %v", err)
		}
		if b[0] == '\n' {
			return string(line)
		}
		line = append(line, b[0])
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// reloadRole is the agent in miniature: the state directory's lock, a UDP,
// a TCP and a unix socket. It reports itself, serves what was queued before
// it was exec'd (HANDOFF_EXPECT datagrams d0, d1, …, one TCP and one unix
// connection), then on "exec N" stops its servers and execs itself, or on
// "stop" stops.
func reloadRole() {
	fds, names := fdList(), os.Getenv("LISTEN_FDNAMES") // first: what crossed the exec
	r, err := FromEnv(discard)
	if err != nil {
		die("FromEnv: %v", err)
	}
	gen, _ := strconv.Atoi(os.Getenv("HANDOFF_GEN"))
	dir := os.Getenv("HANDOFF_DIR")
	lock, err := r.File("lock")
	if err != nil {
		die("%v", err)
	}
	if lock == nil {
		if lock, err = os.Open(dir); err != nil {
			die("%v", err)
		}
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			die("flock: %v", err)
		}
		if err := r.Keep("lock", lock); err != nil {
			die("%v", err)
		}
	}
	pc, err := r.PacketConn("statsd", envOr("HANDOFF_UDP", "127.0.0.1:0"))
	if err != nil {
		die("%v", err)
	}
	l, err := r.Listener("http", envOr("HANDOFF_TCP", "127.0.0.1:0"))
	if err != nil {
		die("%v", err)
	}
	u, err := r.Listener("control", "unix:"+filepath.Join(dir, "control.sock"))
	if err != nil {
		die("%v", err)
	}
	rc, _ := pc.(*net.UDPConn).SyscallConn()
	rcvbuf := 0
	rc.Control(func(fd uintptr) {
		if gen == 0 { // room for 1000 datagrams; as root, beyond net.core.rmem_max
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			}
		}
		rcvbuf, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	var inherited []string
	for _, s := range r.Sockets() {
		inherited = append(inherited, strconv.FormatBool(s.Inherited))
	}
	udp, tcp := pc.LocalAddr().String(), l.Addr().String()
	say("image gen=%d pid=%d start=%s udp=%s tcp=%s rcvbuf=%d inherited=%s names=%s fds=%s",
		gen, os.Getpid(), startTime(), udp, tcp, rcvbuf, strings.Join(inherited, ","), names, fds)
	if gen > 0 {
		serveQueued(gen, pc, l, u)
	}
	say("adopted gen=%d nfds=%d", gen, len(strings.Fields(fdList())))

	cmd := command()
	for _, c := range []io.Closer{pc, l, u, lock} { // the servers stop; the registry holds on
		c.Close()
	}
	switch {
	case cmd == "stop":
		r.Stop()
		say("stopped")
	case strings.HasPrefix(cmd, "exec "):
		os.Setenv("HANDOFF_GEN", strconv.Itoa(gen+1))
		os.Setenv("HANDOFF_UDP", udp)
		os.Setenv("HANDOFF_TCP", tcp)
		os.Setenv("HANDOFF_EXPECT", strings.TrimPrefix(cmd, "exec "))
		err := r.Exec(os.Args[0], os.Args, os.Environ())
		die("Exec returned: %v", err)
	default:
		die("command %q", cmd)
	}
}

func serveQueued(gen int, pc net.PacketConn, listeners ...net.Listener) {
	want, _ := strconv.Atoi(os.Getenv("HANDOFF_EXPECT"))
	deadline := time.Now().Add(10 * time.Second)
	pc.SetReadDeadline(deadline)
	buf := make([]byte, 64)
	for i := range want {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			die("datagram %d of %d: %v", i, want, err)
		}
		if got := string(buf[:n]); got != fmt.Sprintf("d%d", i) {
			die("datagram %d of %d is %q", i, want, got)
		}
	}
	say("datagrams %d", want)
	for _, l := range listeners {
		l.(interface{ SetDeadline(time.Time) error }).SetDeadline(deadline)
		c, err := l.Accept()
		if err != nil {
			die("accept on %s: %v", l.Addr(), err)
		}
		fmt.Fprintf(c, "served by gen %d", gen)
		c.Close()
	}
}

// The tests' side.

// reload drives a reloadRole process.
type reload struct {
	t      *testing.T
	dir    string
	cmd    *exec.Cmd
	in     io.Writer
	lines  chan string
	stderr *testenv.Buffer
}

func startReload(t *testing.T) *reload {
	t.Helper()
	p := &reload{t: t, dir: t.TempDir(), lines: make(chan string, 100), stderr: &testenv.Buffer{}}
	p.cmd = roleCmd("reload", "HANDOFF_DIR="+p.dir)
	p.cmd.Stderr = p.stderr
	var err error
	if p.in, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

// line returns the next line the process prints, which must start with prefix.
func (p *reload) line(prefix string) string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("the process ended before %q; stderr:\n%s", prefix, p.stderr)
		}
		if !strings.HasPrefix(l, prefix) {
			p.t.Fatalf("the process said %q, want %q…; stderr:\n%s", l, prefix, p.stderr)
		}
		return l
	case <-time.After(30 * time.Second):
		p.t.Fatalf("no %q after 30 s; stderr:\n%s", prefix, p.stderr)
	}
	return ""
}

func (p *reload) command(s string) {
	p.t.Helper()
	if _, err := io.WriteString(p.in, s+"\n"); err != nil {
		p.t.Fatal(err)
	}
}

// image is what a reloadRole image says of itself.
type image struct {
	field map[string]string
	fds   map[int]string
}

func (p *reload) image() image {
	p.t.Helper()
	head, list, _ := strings.Cut(p.line("image "), " fds=")
	img := image{field: map[string]string{}, fds: parseFDs(list)}
	for _, kv := range strings.Fields(head)[1:] {
		k, v, _ := strings.Cut(kv, "=")
		img.field[k] = v
	}
	return img
}

func parseFDs(list string) map[int]string {
	fds := map[int]string{}
	for _, kv := range strings.Fields(list) {
		k, v, _ := strings.Cut(kv, "=")
		fd, _ := strconv.Atoi(k)
		fds[fd] = v
	}
	return fds
}

var digits = regexp.MustCompile(`[0-9]+`)

// others returns, sorted and without inode or pid numbers, the targets of
// the descriptors above last: what is neither stdio nor passed.
func others(fds map[int]string, last int) []string {
	var out []string
	for fd, target := range fds {
		if fd > last {
			out = append(out, digits.ReplaceAllString(target, "N"))
		}
	}
	slices.Sort(out)
	return out
}

// freshFDs returns what a fresh process of the test binary has open above
// 2 when its role starts: what the Go runtime opens by itself (its cgroup CPU
// limit files; the poller's epoll and eventfd come with the first socket).
func freshFDs(t *testing.T) []string {
	t.Helper()
	out, err := roleCmd("fds").Output()
	if err != nil {
		t.Fatal(err)
	}
	list, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "fds ")
	if !ok {
		t.Fatalf("fds role said %q", out)
	}
	return others(parseFDs(list), 2)
}

// roleCmd runs the test binary as role. Under -race its exit does not wait
// the race detector's default second, unless GORACE says otherwise.
func roleCmd(role string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0", "HANDOFF_ROLE="+role), env...)
	return cmd
}

// watchLock tries, from this process, to take the flock on dir over and over
// until the returned function is called, which reports how many tries failed
// as they should, or the first that did not.
func watchLock(t *testing.T, dir string) func() (int, error) {
	t.Helper()
	stop := make(chan struct{})
	var tries int
	var failure error
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			f, err := os.Open(dir)
			if err != nil {
				failure = err
				return
			}
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			f.Close()
			if !errors.Is(err, unix.EWOULDBLOCK) {
				failure = fmt.Errorf("flock on the state directory, try %d: %v (want EWOULDBLOCK: the lock is held)", tries+1, err)
				return
			}
			tries++
			time.Sleep(100 * time.Microsecond)
		}
	})
	return func() (int, error) {
		close(stop)
		wg.Wait()
		return tries, failure
	}
}

func dial(t *testing.T, network, address string) net.Conn {
	t.Helper()
	c, err := net.Dial(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func expectReply(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != want {
		t.Fatalf("%s connection made before the exec: got %q, %v; want %q", c.RemoteAddr().Network(), got, err, want)
	}
}

// TestExecReloadsInPlace execs the agent in miniature ten times in a row.
// Before each exec a datagram is queued, and a TCP and a unix connection wait
// in their listeners' backlogs; after it the same process (pid, start time)
// adopts all three sockets and the lock, reads the datagram, serves both
// connections, and has open only stdio, the passed descriptors (those four,
// and fillers where the old image's runtime polled) and what a fresh process
// of the same binary opens by itself. Another
// process never gets the lock, from start to stop; the unix socket's file
// stays across every exec, and Stop removes it.
func TestExecReloadsInPlace(t *testing.T) {
	p := startReload(t)
	first := p.image()
	p.line("adopted gen=0")
	fresh := freshFDs(t)
	control := filepath.Join(p.dir, "control.sock")
	lockHeld := watchLock(t, p.dir)
	var counts []string
	for gen := 1; gen <= 10; gen++ {
		send(t, first.field["udp"], 1)
		tcp := dial(t, "tcp", first.field["tcp"])
		unixConn := dial(t, "unix", control)
		p.command("exec 1")

		img := p.image()
		for _, k := range []string{"pid", "start", "udp", "tcp"} {
			if img.field[k] != first.field[k] {
				t.Fatalf("gen %d: %s=%s, before the first exec %s", gen, k, img.field[k], first.field[k])
			}
		}
		if img.field["gen"] != strconv.Itoa(gen) || img.field["inherited"] != "true,true,true" {
			t.Fatalf("gen %d: %v, want gen=%d and every socket inherited", gen, img.field, gen)
		}
		passed := strings.Split(img.field["names"], ":")
		if err := checkPassed(img.fds, passed, p.dir); err != nil {
			t.Fatalf("gen %d: %v", gen, err)
		}
		if got := others(img.fds, 2+len(passed)); !slices.Equal(got, fresh) {
			t.Fatalf("gen %d: besides stdio and the %d passed, the new image has %q open; a fresh process has %q",
				gen, len(passed), got, fresh)
		}
		p.line("datagrams 1")
		expectReply(t, tcp, fmt.Sprintf("served by gen %d", gen))
		expectReply(t, unixConn, fmt.Sprintf("served by gen %d", gen))
		_, n, _ := strings.Cut(p.line(fmt.Sprintf("adopted gen=%d ", gen)), "nfds=")
		counts = append(counts, n)
		if fi, err := os.Lstat(control); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Fatalf("gen %d: %s: %v, want the socket file", gen, control, err)
		}
	}
	if len(slices.Compact(slices.Clone(counts))) != 1 {
		t.Errorf("open descriptors after adopting, gen 1 to 10: %v, want the same count", counts)
	}
	tries, err := lockHeld()
	if err != nil {
		t.Fatal(err)
	}
	p.command("stop")
	p.line("stopped")
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("after stop: %v; stderr:\n%s", err, p.stderr)
	}
	if _, err := os.Lstat(control); !os.IsNotExist(err) {
		t.Errorf("%s after stop: %v, want it removed", control, err)
	}
	if f, err := os.Open(p.dir); err != nil {
		t.Error(err)
	} else if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("flock on the state directory after the agent stopped: %v", err)
		f.Close()
	} else {
		f.Close()
	}
	t.Logf("10 execs by pid %s; %d tries to take its lock all failed; open after adopting: %s descriptors; "+
		"open besides stdio and the passed ones, as in a fresh process: %q", first.field["pid"], tries, counts[0], fresh)
}

// checkPassed reports what is wrong with the descriptors passed as names
// (from 3 on): the state directory, three sockets, and fillers (the old
// image's epoll instance and eventfd, which Exec does not overwrite).
func checkPassed(fds map[int]string, names []string, dir string) error {
	want := map[string]string{"lock": dir, "statsd": "socket:[", "http": "socket:[", "control": "socket:["}
	for i, name := range names {
		fd, target := firstFD+i, fds[firstFD+i]
		if strings.HasPrefix(name, fillerPrefix) {
			if target != "anon_inode:[eventpoll]" && target != "anon_inode:[eventfd]" {
				return fmt.Errorf("filler %s at fd %d is %q", name, fd, target)
			}
			continue
		}
		prefix, ok := want[name]
		if !ok || !strings.HasPrefix(target, prefix) {
			return fmt.Errorf("fd %d, passed as %q, is %q", fd, name, target)
		}
		delete(want, name)
	}
	if len(want) > 0 {
		return fmt.Errorf("LISTEN_FDNAMES %q lacks %v", strings.Join(names, ":"), want)
	}
	return nil
}

// send sends datagrams d0, d1, … d(n-1) to address.
func send(t *testing.T, address string, n int) {
	t.Helper()
	c := dial(t, "udp", address)
	for i := range n {
		if _, err := fmt.Fprintf(c, "d%d", i); err != nil {
			t.Fatal(err)
		}
	}
}

// TestExecLosesNoQueuedDatagram queues 1000 datagrams that the old image
// never reads: the new one reads them all, in order.
func TestExecLosesNoQueuedDatagram(t *testing.T) {
	p := startReload(t)
	img := p.image()
	p.line("adopted gen=0")
	if b, _ := strconv.Atoi(img.field["rcvbuf"]); b < 2<<20 {
		testenv.Missing(t, "a 2 MiB socket receive buffer (root, or net.core.rmem_max); got %d bytes", b)
	}
	send(t, img.field["udp"], 1000)
	dial(t, "tcp", img.field["tcp"])
	dial(t, "unix", filepath.Join(p.dir, "control.sock"))
	p.command("exec 1000")
	p.image()
	p.line("datagrams 1000")
}

// TestExecPreflightFailsAndGoesOn: what the pre-flight refuses is returned
// before any descriptor moves, and the process goes on with its sockets.
func TestExecPreflightFailsAndGoesOn(t *testing.T) {
	r := newRegistry(t)
	pc, err := r.PacketConn("statsd", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dir := t.TempDir()
	notExec := filepath.Join(dir, "edgeagent")
	if err := os.WriteFile(notExec, []byte("\x7fELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, procs := fdList(), runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		path      string
		argv, env []string
		want      string
	}{
		{filepath.Join(dir, "missing"), []string{"x"}, nil, "no such file"},
		{notExec, []string{"x"}, nil, "not executable by this process: permission denied"},
		{dir, []string{"x"}, nil, "not a regular file"},
		{os.Args[0], nil, nil, "empty argv"},
		{os.Args[0], []string{"x"}, []string{"A=b\x00c"}, "NUL byte"},
	} {
		err := r.Exec(tc.path, tc.argv, tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Exec(%s, %q, %q) = %v, want an error saying %q", tc.path, tc.argv, tc.env, err, tc.want)
		}
	}
	if after := fdList(); after != before {
		t.Errorf("open descriptors changed:\nbefore %s\nafter  %s", before, after)
	}
	if runtime.GOMAXPROCS(0) != procs {
		t.Errorf("GOMAXPROCS changed to %d", runtime.GOMAXPROCS(0))
	}
	send(t, pc.LocalAddr().String(), 1)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := pc.ReadFrom(make([]byte, 10)); err != nil {
		t.Fatalf("the socket after the refused execs: %v", err)
	}
}

func badExecRole() {
	r, err := FromEnv(discard)
	if err != nil {
		die("%v", err)
	}
	for _, name := range []string{"statsd", "statsd2"} {
		if _, err := r.PacketConn(name, "127.0.0.1:0"); err != nil {
			die("%v", err)
		}
	}
	err = r.Exec(os.Getenv("HANDOFF_PATH"), []string{"edgeagent"}, nil)
	die("Exec returned: %v", err)
}

// TestExecFailureAfterMoveExits: a file that passes the pre-flight but that
// execve refuses (not a program) ends the process, whose descriptors were
// overwritten, with ExecFailedStatus and the reason on stderr.
func TestExecFailureAfterMoveExits(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "edgeagent")
	if err := os.WriteFile(bad, []byte("not a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := roleCmd("badexec", "HANDOFF_PATH="+bad)
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != ExecFailedStatus {
		t.Fatalf("exit: %v, want status %d; stdout %q, stderr %q", err, ExecFailedStatus, out, stderr.String())
	}
	want := "handoff: exec " + bad + " failed after its descriptors were moved; exiting: exec format error\n"
	if stderr.String() != want {
		t.Fatalf("stderr %q, want %q", stderr.String(), want)
	}
}

// childRole is the next process in a socket activation (a separate process,
// as systemd starts it): it adopts statsd, http and control, relays one
// datagram, serves one connection, and stops.
func childRole() {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid())) // what the parent would have set
	r, err := FromEnv(discard)
	if err != nil {
		say("fromenv error: %v", err)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		say("LISTEN_FDS still set")
	}
	pc, err := r.PacketConn("statsd", os.Getenv("CHILD_STATSD"))
	if err != nil {
		die("%v", err)
	}
	l, err := r.Listener("http", os.Getenv("CHILD_HTTP"))
	if err != nil {
		die("%v", err)
	}
	if _, err := r.Listener("control", "unix:"+os.Getenv("CHILD_CONTROL")); err != nil {
		die("%v", err)
	}
	for _, s := range r.Sockets() {
		say("%s inherited=%v", s.Name, s.Inherited)
	}
	say("ready %s %s", pc.LocalAddr(), l.Addr())
	buf := make([]byte, 100)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		die("read: %v", err)
	}
	say("datagram %q", buf[:n])
	c, err := l.Accept()
	if err != nil {
		die("accept: %v", err)
	}
	fmt.Fprint(c, "served by the child")
	c.Close()
	r.Stop()
}

type sockets struct {
	udp  *net.UDPConn
	tcp  *net.TCPListener
	unix *net.UnixListener
	udpF *os.File
	tcpF *os.File
	unxF *os.File
	path string
}

func bindSockets(t *testing.T) sockets {
	t.Helper()
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "control.sock")
	x, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	x.SetUnlinkOnClose(false) // systemd's: it stays when its listeners close
	uf, _ := u.File()
	lf, _ := l.File()
	xf, _ := x.File()
	return sockets{u, l, x, uf, lf, xf, path}
}

func (s sockets) close() {
	for _, c := range []io.Closer{s.udp, s.tcp, s.unix, s.udpF, s.tcpF, s.unxF} {
		c.Close()
	}
}

// startChild runs childRole with files as fds 3, 4, … and returns its
// output lines as they come.
func startChild(t *testing.T, files []*os.File, names, statsd, http, control string) *bufio.Scanner {
	t.Helper()
	cmd := roleCmd("child", "CHILD_STATSD="+statsd, "CHILD_HTTP="+http, "CHILD_CONTROL="+control,
		fmt.Sprintf("LISTEN_FDS=%d", len(files)), "LISTEN_FDNAMES="+names)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return bufio.NewScanner(out)
}

func expectLine(t *testing.T, sc *bufio.Scanner, prefix string) string {
	t.Helper()
	if !sc.Scan() {
		t.Fatalf("child ended before %q", prefix)
	}
	if !strings.HasPrefix(sc.Text(), prefix) {
		t.Fatalf("child said %q, want %q…", sc.Text(), prefix)
	}
	return sc.Text()
}

// TestInheritedSocketsKeepServing hands a bound UDP socket, a TCP and a unix
// listener to a separate process, as socket activation does: a datagram
// queued before the child even started, and a connection made after the
// parent closed its copies, both reach it. The unix socket's file is
// systemd's: the child's Stop leaves it.
func TestInheritedSocketsKeepServing(t *testing.T) {
	s := bindSockets(t)
	udpAddr, tcpAddr := s.udp.LocalAddr().String(), s.tcp.Addr().String()
	send(t, udpAddr, 1) // queued in the socket's buffer before the handoff: must not be lost

	sc := startChild(t, []*os.File{s.udpF, s.tcpF, s.unxF}, "statsd:http:control", udpAddr, tcpAddr, s.path)
	s.close() // the parent lets go entirely

	expectLine(t, sc, "statsd inherited=true")
	expectLine(t, sc, "http inherited=true")
	expectLine(t, sc, "control inherited=true")
	ready := expectLine(t, sc, "ready ")
	if want := "ready " + udpAddr + " " + tcpAddr; ready != want {
		t.Fatalf("child listens on %q, want %q", ready, want)
	}
	expectLine(t, sc, `datagram "d0"`)
	expectReply(t, dial(t, "tcp", tcpAddr), "served by the child")
	if sc.Scan() {
		t.Fatalf("child said %q", sc.Text())
	}
	if _, err := os.Lstat(s.path); err != nil {
		t.Fatalf("the child removed systemd's socket file: %v", err)
	}
}

// TestMismatchedSocketsAreReboundNotAdopted passes sockets whose address or
// type differ from the configuration: the child must bind new ones.
func TestMismatchedSocketsAreReboundNotAdopted(t *testing.T) {
	s := bindSockets(t)
	defer s.close()
	// statsd is given the TCP listener (wrong type); http is given a listener on
	// another port than configured (the config changed across the upgrade).
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wantHTTP := other.Addr().String()
	other.Close()
	control := filepath.Join(t.TempDir(), "control.sock")
	sc := startChild(t, []*os.File{s.tcpF, s.tcpF}, "statsd:http", "127.0.0.1:0", wantHTTP, control)
	expectLine(t, sc, "statsd inherited=false")
	expectLine(t, sc, "http inherited=false")
	expectLine(t, sc, "control inherited=false")
	ready := expectLine(t, sc, "ready ")
	if !strings.HasSuffix(ready, " "+wantHTTP) {
		t.Fatalf("child listens on %q, want http on %s", ready, wantHTTP)
	}
}

// sweepRole reads its environment as the agent does, then reports the state
// of its descriptors 3 and 4 and what a child of its inherits.
func sweepRole() {
	if os.Getenv("HANDOFF_SETPID") != "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	_, err := FromEnv(discard)
	var state []string
	for fd := 3; fd <= 4; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		switch {
		case err != nil:
			state = append(state, "closed")
		case flags&unix.FD_CLOEXEC != 0:
			state = append(state, "cloexec")
		default:
			state = append(state, "inherited by children")
		}
	}
	out, cerr := roleCmd("fds").Output()
	if cerr != nil {
		die("%v", cerr)
	}
	say("fromenv %v", err)
	say("state %s", strings.Join(state, ","))
	fmt.Print(string(out))
}

// TestFromEnvLeaksNothing starts a process with a socket at fd 3 and a file
// at fd 4, both inheritable, under LISTEN_* variables well and badly formed:
// whatever FromEnv makes of them, a child of that process inherits neither.
// Descriptors announced for it that cannot be named are closed.
func TestFromEnvLeaksNothing(t *testing.T) {
	fresh := freshFDs(t)
	s := bindSockets(t)
	defer s.close()
	leak, err := os.Create(filepath.Join(t.TempDir(), "leaked"))
	if err != nil {
		t.Fatal(err)
	}
	defer leak.Close()
	for _, tc := range []struct {
		name, fds, names string
		setPID           bool
		err, state       string
	}{
		{"fd 3 announced, fd 4 not", "1", "statsd", true, "<nil>", "cloexec,cloexec"},
		{"names do not match the count", "2", "statsd", true, "names 1 descriptors, LISTEN_FDS=2; closed them", "closed,closed"},
		{"count malformed", "two", "statsd:leaked", true, `LISTEN_FDS="two"`, "cloexec,cloexec"},
		{"announced for another process", "2", "statsd:leaked", false, "<nil>", "cloexec,cloexec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := roleCmd("sweep", "LISTEN_FDS="+tc.fds, "LISTEN_FDNAMES="+tc.names)
			if tc.setPID {
				cmd.Env = append(cmd.Env, "HANDOFF_SETPID=1")
			} else {
				cmd.Env = append(cmd.Env, "LISTEN_PID=1")
			}
			cmd.ExtraFiles = []*os.File{s.udpF, leak}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 3 || !strings.Contains(lines[0], tc.err) || lines[1] != "state "+tc.state {
				t.Fatalf("said %q, want an error saying %q and state %s", lines, tc.err, tc.state)
			}
			list, _ := strings.CutPrefix(lines[2], "fds ")
			if got := others(parseFDs(list), 2); !slices.Equal(got, fresh) {
				t.Fatalf("its child has %q open above 2; a fresh process has %q", got, fresh)
			}
		})
	}
}

// busyRole keeps its threads polling the network (UDP ping-pong with short
// timers), then execs with 3…6 holding the runtime's epoll.
func busyRole() {
	r, err := FromEnv(discard)
	if err != nil {
		die("%v", err)
	}
	for i := range 4 {
		if _, err := r.PacketConn(fmt.Sprint("u", i), "127.0.0.1:0"); err != nil {
			die("%v", err)
		}
	}
	for i := range 4 {
		a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			die("%v", err)
		}
		b, err := net.DialUDP("udp", nil, a.LocalAddr().(*net.UDPAddr))
		if err != nil {
			die("%v", err)
		}
		go func() {
			buf := make([]byte, 10)
			for {
				b.Write([]byte("x"))
				a.SetReadDeadline(time.Now().Add(time.Millisecond))
				a.Read(buf)
				time.Sleep(time.Duration(i+1) * 20 * time.Microsecond)
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if !strings.Contains(fdList(), "anon_inode:[eventpoll]") {
		die("no epoll")
	}
	for fd := 3; fd <= 6; fd++ {
		if target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); target == "anon_inode:[eventpoll]" {
			os.Setenv("HANDOFF_ROLE", "afterbusy")
			os.Setenv("HANDOFF_EPOLL", strconv.Itoa(fd))
			err := r.Exec(os.Args[0], os.Args, os.Environ())
			die("Exec returned: %v", err)
		}
	}
	die("the runtime's epoll is not among 3…6: %s", fdList())
}

// afterBusyRole checks that the busy image's epoll instance crossed the exec
// where it was, as a filler: Exec did not overwrite it.
func afterBusyRole() {
	fd, _ := strconv.Atoi(os.Getenv("HANDOFF_EPOLL"))
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if i := fd - firstFD; i >= len(names) || !strings.HasPrefix(names[i], fillerPrefix) || target != "anon_inode:[eventpoll]" {
		die("fd %d, where the old image's epoll was, is %q; LISTEN_FDNAMES=%s", fd, target, os.Getenv("LISTEN_FDNAMES"))
	}
	say("ok")
}

// TestExecUnderLoad execs busy processes whose runtime polls with its epoll
// instance among 3…6, where the passed descriptors go (as on the first reload
// after boot): each new image must find that epoll instance passed where it
// was, as a filler, and none may die, or even complain, before execve.
// When Exec overwrote the epoll instance, 120 of 1000 printed "epollwait
// failed" and 29 of those died.
func TestExecUnderLoad(t *testing.T) {
	const runs = 50
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	failures := make(chan string, runs)
	for range runs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out, err := roleCmd("busy").CombinedOutput()
			if err != nil || string(out) != "ok\n" {
				failures <- fmt.Sprintf("%v: %.300s", err, out)
			}
		})
	}
	wg.Wait()
	close(failures)
	var all []string
	for f := range failures {
		all = append(all, f)
	}
	if len(all) > 0 {
		t.Fatalf("%d of %d busy processes did not exec cleanly; first: %s", len(all), runs, all[0])
	}
}

// gapRole execs itself HANDOFF_LEFT times, reporting after each exec the
// time from the old image's last read of its UDP socket to the new image's
// first (a datagram queued before the exec).
func gapRole() {
	r, err := FromEnv(discard)
	if err != nil {
		die("%v", err)
	}
	pc, err := r.PacketConn("statsd", envOr("HANDOFF_UDP", "127.0.0.1:0"))
	if err != nil {
		die("%v", err)
	}
	buf := make([]byte, 16)
	if t0 := os.Getenv("HANDOFF_T0"); t0 != "" {
		if _, _, err := pc.ReadFrom(buf); err != nil {
			die("%v", err)
		}
		then, _ := strconv.ParseInt(t0, 10, 64)
		say("gap %d", monotonic()-then)
	}
	left, _ := strconv.Atoi(os.Getenv("HANDOFF_LEFT"))
	if left == 0 {
		return
	}
	s, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		die("%v", err)
	}
	s.Write([]byte("last"))
	if _, _, err := pc.ReadFrom(buf); err != nil {
		die("%v", err)
	}
	t0 := monotonic()
	s.Write([]byte("first"))
	s.Close()
	pc.Close()
	os.Setenv("HANDOFF_LEFT", strconv.Itoa(left-1))
	os.Setenv("HANDOFF_T0", strconv.FormatInt(t0, 10))
	os.Setenv("HANDOFF_UDP", pc.LocalAddr().String())
	err = r.Exec(os.Args[0], os.Args, os.Environ())
	die("Exec returned: %v", err)
}

// monotonic reads CLOCK_MONOTONIC, which execve does not reset (time.Now's
// monotonic reading counts from the process image's start).
func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// BenchmarkExecGap measures how long a socket goes unread across Exec: from
// the old image's last read to the new one's first, in a chain of b.N execs
// of the test binary. ns/op is the whole cycle, gap-ms the gap (mean, p50,
// max).
func BenchmarkExecGap(b *testing.B) {
	out, err := roleCmd("gap", "HANDOFF_LEFT="+strconv.Itoa(b.N)).Output()
	if err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	var gaps []time.Duration
	for _, l := range strings.Fields(strings.ReplaceAll(string(out), "gap ", "")) {
		ns, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			b.Fatalf("said %q", out)
		}
		gaps = append(gaps, time.Duration(ns))
	}
	if len(gaps) != b.N {
		b.Fatalf("%d gaps for %d execs: %s", len(gaps), b.N, out)
	}
	slices.Sort(gaps)
	var sum time.Duration
	for _, g := range gaps {
		sum += g
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(sum/time.Duration(len(gaps))), "gap-ms")
	b.ReportMetric(ms(gaps[len(gaps)/2]), "gap-p50-ms")
	b.ReportMetric(ms(gaps[len(gaps)-1]), "gap-max-ms")
}
