// Package spool is the agent's store-and-forward queue. Records live in
// memory while the broker acknowledges them, so a healthy node writes nothing
// to flash. When the broker is away (the uplink calls Spill) every record not
// yet acknowledged, and every new one, goes to append-only segment files;
// fsync runs at most once per interval and on Close. The flash it may use is
// bounded: beyond it the oldest segment is dropped and counted.
//
// Recovery at Open: segments are read oldest first; a torn or corrupt tail
// (short frame, impossible length, CRC mismatch) of the last one is cut off
// and counted; a corrupt segment that is not the last is renamed aside
// (*.corrupt) and its valid records before the damage are kept, written
// again to the newest segment. A segment that cannot be read at all (EIO from
// flash, or anything else a read returns) is renamed aside (*.unreadable) and
// its records are lost; both count as quarantined, and where the rename
// fails too the segment is left in place and skipped. Segment numbers are
// never used again, those of files set aside included. The spool always
// opens: a directory that cannot be created is a fault like any other, and
// is created when it can be.
//
// Flash that cannot be written (read-only, full, failing) degrades the spool
// and does not stop it. Any change to the directory that fails (creating,
// opening for writing, appending to, truncating, renaming or removing a
// segment, fsync, the dropped count) sets Stats.Fault, and from then on flash
// is left alone: new records wait in memory, within MemoryBytes, the oldest
// dropped and counted beyond it, while records already on flash are still
// delivered (segments are read through read-only descriptors; only the
// newest is opened for writing). The first Put or Spill after RetryInterval
// tries again by writing the dropped count and removing the segments it
// could not; when that works Fault clears and, while the broker is away,
// memory moves to flash as usual (where that fails, Fault is set again). A
// frame that a failed write left half written is truncated away at once;
// where even that fails, the segment takes no more appends and the CRC check
// cuts the partial frame at the next Open. Close tries flash once more and
// reports the records it had to lose.
//
// Acknowledgements are kept in memory only: a segment is removed once all its
// records are acknowledged, so after a restart the acknowledged records of a
// segment still on flash (one not drained yet, or one that could not be
// removed because flash was read-only) are delivered again. Within one
// process no record is delivered twice; across restarts the controller
// de-duplicates by sequence number.
package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
)

// Options configure a Spool.
type Options struct {
	Dir           string
	MaxBytes      int64         // flash the segments may use; zero means 64 MiB
	FsyncInterval time.Duration // zero means 1 s
	// MemoryBytes bounds the payload held in memory. While the broker
	// acknowledges, beyond it the spool spills to flash as if the broker
	// were away; while flash cannot be written, beyond it the oldest records
	// are dropped. It bounds memory rather than borrowing MaxBytes because an
	// appliance has little RAM and MaxBytes is sized for flash. Zero means
	// 1 MiB.
	MemoryBytes int
	// RetryInterval is how long flash is left alone after a write to it
	// failed. Zero means 30 s.
	RetryInterval time.Duration
	Log           *slog.Logger
}

// Stats describe the spool now.
type Stats struct {
	Memory      int    `json:"memory"`      // records held in memory
	Disk        int    `json:"disk"`        // records on flash
	DiskBytes   int64  `json:"disk_bytes"`  // bytes of the segments in use
	InFlight    int    `json:"in_flight"`   // handed out, not yet acknowledged
	Dropped     uint64 `json:"dropped"`     // records dropped for space or unreadable, ever (persisted while flash can be written)
	Truncated   uint64 `json:"truncated"`   // torn or corrupt tails cut off (on read-only flash: skipped) since start
	Quarantined uint64 `json:"quarantined"` // corrupt or unreadable segments set aside (or skipped) since start
	Persisting  bool   `json:"persisting"`  // the broker is away: new records go to flash, or while Fault is set wait in memory
	// Fault says why flash cannot be written right now: the error of the
	// last failed attempt, until a retry succeeds. Empty while it can be.
	Fault string `json:"fault,omitempty"`
}

// Depth is how many records wait.
func (s Stats) Depth() int { return s.Memory + s.Disk }

type item struct {
	seq      uint64
	rec      Record   // in memory; on flash only Topic is kept after reading
	seg      *segment // nil while in memory
	fr       frame
	inflight bool
	acked    bool
}

type segment struct {
	id     uint64
	path   string
	f      *os.File
	size   int64
	live   int  // items not yet acknowledged
	sealed bool // takes no appends: opened read-only, or its file may hold a partial frame beyond size
}

// Spool is safe for concurrent use.
type Spool struct {
	opts       Options
	segmentMax int64

	mu         sync.Mutex
	mem, disk  []*item // each oldest first
	bySeq      map[uint64]*item
	memBytes   int        // payload of the unacknowledged records in mem
	segs       []*segment // oldest first; the last takes appends unless sealed
	lastID     uint64     // the highest segment number seen or made; never used again
	stale      []string   // files of segments no longer in use that could not be removed yet
	diskBytes  int64
	persist    bool
	preferDisk bool // alternates Next between backlog and live
	stats      Stats
	fault      error     // the last failed write to flash; nil while flash works
	retryAt    time.Time // when flash may be tried again after a fault
	dirty      bool
	lastSync   time.Time
	syncTimer  *time.Timer
	scratch    []byte
	closed     bool
}

var errClosed = errors.New("spool closed")

// Open recovers the spool in dir, creating it when missing. It does not
// fail: a directory that cannot be created (a read-only or full partition)
// leaves the spool in memory, with Stats.Fault saying why, until it can be.
func Open(opts Options) (*Spool, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 64 << 20
	}
	if opts.FsyncInterval <= 0 {
		opts.FsyncInterval = time.Second
	}
	if opts.MemoryBytes <= 0 {
		opts.MemoryBytes = 1 << 20
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Spool{opts: opts, segmentMax: max(opts.MaxBytes/8, 64<<10), bySeq: map[uint64]*item{}}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		// A read-only or full partition, or one not mounted yet: the spool
		// starts in memory and makes the directory when it can.
		s.setFault(err)
		return s, nil
	}
	s.stats.Dropped = s.readDropped()
	s.recover()
	return s, nil
}

func (s *Spool) droppedPath() string { return filepath.Join(s.opts.Dir, "dropped") }

func (s *Spool) readDropped() uint64 {
	data, err := os.ReadFile(s.droppedPath())
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.opts.Log.Warn("spool: dropped count unreadable; counting from 0", "err", err)
		}
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n
}

// recover indexes the segments on flash. Nothing it finds there stops it.
func (s *Spool) recover() {
	entries, err := os.ReadDir(s.opts.Dir)
	if err != nil {
		// Go on with what was listed; tail skips the numbers of any other.
		s.setFault(err)
	}
	var ids []uint64
	for _, e := range entries {
		num, rest, ok := strings.Cut(e.Name(), ".seg")
		n, err := strconv.ParseUint(num, 10, 64)
		if !ok || err != nil {
			continue
		}
		s.lastID = max(s.lastID, n) // *.corrupt and *.unreadable too
		if rest == "" {
			ids = append(ids, n)
		}
	}
	slices.Sort(ids)
	for i, id := range ids {
		s.load(id, i == len(ids)-1)
	}
	if len(s.mem) > 0 {
		// Salvaged records go to the newest segment, unless flash is faulted
		// already; they are older than the rest: keep the backlog in order.
		if s.fault == nil {
			if err := s.writeMemory(); err != nil {
				s.setFault(err)
			}
		}
		slices.SortStableFunc(s.disk, func(a, b *item) int { return cmpSeq(a.seq, b.seq) })
	}
	s.trimMemory()
	s.removeEmptySegments()
	s.syncLocked()
}

// load indexes the segment numbered id. Its records are read through a
// read-only descriptor; only the last segment is reopened for writing, since
// only it takes appends.
func (s *Spool) load(id uint64, last bool) {
	path := s.segPath(id)
	f, err := os.Open(path)
	var data []byte
	if err == nil {
		if data, err = io.ReadAll(f); err != nil {
			f.Close()
		}
	}
	if err != nil {
		s.quarantine(path, ".unreadable", err, 0)
		return
	}
	frames, valid, scanErr := scanFrames(data)
	if scanErr != nil && !last {
		// Damage in the middle: keep what precedes it, set the file aside.
		f.Close()
		s.salvage(data, frames)
		s.quarantine(path, ".corrupt", scanErr, len(frames))
		return
	}
	seg := &segment{id: id, path: path, f: f, size: valid, sealed: true}
	if last {
		s.unseal(seg, int64(len(data)))
	}
	if scanErr != nil {
		s.stats.Truncated++
		s.opts.Log.Warn("spool segment had a torn or corrupt tail; cut off", "segment", path, "reason", scanErr,
			"bytes_cut", int64(len(data))-valid, "cut_on_flash", !seg.sealed)
	}
	s.segs = append(s.segs, seg)
	s.diskBytes += valid
	for _, fr := range frames {
		if _, dup := s.bySeq[fr.seq]; dup {
			continue // salvaged into a newer segment by a run that could not set the source aside
		}
		it := &item{seq: fr.seq, seg: seg, fr: fr}
		seg.live++
		s.disk = append(s.disk, it)
		s.bySeq[fr.seq] = it
	}
}

// unseal reopens the last segment found at Open for appends and cuts a torn
// tail beyond seg.size off its file of fileSize bytes. When either fails it
// stays sealed: its records are still read, and new ones go to a new segment.
func (s *Spool) unseal(seg *segment, fileSize int64) {
	f, err := os.OpenFile(seg.path, os.O_RDWR|os.O_APPEND, 0)
	if err == nil && fileSize > seg.size {
		if err = f.Truncate(seg.size); err != nil {
			f.Close()
		}
	}
	if err != nil {
		s.setFault(err)
		return
	}
	seg.f.Close()
	seg.f, seg.sealed = f, false
}

// salvage takes the valid records of a damaged segment into memory, from
// where recover writes them to flash again.
func (s *Spool) salvage(data []byte, frames []frame) {
	for _, fr := range frames {
		if _, dup := s.bySeq[fr.seq]; dup {
			continue
		}
		rec, err := decode(fr.seq, data[fr.off+headerSize:fr.off+fr.size])
		if err != nil {
			s.opts.Log.Error("spool: salvaged record undecodable; dropped", "err", err)
			s.addDropped(1)
			continue
		}
		s.hold(&item{seq: fr.seq, rec: rec})
	}
}

// quarantine sets a segment that Open cannot use aside under its name with
// suffix; where even that fails it stays where it is, skipped. Either way it
// is counted.
func (s *Spool) quarantine(path, suffix string, reason error, kept int) {
	s.stats.Quarantined++
	if err := os.Rename(path, path+suffix); err != nil {
		s.setFault(err)
		s.opts.Log.Error("spool segment unusable; skipped and left in place", "segment", path, "reason", reason,
			"records_kept", kept)
		return
	}
	s.opts.Log.Error("spool segment unusable; set aside", "segment", path+suffix, "reason", reason,
		"records_kept", kept)
}

func cmpSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *Spool) segPath(id uint64) string {
	return filepath.Join(s.opts.Dir, fmt.Sprintf("%020d.seg", id))
}

// Put queues a record: in memory while online, else on flash, or in memory
// while flash cannot be written. It fails only for a record that is too large
// (MaxRecord), a sequence number already queued, or a closed spool.
func (s *Spool) Put(seq uint64, rec Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	if _, dup := s.bySeq[seq]; dup {
		return fmt.Errorf("spool: sequence %d already queued", seq)
	}
	if n := rec.Msgsize(); n > MaxRecord {
		return fmt.Errorf("spool: record %d of up to %d bytes exceeds %d", seq, n, MaxRecord)
	}
	s.hold(&item{seq: seq, rec: rec})
	s.tend()
	return nil
}

func (s *Spool) hold(it *item) {
	s.mem = append(s.mem, it)
	s.bySeq[it.seq] = it
	s.memBytes += len(it.rec.Payload)
}

// tend does the flash work due after a change. Memory goes to flash while
// the broker is away or memory is over MemoryBytes, unless flash is faulted:
// then nothing is tried until the retry is due. What memory cannot hand over
// is kept within MemoryBytes.
func (s *Spool) tend() {
	if !s.persist && s.memBytes > s.opts.MemoryBytes {
		s.opts.Log.Warn("spool memory full; spilling to flash", "bytes", s.memBytes)
		s.persist = true
	}
	if s.fault != nil && !time.Now().Before(s.retryAt) {
		s.retry()
	}
	if s.fault == nil && s.persist {
		if err := s.writeMemory(); err != nil {
			s.setFault(err)
		}
	}
	s.trimMemory()
}

// retry tries flash again after a fault with what is owed to it anyway: the
// dropped count (written even when unchanged: it is the probe) and the files
// of segments no longer in use. It clears the fault when both work.
func (s *Spool) retry() {
	err := os.MkdirAll(s.opts.Dir, 0o750)
	if err == nil {
		err = s.writeDropped()
	}
	if err == nil {
		err = s.removeStale()
	}
	if err != nil {
		s.setFault(err)
		return
	}
	s.opts.Log.Info("spool flash writable again", "fault_was", s.fault.Error())
	s.fault = nil
}

// setFault records that flash failed and leaves it alone for RetryInterval.
// It logs a new cause (an errno, mostly), not every retry that fails the
// same way.
func (s *Spool) setFault(err error) {
	if s.fault == nil || !errors.Is(err, cause(s.fault)) {
		s.opts.Log.Error("spool cannot write flash; new records wait in memory", "err", err,
			"retry_in", s.opts.RetryInterval)
	}
	s.fault, s.retryAt = err, time.Now().Add(s.opts.RetryInterval)
}

// cause is the innermost error that err wraps.
func cause(err error) error {
	for {
		inner := errors.Unwrap(err)
		if inner == nil {
			return err
		}
		err = inner
	}
}

// writeMemory moves the records held in memory to flash, oldest first,
// stopping at the first failure.
func (s *Spool) writeMemory() error {
	for len(s.mem) > 0 {
		if it := s.mem[0]; !it.acked {
			n := len(it.rec.Payload)
			if err := s.writeFrame(it); err != nil {
				return err
			}
			s.memBytes -= n
		}
		s.mem = s.mem[1:]
	}
	s.mem = nil
	return nil
}

// trimMemory drops the oldest records held in memory while they exceed
// MemoryBytes, which happens only while flash cannot take them.
func (s *Spool) trimMemory() {
	n := 0
	for s.memBytes > s.opts.MemoryBytes {
		s.forget(s.mem[slices.IndexFunc(s.mem, func(it *item) bool { return !it.acked })])
		n++
	}
	if n > 0 {
		s.addDropped(n)
		s.opts.Log.Warn("spool memory full and flash unusable; dropped the oldest records", "records", n,
			"dropped_total", s.stats.Dropped, "fault", s.fault)
	}
}

// addDropped counts dropped records and persists the count while flash works.
func (s *Spool) addDropped(n int) {
	s.stats.Dropped += uint64(n)
	if s.fault != nil {
		return // written by the next retry
	}
	if err := s.writeDropped(); err != nil {
		s.setFault(err)
	}
}

func (s *Spool) writeDropped() error {
	return atomicfile.WriteFile(s.droppedPath(), []byte(strconv.FormatUint(s.stats.Dropped, 10)+"\n"), 0o640)
}

// writeFrame appends an item's record to the tail segment and indexes it
// there.
func (s *Spool) writeFrame(it *item) error {
	seg, err := s.tail()
	if err != nil {
		return err
	}
	body, _ := it.rec.MarshalMsg(s.scratch[:0]) // cannot fail: a string, bytes and an integer
	s.scratch = body
	buf := appendFrame(nil, it.seq, body)
	if n, err := seg.f.Write(buf); err != nil {
		if n > 0 {
			// A partial frame: cut it off, or the next one would follow
			// garbage and be lost with it at the next Open.
			if terr := seg.f.Truncate(seg.size); terr != nil {
				seg.sealed = true
				s.opts.Log.Error("spool: cannot cut a partial frame; segment sealed", "segment", seg.path, "err", terr)
			}
		}
		return err
	}
	it.seg, it.fr = seg, frame{seq: it.seq, off: seg.size, size: int64(len(buf))}
	it.rec.Payload = nil // on flash now; read back when sent
	seg.size += int64(len(buf))
	seg.live++
	s.diskBytes += int64(len(buf))
	s.disk = append(s.disk, it)
	s.dirty = true
	s.dropOldest()
	s.scheduleSync()
	return nil
}

// tail returns the segment that takes appends, starting a new one when the
// last is full or sealed.
func (s *Spool) tail() (*segment, error) {
	if n := len(s.segs); n > 0 && !s.segs[n-1].sealed && s.segs[n-1].size < s.segmentMax {
		return s.segs[n-1], nil
	}
	id := s.lastID + 1
	f, err := os.OpenFile(s.segPath(id), os.O_RDWR|os.O_CREATE|os.O_APPEND|os.O_EXCL, 0o640)
	for errors.Is(err, fs.ErrExist) { // unseen because Open could not list the directory
		id++
		f, err = os.OpenFile(s.segPath(id), os.O_RDWR|os.O_CREATE|os.O_APPEND|os.O_EXCL, 0o640)
	}
	if err != nil {
		return nil, err
	}
	s.lastID = id
	seg := &segment{id: id, path: s.segPath(id), f: f}
	s.segs = append(s.segs, seg)
	return seg, nil
}

// dropOldest deletes the oldest segments while flash is over its bound.
func (s *Spool) dropOldest() {
	for s.diskBytes > s.opts.MaxBytes && len(s.segs) > 1 {
		seg := s.segs[0]
		n := 0
		s.disk = slices.DeleteFunc(s.disk, func(it *item) bool {
			if it.seg != seg {
				return false
			}
			if !it.acked {
				n++
			}
			delete(s.bySeq, it.seq)
			return true
		})
		s.removeSegment(seg)
		s.addDropped(n)
		s.opts.Log.Warn("spool full; dropped the oldest records", "records", n, "segment", seg.path,
			"dropped_total", s.stats.Dropped)
	}
}

// removeSegment stops using a segment and removes its file, at once while
// flash works, else at the next retry.
func (s *Spool) removeSegment(seg *segment) {
	seg.f.Close()
	s.diskBytes -= seg.size
	s.segs = slices.DeleteFunc(s.segs, func(x *segment) bool { return x == seg })
	s.stale = append(s.stale, seg.path)
	if s.fault == nil {
		if err := s.removeStale(); err != nil {
			s.setFault(err)
		}
	}
}

func (s *Spool) removeStale() error {
	for len(s.stale) > 0 {
		if err := os.Remove(s.stale[0]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		s.stale = s.stale[1:]
	}
	return nil
}

// removeEmptySegments deletes segments whose records are all acknowledged,
// so that flash holds nothing once the backlog has drained.
func (s *Spool) removeEmptySegments() {
	for _, seg := range slices.Clone(s.segs) {
		if seg.live == 0 && (seg != s.segs[len(s.segs)-1] || len(s.disk) == 0) {
			s.removeSegment(seg)
		}
	}
}

// Spill moves every record held in memory and not yet acknowledged to flash,
// and sends new records there until Resume: the broker is away. While flash
// cannot be written they stay in memory (see Stats.Fault); that is not an
// error. Spill fails only on a closed spool.
func (s *Spool) Spill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	s.persist = true
	s.tend()
	return nil
}

// Resume sends new records to memory again: the broker acknowledges.
func (s *Spool) Resume() {
	s.mu.Lock()
	s.persist = false
	s.mu.Unlock()
}

// Next hands out the oldest record not yet in flight, alternating between
// the flash backlog and live records so that neither waits for the other.
func (s *Spool) Next() (seq uint64, rec Record, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lists := [][]*item{s.mem, s.disk}
	if s.preferDisk {
		lists[0], lists[1] = lists[1], lists[0]
	}
	for _, list := range lists {
		for _, it := range list {
			if it.inflight || it.acked {
				continue
			}
			rec := it.rec
			if it.seg != nil {
				rec, err = s.read(it)
				if err != nil {
					// Unreadable despite its CRC: drop it rather than stall.
					s.forget(it)
					s.addDropped(1)
					return 0, Record{}, false, err
				}
			}
			it.inflight = true
			s.preferDisk = it.seg == nil
			return it.seq, rec, true, nil
		}
	}
	return 0, Record{}, false, nil
}

func (s *Spool) read(it *item) (Record, error) {
	buf := make([]byte, it.fr.size)
	if _, err := it.seg.f.ReadAt(buf, it.fr.off); err != nil {
		return Record{}, fmt.Errorf("spool: read record %d: %w", it.seq, err)
	}
	return decode(it.seq, buf[headerSize:])
}

func decode(seq uint64, body []byte) (Record, error) {
	var rec Record
	if _, err := rec.UnmarshalMsg(body); err != nil {
		return Record{}, fmt.Errorf("spool: decode record %d: %w", seq, err)
	}
	return rec, nil
}

// Ack removes an acknowledged record. Unknown sequence numbers (acked
// twice, or dropped meanwhile) are ignored.
func (s *Spool) Ack(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if it, ok := s.bySeq[seq]; ok {
		s.forget(it)
	}
}

func (s *Spool) forget(it *item) {
	it.acked = true
	delete(s.bySeq, it.seq)
	if it.seg == nil {
		s.memBytes -= len(it.rec.Payload)
		s.mem = trimAcked(s.mem)
		return
	}
	it.seg.live--
	s.disk = trimAcked(s.disk)
	if it.seg.live == 0 {
		s.removeEmptySegments()
	}
}

// trimAcked drops acknowledged items from the front; acknowledgements come
// nearly in order, so this keeps the lists short.
func trimAcked(list []*item) []*item {
	i := 0
	for i < len(list) && list[i].acked {
		i++
	}
	if i == len(list) {
		return nil
	}
	return list[i:]
}

// Requeue makes every record in flight available again: the connection
// dropped before their acknowledgements came.
func (s *Spool) Requeue() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, list := range [][]*item{s.mem, s.disk} {
		for _, it := range list {
			it.inflight = false
		}
	}
}

// Stats returns the spool's figures.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.DiskBytes, st.Persisting = s.diskBytes, s.persist
	if s.fault != nil {
		st.Fault = s.fault.Error()
	}
	var memInFlight, diskInFlight int
	st.Memory, memInFlight = waiting(s.mem)
	st.Disk, diskInFlight = waiting(s.disk)
	st.InFlight = memInFlight + diskInFlight
	return st
}

// waiting counts the items of list not yet acknowledged, and of those the
// ones in flight.
func waiting(list []*item) (n, inflight int) {
	for _, it := range list {
		if !it.acked {
			n++
			if it.inflight {
				inflight++
			}
		}
	}
	return n, inflight
}

func (s *Spool) scheduleSync() {
	if since := time.Since(s.lastSync); since >= s.opts.FsyncInterval {
		s.syncLocked()
		return
	}
	if s.syncTimer == nil {
		s.syncTimer = time.AfterFunc(s.opts.FsyncInterval-time.Since(s.lastSync), func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.syncTimer = nil
			s.syncLocked()
		})
	}
}

// syncLocked fsyncs the segments and the directory when something was
// written; a failure faults flash.
func (s *Spool) syncLocked() {
	s.lastSync = time.Now()
	if !s.dirty || s.closed {
		return
	}
	s.dirty = false
	for _, seg := range s.segs {
		if err := seg.f.Sync(); err != nil {
			s.setFault(err)
			return
		}
	}
	d, err := os.Open(s.opts.Dir)
	if err == nil {
		err = d.Sync() // new segment files
		d.Close()
	}
	if err != nil {
		s.setFault(err)
	}
}

// Sync writes every record held in memory and not yet acknowledged to flash
// (new records go there too, as after Spill, until Resume) and fsyncs the
// segments and the directory now, whatever FsyncInterval says: what a
// process about to replace itself with exec calls, since its fsync timer
// dies with it. The spool stays open. When flash cannot be written it tries
// once, whatever RetryInterval says, and returns the fault; the records it
// could not write stay in memory (Stats.Memory).
func (s *Spool) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	s.persist, s.retryAt = true, time.Time{}
	s.tend()
	s.syncLocked()
	if s.fault != nil {
		n, _ := waiting(s.mem)
		return fmt.Errorf("spool: %d records held in memory could not reach flash: %w", n, s.fault)
	}
	return nil
}

// Close writes what memory holds to flash, syncs and closes the segments, so
// that a clean stop loses nothing. When flash is faulted it tries once more,
// whatever RetryInterval says, and returns after that one attempt: the
// records still in memory are then lost, counted in Stats.Dropped (not on
// flash), and the error names how many and why.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.persist, s.retryAt = true, time.Time{}
	s.tend()
	s.syncLocked()
	var err error
	if s.fault != nil {
		n := 0
		for _, it := range s.mem {
			if !it.acked {
				s.forget(it)
				n++
			}
		}
		s.addDropped(n)
		err = fmt.Errorf("spool: closed with flash not writable, %d records held in memory lost: %w", n, s.fault)
	}
	if s.syncTimer != nil {
		s.syncTimer.Stop()
	}
	for _, seg := range s.segs {
		seg.f.Close()
	}
	s.closed = true
	return err
}
