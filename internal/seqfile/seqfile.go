// Package seqfile hands out sequence numbers that never go backwards, across
// restarts, crashes and upgrades, as long as the file, or else the time floor
// it recovers from, can be persisted (see ErrRecovered): with neither (a
// read-only state directory and no synced clock) numbers can repeat after a
// restart, which is why receivers also tell a sender's starts apart. Numbers
// are reserved in blocks: the file holds
// the upper bound of the current block, written durably before any number of
// the block is handed out, so flash is written once per block rather than once
// per message. A restart resumes at the stored bound; the unused rest of the
// previous block is skipped, which only leaves a gap.
//
// A full data partition does not stop the numbering: the bound is then
// overwritten in place, which needs no free block. A partition that cannot be
// written at all (read-only, failing) does not stop it either: numbers go on
// in memory, Fault says why they are not persisted, and the bound is written
// as soon as the file can be written again.
package seqfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
)

// Counter is a persisted, monotonic sequence. It is safe for concurrent use.
type Counter struct {
	path  string
	block uint64
	retry time.Duration // how often a failed reservation is tried again

	mu        sync.Mutex
	opened    uint64 // the bound Open resumed at; 0 when it recovered
	next      uint64 // the number Next returns
	limit     uint64 // first number not yet reserved on disk
	fault     error  // why the current numbers are not persisted; nil when they are
	lastTried time.Time
}

// ErrRecovered is returned by Open, with a usable Counter, when the file
// could not be read, or cannot be written and never was: the counter then
// resumes from the time floor in milliseconds plus a margin, above any
// number sent before (see recoveryMargin).
var ErrRecovered = errors.New("sequence file unusable; resumed from the time floor")

// recoveryMargin is added to the time floor when resuming: the floor is
// persisted about hourly, so it may lag the time at which the last number
// was sent by up to an hour. A node sends far fewer than one message per
// millisecond, so the floor in milliseconds plus an hour's worth is above any
// number it handed out, also when it had itself resumed from the floor.
const recoveryMargin = time.Hour

// retryEvery is how often a failed reservation is tried again.
const retryEvery = 30 * time.Second

// Open loads the counter stored at path, creating it when missing. block is
// how many numbers one write reserves; now gives the time floor (never below
// the build date or the last persisted time), for recovery.
func Open(path string, block uint64, now func() time.Time) (*Counter, error) {
	if block == 0 {
		block = 1
	}
	c := &Counter{path: path, block: block, retry: retryEvery}
	var warn error
	data, err := os.ReadFile(path)
	n, perr := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.next = 1
	case err != nil:
		warn = fmt.Errorf("%w: read %s: %v", ErrRecovered, path, err)
	case perr != nil || n == 0:
		warn = fmt.Errorf("%w: %s holds %.40q", ErrRecovered, path, data)
	default:
		c.next = n
	}
	recovered := uint64(now().Add(recoveryMargin).UnixMilli())
	if warn != nil {
		c.next = recovered
	} else {
		c.opened = c.next
	}
	c.limit = c.next
	if err := c.reserve(time.Now()); err != nil && c.next < recovered {
		// Numbers from here would not be persisted: after a restart they
		// would be handed out again. Start above anything the file knew.
		c.next, c.limit, c.opened = recovered, recovered, 0
		warn = errors.Join(warn, fmt.Errorf("%w: %v", ErrRecovered, err))
	}
	return c, warn
}

// Next returns the next number. It never fails: when a block cannot be
// reserved on disk the number comes from memory and Fault says so.
func (c *Counter) Next() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next >= c.limit {
		if now := time.Now(); c.fault == nil || now.Sub(c.lastTried) >= c.retry {
			c.reserve(now)
		}
	}
	n := c.next
	c.next++
	return n
}

// Resume continues at next, where a previous image of this process stopped
// at a reload, so that the reload leaves no gap: that image handed out only
// numbers below next and had reserved up to limit. When the file still held
// limit at Open (that image reserved nothing after), the numbers from next
// up were never handed out. It does nothing and returns false otherwise, or
// once a number was taken.
func (c *Counter) Resume(next, limit uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opened == 0 || c.next != c.opened || limit != c.opened || next > limit {
		return false
	}
	c.next = next
	return true
}

// Reserved returns the number Next would return and the bound reserved on
// disk, for Resume in the next image.
func (c *Counter) Reserved() (next, limit uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next, c.limit
}

// Peek returns the number Next would return, without taking it.
func (c *Counter) Peek() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next
}

// Fault says why numbers handed out now are not persisted (a crash now could
// repeat them after the restart), or nil.
func (c *Counter) Fault() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fault
}

// reserve persists the bound of a new block starting at next; on failure the
// counter goes on unreserved and c.fault says why.
func (c *Counter) reserve(now time.Time) error {
	c.lastTried = now
	limit := c.next + c.block
	// Fixed width, so that an overwrite in place never changes the size.
	data := []byte(fmt.Sprintf("%020d\n", limit))
	err := atomicfile.WriteFile(c.path, data, 0o640)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		if oerr := overwrite(c.path, data); oerr == nil {
			err = nil
		} else {
			err = fmt.Errorf("%w; in place: %v", err, oerr)
		}
	}
	if err != nil {
		c.fault = fmt.Errorf("reserve sequence block: %w", err)
		return c.fault
	}
	c.limit, c.fault = limit, nil
	return nil
}

// overwrite writes data over the start of the existing file at path and
// syncs it: the blocks are already allocated, so a full filesystem takes
// it. The write is one sector, which storage writes whole.
func overwrite(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("overwrite %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		return fmt.Errorf("overwrite %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("overwrite %s: sync: %w", path, err)
	}
	return nil
}
