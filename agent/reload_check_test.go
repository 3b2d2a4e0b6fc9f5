package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCheckBinary: a reload's pre-check refuses a binary it could not exec,
// before anything stops.
func TestCheckBinary(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name string
		path string
		ok   bool
	}{
		{"executable", write("exe", 0o755), true},
		{"not executable", write("plain", 0o644), false},
		{"a directory", dir, false},
		{"missing", filepath.Join(dir, "gone"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkBinary(tc.path); (err == nil) != tc.ok {
				t.Errorf("checkBinary(%s) = %v, want ok %v", tc.path, err, tc.ok)
			}
		})
	}
}
