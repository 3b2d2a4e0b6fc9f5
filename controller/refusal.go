package controller

import (
	"fmt"
	"maps"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// Reasons a message is refused, as Stats counts them.
const (
	RefusedTooLarge = "too large"      // larger than telemetry.MaxMessage
	RefusedEnvelope = "envelope"       // the envelope does not decode
	RefusedTopic    = "topic mismatch" // the envelope names another node than its topic
	RefusedBody     = "body"           // the body does not decode as what its kind says
)

// Refusal is the error Handle returns for a message it refuses.
type Refusal struct {
	Reason string // one of the Refused… reasons
	Node   string // the topic's node level: who published, as the broker's ACL has it
	Topic  string
	Seq    uint64 // the envelope's; 0 when it did not decode
	Err    error  // what was wrong with the message
	// Folded reports that no event was raised for this refusal: one about
	// the same node and reason was raised less than refusalEvery ago, and
	// the next one counts this among those it folded.
	Folded bool
}

func (r *Refusal) Error() string {
	what := "a message on " + r.Topic
	if r.Seq != 0 {
		what = fmt.Sprintf("message %d on %s", r.Seq, r.Topic)
	}
	return fmt.Sprintf("refused %s (%s): %v", what, r.Reason, r.Err)
}

func (r *Refusal) Unwrap() error { return r.Err }

// Stats are the controller's own counters (GET /api/stats).
type Stats struct {
	Refused uint64 `json:"refused"` // messages refused, for any reason
	// RefusedByReason counts them by reason (RefusedTooLarge, …).
	RefusedByReason map[string]uint64 `json:"refused_by_reason"`
	// RefusedByNode counts them by their topic's node, then by reason.
	RefusedByNode map[string]map[string]uint64 `json:"refused_by_node"`
}

// refusalEvery spaces the events about refused messages: at most one per
// node and reason per minute, the refusals in between folded into the next
// (its Suppressed count), so a flood of bad messages cannot flood the event
// log. The counts in Stats are exact.
const refusalEvery = time.Minute

type refusalKey struct{ node, reason string }

// folded is what was refused for one node and reason since its last event.
type folded struct {
	raised time.Time // when that event was raised
	count  uint64    // refusals since, without an event
	latest *Refusal  // the latest of them
}

// refuse counts r, and raises its event unless it is folded.
func (f *Fleet) refuse(r *Refusal, now time.Time) error {
	f.stats.Refused++
	f.stats.RefusedByReason[r.Reason]++
	if f.stats.RefusedByNode[r.Node] == nil {
		f.stats.RefusedByNode[r.Node] = map[string]uint64{}
	}
	f.stats.RefusedByNode[r.Node][r.Reason]++
	k := refusalKey{r.Node, r.Reason}
	fl := f.folds[k]
	if fl != nil && now.Sub(fl.raised) < refusalEvery {
		r.Folded = true
		fl.count++
		fl.latest = r
		return r
	}
	var before uint64
	if fl != nil {
		before = fl.count
	}
	f.raiseRefused(r, before, now)
	f.folds[k] = &folded{raised: now}
	return r
}

// flushRefusals raises, for each node and reason whose last event is
// refusalEvery old, one event for the latest refusal folded since, and
// forgets those that stayed quiet.
func (f *Fleet) flushRefusals(now time.Time) {
	for k, fl := range f.folds {
		switch {
		case now.Sub(fl.raised) < refusalEvery:
		case fl.count == 0:
			delete(f.folds, k)
		default:
			f.raiseRefused(fl.latest, fl.count-1, now)
			fl.raised, fl.count, fl.latest = now, 0, nil
		}
	}
}

// raiseRefused adds the event about r; folded refusals came before it.
func (f *Fleet) raiseRefused(r *Refusal, folded uint64, now time.Time) {
	f.addEvent(r.Node, telemetry.Event{Time: now, Severity: telemetry.Warning, Kind: "message", Subject: r.Node,
		New: "refused", Message: r.Error(), Suppressed: folded})
}

// Stats returns the controller's counters.
func (f *Fleet) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Stats{Refused: f.stats.Refused, RefusedByReason: maps.Clone(f.stats.RefusedByReason),
		RefusedByNode: make(map[string]map[string]uint64, len(f.stats.RefusedByNode))}
	for node, byReason := range f.stats.RefusedByNode {
		s.RefusedByNode[node] = maps.Clone(byReason)
	}
	return s
}
