package fetch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrTooLong is wrapped by the error of a download whose server sent more
// than the declared size: the artifact is not the one declared, so it is
// refused rather than retried, and the partial state is discarded.
var ErrTooLong = errors.New("artifact longer than declared")

// Options say what to download, from where and into which file.
type Options struct {
	// URLs are tried in order; after a failure the next one, round and
	// round with a backoff after each round that brought nothing new.
	URLs []string
	// Dest is the file written. It is also the partial download, kept with
	// <Dest>.resume beside it for a later call to continue.
	Dest string
	// Size is the declared size: reading stops there, a server that sends
	// more is refused (ErrTooLong), one that sends fewer is resumed.
	Size uint64
	// Progress, if set, is called with the bytes in Dest and Size, at most
	// once a second while they grow, and once more at the end.
	Progress func(done, total uint64)
	// Client nil means one with connect and TLS handshake timeouts and no
	// total timeout: IdleTimeout catches a stall without killing slow links.
	Client *http.Client
	// IdleTimeout is how long a request may wait for its next byte (the
	// response's headers included) before it is given up as stalled. Zero
	// means 30 s.
	IdleTimeout time.Duration
	// Rounds is how many times every URL may fail in turn without bringing
	// a new byte before Download gives up; a new byte starts the count
	// again. Zero means 5.
	Rounds int
	// Backoff is the wait after a round of failures, doubled after each up
	// to a minute. Zero means 1 s.
	Backoff time.Duration
	Log     *slog.Logger
}

const (
	bufSize    = 128 << 10
	syncBytes  = 8 << 20 // fsync and record the offset after this many bytes…
	syncPeriod = time.Second
	maxBackoff = time.Minute
)

// defaultClient has no Client.Timeout on purpose: see Options.Client.
var defaultClient = &http.Client{Transport: &http.Transport{
	Proxy:               http.ProxyFromEnvironment,
	DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	TLSHandshakeTimeout: 10 * time.Second,
	IdleConnTimeout:     90 * time.Second,
	ForceAttemptHTTP2:   true,
}}

// errStalled is the cause of a request cancelled by the idle watchdog.
var errStalled = errors.New("stalled")

// fatal marks an error that another attempt would not cure (the disk, a
// payload longer than declared).
type fatal struct{ error }

func (f fatal) Unwrap() error { return f.error }

// Download fetches the artifact into o.Dest, resuming what an earlier call
// left there, and returns the SHA-256 of the whole file. On success the
// resume state is removed, so the next call starts afresh; on failure it is
// synced and kept, except after ErrTooLong. A call with another Size starts
// afresh; before fetching another artifact of the same size into the same
// Dest, Discard it. Two calls must not share a Dest at the same time.
func Download(ctx context.Context, o Options) (sum [32]byte, err error) {
	if err := o.check(); err != nil {
		return sum, err
	}
	d, err := open(o)
	if err != nil {
		return sum, err
	}
	defer d.f.Close()

	if err := d.fetch(ctx); err != nil {
		if errors.Is(err, ErrTooLong) {
			d.f.Close()
			if derr := Discard(o.Dest); derr != nil {
				d.Log.Warn("discarding a refused download", "err", derr)
			}
			return sum, err
		}
		if cerr := d.checkpoint(); cerr != nil {
			d.Log.Warn("recording where the download stopped", "err", cerr)
		}
		return sum, err
	}
	if err := d.finish(); err != nil {
		return sum, err
	}
	copy(sum[:], d.h.Sum(nil))
	return sum, nil
}

// Discard removes dest and its resume state, for an artifact the caller
// refused; what does not exist is not an error.
func Discard(dest string) error {
	var errs []error
	for _, p := range []string{resumePath(dest), dest} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// check validates o and fills in the defaults.
func (o *Options) check() error {
	switch {
	case len(o.URLs) == 0:
		return errors.New("download: no URL")
	case o.Dest == "":
		return errors.New("download: no destination file")
	case o.Size == 0:
		return fmt.Errorf("download %s: declared size is 0", o.Dest)
	}
	if o.Client == nil {
		o.Client = defaultClient
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 30 * time.Second
	}
	if o.Rounds <= 0 {
		o.Rounds = 5
	}
	if o.Backoff <= 0 {
		o.Backoff = time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	o.Log = o.Log.With("component", "update/fetch", "dest", o.Dest)
	return nil
}

type download struct {
	Options
	f            *os.File
	h            hash.Hash
	buf          []byte
	off          uint64 // bytes in f, all of them hashed
	high         uint64 // the most off reached in this call; going past it is progress
	synced       uint64 // the offset the resume state records
	validator    string // the server's ETag or Last-Modified for what f holds
	lastSync     time.Time
	lastProgress time.Time
}

// fetch tries the URLs until the file is complete, the context ends or
// every URL failed Rounds times over without progress.
func (d *download) fetch(ctx context.Context) error {
	last := make([]error, len(d.URLs))
	wait := d.Backoff
	failures := 0
	for i := 0; d.off < d.Size; {
		before := d.high
		err := d.attempt(ctx, d.URLs[i])
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("download %s: %w", d.Dest, context.Cause(ctx))
		}
		if f := (fatal{}); errors.As(err, &f) {
			return f.error
		}
		if d.high > before {
			d.Log.Info("download cut; resuming", "url", d.URLs[i], "offset", d.off, "err", err)
			failures, wait = 0, d.Backoff
			continue
		}
		d.Log.Warn("download attempt failed", "url", d.URLs[i], "offset", d.off, "err", err)
		last[i] = err
		if failures++; failures >= d.Rounds*len(d.URLs) {
			return fmt.Errorf("download %s: giving up after %d failed attempts in a row, at byte %d of %d: %w",
				d.Dest, failures, d.off, d.Size, errors.Join(last...))
		}
		if i = (i + 1) % len(d.URLs); i == 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("download %s: %w", d.Dest, context.Cause(ctx))
			case <-t.C:
			}
			wait = min(2*wait, maxBackoff)
		}
	}
	return nil
}

// attempt makes one request (two when the server answers another range than
// asked, the second from byte 0) and copies its body into the file.
func (d *download) attempt(ctx context.Context, url string) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(d.IdleTimeout, func() { cancel(errStalled) })
	defer watchdog.Stop()

	resp, err := d.get(ctx, url)
	if err != nil {
		return d.explain(ctx, url, err)
	}
	startOver, err := d.accept(resp, url)
	if startOver {
		resp.Body.Close()
		d.Log.Info("starting the download over", "url", url, "offset", d.off, "why", err)
		if err := d.reset(); err != nil {
			return err
		}
		if resp, err = d.get(ctx, url); err != nil {
			return d.explain(ctx, url, err)
		}
		_, err = d.accept(resp, url)
	}
	defer resp.Body.Close()
	if err != nil {
		return err
	}
	// Without a Content-Length the body may hold more than Size: look for it.
	probe := resp.ContentLength < 0
	if err := d.copy(resp.Body, url, watchdog, probe); err != nil {
		return d.explain(ctx, url, err)
	}
	return nil
}

func (d *download) get(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// Range and the byte counts are about the bytes as stored.
	req.Header.Set("Accept-Encoding", "identity")
	if d.off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", d.off))
		if d.validator != "" {
			req.Header.Set("If-Range", d.validator)
		}
	}
	return d.Client.Do(req)
}

// accept checks a response against the request and the declared size. It
// reports startOver when the body does not continue the file (another
// range, or none the server can give) and a request from byte 0 should
// follow; a 200 to a Range request is taken from byte 0 at once.
func (d *download) accept(resp *http.Response, url string) (startOver bool, err error) {
	switch {
	case resp.StatusCode == http.StatusOK:
		if resp.ContentLength >= 0 && uint64(resp.ContentLength) != d.Size {
			return false, d.wrongTotal(url, uint64(resp.ContentLength))
		}
		if d.off > 0 {
			d.Log.Info("starting the download over", "url", url, "offset", d.off,
				"why", "the server sent the whole artifact (Range ignored or If-Range failed)")
			if err := d.reset(); err != nil {
				return false, err
			}
		}
		d.validator = validator(resp)
		return false, nil
	case resp.StatusCode == http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		first, last, total, ok := parseContentRange(cr)
		if ok && total >= 0 && uint64(total) != d.Size {
			return false, d.wrongTotal(url, uint64(total))
		}
		if !ok || first != d.off || last >= d.Size {
			if d.off == 0 {
				return false, fmt.Errorf("GET %s: Content-Range %q to a request for the whole artifact", url, cr)
			}
			return true, fmt.Errorf("Content-Range %q does not continue at byte %d", cr, d.off)
		}
		if resp.ContentLength >= 0 && uint64(resp.ContentLength) > d.Size-d.off {
			return false, fatal{fmt.Errorf("%w: GET %s: Content-Length %d past the declared %d bytes",
				ErrTooLong, url, resp.ContentLength, d.Size)}
		}
		if d.validator == "" {
			d.validator = validator(resp)
		}
		return false, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && d.off > 0:
		return true, fmt.Errorf("%s to bytes=%d-", resp.Status, d.off)
	default:
		return false, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
}

func (d *download) wrongTotal(url string, n uint64) error {
	if n > d.Size {
		return fatal{fmt.Errorf("%w: GET %s: the server has %d bytes, more than the declared %d", ErrTooLong, url, n, d.Size)}
	}
	return fmt.Errorf("GET %s: the server has %d bytes, fewer than the declared %d", url, n, d.Size)
}

// validator is what If-Range can name: a strong ETag, else Last-Modified.
func validator(resp *http.Response) string {
	if etag := resp.Header.Get("ETag"); etag != "" && !strings.HasPrefix(etag, "W/") {
		return etag
	}
	return resp.Header.Get("Last-Modified")
}

// copy appends body to the file and the hash until Size, syncing and
// recording the offset every syncBytes or syncPeriod.
func (d *download) copy(body io.Reader, url string, watchdog *time.Timer, probe bool) error {
	for d.off < d.Size {
		n, err := body.Read(d.buf[:min(uint64(len(d.buf)), d.Size-d.off)])
		if n > 0 {
			watchdog.Reset(d.IdleTimeout)
			if _, werr := d.f.Write(d.buf[:n]); werr != nil {
				return fatal{fmt.Errorf("download %s: %w", d.Dest, werr)}
			}
			d.h.Write(d.buf[:n])
			d.off += uint64(n)
			d.high = max(d.high, d.off)
			if d.off-d.synced >= syncBytes || time.Since(d.lastSync) >= syncPeriod {
				if err := d.checkpoint(); err != nil {
					return err
				}
			}
			d.progress()
		}
		if err == io.EOF && d.off < d.Size {
			return fmt.Errorf("the response ended at byte %d of %d", d.off, d.Size)
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("read at byte %d: %w", d.off, err)
		}
	}
	if probe {
		if n, _ := io.ReadFull(body, d.buf[:1]); n > 0 {
			return fatal{fmt.Errorf("%w: GET %s sent more than the declared %d bytes", ErrTooLong, url, d.Size)}
		}
	}
	return nil
}

// explain names the URL and, for a request the watchdog cancelled, the stall.
func (d *download) explain(ctx context.Context, url string, err error) error {
	if f := (fatal{}); errors.As(err, &f) {
		return err
	}
	if errors.Is(context.Cause(ctx), errStalled) {
		return fmt.Errorf("GET %s: stalled: no data for %v at byte %d", url, d.IdleTimeout, d.off)
	}
	if ue := (*neturl.Error)(nil); errors.As(err, &ue) {
		err = ue.Err // it would name the URL a second time
	}
	return fmt.Errorf("GET %s: %w", url, err)
}

func (d *download) progress() {
	if d.Progress == nil {
		return
	}
	now := time.Now()
	if !d.lastProgress.IsZero() && now.Sub(d.lastProgress) < time.Second {
		return
	}
	d.lastProgress = now
	d.Progress(d.off, d.Size)
}

// finish makes the complete file durable and forgets the resume state.
func (d *download) finish() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("download %s: sync: %w", d.Dest, err)
	}
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("download %s: %w", d.Dest, err)
	}
	if err := os.Remove(resumePath(d.Dest)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("download %s: %w", d.Dest, err)
	}
	if d.Progress != nil {
		d.Progress(d.Size, d.Size)
	}
	return nil
}

func newDownload(o Options, f *os.File) *download {
	return &download{Options: o, f: f, h: sha256.New(), buf: make([]byte, bufSize), lastSync: time.Now()}
}

// parseContentRange parses a Content-Range of "bytes first-last/total",
// total -1 when it is "*".
func parseContentRange(s string) (first, last uint64, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2 error
	first, err1 = strconv.ParseUint(a, 10, 64)
	last, err2 = strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil || first > last {
		return 0, 0, 0, false
	}
	if size == "*" {
		return first, last, -1, true
	}
	total, err := strconv.ParseInt(size, 10, 64)
	if err != nil || total < 0 || uint64(total) <= last {
		return 0, 0, 0, false
	}
	return first, last, total, true
}
