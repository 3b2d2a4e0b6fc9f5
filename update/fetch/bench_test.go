package fetch

import (
	"bufio"
	"bytes"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkDownload fetches a 10 MiB and a 100 MiB artifact over loopback
// from a server reading it from a file, and reports the throughput and how
// far the process's peak RSS (VmHWM, reset before each size) rose above its
// RSS at the start: a download that streams rises as much for both sizes.
//
//	go test -run '^$' -bench Download -benchtime 5x ./update/fetch
func BenchmarkDownload(b *testing.B) {
	for _, mib := range []int{10, 100} {
		b.Run(strconv.Itoa(mib)+"MiB", func(b *testing.B) {
			dir := b.TempDir()
			src := filepath.Join(dir, "artifact")
			writeArtifact(b, src, mib<<20)
			s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				f, err := os.Open(src)
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				defer f.Close()
				http.ServeContent(w, r, "artifact", time.Time{}, f)
			}))
			defer s.Close()
			o := Options{
				URLs: []string{s.URL},
				Dest: filepath.Join(dir, "slot"),
				Size: uint64(mib << 20),
				Log:  slog.New(slog.DiscardHandler),
			}

			resetPeakRSS()
			base := procStatus("VmHWM")
			b.SetBytes(int64(mib << 20))
			for b.Loop() {
				if _, err := Download(b.Context(), o); err != nil {
					b.Fatal(err)
				}
			}
			if base > 0 {
				b.ReportMetric(float64(procStatus("VmHWM")-base)/1024, "peak-RSS-growth-MiB")
			}
		})
	}
}

func writeArtifact(b *testing.B, path string, n int) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{})
	chunk := make([]byte, 1<<20)
	for n > 0 {
		r.Read(chunk)
		w, err := f.Write(chunk[:min(n, len(chunk))])
		if err != nil {
			b.Fatal(err)
		}
		n -= w
	}
}

// resetPeakRSS sets VmHWM to the RSS of now (Linux 4.0 and later).
func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// procStatus returns a kB field of /proc/self/status, 0 where there is none.
func procStatus(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte(field+":")); ok {
			n, _ := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" kB"))), 10, 64)
			return n
		}
	}
	return 0
}
