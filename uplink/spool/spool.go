// Package spool is the agent's store-and-forward queue. Records live in
// memory while the broker acknowledges them, so a healthy node writes nothing
// to flash. When the broker is away (the uplink calls Spill) every record not
// yet acknowledged, and every new one, goes to append-only segment files;
// fsync runs at most once per interval and on Close. The flash it may use is
// bounded: beyond it the oldest segment is dropped and counted.
//
// Recovery at Open: segments are read oldest first; a torn or corrupt tail
// (short frame, impossible length, CRC mismatch) is cut off and counted; a
// corrupt segment that is not the last is renamed aside (*.corrupt) and its
// valid records before the damage are kept. The spool always opens.
package spool

import (
	"errors"
	"fmt"
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
	// MemoryBytes of payload are held in memory while online; beyond that
	// the spool spills to flash as if the broker were away. Zero means 1 MiB.
	MemoryBytes int
	Log         *slog.Logger
}

// Stats describe the spool now.
type Stats struct {
	Memory      int    `json:"memory"`      // records held in memory
	Disk        int    `json:"disk"`        // records on flash
	DiskBytes   int64  `json:"disk_bytes"`  // segment bytes on flash
	InFlight    int    `json:"in_flight"`   // handed out, not yet acknowledged
	Dropped     uint64 `json:"dropped"`     // records dropped for space, ever (persisted)
	Truncated   uint64 `json:"truncated"`   // torn or corrupt tails cut off since start
	Quarantined uint64 `json:"quarantined"` // corrupt segments renamed aside since start
	Persisting  bool   `json:"persisting"`  // new records go to flash
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
	id   uint64
	path string
	f    *os.File
	size int64
	live int // items not yet acknowledged
}

// Spool is safe for concurrent use.
type Spool struct {
	opts       Options
	segmentMax int64

	mu         sync.Mutex
	mem, disk  []*item // each oldest first
	bySeq      map[uint64]*item
	memBytes   int
	segs       []*segment // oldest first; the last takes appends
	diskBytes  int64
	persist    bool
	preferDisk bool // alternates Next between backlog and live
	stats      Stats
	dirty      bool
	lastSync   time.Time
	syncTimer  *time.Timer
	scratch    []byte
	closed     bool
}

// Open recovers the spool in dir, creating it when missing.
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
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{opts: opts, segmentMax: max(opts.MaxBytes/8, 64<<10), bySeq: map[uint64]*item{}}
	s.stats.Dropped = s.readDropped()
	if err := s.recover(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spool) droppedPath() string { return filepath.Join(s.opts.Dir, "dropped") }

func (s *Spool) readDropped() uint64 {
	data, err := os.ReadFile(s.droppedPath())
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n
}

// recover indexes the segments on flash.
func (s *Spool) recover() error {
	entries, err := os.ReadDir(s.opts.Dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	var ids []uint64
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".seg"); ok {
			if n, err := strconv.ParseUint(id, 10, 64); err == nil {
				ids = append(ids, n)
			}
		}
	}
	slices.Sort(ids)
	var salvage []salvaged
	for i, id := range ids {
		path := s.segPath(id)
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("spool: read segment %d: %w", id, err)
		}
		frames, valid, scanErr := scanFrames(data)
		last := i == len(ids)-1
		if scanErr != nil && !last {
			// Damage in the middle: keep what precedes it, set the file aside.
			for _, fr := range frames {
				salvage = append(salvage, salvaged{fr.seq, data[fr.off+headerSize : fr.off+fr.size]})
			}
			if err := os.Rename(path, path+".corrupt"); err != nil {
				return fmt.Errorf("spool: quarantine segment %d: %w", id, err)
			}
			s.stats.Quarantined++
			s.opts.Log.Error("spool segment corrupt; set aside", "segment", path+".corrupt", "reason", scanErr,
				"records_kept", len(frames))
			continue
		}
		if scanErr != nil {
			if err := os.Truncate(path, valid); err != nil {
				return fmt.Errorf("spool: cut torn tail of segment %d: %w", id, err)
			}
			s.stats.Truncated++
			s.opts.Log.Warn("spool segment had a torn or corrupt tail; cut off", "segment", path, "reason", scanErr,
				"bytes_cut", int64(len(data))-valid)
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("spool: open segment %d: %w", id, err)
		}
		seg := &segment{id: id, path: path, f: f, size: valid}
		s.segs = append(s.segs, seg)
		s.diskBytes += valid
		for _, fr := range frames {
			it := &item{seq: fr.seq, seg: seg, fr: fr}
			seg.live++
			s.disk = append(s.disk, it)
			s.bySeq[fr.seq] = it
		}
	}
	for _, sv := range salvage {
		if err := s.writeFrame(sv.seq, sv.body, nil); err != nil {
			return err
		}
	}
	if len(salvage) > 0 {
		// Salvaged records are older than the rest: keep the backlog in order.
		slices.SortStableFunc(s.disk, func(a, b *item) int { return cmpSeq(a.seq, b.seq) })
	}
	s.removeEmptySegments()
	return s.syncLocked()
}

type salvaged struct {
	seq  uint64
	body []byte
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

// Put queues a record: in memory while online, else on flash.
func (s *Spool) Put(seq uint64, rec Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("spool closed")
	}
	if _, dup := s.bySeq[seq]; dup {
		return fmt.Errorf("spool: sequence %d already queued", seq)
	}
	it := &item{seq: seq, rec: rec}
	if !s.persist {
		s.mem = append(s.mem, it)
		s.bySeq[seq] = it
		s.memBytes += len(rec.Payload)
		if s.memBytes > s.opts.MemoryBytes {
			s.opts.Log.Warn("spool memory full; spilling to flash", "bytes", s.memBytes)
			return s.spillLocked()
		}
		return nil
	}
	body, err := rec.MarshalMsg(s.scratch[:0])
	if err != nil {
		return fmt.Errorf("spool: encode record %d: %w", seq, err)
	}
	s.scratch = body
	return s.writeFrame(seq, body, it)
}

// writeFrame appends a record to the tail segment and indexes it.
func (s *Spool) writeFrame(seq uint64, body []byte, it *item) error {
	if len(body) > MaxRecord {
		return fmt.Errorf("spool: record %d of %d bytes exceeds %d", seq, len(body), MaxRecord)
	}
	seg, err := s.tail()
	if err != nil {
		return err
	}
	buf := appendFrame(nil, seq, body)
	if _, err := seg.f.Write(buf); err != nil {
		return fmt.Errorf("spool: write segment %d: %w", seg.id, err)
	}
	if it == nil {
		it = &item{seq: seq}
	}
	it.seg, it.fr = seg, frame{seq: seq, off: seg.size, size: int64(len(buf))}
	it.rec.Payload = nil // on flash now; read back when sent
	seg.size += int64(len(buf))
	seg.live++
	s.diskBytes += int64(len(buf))
	s.disk = append(s.disk, it)
	s.bySeq[seq] = it
	s.dirty = true
	s.dropOldest()
	s.scheduleSync()
	return nil
}

// tail returns the segment that takes appends, starting a new one when the
// last is full.
func (s *Spool) tail() (*segment, error) {
	if n := len(s.segs); n > 0 && s.segs[n-1].size < s.segmentMax {
		return s.segs[n-1], nil
	}
	id := uint64(1)
	if n := len(s.segs); n > 0 {
		id = s.segs[n-1].id + 1
	}
	path := s.segPath(id)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND|os.O_EXCL, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool: new segment: %w", err)
	}
	seg := &segment{id: id, path: path, f: f}
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
		s.stats.Dropped += uint64(n)
		s.opts.Log.Warn("spool full; dropped the oldest records", "records", n, "segment", seg.path,
			"dropped_total", s.stats.Dropped)
		if err := atomicfile.WriteFile(s.droppedPath(), []byte(strconv.FormatUint(s.stats.Dropped, 10)+"\n"), 0o640); err != nil {
			s.opts.Log.Error("spool: cannot persist the dropped count", "err", err)
		}
	}
}

func (s *Spool) removeSegment(seg *segment) {
	seg.f.Close()
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.opts.Log.Error("spool: remove segment", "segment", seg.path, "err", err)
	}
	s.diskBytes -= seg.size
	s.segs = slices.DeleteFunc(s.segs, func(x *segment) bool { return x == seg })
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

// Spill moves every record held in memory, acknowledged or not, to flash, and
// sends new records there until Resume: the broker is away.
func (s *Spool) Spill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spillLocked()
}

func (s *Spool) spillLocked() error {
	s.persist = true
	mem := s.mem
	s.mem, s.memBytes = nil, 0
	for i, it := range mem {
		body, err := it.rec.MarshalMsg(s.scratch[:0])
		if err == nil {
			s.scratch = body
			err = s.writeFrame(it.seq, body, it)
		}
		if err != nil {
			s.mem = mem[i:] // keep the rest in memory rather than lose it
			return err
		}
	}
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
					s.stats.Dropped++
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
	var rec Record
	if _, err := rec.UnmarshalMsg(buf[headerSize:]); err != nil {
		return Record{}, fmt.Errorf("spool: decode record %d: %w", it.seq, err)
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
	for _, it := range s.mem {
		if !it.acked {
			st.Memory++
			if it.inflight {
				st.InFlight++
			}
		}
	}
	for _, it := range s.disk {
		if !it.acked {
			st.Disk++
			if it.inflight {
				st.InFlight++
			}
		}
	}
	return st
}

func (s *Spool) scheduleSync() {
	if since := time.Since(s.lastSync); since >= s.opts.FsyncInterval {
		if err := s.syncLocked(); err != nil {
			s.opts.Log.Error("spool: fsync", "err", err)
		}
		return
	}
	if s.syncTimer == nil {
		s.syncTimer = time.AfterFunc(s.opts.FsyncInterval-time.Since(s.lastSync), func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.syncTimer = nil
			if err := s.syncLocked(); err != nil {
				s.opts.Log.Error("spool: fsync", "err", err)
			}
		})
	}
}

func (s *Spool) syncLocked() error {
	s.lastSync = time.Now()
	if !s.dirty || s.closed {
		return nil
	}
	s.dirty = false
	for _, seg := range s.segs {
		if err := seg.f.Sync(); err != nil {
			return fmt.Errorf("spool: fsync segment %d: %w", seg.id, err)
		}
	}
	d, err := os.Open(s.opts.Dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync() // new segment files
}

// Close syncs and closes the segments. Records still in memory are written
// to flash first, so that a clean stop loses nothing.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	err := s.spillLocked()
	err = errors.Join(err, s.syncLocked())
	if s.syncTimer != nil {
		s.syncTimer.Stop()
	}
	for _, seg := range s.segs {
		seg.f.Close()
	}
	s.closed = true
	return err
}
