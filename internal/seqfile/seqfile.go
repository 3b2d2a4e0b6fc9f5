// Package seqfile hands out sequence numbers that never go backwards, across
// restarts, crashes and upgrades. Numbers are reserved in blocks: the file holds
// the upper bound of the current block, written durably before any number of
// the block is handed out, so flash is written once per block rather than once
// per message. A restart resumes at the stored bound; the unused rest of the
// previous block is skipped, which only leaves a gap.
package seqfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
)

// Counter is a persisted, monotonic sequence. It is safe for concurrent use.
type Counter struct {
	path  string
	block uint64

	mu    sync.Mutex
	next  uint64 // the number Next returns
	limit uint64 // first number not yet reserved on disk
}

// ErrRecovered is returned by Open, with a usable Counter, when the file existed
// but could not be read: the counter then resumes from the wall clock in
// milliseconds, a floor far above any count a node reaches, so it still never
// goes backwards.
var ErrRecovered = errors.New("sequence file unreadable; resumed from the clock")

// Open loads the counter stored at path, creating it when missing. block is
// how many numbers one write reserves.
func Open(path string, block uint64) (*Counter, error) {
	if block == 0 {
		block = 1
	}
	c := &Counter{path: path, block: block}
	var warn error
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.next = 1
	case err != nil:
		return nil, fmt.Errorf("read sequence %s: %w", path, err)
	default:
		n, perr := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
		if perr != nil || n == 0 {
			c.next = uint64(time.Now().UnixMilli())
			warn = fmt.Errorf("%w: %s holds %.40q", ErrRecovered, path, data)
		} else {
			c.next = n
		}
	}
	c.limit = c.next
	if err := c.reserve(); err != nil {
		return nil, err
	}
	return c, warn
}

// Next returns the next number. It fails only when a new block could not be
// reserved on disk; the number is then not handed out.
func (c *Counter) Next() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next >= c.limit {
		if err := c.reserve(); err != nil {
			return 0, err
		}
	}
	n := c.next
	c.next++
	return n, nil
}

// Peek returns the number Next would return, without taking it.
func (c *Counter) Peek() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next
}

func (c *Counter) reserve() error {
	limit := c.next + c.block
	if err := atomicfile.WriteFile(c.path, []byte(strconv.FormatUint(limit, 10)+"\n"), 0o640); err != nil {
		return fmt.Errorf("reserve sequence block: %w", err)
	}
	c.limit = limit
	return nil
}
