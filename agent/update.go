package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/update"
	"github.com/seed69aca190/edgeagent/update/release"
)

// newUpdates makes the upgrade manager: offers from the controller are
// carried out by it, and a version on trial is judged by it.
func (a *Agent) newUpdates(p *parts) *update.Manager {
	log := a.log.With("component", "update")
	exe, err := os.Executable()
	if err != nil {
		log.Warn("running binary unknown; upgrades refused", "err", err)
	}
	var keys []ed25519.PublicKey
	if len(a.cfg.Update.TrustedKeys) > 0 {
		if keys, err = release.LoadPublicKeys(a.cfg.Update.TrustedKeys...); err != nil {
			reason := "trusted keys unreadable (every offer is refused): " + err.Error()
			p.hl.probe(func() []problem { return []problem{{part: "update", reason: reason}} })
		}
	}
	started := time.Now()
	m, err := update.NewManager(update.Options{Dir: a.cfg.SlotsDir(), Exe: exe, Version: p.bi.Version,
		Trusted: keys, Now: p.st.floor.Now,
		Preflight: selftest,
		Switch: func(binary, version string) error {
			select {
			case a.reloads <- reloadRequest{binary: binary, version: version}:
				return nil
			default:
				return errors.New("a reload is pending")
			}
		},
		Healthy:       func() error { return a.upgradeHealthy(p, started) },
		HealthTimeout: a.cfg.Update.HealthTimeout,
		Watch: func(slot string, healthTimeout time.Duration) {
			if err := update.Watch(exe, a.cfg.SlotsDir(), os.Getpid(), slot, healthTimeout); err != nil {
				log.Warn("watchdog not started: a version that hangs will not be rolled back", "err", err)
			}
		},
		Publish: p.up.UpdateStatus, Event: p.sched.Event, Log: log})
	if err != nil {
		log.Error("upgrade state unreadable", "err", err)
	}
	return m
}

// offer hands an update offer to the manager.
func (a *Agent) offer(p *parts, env telemetry.Envelope) {
	var o telemetry.UpdateOffer
	if err := env.DecodeBody(&o); err != nil || o.ID == "" {
		a.log.Warn("malformed update offer", "err", err)
		p.sched.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Warning, Kind: "update", Subject: "offer",
			New: "malformed", Message: fmt.Sprintf("refused a malformed update offer: %v", err)})
		return
	}
	p.upd.Offer(o)
}

// upgradeHealthy says why this image is not yet healthy as an upgrade's
// health check sees it, or nil: collectors ran, the broker is connected and
// acknowledged a heartbeat, StatsD reads its socket, and nothing is
// unhealthy.
func (a *Agent) upgradeHealthy(p *parts, since time.Time) error {
	if h, why := p.hl.summary(); h == telemetry.Unhealthy {
		return fmt.Errorf("unhealthy: %s", why)
	}
	if p.sched.LastSuccess().Before(since) {
		return errors.New("no collection has succeeded yet")
	}
	st := p.up.Status()
	if st.State != "connected" {
		return fmt.Errorf("not connected to the broker (%s)", st.State)
	}
	if st.HeartbeatAcked.Before(since) {
		return errors.New("no heartbeat acknowledged by the broker yet")
	}
	if a.cfg.StatsD.Listen != "" && a.statsd.Load() == nil {
		return errors.New("StatsD is not reading its socket")
	}
	return nil
}

// selftest runs `binary selftest` with the arguments this agent was
// started with, so the new binary checks the live configuration, and
// returns the version it reports.
func selftest(ctx context.Context, binary string) (string, error) {
	args := []string{"selftest"}
	if len(os.Args) > 1 && os.Args[1] == "run" {
		args = append(args, os.Args[2:]...)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if err != nil {
		return "", fmt.Errorf("%s selftest: %v: %.300s", binary, err, text)
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "version "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s selftest reported no version: %.300s", binary, text)
}
