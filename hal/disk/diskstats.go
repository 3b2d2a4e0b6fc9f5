package disk

import (
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// IOStats is one device's line of /proc/diskstats: cumulative counters since
// boot. Sectors are 512 bytes whatever the device's sector size. Name is
// escaped as Disk's is, so the two pair up.
type IOStats struct {
	Name         string
	Dev          string // major:minor
	ReadIOs      uint64
	ReadMerges   uint64
	ReadSectors  uint64
	ReadTicksMs  uint64
	WriteIOs     uint64
	WriteMerges  uint64
	WriteSectors uint64
	WriteTicksMs uint64
	InFlight     uint64
	IOTicksMs    uint64 // time the device had I/O in flight
	QueueTimeMs  uint64 // weighted by the number in flight
	// Since Linux 4.18:
	DiscardIOs     uint64
	DiscardMerges  uint64
	DiscardSectors uint64
	DiscardTicksMs uint64
	FlushIOs       uint64 // since Linux 5.5
	FlushTicksMs   uint64
	HasDiscard     bool
	HasFlush       bool
}

// DiskStats reads /proc/diskstats. Malformed lines are reported in the error;
// every well-formed line is still returned.
func (f FS) DiskStats() ([]IOStats, error) {
	path := filepath.Join(f.proc, "diskstats")
	data, err := kfile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("read disk stats: %w", err)
	}
	stats, err := parseDiskstats(data)
	if err != nil {
		return stats, fmt.Errorf("%s: %w", path, err)
	}
	return stats, nil
}

func parseDiskstats(data []byte) ([]IOStats, error) {
	var out []IOStats
	var bad []string
	for i, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		s, err := parseDiskstatsLine(fields)
		if err != nil {
			bad = append(bad, fmt.Sprintf("line %d: %v", i+1, err))
			continue
		}
		out = append(out, s)
	}
	if len(bad) > 0 {
		return out, fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return out, nil
}

func parseDiskstatsLine(fields []string) (IOStats, error) {
	n := len(fields) - 3
	if n != 11 && n != 15 && n != 17 && n < 18 { // 18+: fields a newer kernel added
		return IOStats{}, fmt.Errorf("%d fields, want 14, 18 or 20", len(fields))
	}
	var v [17]uint64
	for i := 0; i < min(n, 17); i++ {
		x, err := strconv.ParseUint(fields[3+i], 10, 64)
		if err != nil {
			return IOStats{}, fmt.Errorf("field %d %q is not a number", 4+i, fields[3+i])
		}
		v[i] = x
	}
	return IOStats{
		Name: text.EscapeString(fields[2]), Dev: text.EscapeString(fields[0] + ":" + fields[1]),
		ReadIOs: v[0], ReadMerges: v[1], ReadSectors: v[2], ReadTicksMs: v[3],
		WriteIOs: v[4], WriteMerges: v[5], WriteSectors: v[6], WriteTicksMs: v[7],
		InFlight: v[8], IOTicksMs: v[9], QueueTimeMs: v[10],
		DiscardIOs: v[11], DiscardMerges: v[12], DiscardSectors: v[13], DiscardTicksMs: v[14],
		FlushIOs: v[15], FlushTicksMs: v[16],
		HasDiscard: n >= 15, HasFlush: n >= 17,
	}, nil
}

// Rates are what happened on a device between two readings.
type Rates struct {
	ReadIOPS         float64 `json:"read_iops"`
	WriteIOPS        float64 `json:"write_iops"`
	DiscardIOPS      float64 `json:"discard_iops"`
	FlushIOPS        float64 `json:"flush_iops"`
	ReadBytesPerSec  float64 `json:"read_bytes_per_sec"`
	WriteBytesPerSec float64 `json:"write_bytes_per_sec"`
	UtilPercent      float64 `json:"util_percent"`   // share of the time with I/O in flight
	ReadAwaitMs      float64 `json:"read_await_ms"`  // mean time per read, queue included
	WriteAwaitMs     float64 `json:"write_await_ms"` // mean time per write
	QueueDepth       float64 `json:"queue_depth"`    // mean number of requests in flight
}

// ComputeRates returns the rates between two readings of one device taken
// elapsed apart. It reports false when the counters went backwards beyond a
// 32-bit wrap (the device was removed and re-added, or the node rebooted): then
// there is no honest rate for this interval.
func ComputeRates(prev, cur IOStats, elapsed time.Duration) (Rates, bool) {
	secs := elapsed.Seconds()
	if secs <= 0 || prev.Dev != cur.Dev {
		return Rates{}, false
	}
	ok := true
	d := func(a, b uint64) float64 {
		x, good := counterDelta(a, b)
		ok = ok && good
		return float64(x)
	}
	readIOs, writeIOs := d(prev.ReadIOs, cur.ReadIOs), d(prev.WriteIOs, cur.WriteIOs)
	readTicks, writeTicks := d(prev.ReadTicksMs, cur.ReadTicksMs), d(prev.WriteTicksMs, cur.WriteTicksMs)
	r := Rates{
		ReadIOPS:         readIOs / secs,
		WriteIOPS:        writeIOs / secs,
		DiscardIOPS:      d(prev.DiscardIOs, cur.DiscardIOs) / secs,
		FlushIOPS:        d(prev.FlushIOs, cur.FlushIOs) / secs,
		ReadBytesPerSec:  d(prev.ReadSectors, cur.ReadSectors) * 512 / secs,
		WriteBytesPerSec: d(prev.WriteSectors, cur.WriteSectors) * 512 / secs,
		UtilPercent:      math.Min(100, d(prev.IOTicksMs, cur.IOTicksMs)/(secs*1000)*100),
		QueueDepth:       d(prev.QueueTimeMs, cur.QueueTimeMs) / (secs * 1000),
	}
	if readIOs > 0 {
		r.ReadAwaitMs = readTicks / readIOs
	}
	if writeIOs > 0 {
		r.WriteAwaitMs = writeTicks / writeIOs
	}
	return r, ok
}

// counterDelta is b-a for a counter that only grows, allowing for one wrap of a
// 32-bit counter (32-bit kernels keep diskstats in unsigned long). A drop from
// below the top quarter of the 32-bit range is a reset, not a wrap.
func counterDelta(a, b uint64) (uint64, bool) {
	if b >= a {
		return b - a, true
	}
	if a <= math.MaxUint32 && a > math.MaxUint32/4*3 {
		return b + (math.MaxUint32 + 1) - a, true
	}
	return 0, false
}

// DeviceRates pairs two full readings by device: a device in only one of them
// (hot-plugged or removed between the readings) has no entry, and neither does
// one whose counters were reset.
func DeviceRates(prev, cur []IOStats, elapsed time.Duration) map[string]Rates {
	before := make(map[string]IOStats, len(prev))
	for _, s := range prev {
		before[s.Name] = s
	}
	out := make(map[string]Rates, len(cur))
	for _, s := range cur {
		p, ok := before[s.Name]
		if !ok {
			continue
		}
		if r, ok := ComputeRates(p, s, elapsed); ok {
			out[s.Name] = r
		}
	}
	return out
}
