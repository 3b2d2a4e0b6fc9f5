// Package handoff is the registry of the agent's listening sockets. Servers
// never open their own: the wiring asks for a listener by name, and gets the
// one this process inherited (the systemd convention: LISTEN_FDS,
// LISTEN_FDNAMES, LISTEN_PID; fds from 3 on) when its type, family and
// address match what is asked for, or else a freshly bound one. Inheriting is
// how an upgrade hands its sockets to the next process without dropping a
// packet, and how socket activation works.
package handoff

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// firstFD is where inherited sockets start (after stdin, stdout and stderr).
const firstFD = 3

// Socket describes one socket handed out by the registry.
type Socket struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Inherited bool   `json:"inherited"` // false: bound by this process
}

// Registry hands out listening sockets by name. It is safe for concurrent use.
type Registry struct {
	log *slog.Logger

	mu        sync.Mutex
	inherited map[string]*os.File // not yet claimed
	handed    []Socket
}

// FromEnv takes the sockets this process inherited and clears the variables
// that announced them, so that children do not believe they own them too.
// Sockets announced for another pid (LISTEN_PID) are ignored, as systemd's
// sd_listen_fds does. Malformed variables are an error naming them; the
// registry is still usable and binds fresh sockets.
func FromEnv(log *slog.Logger) (*Registry, error) {
	r := &Registry{log: log, inherited: map[string]*os.File{}}
	count, names, pid := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"), os.Getenv("LISTEN_PID")
	for _, k := range []string{"LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"} {
		os.Unsetenv(k)
	}
	if count == "" {
		return r, nil
	}
	if pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return r, nil
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 0 || n > 64 {
		return r, fmt.Errorf("LISTEN_FDS=%q: want a count from 0 to 64", count)
	}
	list := strings.Split(names, ":")
	if names == "" || len(list) != n {
		return r, fmt.Errorf("LISTEN_FDNAMES=%q names %d sockets, LISTEN_FDS=%d", names, len(list), n)
	}
	for i, name := range list {
		fd := firstFD + i
		unix.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), name)
		if _, dup := r.inherited[name]; dup || name == "" {
			f.Close()
			err = errors.Join(err, fmt.Errorf("LISTEN_FDNAMES: socket %d has an empty or repeated name %q; closed", fd, name))
			continue
		}
		r.inherited[name] = f
	}
	return r, err
}

// PacketConn returns the datagram socket called name, bound to address
// ("host:port" for UDP, "unix:/path" for a unix datagram socket).
func (r *Registry) PacketConn(name, address string) (net.PacketConn, error) {
	return obtain(r, name, address, unix.SOCK_DGRAM, "udp", "unixgram", net.FilePacketConn, net.ListenPacket)
}

// Listener returns the stream socket called name, listening on address
// ("host:port" for TCP, "unix:/path" for a unix stream socket).
func (r *Registry) Listener(name, address string) (net.Listener, error) {
	return obtain(r, name, address, unix.SOCK_STREAM, "tcp", "unix", net.FileListener, net.Listen)
}

// obtain adopts the inherited socket called name when it matches, else binds
// one with listen on inet or unixNet.
func obtain[T any](r *Registry, name, address string, sotype int, inet, unixNet string,
	adopt func(*os.File) (T, error), listen func(network, address string) (T, error)) (T, error) {
	var zero T
	want, err := parseAddress(address, sotype)
	if err != nil {
		return zero, fmt.Errorf("socket %s: %w", name, err)
	}
	if f := r.claim(name, want); f != nil {
		defer f.Close()
		s, err := adopt(f)
		if err != nil {
			return zero, fmt.Errorf("socket %s: adopt inherited fd: %w", name, err)
		}
		r.record(name, address, true)
		return s, nil
	}
	var s T
	if want.family == unix.AF_UNIX {
		if err := removeStaleSocket(want.path, unixNet); err != nil {
			return zero, fmt.Errorf("socket %s: %w", name, err)
		}
		s, err = listen(unixNet, want.path)
	} else {
		s, err = listen(inet, want.hostPort)
	}
	if err != nil {
		return zero, fmt.Errorf("socket %s: %w", name, err)
	}
	r.record(name, address, false)
	return s, nil
}

// Sockets lists what has been handed out, in order.
func (r *Registry) Sockets() []Socket {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Socket(nil), r.handed...)
}

// Close closes inherited sockets nobody asked for (a listener that the new
// configuration no longer has).
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, f := range r.inherited {
		r.log.Info("closing inherited socket nobody uses", "socket", name)
		f.Close()
		delete(r.inherited, name)
	}
}

func (r *Registry) record(name, address string, inherited bool) {
	r.mu.Lock()
	r.handed = append(r.handed, Socket{Name: name, Address: address, Inherited: inherited})
	r.mu.Unlock()
	r.log.Info("listening", "socket", name, "address", address, "inherited", inherited)
}

// claim takes the inherited socket called name if it is what want describes.
// One that is not (the configuration changed across the upgrade) is closed
// and reported, and the caller binds afresh.
func (r *Registry) claim(name string, want address) *os.File {
	r.mu.Lock()
	f := r.inherited[name]
	delete(r.inherited, name)
	r.mu.Unlock()
	if f == nil {
		return nil
	}
	if err := want.matches(int(f.Fd())); err != nil {
		r.log.Warn("inherited socket does not match the configuration; binding a new one",
			"socket", name, "reason", err)
		f.Close()
		return nil
	}
	return f
}

// address is a parsed listening address.
type address struct {
	sotype   int
	family   int    // AF_INET, AF_INET6 or AF_UNIX
	path     string // AF_UNIX
	hostPort string // AF_INET*
	ip       net.IP // nil: any address
	port     int
}

func parseAddress(s string, sotype int) (address, error) {
	a := address{sotype: sotype}
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return a, fmt.Errorf("address %q: empty socket path", s)
		}
		a.family, a.path = unix.AF_UNIX, path
		return a, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return a, fmt.Errorf("address %q: want host:port or unix:PATH", s)
	}
	a.port, err = strconv.Atoi(port)
	if err != nil || a.port < 0 || a.port > 65535 {
		return a, fmt.Errorf("address %q: bad port", s)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	a.hostPort = net.JoinHostPort(host, port)
	a.family = unix.AF_INET
	if host != "" {
		if a.ip = net.ParseIP(host); a.ip == nil {
			return a, fmt.Errorf("address %q: host must be an IP address or localhost", s)
		}
		if a.ip.To4() == nil {
			a.family = unix.AF_INET6
		}
	}
	return a, nil
}

// matches reports why the socket fd is not what a describes, or nil.
func (a address) matches(fd int) error {
	sotype, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("not a socket: %w", err)
	}
	if sotype != a.sotype {
		return fmt.Errorf("socket type %d, want %d", sotype, a.sotype)
	}
	if sotype == unix.SOCK_STREAM {
		if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on == 0 {
			return errors.New("stream socket is not listening")
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrUnix:
		if a.family != unix.AF_UNIX || sa.Name != a.path {
			return fmt.Errorf("bound to unix:%s, want %s", sa.Name, a)
		}
	case *unix.SockaddrInet4:
		return a.matchesIP(net.IP(sa.Addr[:]), sa.Port, unix.AF_INET)
	case *unix.SockaddrInet6:
		return a.matchesIP(net.IP(sa.Addr[:]), sa.Port, unix.AF_INET6)
	default:
		return fmt.Errorf("address family %T is not served", sa)
	}
	return nil
}

func (a address) matchesIP(ip net.IP, port, family int) error {
	got := net.JoinHostPort(ip.String(), strconv.Itoa(port))
	if a.family == unix.AF_UNIX {
		return fmt.Errorf("bound to %s, want %s", got, a)
	}
	wantIP := a.ip
	if wantIP == nil { // any address: 0.0.0.0 or ::
		wantIP = net.IPv4zero
		if family == unix.AF_INET6 {
			wantIP = net.IPv6unspecified
		}
	}
	if !ip.Equal(wantIP) || (a.port != 0 && port != a.port) {
		return fmt.Errorf("bound to %s, want %s", got, a)
	}
	return nil
}

func (a address) String() string {
	if a.family == unix.AF_UNIX {
		return "unix:" + a.path
	}
	return a.hostPort
}

// removeStaleSocket deletes a socket file left by a process that died, so a
// fresh bind succeeds; a live socket (someone answers) is left alone and the
// bind then fails with "address in use".
func removeStaleSocket(path, network string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		return nil // missing, or not a socket: let bind report it
	}
	if c, err := net.Dial(network, path); err == nil {
		c.Close()
		return nil
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
