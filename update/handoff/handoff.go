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
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	// firstFD is where passed descriptors start (after stdin, stdout and
	// stderr).
	firstFD = 3
	// maxFDs bounds LISTEN_FDS.
	maxFDs = 64
	// unlinkVar lists, among the passed descriptors, the unix sockets that an
	// image of this program bound, whose files are removed when the socket is
	// let go (see Stop). Sockets systemd activates are not in it.
	unlinkVar = "HANDOFF_UNLINK"
	// fillerPrefix begins the names of descriptors that Exec passes only to
	// keep the numbering (see Exec); FromEnv closes them.
	fillerPrefix = "handoff.filler."
)

// ExecFailedStatus is the exit status of a process whose Exec failed after
// overwriting descriptors, and which therefore cannot go on: the init system
// starts the agent again.
const ExecFailedStatus = 75 // EX_TEMPFAIL

// isListenVar reports whether k is one of the variables that announce
// passed descriptors (LISTEN_PIDFDID: systemd 254 and later).
func isListenVar(k string) bool {
	switch k {
	case "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "LISTEN_PIDFDID", unlinkVar:
		return true
	}
	return false
}

// Socket describes one socket handed out by the registry.
type Socket struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Inherited bool   `json:"inherited"` // false: bound by this process
}

// Registry hands out listening sockets by name and keeps, in the order they
// were handed out, a duplicate (close-on-exec) of each and of every
// file given to Keep or claimed with File: those are what Exec passes on. It
// is safe for concurrent use.
type Registry struct {
	log *slog.Logger

	mu        sync.Mutex
	inherited map[string]inherited // announced, not yet claimed
	kept      []*kept
}

// inherited is a descriptor announced in LISTEN_FDNAMES.
type inherited struct {
	file  *os.File
	owned bool // named in unlinkVar
}

// kept is a descriptor that Exec passes on.
type kept struct {
	name   string
	file   *os.File // the registry's own
	socket *Socket  // nil: a file given to Keep or claimed with File
	unlink string   // the socket file to remove when it is let go; "" when not ours
}

// FromEnv takes the descriptors this process inherited and clears the
// variables that announced them, so that children do not believe they own
// them too. It first sets close-on-exec on every descriptor above 2, so that
// none reaches a child, whatever follows; call it before starting any. It
// takes nothing announced for another pid or without LISTEN_PID (required,
// as by systemd's sd_listen_fds), and closes Exec's fillers at once.
// Malformed variables are an error naming them; announced descriptors that
// cannot be named are closed (so that their addresses can be bound afresh),
// and the registry is usable either way.
func FromEnv(log *slog.Logger) (*Registry, error) {
	r := &Registry{log: log, inherited: map[string]inherited{}}
	var err error
	if e := closeOnExecAbove2(); e != nil {
		err = fmt.Errorf("set close-on-exec on inherited descriptors: %w", e)
	}
	count, names, pid, unlink := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"), os.Getenv("LISTEN_PID"), os.Getenv(unlinkVar)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); isListenVar(k) {
			os.Unsetenv(k)
		}
	}
	if count == "" || pid != strconv.Itoa(os.Getpid()) {
		return r, err
	}
	n, e := strconv.Atoi(count)
	if e != nil || n < 0 || n > maxFDs {
		return r, errors.Join(err, fmt.Errorf("LISTEN_FDS=%q: want a count from 0 to %d", count, maxFDs))
	}
	if n == 0 {
		return r, err
	}
	list := strings.Split(names, ":")
	if len(list) != n {
		for fd := firstFD; fd < firstFD+n; fd++ {
			unix.Close(fd)
		}
		return r, errors.Join(err, fmt.Errorf("LISTEN_FDNAMES=%q names %d descriptors, LISTEN_FDS=%d; closed them", names, len(list), n))
	}
	owned := map[string]bool{}
	for _, name := range strings.Split(unlink, ":") {
		owned[name] = true
	}
	for i, name := range list {
		fd := firstFD + i
		if _, e := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); e != nil {
			err = errors.Join(err, fmt.Errorf("LISTEN_FDNAMES: %q (fd %d): %w", name, fd, e))
			continue
		}
		if strings.HasPrefix(name, fillerPrefix) {
			unix.Close(fd)
			continue
		}
		f := os.NewFile(uintptr(fd), name)
		if _, dup := r.inherited[name]; dup || checkName(name) != nil {
			f.Close()
			err = errors.Join(err, fmt.Errorf("LISTEN_FDNAMES: fd %d has an invalid or repeated name %q; closed", fd, name))
			continue
		}
		r.inherited[name] = inherited{file: f, owned: owned[name]}
	}
	return r, err
}

// PacketConn returns the datagram socket called name, bound to address
// ("host:port" for UDP, "unix:/path" for a unix datagram socket). Asked
// again for a name it handed out, it returns the same socket again.
func (r *Registry) PacketConn(name, address string) (net.PacketConn, error) {
	return obtain(r, name, address, unix.SOCK_DGRAM, "udp", "unixgram", net.FilePacketConn, net.ListenPacket)
}

// Listener returns the stream socket called name, listening on address
// ("host:port" for TCP, "unix:/path" for a unix stream socket). Asked again
// for a name it handed out, it returns the same socket again. Closing a unix
// listener leaves its file (see Stop).
func (r *Registry) Listener(name, address string) (net.Listener, error) {
	return obtain(r, name, address, unix.SOCK_STREAM, "tcp", "unix", net.FileListener, net.Listen)
}

// obtain hands out the socket called name: the one already kept under that
// name or else the inherited one, when it matches address; else one bound
// afresh with listen on inet or unixNet, of which it keeps a duplicate.
func obtain[T any](r *Registry, name, address string, sotype int, inet, unixNet string,
	adopt func(*os.File) (T, error), listen func(network, address string) (T, error)) (T, error) {
	var zero T
	if err := checkName(name); err != nil {
		return zero, err
	}
	want, err := parseAddress(address, sotype)
	if err != nil {
		return zero, fmt.Errorf("socket %s: %w", name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k := r.find(name); k != nil {
		if k.socket == nil {
			return zero, fmt.Errorf("socket %s: the name is a kept file's", name)
		}
		if err := want.matches(int(k.file.Fd())); err == nil {
			s, err := adopt(k.file)
			if err != nil {
				return zero, fmt.Errorf("socket %s: %w", name, err)
			}
			r.log.Info("listening again", "socket", name, "address", address)
			return s, nil
		}
		r.drop(k)
	}
	if f, owned := r.claim(name, want); f != nil {
		s, err := adopt(f)
		if err != nil {
			r.release(name, f, owned)
			return zero, fmt.Errorf("socket %s: adopt inherited fd: %w", name, err)
		}
		r.keep(name, f, &Socket{Name: name, Address: address, Inherited: true}, ownedPath(f, owned))
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
	if l, ok := any(s).(*net.UnixListener); ok {
		l.SetUnlinkOnClose(false) // the next image serves it on: Stop removes it
	}
	f, err := dupFile(any(s).(syscall.Conn), name)
	if err != nil {
		any(s).(interface{ Close() error }).Close()
		if want.family == unix.AF_UNIX {
			os.Remove(want.path)
		}
		return zero, fmt.Errorf("socket %s: keep a copy: %w", name, err)
	}
	r.keep(name, f, &Socket{Name: name, Address: address}, want.path)
	return s, nil
}

// Keep keeps a duplicate of f, to be passed to the next image under name
// (for a flock'd state directory: the new image takes it with File, and the
// lock is never released). f stays the caller's; a lock on it stays held
// while the registry's duplicate is open: until the process ends or Stop.
func (r *Registry) Keep(name string, f *os.File) error {
	if err := checkName(name); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, taken := r.inherited[name]; taken || r.find(name) != nil {
		return fmt.Errorf("keep %s: the name is taken", name)
	}
	d, err := dupFile(f, name)
	if err != nil {
		return fmt.Errorf("keep %s: %w", name, err)
	}
	r.keep(name, d, nil, "")
	return nil
}

// File returns a duplicate (close-on-exec, the caller's) of the descriptor
// called name that this process inherited, of any kind, and keeps it for the
// next image as Keep would. It returns nil, nil when nothing by that name was
// inherited or it was claimed already.
func (r *Registry) File(name string) (*os.File, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok := r.inherited[name]
	if !ok {
		return nil, nil
	}
	delete(r.inherited, name)
	r.keep(name, in.file, nil, "") // even if no duplicate can be had: a lock on it stays held
	d, err := dupFile(in.file, name)
	if err != nil {
		return nil, fmt.Errorf("inherited %s: %w", name, err)
	}
	r.log.Info("inherited", "file", name)
	return d, nil
}

// Sockets lists the sockets handed out, in order.
func (r *Registry) Sockets() []Socket {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Socket
	for _, k := range r.kept {
		if k.socket != nil {
			out = append(out, *k.socket)
		}
	}
	return out
}

// Close closes what this process inherited and nobody claimed (a listener
// that the new configuration no longer has; the file of a unix socket that an
// image of this program bound goes too); what was handed out stays kept for
// Exec.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, in := range r.inherited {
		r.log.Info("closing inherited descriptor nobody uses", "name", name)
		r.release(name, in.file, in.owned)
	}
}

// Stop ends the registry at a stop that is not a reload, once the servers
// have stopped: it closes every descriptor it holds (until then the sockets
// stay open, and a client may connect to one nobody serves) and removes the
// files of the unix sockets that this process or an earlier image of it
// bound. Nothing is left for Exec.
func (r *Registry) Stop() {
	r.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.kept) > 0 {
		r.drop(r.kept[0])
	}
}

// find returns the kept descriptor called name, or nil. r.mu is held.
func (r *Registry) find(name string) *kept {
	for _, k := range r.kept {
		if k.name == name {
			return k
		}
	}
	return nil
}

// keep records f as the descriptor called name. r.mu is held.
func (r *Registry) keep(name string, f *os.File, s *Socket, unlink string) {
	r.kept = append(r.kept, &kept{name: name, file: f, socket: s, unlink: unlink})
	if s != nil {
		r.log.Info("listening", "socket", name, "address", s.Address, "inherited", s.Inherited)
	}
}

// drop closes the kept descriptor k, removes its socket file if it is ours,
// and forgets it. r.mu is held.
func (r *Registry) drop(k *kept) {
	k.file.Close()
	removeSocketFile(r.log, k.name, k.unlink)
	for i := range r.kept {
		if r.kept[i] == k {
			r.kept = append(r.kept[:i], r.kept[i+1:]...)
			break
		}
	}
}

// release closes an inherited descriptor that is not kept, removing its
// socket file if an image of this program bound it. r.mu is held.
func (r *Registry) release(name string, f *os.File, owned bool) {
	path := ownedPath(f, owned)
	f.Close()
	removeSocketFile(r.log, name, path)
	delete(r.inherited, name)
}

// claim takes the inherited socket called name if it is what want
// describes, reporting whether its file is ours. One that is not (the
// configuration changed across the upgrade) is let go and reported, and the
// caller binds afresh. r.mu is held.
func (r *Registry) claim(name string, want address) (*os.File, bool) {
	in, ok := r.inherited[name]
	if !ok {
		return nil, false
	}
	delete(r.inherited, name)
	if err := want.matches(int(in.file.Fd())); err != nil {
		r.log.Warn("inherited socket does not match the configuration; binding a new one",
			"socket", name, "reason", err)
		r.release(name, in.file, in.owned)
		return nil, false
	}
	return in.file, in.owned
}

// checkName reports why name cannot name a passed descriptor, as systemd's
// fdname_is_valid does: LISTEN_FDNAMES separates names with ':'.
func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("name %q: want 1 to 255 characters", name)
	}
	if strings.HasPrefix(name, fillerPrefix) {
		return fmt.Errorf("name %q: %s… is reserved", name, fillerPrefix)
	}
	for _, c := range []byte(name) {
		if c < ' ' || c > '~' || c == ':' {
			return fmt.Errorf("name %q: want printable ASCII without ':'", name)
		}
	}
	return nil
}

// dupFile returns a close-on-exec duplicate of c's descriptor, without
// touching c's blocking mode (as File.Fd would).
func dupFile(c syscall.Conn, name string) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, firstFD) })
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, fmt.Errorf("dup: %w", err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// closeOnExecListed sets close-on-exec on every descriptor above 2 that dir
// (/proc/self/fd or /dev/fd) lists.
func closeOnExecListed(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd) // EBADF: the directory's own, closed meanwhile
		}
	}
	return nil
}

// ownedPath returns the file of the unix socket f when owned, else "".
func ownedPath(f *os.File, owned bool) string {
	if !owned {
		return ""
	}
	if sa, err := unix.Getsockname(int(f.Fd())); err == nil {
		if u, ok := sa.(*unix.SockaddrUnix); ok && u.Name != "" && u.Name[0] != '@' {
			return u.Name
		}
	}
	return ""
}

// removeSocketFile removes path if it is a socket file.
func removeSocketFile(log *slog.Logger, name, path string) {
	if path == "" {
		return
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		return
	}
	if err := os.Remove(path); err != nil {
		log.Warn("socket file not removed", "socket", name, "path", path, "err", err)
	}
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
