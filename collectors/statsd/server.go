package statsd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/seed69aca190/edgeagent/telemetry"
)

const (
	// maxDatagram is the read buffer per datagram: any UDP datagram fits
	// (65,507 bytes of payload over IPv4, 65,527 over IPv6), as Telegraf
	// and statsd_exporter read up to 64 KiB. A unix datagram can be longer;
	// its cut last line is refused as truncated, the lines before it count.
	maxDatagram = 64 << 10
	// batchSize datagrams are read per recvmmsg call, and batches circulate
	// between the reader and the parser, so the reader keeps reading while a
	// batch is parsed. The buffers are one mapping outside the Go heap
	// (batches × batchSize × maxDatagram = 8 MiB of address space) of which
	// only the pages datagrams are written into become resident.
	batchSize = 32
	batches   = 4
	// keepResident bytes of a buffer stay resident once written: a datagram
	// longer than that (beyond what MTU-sized and DogStatsD's 8 KiB unix
	// socket clients send) has the rest of its pages returned to the kernel
	// once parsed, and the reader reads one datagram per call until they are
	// short again. So short datagrams hold at most 1 MiB (128 × 8 KiB), and a
	// flood of 64 KiB ones holds about 2 MiB more while it lasts.
	keepResident = 8 << 10
	// maxSamples bounds a timer's memory per interval: beyond it percentiles
	// come from a uniform reservoir of this many samples (count, sum, min,
	// max and mean stay exact).
	maxSamples = 4096
)

// Options configure a Server.
type Options struct {
	FlushInterval time.Duration // zero means 10 s
	MaxSeries     int           // distinct name+type+tags kept per interval; zero means 10000
	// ReadBuffer is the socket's receive buffer in bytes; zero keeps the
	// kernel's default. As root the net.core.rmem_max cap is bypassed.
	ReadBuffer int
	// Emit receives each flush's points. It must not keep the tag maps for
	// writing: they are shared with later flushes.
	Emit func(telemetry.Batch)
	// FirstRead, when set, is called once, from the reading goroutine, with
	// the time the first datagrams were read: after a reload, the end of
	// the time the socket went unread (the previous image's LastRead is its
	// start).
	FirstRead func(at time.Time)
	Log       *slog.Logger
}

// Stats are the server's own counters since it started.
type Stats struct {
	Datagrams  uint64
	Metrics    uint64            // metrics accepted: each value of a line counts
	Rejected   map[string]uint64 // metrics refused, by reason
	Series     int               // series held now
	ReadBuffer int               // the socket's receive buffer as the kernel reports it
}

// Server is the embedded StatsD server: it reads datagrams from a socket it
// is given (from the handoff registry), aggregates them and emits points every
// flush interval.
type Server struct {
	conn net.PacketConn
	opts Options

	mu  sync.Mutex // guards agg
	agg *aggregator

	datagrams, metrics atomic.Uint64
	rejected           [numReasons]atomic.Uint64
	readBuffer         atomic.Int64
	lastRead           atomic.Int64 // unix nanoseconds
}

// New returns a server reading from conn; Run owns conn from then on.
func New(conn net.PacketConn, opts Options) *Server {
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 10 * time.Second
	}
	if opts.MaxSeries <= 0 {
		opts.MaxSeries = 10000
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Server{conn: conn, opts: opts, agg: newAggregator(opts.MaxSeries, maxSamples)}
}

// batch is a set of datagram buffers filled by one recvmmsg.
type batch struct {
	msgs []ipv4.Message
	n    int
}

// Run serves until ctx is cancelled, then closes the socket, parses what was
// already read and flushes one last time.
func (s *Server) Run(ctx context.Context) error {
	s.setReadBuffer()
	reader := newBatchReader(s.conn)
	mem, mapped, release := mapBuffers(batches * batchSize * maxDatagram)
	defer release()
	free := make(chan *batch, batches)
	filled := make(chan *batch, batches)
	for i := range batches {
		b := &batch{msgs: make([]ipv4.Message, batchSize)}
		for j := range b.msgs {
			off := (i*batchSize + j) * maxDatagram
			b.msgs[j].Buffers = [][]byte{mem[off : off+maxDatagram : off+maxDatagram]}
		}
		free <- b
	}

	var wg sync.WaitGroup
	var readErr error
	// With pages larger than keepResident (64 KiB on some arm64 kernels)
	// every buffer used holds a whole page: use fewer per call, so that the
	// bound on what short datagrams hold stands.
	most := max(1, batchSize*keepResident/max(os.Getpagesize(), keepResident))
	wg.Go(func() {
		defer close(filled)
		n := most
		for b := range free {
			got, err := reader.ReadBatch(b.msgs[:n], 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if ctx.Err() == nil {
					readErr = fmt.Errorf("statsd: read: %w", err)
				}
				return
			}
			b.n = got
			now := time.Now()
			if s.lastRead.Swap(now.UnixNano()) == 0 && s.opts.FirstRead != nil {
				s.opts.FirstRead(now)
			}
			// After a long datagram, read one at a time until they are short
			// again: that bounds the pages long ones hold while in flight.
			n = most
			for _, m := range b.msgs[:got] {
				if m.N > keepResident {
					n = 1
				}
			}
			filled <- b
		}
	})
	parsed := make(chan struct{})
	go func() {
		defer close(parsed)
		for b := range filled {
			s.mu.Lock()
			now := time.Now()
			for _, m := range b.msgs[:b.n] {
				s.datagram(m.Buffers[0][:min(m.N, maxDatagram)], m.Flags&unix.MSG_TRUNC != 0, now)
			}
			s.mu.Unlock()
			for _, m := range b.msgs[:b.n] {
				if mapped && m.N > keepResident {
					dropPages(m.Buffers[0], keepResident, m.N)
				}
			}
			free <- b
		}
	}()

	tick := time.NewTicker(s.opts.FlushInterval)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-tick.C:
			s.flush()
		case <-ctx.Done():
			running = false
		case <-parsed: // the reader failed
			running = false
		}
	}
	s.conn.Close()
	<-parsed
	wg.Wait()
	s.flush()
	return readErr
}

// mapBuffers returns size bytes of read buffers in one private anonymous
// mapping: outside the Go heap, so the garbage collector neither scans them
// nor counts them in its target, and resident only where written. release
// unmaps them; nothing may touch them after. When the mapping fails they come
// from the heap, and mapped is false.
func mapBuffers(size int) (mem []byte, mapped bool, release func()) {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return make([]byte, size), false, func() {}
	}
	return mem, true, func() { _ = unix.Munmap(mem) }
}

// dropPages returns to the kernel the whole pages of buf between keep and
// n bytes, which a datagram of n bytes wrote: they read as zeros afterwards
// and cost nothing until written again.
func dropPages(buf []byte, keep, n int) {
	page := os.Getpagesize()
	from := (keep + page - 1) / page * page
	to := min((n+page-1)/page*page, len(buf))
	if from < to {
		_ = unix.Madvise(buf[from:to], unix.MADV_DONTNEED)
	}
}

// datagram parses the lines of one datagram into the aggregates.
func (s *Server) datagram(d []byte, trunc bool, now time.Time) {
	s.datagrams.Add(1)
	if trunc { // the last line is cut short: refuse it, keep the rest
		s.rejected[truncated].Add(1)
		if i := bytes.LastIndexByte(d, '\n'); i >= 0 {
			d = d[:i]
		} else {
			return
		}
	}
	var p lineParser
	var smp sample
	var accepted uint64
	for len(d) > 0 {
		var line []byte
		line, d = cut(d, '\n')
		if line = trimLine(line); len(line) == 0 {
			continue
		}
		looked := false // up a metric of this line
		for p.reset(line); ; {
			r, more := p.next(&smp)
			if !more {
				break
			}
			if r == ok {
				smp.sameLine, looked = looked, true
				r = s.agg.add(&smp, now)
			}
			if r != ok {
				s.rejected[r].Add(1)
				continue
			}
			accepted++
		}
	}
	s.metrics.Add(accepted)
}

func (s *Server) flush() {
	now := time.Now()
	s.mu.Lock()
	points := s.agg.flush(nil, now)
	s.mu.Unlock()
	// In name order, so that a flush reads (and compresses) the same way each time.
	slices.SortFunc(points, func(a, b telemetry.Point) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(tagString(a.Tags), tagString(b.Tags))
	})
	if len(points) > 0 && s.opts.Emit != nil {
		s.opts.Emit(telemetry.Batch{Source: "statsd", Time: now, Points: points})
	}
}

// tagString is tags in key order, for sorting.
func tagString(tags map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		b.WriteString(k + "=" + tags[k] + ",")
	}
	return b.String()
}

// LastRead returns when datagrams were last read from the socket; zero
// before the first.
func (s *Server) LastRead() time.Time {
	if ns := s.lastRead.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Datagrams:  s.datagrams.Load(),
		Metrics:    s.metrics.Load(),
		Rejected:   map[string]uint64{},
		ReadBuffer: int(s.readBuffer.Load()),
	}
	for r := reason(1); r < numReasons; r++ {
		st.Rejected[r.String()] = s.rejected[r].Load()
	}
	s.mu.Lock()
	st.Series = len(s.agg.series)
	s.mu.Unlock()
	return st
}

// setReadBuffer applies Options.ReadBuffer: SO_RCVBUFFORCE (root may exceed
// net.core.rmem_max), else SO_RCVBUF, and records what the kernel granted.
func (s *Server) setReadBuffer() {
	sc, ok := s.conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		if want := s.opts.ReadBuffer; want > 0 {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, soRcvbufForce, want); err != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, want)
			}
		}
		if got, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
			s.readBuffer.Store(int64(got))
			if got < s.opts.ReadBuffer {
				s.opts.Log.Warn("statsd receive buffer is smaller than configured; raise net.core.rmem_max or run as root",
					"configured", s.opts.ReadBuffer, "granted", got)
			}
		}
	})
}

// batchReader reads many datagrams per system call (recvmmsg).
type batchReader interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchReader(c net.PacketConn) batchReader {
	if u, ok := c.(*net.UnixConn); ok {
		return unixReader{u}
	}
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil && a.IP != nil {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// unixReader reads one datagram per call: x/net's recvmmsg only parses inet
// addresses. Local unix sockets cost less per call, so this is no bottleneck.
type unixReader struct{ c *net.UnixConn }

func (r unixReader) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	n, _, flags, _, err := r.c.ReadMsgUnix(ms[0].Buffers[0], nil)
	if err != nil {
		return 0, err
	}
	ms[0].N, ms[0].Flags = n, flags
	return 1, nil
}
