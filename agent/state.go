package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed69aca190/edgeagent/agent/config"
	"github.com/seed69aca190/edgeagent/internal/atomicfile"
	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/internal/timefloor"
	"github.com/seed69aca190/edgeagent/update/handoff"
)

// ErrUnusable wraps what makes the agent useless, so that it must not start:
// no state directory at all, TLS configured without its files.
var ErrUnusable = errors.New("cannot start")

// state is what the agent keeps in its state directory: the lock, the time
// floor, the node id and the sequence. The directory may turn out read-only
// or full (a failing SD card remounted read-only, a filled data partition):
// the agent then runs from memory and says what is not persisted.
type state struct {
	dir   string
	lock  *os.File
	floor *timefloor.Floor
	seq   *seqfile.Counter
	node  string
	log   *slog.Logger
	// generation counts the images this process has run: 0 for a start,
	// then one more at each reload (update/handoff keeps the pid).
	generation int
	// lockKept is why the lock is not kept for the next image (nil: it
	// is): a reload is then refused, since the lock would close at the exec
	// and another agent could take the directory before the new image.
	lockKept error

	mu        sync.Mutex
	unsaved   map[string]error // what could not be persisted, and why
	generated bool             // node was generated here and must be persisted
}

// seqBlock sequence numbers are reserved per write of the sequence file: at
// one heartbeat per 10 s that is one flash write every 2¾ hours.
const seqBlock = 1000

// floorEvery is how often the time floor is persisted: the floor lags the
// real time by at most this much after a power cut (plus the ten minutes a
// clock just set must run steady before it is believed for good).
const floorEvery = time.Hour

func openState(cfg *config.Config, built time.Time, sockets *handoff.Registry, log *slog.Logger) (*state, error) {
	s := &state{dir: cfg.Paths.StateDir, log: log, unsaved: map[string]error{}}
	s.generation, _ = strconv.Atoi(os.Getenv(generationEnv))
	os.Unsetenv(generationEnv) // not for plugins
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		if _, serr := os.Stat(s.dir); serr != nil {
			return nil, fmt.Errorf("%w: state directory %s does not exist and cannot be created: %v", ErrUnusable, s.dir, err)
		}
	}
	if err := s.lockDir(sockets); err != nil {
		return nil, err
	}
	floor, err := timefloor.Open(filepath.Join(s.dir, "clock"), built)
	if err != nil {
		log.Warn("persisted time floor unreadable; the build date is the floor", "err", err)
	}
	s.floor = floor
	if err := s.nodeID(cfg); err != nil {
		s.close()
		return nil, err
	}
	seq, err := seqfile.Open(filepath.Join(s.dir, "seq"), seqBlock, floor.Now)
	if err != nil {
		log.Warn("sequence resumes from the time floor", "err", err)
	}
	s.seq = seq
	s.save()
	return s, nil
}

// lockDir takes an exclusive lock on the state directory itself, so that two
// agents never share sequence numbers or a spool; a lock on the directory
// works also when it is read-only. A reload hands the locked descriptor to
// the next image (the lock is never released in between), which adopts it
// here; it is kept in sockets for the next reload.
func (s *state) lockDir(sockets *handoff.Registry) error {
	inherited, err := sockets.File(lockName)
	if err != nil {
		// The registry holds the inherited lock still: a fresh lock would
		// conflict with it. Stop: an agent started afresh takes a new one.
		return fmt.Errorf("adopt the state lock a reload handed over: %w", err)
	}
	if inherited != nil {
		s.lock = inherited
		return nil
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("%w: open state directory: %v", ErrUnusable, err)
	}
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		d.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder, _ := os.ReadFile(s.lockPath())
			pid, _, _ := strings.Cut(string(holder), "\n")
			return fmt.Errorf("state dir %s is in use by another edgeagent (pid %s)", s.dir, strings.TrimSpace(pid))
		}
		return fmt.Errorf("lock %s: %w", s.dir, err)
	}
	s.lock = d
	if err := sockets.Keep(lockName, d); err != nil {
		s.lockKept = err
		s.log.Warn("state lock not kept for a reload; reloads are refused", "err", err)
	}
	return nil
}

// lockName names the state directory's lock among the descriptors a reload
// hands over.
const lockName = "state-lock"

func (s *state) lockPath() string { return filepath.Join(s.dir, "edgeagent.lock") }

// markReady writes the lock file: the pid, then the generation that runs,
// which `edgeagent reload` waits to see grow.
func (s *state) markReady() {
	s.writeLockFile("")
}

// markReload records why a reload was refused, for `edgeagent reload`.
func (s *state) markReload(refused error) {
	s.writeLockFile(fmt.Sprintf("reload refused (%s): %s", time.Now().UTC().Format(time.RFC3339Nano),
		strings.ReplaceAll(refused.Error(), "\n", "; ")))
}

func (s *state) writeLockFile(note string) {
	data := fmt.Sprintf("%d\n%d\n%s\n", os.Getpid(), s.generation, note)
	if err := os.WriteFile(s.lockPath(), []byte(data), 0o640); err != nil {
		s.log.Warn("state directory not writable", "dir", s.dir, "err", err)
	}
}

func (s *state) close() {
	if s.lock != nil {
		s.lock.Close()
	}
}

// nodeID decides the node id: node.id (config or flag) wins; then the
// provisioned node.id_file; then the id kept in the state directory, made
// on the first start. Never the host name alone: appliances of one image
// share it, and two nodes under one id kick each other off the broker.
func (s *state) nodeID(cfg *config.Config) error {
	if cfg.Node.ID != "" {
		s.node = cfg.Node.ID
		return nil
	}
	if f := cfg.Node.IDFile; f != "" {
		id, err := readID(f)
		if err == nil {
			s.node = id
			return nil
		}
		if !errors.Is(err, errNoID) && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: node.id_file: %v", ErrUnusable, err)
		}
		s.log.Warn("node.id_file holds no node id; using the id kept in the state directory", "err", err)
	}
	path := filepath.Join(s.dir, "node-id")
	id, err := readID(path)
	switch {
	case err == nil:
		s.node = id
		return nil
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNoID):
		s.node = s.firstID()
		s.log.Info("node id made on the first start", "node", s.node, "file", path)
	default:
		// The kept id exists but cannot be read now (EIO): never overwrite
		// it; serve under the id derived from the hardware meanwhile.
		s.node = hardwareID()
		s.unsaved["node id"] = fmt.Errorf("kept id unreadable, serving as %s: %w", s.node, err)
		s.log.Error("kept node id unreadable; serving under the id derived from the hardware", "err", err, "node", s.node)
		return nil
	}
	s.generated = true
	if err := atomicfile.WriteFile(path, []byte(s.node+"\n"), 0o640); err != nil {
		// It would not survive a restart: prefer an id the next start
		// derives again, and keep trying to persist it.
		s.node = hardwareID()
		s.log.Warn("node id cannot be kept; serving under the id derived from the hardware", "err", err, "node", s.node)
		return nil
	}
	s.generated = false
	return nil
}

// errNoID: the file is there but holds no usable node id (empty, as an
// image's /etc/machine-id before its first boot, systemd's "uninitialized",
// or not a valid id).
var errNoID = errors.New("no node id")

// readID reads the first line of path as a node id.
func readID(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 256))
	if err != nil {
		return "", err
	}
	id, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	if id == "uninitialized" || !config.ValidNodeID(id) {
		return "", fmt.Errorf("%w: %s holds %.70q", errNoID, path, id)
	}
	return id, nil
}

// firstID makes the id of a node's first start. A state directory that an
// earlier version used (it holds a sequence file) keeps that version's id,
// the machine id or else the host name, so an upgrade does not turn a node
// into a new one; otherwise the host name and 48 random bits, unique in any
// fleet and still recognisable.
func (s *state) firstID() string {
	if _, err := os.Stat(filepath.Join(s.dir, "seq")); err == nil {
		if id, err := readID("/etc/machine-id"); err == nil {
			return id
		}
		if host, _ := os.Hostname(); config.ValidNodeID(host) {
			return host
		}
	}
	var b [6]byte
	rand.Read(b[:])
	return withHost(hex.EncodeToString(b[:]))
}

var unsafeHostChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// withHost prefixes suffix with the host name, cut to fit a node id.
func withHost(suffix string) string {
	host, _ := os.Hostname()
	host = strings.Trim(unsafeHostChars.ReplaceAllString(host, "-"), "-._")
	if host == "" || host == "localhost" {
		host = "node"
	}
	return host[:min(len(host), 64-1-len(suffix))] + "-" + suffix
}

// hardwareID derives an id from what identifies this machine: the DMI
// product UUID, the device-tree serial number, and the addresses of its
// physical NICs. The same machine derives it again at every start, which
// a random id that cannot be kept would not give.
func hardwareID() string {
	h := sha256.New()
	for _, f := range []string{"/sys/class/dmi/id/product_uuid", "/proc/device-tree/serial-number"} {
		if data, err := os.ReadFile(f); err == nil {
			h.Write(data)
		}
	}
	nics, _ := filepath.Glob("/sys/class/net/*/device")
	slices.Sort(nics)
	for _, dev := range nics {
		if mac, err := os.ReadFile(filepath.Join(filepath.Dir(dev), "address")); err == nil {
			h.Write(mac)
		}
	}
	return withHost(hex.EncodeToString(h.Sum(nil)[:6]))
}

// save persists what is due: a generated node id not yet written, and the
// time floor (hourly; timefloor decides what may be persisted). What
// cannot be written is remembered for the health report and tried again at
// the next save.
func (s *state) save() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.generated {
		err := atomicfile.WriteFile(filepath.Join(s.dir, "node-id"), []byte(s.node+"\n"), 0o640)
		s.generated = err != nil
		s.setUnsaved("node id", err)
	}
	_, err := s.floor.Save(floorEvery)
	s.setUnsaved("time floor", err)
}

func (s *state) setUnsaved(what string, err error) {
	if err == nil {
		delete(s.unsaved, what)
		return
	}
	if s.unsaved[what] == nil {
		s.log.Warn(what+" not persisted", "err", err)
	}
	s.unsaved[what] = err
}

// run saves every minute (the floor's own cadence decides when it writes)
// until ctx ends, and once more then.
func (s *state) run(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			s.save()
			return
		case <-tick.C:
			s.save()
		}
	}
}

// problems reports what is not persisted, as one part, and the clock when
// it reads below the floor.
func (s *state) problems() []problem {
	var out []problem
	if !s.floor.Synced() {
		out = append(out, problem{part: "clock", reason: fmt.Sprintf("reads %s, below the time floor; times sent are estimates from %s",
			time.Now().UTC().Format(time.RFC3339), s.floor.Now().UTC().Format(time.RFC3339))})
	}
	s.mu.Lock()
	var what []string
	var first error
	for _, w := range []string{"node id", "time floor"} {
		if err := s.unsaved[w]; err != nil {
			what, first = append(what, w), cmpOr(first, err)
		}
	}
	s.mu.Unlock()
	if err := s.seq.Fault(); err != nil {
		what, first = append(what, "sequence numbers (a crash now could repeat them)"), cmpOr(first, err)
	}
	if len(what) > 0 {
		out = append(out, problem{part: "state", reason: fmt.Sprintf("not persisted in %s: %s; %v", s.dir, strings.Join(what, ", "), first)})
	}
	return out
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
