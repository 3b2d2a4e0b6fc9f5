package update

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
)

// The slots directory holds the two slots' binaries (a, b), a download in
// progress (<slot>.part, with update/fetch's sidecar), the state file and,
// while a version is on trial, its log (trial.log).
const (
	stateFile = "state.json"
	trialLog  = "trial.log"
	// Factory names the binary the firmware installed and init starts.
	Factory = "factory"
)

// Slots are the two slots, in the order an inactive one is picked.
var Slots = []string{"a", "b"}

// SlotInfo is what was verified of a slot's binary when it was written.
type SlotInfo struct {
	Version string `json:"version"`
	SHA256  string `json:"sha256"` // hex
	Size    int64  `json:"size"`
}

// Trial is a version switched to and not yet committed.
type Trial struct {
	ID       string    `json:"id"` // the offer's
	Slot     string    `json:"slot"`
	Version  string    `json:"version"`
	From     string    `json:"from"`      // the version that switched to it
	FromSlot string    `json:"from_slot"` // and its slot, factory included
	Attempts int       `json:"attempts"`  // starts of the trial version so far
	Began    time.Time `json:"began"`
}

// Rollback is the last version that did not stay, and why.
type Rollback struct {
	ID       string    `json:"id,omitempty"`
	Version  string    `json:"version"` // the version rolled back from
	Slot     string    `json:"slot"`
	To       string    `json:"to"` // the slot rolled back to
	Reason   string    `json:"reason"`
	Log      []string  `json:"log,omitempty"` // the end of the failed version's log
	At       time.Time `json:"at"`
	Reported bool      `json:"reported,omitempty"` // sent to the controller
}

// Outcome is how the last offer ended, so a repeated offer is answered
// again instead of being carried out twice.
type Outcome struct {
	ID      string `json:"id"`
	Phase   string `json:"phase"`
	Version string `json:"version,omitempty"`
	Check   string `json:"check,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// State is the state file: which slot is committed, which is on trial, the
// highest version ever committed, and the last rollback.
type State struct {
	Factory   string              `json:"factory,omitempty"`   // path of the binary init starts
	Committed string              `json:"committed,omitempty"` // a or b; empty: the factory binary
	Slots     map[string]SlotInfo `json:"slots,omitempty"`
	Trial     *Trial              `json:"trial,omitempty"`
	Highest   string              `json:"highest,omitempty"`
	Rollback  *Rollback           `json:"last_rollback,omitempty"`
	Last      *Outcome            `json:"last,omitempty"`
}

// LoadState reads the state file in dir; a missing one is the empty state
// (the factory binary committed, nothing on trial).
func LoadState(dir string) (*State, error) {
	s := &State{}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, s); err != nil {
		return &State{}, fmt.Errorf("%s: %w", filepath.Join(dir, stateFile), err)
	}
	return s, nil
}

// save writes the state file durably (temp file, fsync, rename, fsync of
// the directory): a power cut leaves the old state or the new, never half.
func (s *State) save(dir string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, stateFile), data, 0o644)
}

// SlotPath is where slot's binary lives.
func SlotPath(dir, slot string) string { return filepath.Join(dir, slot) }

// binary is the path of slot's binary, the factory's included.
func (s *State) binary(dir, slot string) string {
	if slot == Factory || slot == "" {
		return s.Factory
	}
	return SlotPath(dir, slot)
}

// verified reports whether slot's binary still hashes to what was recorded
// when it was written.
func (s *State) verified(dir, slot string) error {
	info, ok := s.Slots[slot]
	if !ok {
		return fmt.Errorf("slot %s: nothing recorded", slot)
	}
	sum, size, err := hashFile(SlotPath(dir, slot))
	if err != nil {
		return fmt.Errorf("slot %s: %w", slot, err)
	}
	if size != info.Size || sum != info.SHA256 {
		return fmt.Errorf("slot %s: %d bytes with SHA-256 %.12s…, recorded %d bytes with %.12s…", slot, size, sum, info.Size, info.SHA256)
	}
	return nil
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// runningSlot names the slot exe is: a, b, or factory.
func runningSlot(dir, exe string) string {
	for _, s := range Slots {
		if sameFile(exe, SlotPath(dir, s)) {
			return s
		}
	}
	return Factory
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// logTail returns the last n lines of the trial log in dir.
func logTail(dir string, n int) []string {
	data, err := os.ReadFile(filepath.Join(dir, trialLog))
	if err != nil {
		return nil
	}
	return lastLines(string(data), n)
}
