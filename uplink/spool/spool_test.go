package spool

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func open(t *testing.T, dir string, maxBytes int64) *Spool {
	t.Helper()
	return openWith(t, Options{Dir: dir, MaxBytes: maxBytes})
}

// openWith opens a spool with a short fsync interval and no log output.
func openWith(t *testing.T, opts Options) *Spool {
	t.Helper()
	opts.FsyncInterval = 10 * time.Millisecond
	opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func payload(seq uint64, size int) []byte {
	p := bytes.Repeat([]byte{byte(seq)}, size)
	copy(p, fmt.Sprintf("record %d;", seq))
	return p
}

func put(t *testing.T, s *Spool, from, to uint64, size int) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		if err := s.Put(seq, Record{Topic: "telemetry", Payload: payload(seq, size)}); err != nil {
			t.Fatal(err)
		}
	}
}

// drain takes and acknowledges everything, checking payloads, and returns
// the sequence numbers in the order they came.
func drain(t *testing.T, s *Spool, size int) []uint64 {
	t.Helper()
	var got []uint64
	for {
		seq, rec, ok, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return got
		}
		if !bytes.Equal(rec.Payload, payload(seq, size)) || rec.Topic != "telemetry" {
			t.Fatalf("record %d: topic %q, payload %.20q", seq, rec.Topic, rec.Payload)
		}
		got = append(got, seq)
		s.Ack(seq)
	}
}

func segments(t *testing.T, dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	return m
}

func seqRange(from, to uint64) []uint64 {
	var r []uint64
	for i := from; i <= to; i++ {
		r = append(r, i)
	}
	return r
}

func TestOnlineWritesNothingToFlash(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	put(t, s, 1, 200, 500)
	if got := drain(t, s, 500); !slices.Equal(got, seqRange(1, 200)) {
		t.Fatalf("drained %v", got)
	}
	if segs := segments(t, dir); len(segs) != 0 {
		t.Errorf("segments written while online: %v", segs)
	}
	if st := s.Stats(); st.Depth() != 0 || st.DiskBytes != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestSpillSurvivesReopenInOrder(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	put(t, s, 1, 10, 300)
	// Two in flight when the broker goes away: they must be kept too.
	s.Next()
	s.Next()
	if err := s.Spill(); err != nil {
		t.Fatal(err)
	}
	put(t, s, 11, 20, 300)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, 0)
	if st := s.Stats(); st.Disk != 20 || st.Memory != 0 {
		t.Fatalf("after reopen: %+v", st)
	}
	if got := drain(t, s, 300); !slices.Equal(got, seqRange(1, 20)) {
		t.Fatalf("drained %v", got)
	}
	if segs := segments(t, dir); len(segs) != 0 {
		t.Errorf("segments left after the backlog drained: %v", segs)
	}
}

func TestBacklogAndLiveInterleave(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	s.Spill()
	put(t, s, 1, 5, 10) // backlog on flash
	s.Resume()
	put(t, s, 6, 10, 10) // live
	got := drain(t, s, 10)
	if want := []uint64{6, 1, 7, 2, 8, 3, 9, 4, 10, 5}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want live and backlog alternating %v", got, want)
	}
}

func TestRequeueResendsInFlight(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	put(t, s, 1, 3, 10)
	s.Next()
	s.Next()
	s.Ack(1)
	s.Requeue() // connection lost with 2 unacknowledged
	if got := drain(t, s, 10); !slices.Equal(got, []uint64{2, 3}) {
		t.Fatalf("after requeue %v", got)
	}
}

func TestTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	s.Spill()
	put(t, s, 1, 10, 100)
	s.Close()
	seg := segments(t, dir)[0]
	fi, _ := os.Stat(seg)
	// A power cut in the middle of writing record 10.
	if err := os.Truncate(seg, fi.Size()-40); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, 0)
	st := s.Stats()
	if st.Truncated != 1 || st.Disk != 9 {
		t.Fatalf("stats %+v, want one tail cut and 9 records", st)
	}
	if got := drain(t, s, 100); !slices.Equal(got, seqRange(1, 9)) {
		t.Fatalf("drained %v", got)
	}
}

func TestCorruptMiddleSegmentIsSetAside(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 1<<20) // segments of 128 KiB
	s.Spill()
	put(t, s, 1, 60, 10<<10)
	s.Close()
	segs := segments(t, dir)
	if len(segs) < 3 {
		t.Fatalf("want several segments, got %v", segs)
	}
	data, _ := os.ReadFile(segs[1])
	frames, _, _ := scanFrames(data)
	// Flip one bit in the body of the segment's fourth record.
	data[frames[3].off+headerSize+100] ^= 0x10
	os.WriteFile(segs[1], data, 0o640)

	s = open(t, dir, 1<<20)
	st := s.Stats()
	if st.Quarantined != 1 {
		t.Fatalf("stats %+v, want one segment set aside", st)
	}
	if _, err := os.Stat(segs[1] + ".corrupt"); err != nil {
		t.Errorf("quarantined file: %v", err)
	}
	got := drain(t, s, 10<<10)
	lost := map[uint64]bool{}
	for _, fr := range frames[3:] {
		lost[fr.seq] = true
	}
	var want []uint64
	for _, seq := range seqRange(1, 60) {
		if !lost[seq] {
			want = append(want, seq)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("drained %v\nwant %v (records from the flipped one to the end of its segment lost)", got, want)
	}
	// New data after recovery still flows.
	put(t, s, 61, 61, 10)
	if got := drain(t, s, 10); !slices.Equal(got, []uint64{61}) {
		t.Fatalf("after recovery: %v", got)
	}
}

func TestFullSpoolDropsOldestAndCounts(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 1<<20)
	s.Spill()
	put(t, s, 1, 300, 10<<10) // 3 MiB into 1 MiB
	st := s.Stats()
	if st.Dropped == 0 || st.DiskBytes > 1<<20 || uint64(st.Disk)+st.Dropped != 300 {
		t.Fatalf("stats %+v", st)
	}
	s.Close()
	s = open(t, dir, 1<<20)
	if got := s.Stats().Dropped; got != st.Dropped {
		t.Errorf("dropped after reopen = %d, want %d (persisted)", got, st.Dropped)
	}
	got := drain(t, s, 10<<10)
	if got[0] != st.Dropped+1 || got[len(got)-1] != 300 {
		t.Errorf("kept %d..%d, want the newest (%d..300)", got[0], got[len(got)-1], st.Dropped+1)
	}
}

func FuzzScanFrames(f *testing.F) {
	var seed []byte
	for i := range 3 {
		body, _ := (&Record{Topic: "t", Payload: []byte("payload"), Queued: int64(i)}).MarshalMsg(nil)
		seed = appendFrame(seed, uint64(i), body)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)-3])
	f.Fuzz(func(t *testing.T, data []byte) {
		frames, valid, err := scanFrames(data)
		if valid > int64(len(data)) || (err == nil && valid != int64(len(data))) {
			t.Fatalf("valid %d of %d, err %v", valid, len(data), err)
		}
		end := int64(0)
		for _, fr := range frames {
			if fr.off != end || fr.size < headerSize {
				t.Fatalf("frame %+v does not follow %d", fr, end)
			}
			end = fr.off + fr.size
			var rec Record
			rec.UnmarshalMsg(data[fr.off+headerSize : end]) // must not panic
		}
		if end != valid {
			t.Fatalf("frames end at %d, valid %d", end, valid)
		}
	})
}

func FuzzRecord(f *testing.F) {
	body, _ := (&Record{Topic: "telemetry", Payload: []byte{1, 2, 3}, Queued: 1}).MarshalMsg(nil)
	f.Add(body)
	f.Fuzz(func(t *testing.T, data []byte) {
		var rec Record
		if _, err := rec.UnmarshalMsg(data); err != nil {
			return
		}
		again, err := rec.MarshalMsg(nil)
		if err != nil {
			t.Fatal(err)
		}
		var rec2 Record
		if _, err := rec2.UnmarshalMsg(again); err != nil || rec2.Topic != rec.Topic || !bytes.Equal(rec2.Payload, rec.Payload) {
			t.Fatalf("round trip: %+v vs %+v (%v)", rec, rec2, err)
		}
	})
}

// TestSyncHandsTheSpoolToTheNextImage: what memory holds is on flash after
// Sync, for a spool opened on the same directory by the process that
// replaces this one (exec: this one is never closed); records put after
// Sync go to flash as well.
func TestSyncHandsTheSpoolToTheNextImage(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	put(t, s, 1, 20, 100)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	put(t, s, 21, 25, 100)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	next := open(t, dir, 0)
	got := drain(t, next, 100)
	if len(got) != 25 || got[0] != 1 || got[24] != 25 {
		t.Fatalf("the next image found %v", got)
	}
}
