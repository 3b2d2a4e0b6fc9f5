package handoff

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary play the next process of an upgrade: with
// HANDOFF_CHILD set it adopts its sockets through FromEnv and reports.
func TestMain(m *testing.M) {
	if os.Getenv("HANDOFF_CHILD") != "" {
		child()
		return
	}
	os.Exit(m.Run())
}

// child adopts "statsd" (datagram) and "http" (stream), prints how each was
// obtained, then relays one datagram and serves one connection.
func child() {
	r, err := FromEnv(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Println("fromenv error:", err)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		fmt.Println("LISTEN_FDS still set")
	}
	pc, err := r.PacketConn("statsd", os.Getenv("CHILD_STATSD"))
	if err != nil {
		fmt.Println("packetconn error:", err)
		os.Exit(1)
	}
	l, err := r.Listener("http", os.Getenv("CHILD_HTTP"))
	if err != nil {
		fmt.Println("listener error:", err)
		os.Exit(1)
	}
	for _, s := range r.Sockets() {
		fmt.Printf("%s inherited=%v\n", s.Name, s.Inherited)
	}
	fmt.Println("ready", pc.LocalAddr(), l.Addr())
	buf := make([]byte, 100)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		fmt.Println("read error:", err)
		os.Exit(1)
	}
	fmt.Printf("datagram %q\n", buf[:n])
	c, err := l.Accept()
	if err != nil {
		fmt.Println("accept error:", err)
		os.Exit(1)
	}
	fmt.Fprint(c, "served by the child")
	c.Close()
}

type sockets struct {
	udp  *net.UDPConn
	tcp  *net.TCPListener
	udpF *os.File
	tcpF *os.File
}

func bindPair(t *testing.T) sockets {
	t.Helper()
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	uf, _ := u.File()
	lf, _ := l.File()
	return sockets{u, l, uf, lf}
}

// startChild runs the child with files as fds 3, 4, … and returns its output
// lines as they come.
func startChild(t *testing.T, files []*os.File, names, statsd, http string) (*bufio.Scanner, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_CHILD=1", "CHILD_STATSD="+statsd, "CHILD_HTTP="+http,
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
	return bufio.NewScanner(out), cmd
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

// TestInheritedSocketsKeepServing hands a bound UDP socket and a TCP listener
// to a real child process: a datagram queued before the child even started,
// and a connection made after the parent closed its copies, both reach it.
func TestInheritedSocketsKeepServing(t *testing.T) {
	s := bindPair(t)
	udpAddr, tcpAddr := s.udp.LocalAddr().String(), s.tcp.Addr().String()
	// Queued in the socket's buffer before the handoff: must not be lost.
	sender, err := net.Dial("udp", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	if _, err := sender.Write([]byte("sent before the handoff")); err != nil {
		t.Fatal(err)
	}

	sc, _ := startChild(t, []*os.File{s.udpF, s.tcpF}, "statsd:http", udpAddr, tcpAddr)
	// The parent lets go entirely, as an old process does when it exits.
	s.udp.Close()
	s.tcp.Close()
	s.udpF.Close()
	s.tcpF.Close()

	expectLine(t, sc, "statsd inherited=true")
	expectLine(t, sc, "http inherited=true")
	ready := expectLine(t, sc, "ready ")
	if want := "ready " + udpAddr + " " + tcpAddr; ready != want {
		t.Fatalf("child listens on %q, want %q", ready, want)
	}
	expectLine(t, sc, `datagram "sent before the handoff"`)
	c, err := net.DialTimeout("tcp", tcpAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if string(got) != "served by the child" {
		t.Fatalf("connection answered %q", got)
	}
}

// TestMismatchedSocketsAreReboundNotAdopted passes sockets whose address or
// type differ from the configuration: the child must bind new ones.
func TestMismatchedSocketsAreReboundNotAdopted(t *testing.T) {
	s := bindPair(t)
	defer s.udp.Close()
	defer s.tcp.Close()
	// statsd is given the TCP listener (wrong type); http is given a listener on
	// another port than configured (the config changed across the upgrade).
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wantHTTP := other.Addr().String()
	other.Close()
	sc, _ := startChild(t, []*os.File{s.tcpF, s.tcpF}, "statsd:http", "127.0.0.1:0", wantHTTP)
	expectLine(t, sc, "statsd inherited=false")
	expectLine(t, sc, "http inherited=false")
	ready := expectLine(t, sc, "ready ")
	if !strings.HasSuffix(ready, " "+wantHTTP) {
		t.Fatalf("child listens on %q, want http on %s", ready, wantHTTP)
	}
}

func TestFromEnvRejectsMalformed(t *testing.T) {
	for _, tc := range []struct{ fds, names, want string }{
		{"x", "a", `LISTEN_FDS="x"`},
		{"2", "a", `names 1 sockets, LISTEN_FDS=2`},
	} {
		t.Setenv("LISTEN_FDS", tc.fds)
		t.Setenv("LISTEN_FDNAMES", tc.names)
		r, err := FromEnv(slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LISTEN_FDS=%s LISTEN_FDNAMES=%s: err = %v, want %q", tc.fds, tc.names, err, tc.want)
		}
		if r == nil {
			t.Fatal("no registry returned")
		}
	}
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

	r, _ := FromEnv(slog.New(slog.NewTextHandler(io.Discard, nil)))
	c, err := r.PacketConn("statsd", "unix:"+path)
	if err != nil {
		t.Fatalf("bind over a stale socket: %v", err)
	}
	defer c.Close()
	if _, err := r.PacketConn("statsd2", "unix:"+path); err == nil {
		t.Fatal("bound over a live socket")
	}
}
