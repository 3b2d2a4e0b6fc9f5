// Package buildinfo reports what a binary is: the version stamped into it at link
// time and the toolchain and target it was built for.
//
// scripts/build sets Version, Commit and Date with -ldflags -X; a plain `go build`
// leaves the defaults, which say so.
package buildinfo

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"time"
)

// Stamped at link time by scripts/build (-ldflags -X).
var (
	Version = "devel"
	Commit  = "unknown"
	Date    = "unknown"
)

// Info describes one build of a binary.
type Info struct {
	Program   string `json:"program"`
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	GOARM     string `json:"goarm,omitempty"`
	GoVersion string `json:"go_version"`
}

// sourceDate is a day this source is known to postdate: the build date of a
// build that was not stamped (a plain go build), for the time floor.
const sourceDate = "2026-11-23T00:00:00Z"

// Built returns when the binary was built (the stamped commit date, or
// sourceDate when unstamped): no clock reading before it can be true.
func (i Info) Built() time.Time {
	if t, err := time.Parse(time.RFC3339, i.Date); err == nil {
		return t
	}
	t, _ := time.Parse(time.RFC3339, sourceDate)
	return t
}

// Read returns the build information of the running binary.
func Read(program string) Info {
	info := Info{
		Program:   program,
		Version:   Version,
		Commit:    Commit,
		Date:      Date,
		GOOS:      runtime.GOOS,
		GOARCH:    runtime.GOARCH,
		GoVersion: runtime.Version(),
	}
	// GOARM is not visible through package runtime; the build settings record it.
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "GOARM" {
				info.GOARM = s.Value
			}
		}
	}
	return info
}

// Platform reports the target as os/arch, with the ARM version where there is one
// (linux/arm/v7), as container registries and Go's own docs spell it.
func (i Info) Platform() string {
	p := i.GOOS + "/" + i.GOARCH
	if i.GOARM != "" {
		p += "/v" + i.GOARM
	}
	return p
}

// Write prints the information as one line of text, or as JSON when asJSON is set.
func (i Info) Write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(i)
	}
	_, err := fmt.Fprintf(w, "%s %s (commit %s, built %s, %s, %s)\n",
		i.Program, i.Version, i.Commit, i.Date, i.Platform(), i.GoVersion)
	return err
}
