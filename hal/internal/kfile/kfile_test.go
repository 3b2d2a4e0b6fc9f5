package kfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "attr")
	os.WriteFile(p, []byte(" 4096\n"), 0o644)
	if n, err := Uint(p); err != nil || n != 4096 {
		t.Errorf("Uint = %d, %v", n, err)
	}
	os.WriteFile(p, []byte("none\n"), 0o644)
	if _, err := Uint(p); err == nil || !strings.Contains(err.Error(), `attr: "none" is not a number`) {
		t.Errorf("Uint of text: %v", err)
	}
	os.WriteFile(p, make([]byte, MaxSize+1), 0o644)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
	// /proc files report size 0; the read must not trust it.
	if data, err := Read("/proc/self/stat"); err != nil || len(data) == 0 {
		t.Errorf("read /proc/self/stat: %d bytes, %v", len(data), err)
	}
}
