package fetch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
)

// state is what <dest>.resume records: Offset bytes of dest were fsynced
// before it was written, for an artifact of Size bytes that the server
// described with Validator.
type state struct {
	Size      uint64 `json:"size"`
	Offset    uint64 `json:"offset"`
	Validator string `json:"validator,omitempty"`
}

func resumePath(dest string) string { return dest + ".resume" }

// open opens o.Dest and picks up where the resume state says it was synced:
// the file is cut there (what follows may be torn by a power cut) and what
// it keeps is hashed from disk. Without usable state it starts from 0.
func open(o Options) (*download, error) {
	f, err := os.OpenFile(o.Dest, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	d := newDownload(o, f)
	st, ok := d.readState()
	if ok {
		if err := d.rehash(st.Offset); err != nil {
			f.Close()
			return nil, err
		}
		d.synced, d.validator = st.Offset, st.Validator
		d.Log.Info("resuming download", "offset", st.Offset, "size", o.Size)
		return d, nil
	}
	if err := d.reset(); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// readState reports the resume state if it fits this download and the file.
func (d *download) readState() (state, bool) {
	var st state
	b, err := os.ReadFile(resumePath(d.Dest))
	if errors.Is(err, os.ErrNotExist) {
		return st, false
	}
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		d.Log.Warn("ignoring the resume state", "err", err)
		return st, false
	}
	fi, err := d.f.Stat()
	if err != nil || st.Size != d.Size || st.Offset > d.Size || uint64(fi.Size()) < st.Offset {
		d.Log.Info("resume state does not fit; starting from 0", "state_size", st.Size, "state_offset", st.Offset)
		return st, false
	}
	return st, st.Offset > 0
}

// rehash cuts the file at off and hashes what is left.
func (d *download) rehash(off uint64) error {
	if err := d.f.Truncate(int64(off)); err != nil {
		return fatal{fmt.Errorf("download %s: %w", d.Dest, err)}
	}
	if _, err := io.CopyBuffer(d.h, io.NewSectionReader(d.f, 0, int64(off)), d.buf); err != nil {
		return fatal{fmt.Errorf("download %s: hash the part kept: %w", d.Dest, err)}
	}
	if _, err := d.f.Seek(int64(off), io.SeekStart); err != nil {
		return fatal{fmt.Errorf("download %s: %w", d.Dest, err)}
	}
	d.off, d.high = off, max(d.high, off)
	return nil
}

// reset empties the file and records offset 0 before any new byte lands, so
// a power cut cannot leave an old offset in front of unsynced new bytes.
func (d *download) reset() error {
	d.h.Reset()
	if err := d.rehash(0); err != nil {
		return err
	}
	d.validator = ""
	return d.checkpoint()
}

// checkpoint fsyncs the file, then records its length as the offset to
// resume from.
func (d *download) checkpoint() error {
	if err := d.f.Sync(); err != nil {
		return fatal{fmt.Errorf("download %s: sync: %w", d.Dest, err)}
	}
	b, err := json.Marshal(state{Size: d.Size, Offset: d.off, Validator: d.validator})
	if err != nil {
		return fatal{err}
	}
	if err := atomicfile.WriteFile(resumePath(d.Dest), b, 0o600); err != nil {
		return fatal{fmt.Errorf("download: %w", err)}
	}
	d.synced, d.lastSync = d.off, time.Now()
	return nil
}
