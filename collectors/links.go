package collectors

import (
	"sync"

	"github.com/seed69aca190/edgeagent/hal/nic"
)

// links lists the links of one network namespace for a collector's runs.
// Netlink is opened by the first run that can, so a kernel without it (or a
// namespace not there yet) fails runs, not the start; a handle that fails is
// dropped and the next run opens another (the namespace may have been made
// again). Close may come while a late run still lists: that run then fails.
type links struct {
	opts nic.Options

	mu sync.Mutex
	r  *nic.Reader
}

func (l *links) list() ([]nic.Link, error) {
	l.mu.Lock()
	r := l.r
	if r == nil {
		var err error
		if r, err = nic.Open(l.opts); err != nil {
			l.mu.Unlock()
			return nil, err
		}
		l.r = r
	}
	l.mu.Unlock()
	out, err := r.Links()
	if err != nil {
		l.mu.Lock()
		if l.r == r {
			l.r = nil
			r.Close()
		}
		l.mu.Unlock()
	}
	return out, err
}

// Close releases the netlink handle, if open.
func (l *links) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.r == nil {
		return nil
	}
	err := l.r.Close()
	l.r = nil
	return err
}
