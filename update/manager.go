package update

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/update/fetch"
	"github.com/seed69aca190/edgeagent/update/release"
)

// Options configure a Manager. Everything outside the slots directory is
// reached through them: the agent wires the network, the hand-over and its
// health.
type Options struct {
	Dir     string // the slots directory
	Exe     string // the running binary
	Version string // the running version
	// Trusted are the keys whose signature on a manifest is accepted; Now
	// is the time expiry is judged by (the time floor).
	Trusted []ed25519.PublicKey
	Now     func() time.Time
	// Fetch tunes downloads (tests shorten its timeouts); URLs, Dest, Size
	// and Progress are the manager's.
	Fetch fetch.Options
	// Preflight runs binary's selftest against the live configuration and
	// returns the version it reports.
	Preflight func(ctx context.Context, binary string) (string, error)
	// Switch asks the agent to hand over to binary (the seamless reload); it
	// returns once the request is taken; the process is then replaced.
	Switch func(binary, version string) error
	// Healthy reports why the running version is not healthy yet, or nil.
	Healthy       func() error
	HealthTimeout time.Duration
	// Watch guards a version on trial from outside the process, in case it
	// hangs before it can roll back by itself (see Watchdog).
	Watch   func(slot string, healthTimeout time.Duration)
	Publish func(telemetry.UpdateStatus)
	Event   func(telemetry.Event)
	Log     *slog.Logger
}

// Manager carries out the controller's offers and judges a version on
// trial: commit when it is healthy in time, roll back when not.
type Manager struct {
	o      Options
	slot   string // the running slot: a, b or factory
	offers chan telemetry.UpdateOffer

	mu    sync.Mutex
	state *State
	busy  string // the offer being carried out
	news  string // a rollback reported, for the next heartbeat
}

// NewManager reads the state in o.Dir.
func NewManager(o Options) (*Manager, error) {
	st, err := LoadState(o.Dir)
	m := &Manager{o: o, state: st, slot: runningSlot(o.Dir, o.Exe), offers: make(chan telemetry.UpdateOffer, 1)}
	return m, err
}

// Slot names the running slot: a, b or factory.
func (m *Manager) Slot() string { return m.slot }

// State returns a copy of the state.
func (m *Manager) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return *m.state
}

// Rollback returns, once, the news of a rollback this image reported, for
// the next heartbeat.
func (m *Manager) Rollback() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	news := m.news
	m.news = ""
	return news
}

// Offer takes an offer from the controller; one is carried out at a time,
// and one offered meanwhile is refused as busy.
func (m *Manager) Offer(o telemetry.UpdateOffer) {
	m.mu.Lock()
	last, busy := m.state.Last, m.busy
	m.mu.Unlock()
	switch {
	case last != nil && last.ID == o.ID:
		// Delivered again (or offered again by a controller that lost
		// track): answer as before rather than install twice.
		m.publish(telemetry.UpdateStatus{ID: o.ID, Phase: last.Phase, Version: last.Version, Check: last.Check, Reason: last.Reason})
		return
	case busy == o.ID:
		return
	}
	select {
	case m.offers <- o:
	default:
		m.publish(telemetry.UpdateStatus{ID: o.ID, Phase: telemetry.PhaseRefused, Check: "busy",
			Reason: "another upgrade (" + busy + ") is in progress"})
	}
}

// Run judges a version on trial, reports a rollback the controller has not
// heard of, then carries out offers until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	m.reportRollback()
	if t := m.State().Trial; t != nil && t.Slot == m.slot {
		if !m.judge(ctx, *t) {
			return nil // rolling back: the process is about to be replaced
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case o := <-m.offers:
			m.install(ctx, o)
		}
	}
}

// judge waits for the version on trial to become healthy, and commits it,
// or rolls back to the version before. It reports whether it committed.
func (m *Manager) judge(ctx context.Context, t Trial) bool {
	m.publish(telemetry.UpdateStatus{ID: t.ID, Phase: telemetry.PhaseChecking, Version: t.Version, From: t.From, Slot: t.Slot})
	deadline := time.NewTimer(m.o.HealthTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	why := m.o.Healthy()
	for why != nil {
		select {
		case <-ctx.Done():
			return true // stopping: the next start decides
		case <-tick.C:
			why = m.o.Healthy()
			continue
		case <-deadline.C:
		}
		break
	}
	if why == nil {
		m.commit(t)
		return true
	}
	reason := fmt.Sprintf("not healthy within %v: %v", m.o.HealthTimeout, why)
	m.o.Log.Error("upgrade failed its health check; rolling back", "version", t.Version, "reason", reason)
	m.mu.Lock()
	m.state.rollBack(m.o.Dir, reason, logTail(m.o.Dir, 50))
	bin := m.state.binary(m.o.Dir, t.FromSlot)
	m.mu.Unlock()
	if err := m.o.Switch(bin, t.From); err != nil {
		// The next start runs the committed version: the trial is over.
		m.o.Log.Error("rollback hand-over refused; exiting for init to restart the agent", "err", err)
		os.Exit(1)
	}
	return false
}

func (m *Manager) commit(t Trial) {
	m.mu.Lock()
	st := m.state
	st.Committed, st.Trial = t.Slot, nil
	if release.IsSemver(t.Version) && (st.Highest == "" || release.CompareVersions(t.Version, st.Highest) > 0) {
		st.Highest = t.Version
	}
	st.Rollback = nil
	st.Last = &Outcome{ID: t.ID, Phase: telemetry.PhaseCommitted, Version: t.Version}
	err := st.save(m.o.Dir)
	m.mu.Unlock()
	os.Remove(filepath.Join(m.o.Dir, trialLog))
	if err != nil {
		m.o.Log.Error("commit not written; the next start treats the version as on trial", "err", err)
	}
	m.o.Log.Info("upgrade committed", "version", t.Version, "slot", t.Slot, "from", t.From)
	// The controller makes the event of it from the status.
	m.publish(telemetry.UpdateStatus{ID: t.ID, Phase: telemetry.PhaseCommitted, Version: t.Version, From: t.From, Slot: t.Slot})
}

// reportRollback tells the controller of a rollback it has not heard of:
// a status with the reason and the failed version's log, and an event.
func (m *Manager) reportRollback() {
	m.mu.Lock()
	r := m.state.Rollback
	if r == nil || r.Reported {
		m.mu.Unlock()
		return
	}
	rb := *r
	r.Reported = true
	m.state.save(m.o.Dir)
	m.news = fmt.Sprintf("%s rolled back to %s: %s", rb.Version, rb.To, rb.Reason)
	m.mu.Unlock()
	m.publish(telemetry.UpdateStatus{ID: rb.ID, Phase: telemetry.PhaseRolledBack, Version: rb.Version, Slot: rb.To,
		Reason: rb.Reason, Log: rb.Log})
	msg := fmt.Sprintf("rolled back from %s to %s: %s", rb.Version, m.o.Version, rb.Reason)
	if len(rb.Log) > 0 {
		msg += "\nlast lines of its log:\n" + strings.Join(rb.Log, "\n")
	}
	m.o.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Critical, Kind: "update", Subject: rb.Slot,
		Old: rb.Version, New: "rolled back", Message: text.EscapeString(msg)})
}

// install carries out one offer up to the switch; on the way it refuses,
// or fails, with the reason in a status.
func (m *Manager) install(ctx context.Context, o telemetry.UpdateOffer) {
	m.mu.Lock()
	m.busy = o.ID
	highestV := m.state.Highest
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.busy = ""
		m.mu.Unlock()
	}()
	status := telemetry.UpdateStatus{ID: o.ID, From: m.o.Version}
	phase := func(p string) {
		status.Phase = p
		m.publish(status)
	}
	end := func(p, check string, err error) {
		status.Phase, status.Check, status.Reason = p, check, text.EscapeString(err.Error())
		m.o.Log.Warn("upgrade "+p, "id", o.ID, "version", status.Version, "check", check, "err", err)
		m.publish(status)
		m.mu.Lock()
		m.state.Last = &Outcome{ID: o.ID, Phase: p, Version: status.Version, Check: check, Reason: status.Reason}
		m.state.save(m.o.Dir)
		m.mu.Unlock()
	}
	refuse := func(err error) {
		var r *release.Refusal
		if errors.As(err, &r) {
			end(telemetry.PhaseRefused, r.Check, err)
		} else {
			end(telemetry.PhaseRefused, "manifest", err)
		}
	}
	phase(telemetry.PhaseOffered)

	checker := &release.Verifier{Trusted: m.o.Trusted, Now: m.o.Now, Running: release.RunningTarget(), Highest: highestV}
	mf, err := checker.Manifest(o.Manifest)
	if err != nil {
		refuse(err)
		return
	}
	status.Version, status.Total = mf.Version, mf.Size
	slot := m.inactive()
	status.Slot = slot
	part := filepath.Join(m.o.Dir, slot+".part")
	if err := os.MkdirAll(m.o.Dir, 0o755); err != nil {
		end(telemetry.PhaseFailed, "", err)
		return
	}

	phase(telemetry.PhaseDownloading)
	fo := m.o.Fetch
	fo.URLs, fo.Dest, fo.Size = append(append([]string(nil), o.URLs...), mf.URLs...), part, mf.Size
	fo.Progress = func(done, total uint64) {
		status.Bytes, status.Percent = done, int(done*100/max(total, 1))
		m.publish(status)
	}
	sum, err := fetch.Download(ctx, fo)
	if errors.Is(err, fetch.ErrTooLong) {
		end(telemetry.PhaseRefused, release.CheckSize, err)
		return
	}
	if err != nil {
		end(telemetry.PhaseFailed, "", fmt.Errorf("download: %w", err))
		return
	}

	phase(telemetry.PhaseVerifying)
	if _, err := checker.Verify(o.Manifest, part); err != nil {
		fetch.Discard(part)
		refuse(err)
		return
	}
	bin := SlotPath(m.o.Dir, slot)
	if err := place(part, bin); err != nil {
		end(telemetry.PhaseFailed, "", err)
		return
	}
	fetch.Discard(part)
	m.mu.Lock()
	if m.state.Slots == nil {
		m.state.Slots = map[string]SlotInfo{}
	}
	m.state.Slots[slot] = SlotInfo{Version: mf.Version, SHA256: hex.EncodeToString(sum[:]), Size: int64(mf.Size)}
	if m.state.Factory == "" && m.slot == Factory {
		m.state.Factory = m.o.Exe // what to fall back to
	}
	err = m.state.save(m.o.Dir)
	m.mu.Unlock()
	if err != nil {
		end(telemetry.PhaseFailed, "", fmt.Errorf("state: %w", err))
		return
	}

	phase(telemetry.PhasePreflight)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	reported, err := m.o.Preflight(pctx, bin)
	cancel()
	if err == nil && reported != mf.Version {
		err = fmt.Errorf("the binary reports version %q, the manifest %q", reported, mf.Version)
	}
	if err != nil {
		end(telemetry.PhaseRefused, "preflight", err)
		return
	}

	phase(telemetry.PhaseSwitching)
	m.mu.Lock()
	m.state.Trial = &Trial{ID: o.ID, Slot: slot, Version: mf.Version, From: m.o.Version, FromSlot: m.slot, Attempts: 1, Began: time.Now()}
	m.state.Rollback = nil
	err = m.state.save(m.o.Dir)
	m.mu.Unlock()
	os.Remove(filepath.Join(m.o.Dir, trialLog))
	if err == nil {
		m.o.Watch(slot, m.o.HealthTimeout)
		err = m.o.Switch(bin, mf.Version)
	}
	if err != nil {
		m.mu.Lock()
		m.state.Trial = nil
		m.mu.Unlock()
		end(telemetry.PhaseFailed, "", fmt.Errorf("switch: %w", err))
	}
}

// inactive picks the slot to write: neither the running one nor the
// committed one.
func (m *Manager) inactive() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range Slots {
		if s != m.slot && s != m.state.Committed {
			return s
		}
	}
	return Slots[0]
}

func (m *Manager) publish(s telemetry.UpdateStatus) { m.o.Publish(s) }

// place moves the verified download into its slot, executable, durably.
func place(part, bin string) error {
	if err := os.Chmod(part, 0o755); err != nil {
		return err
	}
	f, err := os.Open(part)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	if err := os.Rename(part, bin); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(bin))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
