package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testSize = 8 << 20

func artifact(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(b)
	return b
}

// server is a real HTTP server on loopback that counts the bytes its
// connections wrote (headers included) and records each request's Range.
type server struct {
	*httptest.Server
	written atomic.Int64
	mu      sync.Mutex
	ranges  []string
}

func newServer(t *testing.T, h func(w http.ResponseWriter, r *http.Request, n int)) *server {
	s := &server{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.ranges = append(s.ranges, r.Header.Get("Range"))
		n := len(s.ranges)
		s.mu.Unlock()
		h(w, r, n)
	}))
	s.Listener = countingListener{s.Listener, &s.written}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *server) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// serve answers as a file server does: ranges, If-Range, Last-Modified.
func serve(w http.ResponseWriter, r *http.Request, content []byte) {
	http.ServeContent(w, r, "artifact", time.Unix(1_700_000_000, 0), bytes.NewReader(content))
}

// cutAfter passes limit bytes of the body, then either drops the connection
// (hijacked and closed: the client reads a cut) or, with hang, flushes them
// and waits for the client to go away.
type cutAfter struct {
	http.ResponseWriter
	limit int
	hang  <-chan struct{}
}

var errCut = errors.New("cut")

func (c *cutAfter) Write(p []byte) (int, error) {
	if len(p) <= c.limit {
		c.limit -= len(p)
		return c.ResponseWriter.Write(p)
	}
	n, _ := c.ResponseWriter.Write(p[:c.limit])
	c.limit = 0
	if c.hang != nil {
		c.ResponseWriter.(http.Flusher).Flush()
		<-c.hang
		return n, errCut
	}
	conn, _, err := http.NewResponseController(c.ResponseWriter).Hijack()
	if err == nil {
		conn.Close()
	}
	return n, errCut
}

func options(t *testing.T, urls ...string) Options {
	return Options{
		URLs:        urls,
		Dest:        filepath.Join(t.TempDir(), "slot"),
		Size:        testSize,
		IdleTimeout: 5 * time.Second,
		Backoff:     10 * time.Millisecond,
		Log:         slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
}

func check(t *testing.T, o Options, sum [32]byte, content []byte) {
	t.Helper()
	if sum != sha256.Sum256(content) {
		t.Errorf("sum %x, want %x", sum, sha256.Sum256(content))
	}
	got, err := os.ReadFile(o.Dest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Errorf("file holds %d bytes unlike the artifact's %d", len(got), len(content))
	}
	if _, err := os.Stat(resumePath(o.Dest)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resume state left after success: %v", err)
	}
}

func checkTransferred(t *testing.T, written int64) {
	t.Helper()
	if limit := int64(testSize * 11 / 10); written > limit {
		t.Errorf("server wrote %d bytes for a %d-byte artifact, more than 1.1x (%d)", written, testSize, limit)
	}
}

func TestDownloadClean(t *testing.T) {
	content := artifact(1, testSize)
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) { serve(w, r, content) })
	o := options(t, s.URL)
	var last [2]uint64
	o.Progress = func(done, total uint64) { last = [2]uint64{done, total} }
	sum, err := Download(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, o, sum, content)
	if last != [2]uint64{testSize, testSize} {
		t.Errorf("last progress %v, want 100 %%", last)
	}
	if got := s.requests(); len(got) != 1 || got[0] != "" {
		t.Errorf("requests' Range headers %q, want one request without", got)
	}
}

func TestDownloadResumesAfterCut(t *testing.T) {
	content := artifact(2, testSize)
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 1 {
			w = &cutAfter{ResponseWriter: w, limit: testSize / 2}
		}
		serve(w, r, content)
	})
	o := options(t, s.URL)
	sum, err := Download(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, o, sum, content)
	got := s.requests()
	if len(got) != 2 || !strings.HasPrefix(got[1], "bytes=") || got[1] == "bytes=0-" {
		t.Errorf("requests' Range headers %q, want a second request resuming", got)
	}
	checkTransferred(t, s.written.Load())
}

// interrupt runs a Download against s until the server has sent half the
// artifact and hangs, then cancels it as a stopping agent would.
func interrupt(t *testing.T, o Options, hang chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := Download(ctx, o)
		done <- err
	}()
	for {
		if fi, err := os.Stat(o.Dest); err == nil && fi.Size() >= testSize/2 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("download ended before it was interrupted: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	close(hang)
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted download: %v, want context.Canceled", err)
	}
	b, err := os.ReadFile(resumePath(o.Dest))
	if err != nil {
		t.Fatal(err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Offset != testSize/2 {
		t.Fatalf("resume state records offset %d, want %d", st.Offset, testSize/2)
	}
}

func TestDownloadResumesAcrossRestarts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		garbage int // bytes past the recorded offset: a power cut's unsynced tail
	}{
		{"restart", 0},
		{"power cut", 3 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := artifact(3, testSize)
			hang := make(chan struct{})
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
				if n == 1 {
					w = &cutAfter{ResponseWriter: w, limit: testSize / 2, hang: hang}
				}
				serve(w, r, content)
			})
			o := options(t, s.URL)
			interrupt(t, o, hang)
			if tc.garbage > 0 {
				f, err := os.OpenFile(o.Dest, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write(artifact(99, tc.garbage))
				f.Close()
			}
			sum, err := Download(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			check(t, o, sum, content)
			if got, want := s.requests(), []string{"", fmt.Sprintf("bytes=%d-", testSize/2)}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("requests' Range headers %q, want %q", got, want)
			}
			checkTransferred(t, s.written.Load())
		})
	}
}

// A SIGKILL or a power cut gets no last checkpoint: the offset must be
// recorded while the download runs.
func TestDownloadRecordsOffsetWhileRunning(t *testing.T) {
	const size, hangAt = 20 << 20, 12 << 20
	content := artifact(10, size)
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		serve(&cutAfter{ResponseWriter: w, limit: hangAt, hang: r.Context().Done()}, r, content)
	})
	o := options(t, s.URL)
	o.Size = size
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := Download(ctx, o)
		done <- err
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st state
		if b, err := os.ReadFile(resumePath(o.Dest)); err == nil && json.Unmarshal(b, &st) == nil && st.Offset >= syncBytes {
			if st.Offset > hangAt || st.Size != size {
				t.Fatalf("resume state %+v while the server hangs at %d", st, hangAt)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no offset of %d or more recorded while the download ran", syncBytes)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDownloadStartsOver(t *testing.T) {
	old, content := artifact(4, testSize), artifact(5, testSize)
	for _, tc := range []struct {
		name string
		// then answers the requests after the first, which the server cut
		// halfway through old.
		then func(w http.ResponseWriter, r *http.Request, n int)
	}{
		{"server ignores Range", func(w http.ResponseWriter, r *http.Request, _ int) {
			w.Write(old)
		}},
		{"Content-Range of another start", func(w http.ResponseWriter, r *http.Request, n int) {
			if n == 2 {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", testSize-1, testSize))
				w.WriteHeader(http.StatusPartialContent)
				w.Write(old)
				return
			}
			serve(w, r, old)
		}},
		{"416 to the Range", func(w http.ResponseWriter, r *http.Request, n int) {
			if n == 2 {
				w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
				return
			}
			serve(w, r, old)
		}},
		{"artifact replaced on the server (If-Range)", func(w http.ResponseWriter, r *http.Request, _ int) {
			w.Header().Set("ETag", `"v2"`)
			serve(w, r, content)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
				if n > 1 {
					tc.then(w, r, n)
					return
				}
				w.Header().Set("ETag", `"v1"`)
				serve(&cutAfter{ResponseWriter: w, limit: testSize / 2}, r, old)
			})
			o := options(t, s.URL)
			sum, err := Download(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			want := old
			if strings.Contains(tc.name, "replaced") {
				want = content
			}
			check(t, o, sum, want)
		})
	}
}

func TestDownloadRefusesLongerPayload(t *testing.T) {
	longer := artifact(6, testSize+100)
	for _, tc := range []struct {
		name string
		h    func(w http.ResponseWriter, r *http.Request)
	}{
		{"Content-Length", func(w http.ResponseWriter, r *http.Request) { serve(w, r, longer) }},
		{"chunked", func(w http.ResponseWriter, r *http.Request) {
			w.Write(longer[:1000])
			w.(http.Flusher).Flush() // no Content-Length from here on
			w.Write(longer[1000:])
		}},
		{"Content-Range total", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", testSize-1, len(longer)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(longer[:testSize])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) { tc.h(w, r) })
			o := options(t, s.URL)
			_, err := Download(t.Context(), o)
			if !errors.Is(err, ErrTooLong) || !strings.Contains(err.Error(), fmt.Sprintf("more than the declared %d", testSize)) ||
				!strings.Contains(err.Error(), s.URL) {
				t.Fatalf("err = %v, want ErrTooLong naming the URL and the declared size", err)
			}
			t.Log(err)
			if n := len(s.requests()); n != 1 {
				t.Errorf("%d requests, want 1: a longer artifact is refused, not retried", n)
			}
			for _, p := range []string{o.Dest, resumePath(o.Dest)} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left after a refusal: %v", p, err)
				}
			}
		})
	}
}

func TestDownloadFallsThroughToNextURL(t *testing.T) {
	content := artifact(7, testSize)
	missing := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) { http.NotFound(w, r) })
	good := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) { serve(w, r, content) })
	o := options(t, missing.URL+"/a", good.URL+"/a")
	sum, err := Download(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, o, sum, content)
	if n, m := len(missing.requests()), len(good.requests()); n != 1 || m != 1 {
		t.Errorf("requests: %d to the first URL, %d to the second; want 1 each", n, m)
	}
}

func TestDownloadGivesUp(t *testing.T) {
	down := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})
	missing := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) { http.NotFound(w, r) })
	o := options(t, down.URL, missing.URL)
	o.Rounds = 3
	_, err := Download(t.Context(), o)
	if err == nil {
		t.Fatal("download from two failing servers succeeded")
	}
	for _, want := range []string{down.URL + ": 503 Service Unavailable", missing.URL + ": 404 Not Found", "after 6 failed attempts"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to say %q", err, want)
		}
	}
	if n, m := len(down.requests()), len(missing.requests()); n != 3 || m != 3 {
		t.Errorf("requests: %d and %d, want 3 to each URL", n, m)
	}
}

func TestDownloadDetectsStall(t *testing.T) {
	content := artifact(8, testSize)
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		if r.Header.Get("Range") == "" {
			// Half the body, then silence on an open connection.
			serve(&cutAfter{ResponseWriter: w, limit: testSize / 2, hang: r.Context().Done()}, r, content)
			return
		}
		<-r.Context().Done() // not even the headers
	})
	o := options(t, s.URL)
	o.IdleTimeout, o.Rounds = 200*time.Millisecond, 1
	start := time.Now()
	_, err := Download(t.Context(), o)
	if err == nil || !strings.Contains(err.Error(), "stalled: no data for 200ms") {
		t.Fatalf("err = %v, want a stall", err)
	}
	t.Log(err)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the stall took %v to detect", d)
	}
	if got := s.requests(); len(got) != 2 || got[1] != fmt.Sprintf("bytes=%d-", testSize/2) {
		t.Errorf("requests' Range headers %q, want a resume after the first stall", got)
	}
}

func TestDownloadProgress(t *testing.T) {
	content := artifact(9, testSize)
	const chunks = 32 // about 2.2 s in all
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		for c := range chunks {
			w.Write(content[c*testSize/chunks : (c+1)*testSize/chunks])
			w.(http.Flusher).Flush()
			time.Sleep(70 * time.Millisecond)
		}
	})
	type call struct {
		at          time.Time
		done, total uint64
	}
	var calls []call
	o := options(t, s.URL)
	o.Progress = func(done, total uint64) { calls = append(calls, call{time.Now(), done, total}) }
	if _, err := Download(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	if len(calls) < 3 {
		t.Fatalf("%d progress calls over more than 2 s, want one a second and one at the end", len(calls))
	}
	for i, c := range calls {
		if c.total != testSize || (i > 0 && c.done < calls[i-1].done) {
			t.Errorf("call %d: (%d, %d), after (%d, %d)", i, c.done, c.total, calls[i-1].done, calls[i-1].total)
		}
		// The last call, at the end, may follow its predecessor sooner.
		if i > 0 && i < len(calls)-1 && c.at.Sub(calls[i-1].at) < time.Second {
			t.Errorf("call %d came %v after the one before", i, c.at.Sub(calls[i-1].at))
		}
	}
	if last := calls[len(calls)-1]; last.done != testSize {
		t.Errorf("last call at %d of %d bytes, want 100 %%", last.done, last.total)
	}
}

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in          string
		first, last uint64
		total       int64
		ok          bool
	}{
		{"bytes 0-99/100", 0, 99, 100, true},
		{"bytes 50-99/*", 50, 99, -1, true},
		{"bytes 50-99/99", 0, 0, 0, false}, // last past the total
		{"bytes 60-50/100", 0, 0, 0, false},
		{"bytes */100", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"bytes 0-1", 0, 0, 0, false},
		{"bytes -1-5/10", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	} {
		first, last, total, ok := parseContentRange(tc.in)
		if first != tc.first || last != tc.last || total != tc.total || ok != tc.ok {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d, %v",
				tc.in, first, last, total, ok, tc.first, tc.last, tc.total, tc.ok)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes 5-9/*", "bytes 1-0/2", "bytes 18446744073709551615-18446744073709551615/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, ok := parseContentRange(s)
		if !ok {
			return
		}
		if first > last || (total >= 0 && uint64(total) <= last) || total < -1 {
			t.Errorf("parseContentRange(%q) = %d, %d, %d accepted", s, first, last, total)
		}
	})
}
