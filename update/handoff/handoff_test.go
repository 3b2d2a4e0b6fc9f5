package handoff

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// roles lets the test binary play another process (a previous or next image,
// a child): TestMain runs the one HANDOFF_ROLE names instead of the tests.
var roles = map[string]func(){}

func TestMain(m *testing.M) {
	if role := os.Getenv("HANDOFF_ROLE"); role != "" {
		roles[role]()
		os.Exit(0)
	}
	// A clean parent, as FromEnv makes the agent: the descriptors this
	// process inherited (from a shell, a CI runner) do not reach its
	// children, so a fresh one shows only what it opens itself.
	if err := closeOnExecAbove2(); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func newRegistry(t *testing.T) *Registry {
	t.Helper()
	r, err := FromEnv(discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// TestUnixDatagramReplacesStaleSocket binds where a dead process left its
// socket file, and refuses to steal one that is alive.
func TestUnixDatagramReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "statsd.sock")
	dead, err := net.ListenPacket("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	dead.Close() // a datagram socket leaves its file behind, as a crash would
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("no stale socket file to replace: %v", err)
	}

	r := newRegistry(t)
	c, err := r.PacketConn("statsd", "unix:"+path)
	if err != nil {
		t.Fatalf("bind over a stale socket: %v", err)
	}
	defer c.Close()
	if _, err := r.PacketConn("statsd2", "unix:"+path); err == nil {
		t.Fatal("bound over a live socket")
	}
}

// TestAskedAgainSameSocket asks twice for a name, as the agent does when a
// server stopped with an error: the second answer is the same socket (the
// registry's copy holds it, so binding afresh would fail), and it is listed
// once. Asked with another address, the old socket is closed and a new one
// bound.
func TestAskedAgainSameSocket(t *testing.T) {
	r := newRegistry(t)
	l1, err := r.Listener("http", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l1.Addr().String()
	l1.Close() // the server broke
	l2, err := r.Listener("http", addr)
	if err != nil {
		t.Fatalf("asked again: %v", err)
	}
	defer l2.Close()
	if l2.Addr().String() != addr {
		t.Fatalf("asked again: listening on %s, want %s", l2.Addr(), addr)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if s := r.Sockets(); len(s) != 1 || s[0] != (Socket{Name: "http", Address: "127.0.0.1:0"}) {
		t.Fatalf("Sockets() = %+v, want http once", s)
	}

	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	moved := free.Addr().String()
	free.Close()
	l3, err := r.Listener("http", moved) // the configuration changed
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	l2.Close()
	if l3.Addr().String() != moved {
		t.Fatalf("asked for %s, got %s", moved, l3.Addr())
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("the old socket %s still accepts connections", addr)
	}
}

// TestStopRemovesBoundUnixSocket: closing a unix listener leaves its file
// (a reload must not delete it); Stop removes it, and closes the socket.
func TestStopRemovesBoundUnixSocket(t *testing.T) {
	dir := t.TempDir()
	r, err := FromEnv(discard)
	if err != nil {
		t.Fatal(err)
	}
	stream, dgram := filepath.Join(dir, "control.sock"), filepath.Join(dir, "statsd.sock")
	l, err := r.Listener("control", "unix:"+stream)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := r.PacketConn("statsd", "unix:"+dgram)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	pc.Close()
	c, err := net.Dial("unix", stream)
	if err != nil {
		t.Fatalf("after the listener closed, before Stop: %v", err)
	}
	c.Close()
	r.Stop()
	for _, path := range []string{stream, dgram} {
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("%s after Stop: %v, want it removed", path, err)
		}
	}
	if len(r.Sockets()) != 0 {
		t.Errorf("Sockets() after Stop = %+v", r.Sockets())
	}
}

func TestNames(t *testing.T) {
	r := newRegistry(t)
	f, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := r.Keep("state", f); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, want string }{
		{"state", "taken"},
		{"", "1 to 255"},
		{"a:b", "without ':'"},
		{"tab\there", "printable"},
		{strings.Repeat("x", 256), "1 to 255"},
	} {
		if err := r.Keep(tc.name, f); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Keep(%q) = %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := r.Listener("state", "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "kept file") {
		t.Errorf("a socket under a kept file's name: %v", err)
	}
	if _, err := r.Listener("a:b", "127.0.0.1:0"); err == nil {
		t.Error("a socket named a:b was handed out; LISTEN_FDNAMES cannot carry it")
	}
	if got, err := r.File("state"); got != nil || err != nil {
		t.Errorf("File(state) = %v, %v: nothing was inherited", got, err)
	}
}

// TestFromEnvRejectsMalformed: variables that cannot be read are an error
// naming them; ones for another process are ignored, as sd_listen_fds does.
// (Malformed names, whose descriptors FromEnv closes, are tested in a child:
// TestFromEnvLeaksNothing.)
func TestFromEnvRejectsMalformed(t *testing.T) {
	for _, tc := range []struct{ fds, pid, want string }{
		{"x", "self", `LISTEN_FDS="x"`},
		{"65", "self", `LISTEN_FDS="65"`},
		{"2", "1", ""},
		{"2", "", ""},
	} {
		pid := tc.pid
		if pid == "self" {
			pid = strconv.Itoa(os.Getpid())
		}
		t.Setenv("LISTEN_FDS", tc.fds)
		t.Setenv("LISTEN_FDNAMES", "a:b")
		t.Setenv("LISTEN_PID", pid)
		r, err := FromEnv(discard)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("LISTEN_FDS=%s LISTEN_PID=%s: err = %v, want %q", tc.fds, pid, err, tc.want)
		}
		if r == nil {
			t.Fatal("no registry returned")
		}
		if os.Getenv("LISTEN_FDS") != "" || os.Getenv("LISTEN_PID") != "" {
			t.Errorf("LISTEN_FDS=%s LISTEN_PID=%s: the variables are still set", tc.fds, pid)
		}
	}
}
