package controller

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// Rollout is one signed release offered to a set of nodes, and where each
// of them stands with it.
type Rollout struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Artifact is the SHA-256 (hex) of the artifact the controller serves
	// for it, if any; URLs are where the offers said to fetch it.
	Artifact string   `json:"artifact,omitempty"`
	URLs     []string `json:"urls,omitempty"`
	// OfferTime is how long publishing the offers took, until the broker
	// had acknowledged the last one.
	OfferTime time.Duration `json:"offer_time"`
	// Gen increases with every change, for following (GET …?after=Gen).
	Gen   uint64        `json:"gen"`
	Nodes []RolloutNode `json:"nodes"` // by node id
}

// RolloutNode is one node's progress in a rollout: its latest status, as
// the node reported it (Phase is empty until the first one arrives).
type RolloutNode struct {
	Node string `json:"node"`
	telemetry.UpdateStatus
	Updated time.Time `json:"updated,omitzero"` // when the latest status was received
	// Error says why the offer could not be published.
	Error string `json:"error,omitempty"`

	seq uint64 // the envelope's seq of the latest status applied
}

// Terminal reports whether phase ends an upgrade.
func Terminal(phase string) bool {
	switch phase {
	case telemetry.PhaseCommitted, telemetry.PhaseRolledBack, telemetry.PhaseRefused, telemetry.PhaseFailed:
		return true
	}
	return false
}

// Done reports whether every node of the rollout has ended its upgrade, or
// could not be offered it.
func (r Rollout) Done() bool {
	for _, n := range r.Nodes {
		if !Terminal(n.Phase) && n.Error == "" {
			return false
		}
	}
	return true
}

// keepRollouts bounds how many rollouts the controller remembers; a status
// for one forgotten is still recorded as an event.
const keepRollouts = 100

type rollout struct {
	Rollout
	index   map[string]int // node → Nodes[i]
	changed chan struct{}  // closed and replaced at every change
}

func (r *rollout) bump() {
	r.Gen++
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *rollout) copy() Rollout {
	c := r.Rollout
	c.URLs = slices.Clone(r.URLs)
	c.Nodes = slices.Clone(r.Nodes)
	return c
}

// ErrUnknownNodes is returned by StartRollout for a node the fleet does
// not know.
var ErrUnknownNodes = errors.New("unknown node")

// newRollout registers a rollout to nodes (every node the fleet knows when
// nodes is empty). It fails, registering nothing, when a node is unknown.
func (f *Fleet) newRollout(nodes []string, artifact string, urls []string, now time.Time) (Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(nodes) == 0 {
		for id := range f.nodes {
			nodes = append(nodes, id)
		}
		if len(nodes) == 0 {
			return Rollout{}, errors.New("the controller knows no node yet")
		}
	}
	var unknown []string
	for _, id := range nodes {
		if _, ok := f.nodes[id]; !ok {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		return Rollout{}, fmt.Errorf("%w: %s", ErrUnknownNodes, strings.Join(unknown, ", "))
	}
	slices.Sort(nodes)
	nodes = slices.Compact(nodes)
	id := make([]byte, 8)
	rand.Read(id)
	r := &rollout{Rollout: Rollout{ID: hex.EncodeToString(id), Created: now, Artifact: artifact, URLs: urls,
		Nodes: make([]RolloutNode, len(nodes))}, index: make(map[string]int, len(nodes)), changed: make(chan struct{})}
	for i, n := range nodes {
		r.Nodes[i] = RolloutNode{Node: n}
		r.index[n] = i
	}
	if f.rollouts == nil {
		f.rollouts = map[string]*rollout{}
	}
	if len(f.rollouts) >= keepRollouts {
		oldest := ""
		for id, o := range f.rollouts {
			if oldest == "" || o.Created.Before(f.rollouts[oldest].Created) {
				oldest = id
			}
		}
		delete(f.rollouts, oldest)
	}
	f.rollouts[r.ID] = r
	f.addEvent("", telemetry.Event{Time: now, Severity: telemetry.Info, Kind: "rollout", Subject: r.ID, New: "offered",
		Message: fmt.Sprintf("rollout %s offered to %d nodes", r.ID, len(nodes))})
	return r.copy(), nil
}

// offered records how publishing a rollout's offers went.
func (f *Fleet) offered(id string, took time.Duration, failed map[string]error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rollouts[id]
	if r == nil {
		return
	}
	r.OfferTime = took
	for node, err := range failed {
		r.Nodes[r.index[node]].Error = err.Error()
	}
	r.bump()
}

// Rollout returns rollout id as it stands, and a channel closed at its next
// change; ok is false for an id the controller does not know.
func (f *Fleet) Rollout(id string) (r Rollout, changed <-chan struct{}, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ro := f.rollouts[id]
	if ro == nil {
		return Rollout{}, nil, false
	}
	return ro.copy(), ro.changed, true
}

// Rollouts returns every rollout the controller remembers, oldest first,
// without their nodes' details.
func (f *Fleet) Rollouts() []Rollout {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Rollout, 0, len(f.rollouts))
	for _, r := range f.rollouts {
		c := r.copy()
		c.Nodes = nil
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Rollout) int { return a.Created.Compare(b.Created) })
	return out
}

// updateStatus applies a node's update status (already de-duplicated) to
// its rollout, and records the end of an upgrade as an event, once per
// rollout and node; a status of a rollout the controller does not know (it
// restarted since, or another controller offered it) still raises its event.
func (f *Fleet) updateStatus(n *nodeState, env telemetry.Envelope, now time.Time) error {
	var st telemetry.UpdateStatus
	if err := env.DecodeBody(&st); err != nil {
		return err
	}
	var rn *RolloutNode
	r := f.rollouts[st.ID]
	if r != nil {
		if i, ok := r.index[n.ID]; ok {
			rn = &r.Nodes[i]
		}
	}
	if rn == nil {
		if Terminal(st.Phase) {
			f.addEvent(n.ID, upgradeEvent(n.ID, st, now))
		}
		return nil
	}
	// Statuses may arrive out of order (the MQTT client hands them over
	// concurrently): an older one does not move the view back, except that
	// an upgrade's end always wins over a phase before it.
	if env.Seq < rn.seq && (Terminal(rn.Phase) || !Terminal(st.Phase)) {
		return nil
	}
	ended := Terminal(st.Phase) && st.Phase != rn.Phase
	rn.UpdateStatus, rn.Updated, rn.seq = st, now, max(rn.seq, env.Seq)
	if ended {
		f.addEvent(n.ID, upgradeEvent(n.ID, st, now))
	}
	r.bump()
	return nil
}

// upgradeEvent is the event that records how a node's upgrade ended.
func upgradeEvent(node string, st telemetry.UpdateStatus, now time.Time) telemetry.Event {
	e := telemetry.Event{Time: now, Kind: "upgrade", Subject: st.ID, Old: st.From, New: st.Phase}
	slot := ""
	if st.Slot != "" {
		slot = " (slot " + st.Slot + ")"
	}
	switch st.Phase {
	case telemetry.PhaseCommitted:
		e.Severity = telemetry.Info
		e.Message = fmt.Sprintf("node %s committed %s%s", node, orUnknown(st.Version), slot)
		if st.From != "" {
			e.Message += ", from " + st.From
		}
	case telemetry.PhaseRolledBack:
		e.Severity = telemetry.Critical
		e.Message = fmt.Sprintf("node %s rolled back from %s%s: %s", node, orUnknown(st.Version), slot, orUnknown(st.Reason))
		if len(st.Log) > 0 {
			e.Message += "; its log ended:\n  " + strings.Join(st.Log, "\n  ")
		}
	case telemetry.PhaseRefused:
		e.Severity = telemetry.Warning
		e.Message = fmt.Sprintf("node %s refused %s (%s): %s", node, orUnknown(st.Version), orUnknown(st.Check), orUnknown(st.Reason))
	default:
		e.Severity = telemetry.Warning
		e.Message = fmt.Sprintf("node %s failed to upgrade to %s: %s", node, orUnknown(st.Version), orUnknown(st.Reason))
	}
	e.Message += " [rollout " + st.ID + "]"
	return e
}

func orUnknown(s string) string {
	if s == "" {
		return "(not said)"
	}
	return s
}

// offer publishes one rollout's offer to each of its nodes with QoS 1, not
// retained (a node away takes it from its persistent session). It returns
// how long that took, until the broker had acknowledged every one, and the
// nodes whose offer failed.
func (g *Ingest) offer(r Rollout, manifest []byte, now time.Time) (time.Duration, map[string]error) {
	start := time.Now()
	type sent struct {
		node string
		tok  mqtt.Token
	}
	toks := make([]sent, 0, len(r.Nodes))
	failed := map[string]error{}
	for _, n := range r.Nodes {
		o := telemetry.UpdateOffer{ID: r.ID, Manifest: manifest, URLs: r.URLs, IssuedAt: now}
		payload, err := g.encode(n.Node, telemetry.KindUpdateOffer, o)
		if err != nil {
			failed[n.Node] = err
			continue
		}
		toks = append(toks, sent{n.Node, g.client.Publish(g.o.TopicPrefix+"/"+n.Node+"/update", 1, false, payload)})
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range toks {
		if !s.tok.WaitTimeout(time.Until(deadline)) {
			failed[s.node] = errors.New("the broker did not acknowledge the offer within 30s")
		} else if err := s.tok.Error(); err != nil {
			failed[s.node] = fmt.Errorf("publish the offer: %w", err)
		}
	}
	return time.Since(start), failed
}

// encode wraps body in an envelope of the controller's own numbering.
func (g *Ingest) encode(node string, kind telemetry.Kind, body any) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seq++
	data, err := g.enc.Encode(telemetry.Header{Node: node, Seq: g.seq, Time: time.Now(), Kind: kind}, body)
	return append([]byte(nil), data...), err
}
