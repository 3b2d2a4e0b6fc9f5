package update

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DecidedEnv marks an image started by the start-up decision, so that it
// does not decide again (and count a second attempt).
const DecidedEnv = "EDGEAGENT_DECIDED"

// Decision is which binary should run at a start.
type Decision struct {
	Binary string // the binary to run; Exec says whether that is another
	Slot   string // a, b or factory
	Exec   bool
	Trial  bool // it is a version on trial
}

// Decide is the first thing a start of the agent does (not a reload, which
// chose its binary): which binary should run. The tentative slot while it
// has attempts left (each start counts one), else the committed slot, else
// the factory binary when no slot verifies. Every step is idempotent: the
// state is written before the exec, and a crash anywhere leaves a state
// from which the next start decides the same or falls back.
func Decide(dir, exe string, attempts int, log *slog.Logger) (Decision, error) {
	st, err := LoadState(dir)
	if err != nil {
		// A state file that does not read is a node to keep running: the
		// factory binary (or this one) is always there.
		log.Error("upgrade state unreadable; running the binary init started", "err", err)
		return Decision{Binary: exe, Slot: runningSlot(dir, exe)}, nil
	}
	// The binary init starts is the factory binary, wherever the firmware
	// put it this time; with no upgrade ever made nothing is written.
	if running := runningSlot(dir, exe); running == Factory && st.Factory != exe && (st.Committed != "" || st.Trial != nil) {
		st.Factory = exe
		if err := st.save(dir); err != nil {
			log.Warn("upgrade state not writable; upgrades cannot be kept", "dir", dir, "err", err)
		}
	}
	if st.Factory == "" {
		st.Factory = exe
	}

	if t := st.Trial; t != nil {
		err := st.verified(dir, t.Slot)
		switch {
		case err != nil:
			st.rollBack(dir, fmt.Sprintf("the binary of slot %s does not verify: %v", t.Slot, err), nil)
		case t.Attempts >= attempts:
			st.rollBack(dir, fmt.Sprintf("did not become healthy in %d starts (it crashed, hung or was killed each time)", t.Attempts),
				logTail(dir, 50))
		default:
			t.Attempts++
			if err := st.save(dir); err != nil {
				// Not counted: running it could loop for ever.
				st.rollBack(dir, fmt.Sprintf("its attempt could not be counted: %v", err), nil)
				break
			}
			log.Warn("starting the version on trial", "version", t.Version, "slot", t.Slot, "attempt", t.Attempts, "of", attempts)
			// A version that crashes before it opens its trial log leaves
			// no line there: the rollback's log says at least this.
			if f, err := os.OpenFile(filepath.Join(dir, trialLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
				fmt.Fprintf(f, "%s start-up decision: start %d of %d of version %s (slot %s); the one before did not become healthy\n",
					time.Now().UTC().Format(time.RFC3339), t.Attempts, attempts, t.Version, t.Slot)
				f.Close()
			}
			return st.decision(dir, exe, t.Slot, true), nil
		}
		log.Error("upgrade rolled back", "version", st.Rollback.Version, "reason", st.Rollback.Reason)
	}
	if c := st.Committed; c != "" {
		if err := st.verified(dir, c); err == nil {
			return st.decision(dir, exe, c, false), nil
		} else {
			log.Error("committed slot does not verify; running the factory binary", "err", err)
		}
	}
	return st.decision(dir, exe, Factory, false), nil
}

func (st *State) decision(dir, exe, slot string, trial bool) Decision {
	bin := st.binary(dir, slot)
	return Decision{Binary: bin, Slot: slot, Trial: trial, Exec: !sameFile(bin, exe)}
}

// rollBack ends the trial, recording why, and writes the state.
func (st *State) rollBack(dir, reason string, log []string) {
	t := st.Trial
	to := st.Committed
	if to == "" {
		to = Factory
	}
	st.Rollback = &Rollback{ID: t.ID, Version: t.Version, Slot: t.Slot, To: to, Reason: reason, Log: log, At: time.Now()}
	st.Last = &Outcome{ID: t.ID, Phase: "rolled back", Version: t.Version, Reason: reason}
	st.Trial = nil
	st.save(dir)
	os.Remove(filepath.Join(dir, trialLog))
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines[max(0, len(lines)-n):]
}
