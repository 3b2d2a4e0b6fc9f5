package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
)

// Artifacts keeps release artifacts in a directory, each named by its
// SHA-256 in hex, and serves them to nodes (GET with Range, so a cut
// download resumes). The controller does not verify them: a node checks the
// artifact against its signed manifest, so the name only has to be honest.
type Artifacts struct {
	dir string
}

// NewArtifacts keeps artifacts in dir, creating it.
func NewArtifacts(dir string) (*Artifacts, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("artifact directory: %w", err)
	}
	return &Artifacts{dir: dir}, nil
}

// Put stores what r reads (at most max bytes) and returns its SHA-256 in
// hex and its size. It streams through the hash into a temporary file in
// the directory, written to disk before it takes the artifact's name.
func (a *Artifacts) Put(r io.Reader, max int64) (sum string, size int64, err error) {
	tmp, err := os.CreateTemp(a.dir, ".upload-*")
	if err != nil {
		return "", 0, fmt.Errorf("store artifact: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	size, err = io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, max+1))
	switch {
	case err != nil:
		return "", 0, fmt.Errorf("store artifact: %w", err)
	case size > max:
		return "", 0, fmt.Errorf("store artifact: larger than %d bytes", max)
	}
	if err = tmp.Sync(); err != nil {
		return "", 0, fmt.Errorf("store artifact: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return "", 0, fmt.Errorf("store artifact: %w", err)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	if err = os.Rename(tmp.Name(), a.path(sum)); err != nil {
		return "", 0, fmt.Errorf("store artifact: %w", err)
	}
	return sum, size, nil
}

// Has reports whether the artifact of SHA-256 sum (hex) is stored.
func (a *Artifacts) Has(sum string) bool {
	if !validSum(sum) {
		return false
	}
	_, err := os.Stat(a.path(sum))
	return err == nil
}

func (a *Artifacts) path(sum string) string { return filepath.Join(a.dir, sum) }

// ServeHTTP serves GET /artifacts/{sha256}, with Range support.
func (a *Artifacts) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sum := r.PathValue("sha256")
	if !validSum(sum) {
		http.Error(w, "want /artifacts/<sha256 in hex>", http.StatusNotFound)
		return
	}
	f, err := os.Open(a.path(sum))
	if err != nil {
		http.Error(w, "no such artifact", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+sum+`"`)
	http.ServeContent(w, r, "", st.ModTime(), f)
}

func validSum(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
