package dispatch

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// cache keeps the results of recent requests so that a repeated id is
// answered, never run again: one file per request, named by a hash of its id
// (an id can never be a path), the request's expiry and the entry's order:
// <hash>-<expires>-<order>.result. The names are the index, read once at
// start.
//
// An entry is kept while its request has not expired on the node's time
// floor (after that a repeat is refused as expired anyway); beyond size
// entries the oldest go, by order, never by file time, which a clock step
// would scramble. When the directory cannot be written (read-only or full),
// entries are kept in memory: the last memoryResults results, and beyond
// them the fact that the id ran.
type cache struct {
	dir  string
	size int
	now  func() time.Time

	mu    sync.Mutex
	index map[string]entry // by hash
	order uint64           // the last order handed out
	fault error            // why the last entry could not be written
}

type entry struct {
	expires time.Time // zero: the request had no expiry
	order   uint64
	file    string                   // empty: kept in memory only
	result  *telemetry.CommandResult // in memory only, while file is empty
}

// memoryResults results are kept in memory when they cannot be written.
const memoryResults = 64

func openCache(dir string, size int, now func() time.Time) *cache {
	c := &cache{dir: dir, size: size, now: now, index: map[string]entry{}}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		hash, expires, order, ok := parseName(e.Name())
		if !ok {
			continue
		}
		c.index[hash] = entry{expires: expires, order: order, file: e.Name()}
		c.order = max(c.order, order)
	}
	return c
}

func hashID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

func parseName(name string) (hash string, expires time.Time, order uint64, ok bool) {
	base, found := strings.CutSuffix(name, ".result")
	parts := strings.Split(base, "-")
	if !found || len(parts) != 3 || len(parts[0]) != 32 {
		return "", time.Time{}, 0, false
	}
	sec, err1 := strconv.ParseInt(parts[1], 10, 64)
	order, err2 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil {
		return "", time.Time{}, 0, false
	}
	if sec != 0 {
		expires = time.Unix(sec, 0)
	}
	return parts[0], expires, order, true
}

// get returns the result kept for id.
func (c *cache) get(id string) (telemetry.CommandResult, bool) {
	c.mu.Lock()
	e, ok := c.index[hashID(id)]
	c.mu.Unlock()
	switch {
	case !ok:
		return telemetry.CommandResult{}, false
	case e.file == "" && e.result != nil:
		return *e.result, true
	case e.file == "":
		return telemetry.CommandResult{ID: id, Status: telemetry.StatusFailed, ExitCode: -1,
			Reason: "this request ran already; its result was not kept (the state directory cannot be written)"}, true
	}
	data, err := os.ReadFile(filepath.Join(c.dir, e.file))
	var env telemetry.Envelope
	if err == nil {
		env, err = telemetry.Decode(data)
	}
	var res telemetry.CommandResult
	if err == nil {
		err = env.DecodeBody(&res)
	}
	if err != nil || res.ID != id {
		// The index says it ran: never run it again for a bad block.
		return telemetry.CommandResult{ID: id, Status: telemetry.StatusFailed, ExitCode: -1,
			Reason: fmt.Sprintf("this request ran already; its result cannot be read (%v)", err)}, true
	}
	return res, true
}

// put keeps res, the result of a request expiring at expires, durably when
// it can, and forgets expired and surplus entries.
func (c *cache) put(node string, res telemetry.CommandResult, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order++
	hash := hashID(res.ID)
	e := entry{expires: expires, order: c.order}
	name := fmt.Sprintf("%s-%d-%d.result", hash, unixOrZero(expires), e.order)
	var enc telemetry.Encoder
	data, err := enc.Encode(telemetry.Header{Node: node, Time: c.now(), Kind: telemetry.KindCommandResult}, res)
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(c.dir, name), data, 0o640)
	}
	if err == nil {
		e.file = name
	} else {
		e.result = &res
	}
	c.fault = err
	if old, ok := c.index[hash]; ok && old.file != "" {
		os.Remove(filepath.Join(c.dir, old.file))
	}
	c.index[hash] = e
	c.evict()
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// evict forgets entries whose request expired, then the oldest beyond
// size, and drops the results kept in memory beyond the newest
// memoryResults (the fact that their id ran stays).
func (c *cache) evict() {
	now := c.now()
	for hash, e := range c.index {
		if !e.expires.IsZero() && e.expires.Before(now) {
			c.forget(hash, e)
		}
	}
	byOrder := slices.SortedFunc(maps.Keys(c.index), func(a, b string) int {
		return cmp.Compare(c.index[a].order, c.index[b].order)
	})
	surplus := max(0, len(byOrder)-c.size)
	for _, hash := range byOrder[:surplus] {
		c.forget(hash, c.index[hash])
	}
	inMemory := 0
	for _, hash := range slices.Backward(byOrder[surplus:]) {
		if e := c.index[hash]; e.result != nil {
			if inMemory++; inMemory > memoryResults {
				e.result = nil
				c.index[hash] = e
			}
		}
	}
}

func (c *cache) forget(hash string, e entry) {
	if e.file != "" {
		os.Remove(filepath.Join(c.dir, e.file))
	}
	delete(c.index, hash)
}

// err says why the last result could not be written, or nil.
func (c *cache) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fault
}
