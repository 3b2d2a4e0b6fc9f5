package controller

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// Node is what the controller knows about one node. Times are the
// controller's, when it received a message, except NodeTime.
type Node struct {
	ID string `json:"id"`
	// State is online, offline or upgrading: the node is handing over to a
	// new image of itself (Upgrading says until when it may take).
	State        string     `json:"state"`
	Online       bool       `json:"online"` // State is online
	Upgrading    *Upgrading `json:"upgrading,omitempty"`
	Version      string     `json:"version,omitempty"`
	Slot         string     `json:"slot,omitempty"`
	Health       string     `json:"health,omitempty"`
	Why          string     `json:"why,omitempty"`
	BootID       string     `json:"boot_id,omitempty"`
	Instance     string     `json:"instance,omitempty"` // the agent process that sent the latest heartbeat
	HeartbeatSeq uint64     `json:"heartbeat_seq"`
	// LastHeartbeat is when the latest heartbeat was received. Liveness is
	// judged by it, never by the node's clock, which may read 1970 or hours
	// ahead on a node without a real-time clock.
	LastHeartbeat time.Time `json:"last_heartbeat,omitzero"`
	// NodeTime is what the node's clock said in that heartbeat, and
	// Unsynced whether the node knew its clock to be below its time floor.
	NodeTime     time.Time `json:"node_time,omitzero"`
	Unsynced     bool      `json:"unsynced,omitempty"`
	LastSeen     time.Time `json:"last_seen,omitzero"` // any message
	SpoolDepth   uint64    `json:"spool_depth"`
	SpoolDropped uint64    `json:"spool_dropped"`
	// Conflict is set while two live agents claim this node's id.
	Conflict *Conflict `json:"conflict,omitempty"`
	// Utilization holds the latest headline figures: cpu_percent,
	// memory_percent, load1, and disk_percent (the fullest filesystem).
	Utilization map[string]float64 `json:"utilization,omitempty"`
	Messages    uint64             `json:"messages"`   // accepted, after de-duplication
	Duplicates  uint64             `json:"duplicates"` // dropped as already seen
}

// Upgrading is a node's hand-over to a new image of itself, an upgrade or a
// reload, as its retained state announced it.
type Upgrading struct {
	Since time.Time `json:"since"` // when the controller received the announcement
	// Until is Since plus the time the node said it needs (at most
	// maxUpgrading; three heartbeat intervals when it said none): a node
	// not back by then is offline.
	Until time.Time `json:"until"`
	To    string    `json:"to,omitempty"` // the version the node said it is going to
}

// Presence states.
const (
	online    = "online"
	offline   = "offline"
	upgrading = "upgrading"
)

// maxUpgrading caps the time a node may say it needs to come back from a
// hand-over: a longer silence is an outage, whatever the node expected.
const maxUpgrading = 10 * time.Minute

// Conflict is two live agents heard under one node id (a cloned state
// directory, a copied configuration): their heartbeats alternate.
type Conflict struct {
	Since     time.Time  `json:"since"`
	Instances []Instance `json:"instances"` // the one that spoke again after it was replaced, then the other
}

// Instance is one agent process heard under a node id.
type Instance struct {
	ID        string    `json:"id"`
	BootID    string    `json:"boot_id,omitempty"`
	LastHeard time.Time `json:"last_heard"`
}

// EventRecord is an event in the fleet's log: a node's, or the controller's
// own alert (node online or offline).
type EventRecord struct {
	ID   uint64 `json:"id"` // increasing, for following
	Node string `json:"node"`
	telemetry.Event
}

// Options configure a Fleet.
type Options struct {
	// HeartbeatInterval is the nodes' heartbeat interval; a node that misses
	// three is offline. Zero means 10 s.
	HeartbeatInterval time.Duration
	// KeepEvents bounds the event log; zero means 10000.
	KeepEvents int
	// TopicPrefix is the first part of every topic; empty means "edge".
	TopicPrefix string
}

// Fleet is the controller's view of every node, fed with the messages the
// nodes publish. It is safe for concurrent use.
type Fleet struct {
	opts Options

	mu       sync.Mutex
	nodes    map[string]*nodeState
	events   []EventRecord
	nextID   uint64
	changed  chan struct{} // closed and replaced when an event is added
	stats    Stats
	folds    map[refusalKey]*folded                  // refusals without their own event yet
	results  map[string]chan telemetry.CommandResult // awaited command results, by id
	rollouts map[string]*rollout                     // by id (rollout.go)
}

type nodeState struct {
	Node
	seen  map[msgID]struct{} // messages accepted recently
	order []msgID            // the same, oldest first, to bound seen

	speaker  Instance   // the instance whose heartbeat was received last
	replaced []replaced // instances replaced as speaker within the conflict window

	// While upgrading: the message that announced it, and what the node does
	// ("upgrade to v1.5.0", or "reload" when the version stays or is not said).
	announced msgID
	handover  string
}

// replaced is an instance that another replaced as the node's speaker.
type replaced struct {
	Instance
	at time.Time // when it was replaced
	// below is the seq of the replacing heartbeat: one of the replaced
	// instance's numbered below it was sent before, and only arrives late.
	below uint64
}

// A replaced instance heard again within conflictWindow heartbeat intervals
// is a second live agent; the conflict is over when one of the two has been
// silent for conflictQuiet intervals while the other speaks.
const (
	conflictWindow = 3
	conflictQuiet  = 10
)

// msgID names a message for de-duplication: its sender's instance (hashed)
// and its seq. The node's numbers never go backwards while it can persist
// them; the instance keeps two machines under one id, and numbers repeated
// after a restart that could not persist them, apart.
type msgID struct {
	instance uint64
	seq      uint64
}

func newMsgID(env telemetry.Envelope) msgID {
	h := fnv.New64a()
	h.Write([]byte(env.Instance))
	return msgID{instance: h.Sum64(), seq: env.Seq}
}

// dedupWindow is how many recent sequence numbers per node are remembered:
// more than a full 64 MiB spool drained after a day-long outage holds.
const dedupWindow = 200_000

// NewFleet returns an empty fleet.
func NewFleet(opts Options) *Fleet {
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = 10 * time.Second
	}
	if opts.KeepEvents <= 0 {
		opts.KeepEvents = 10000
	}
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = "edge"
	}
	return &Fleet{opts: opts, nodes: map[string]*nodeState{}, changed: make(chan struct{}),
		stats: Stats{RefusedByReason: map[string]uint64{}, RefusedByNode: map[string]map[string]uint64{}},
		folds: map[refusalKey]*folded{}, results: map[string]chan telemetry.CommandResult{}}
}

// Handle takes one message from topic <prefix>/<node>/<kind>. A message
// already seen (same node, instance and seq) is counted as a duplicate and
// otherwise ignored. A message that is too large, does not decode, or whose
// node is not the topic's is refused: Handle returns a *Refusal, counts it by
// reason and by the topic's node (Stats), and raises a warning event about it
// (rate limited: see refusalEvery).
func (f *Fleet) Handle(topic string, payload []byte, now time.Time) error {
	rest, _ := strings.CutPrefix(topic, f.opts.TopicPrefix+"/")
	node, _, _ := strings.Cut(rest, "/")
	refused := &Refusal{Node: node, Topic: topic}
	env, err := telemetry.Decode(payload)
	switch {
	case err != nil && len(payload) > telemetry.MaxMessage:
		refused.Reason, refused.Err = RefusedTooLarge, err
	case err != nil:
		refused.Reason, refused.Err = RefusedEnvelope, err
	case node != env.Node:
		refused.Reason, refused.Seq = RefusedTopic, env.Seq
		refused.Err = fmt.Errorf("node %q published on topic %s", env.Node, topic)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if refused.Reason != "" {
		return f.refuse(refused, now)
	}
	n := f.node(env.Node)
	n.LastSeen = now
	numbered := env.Kind != telemetry.KindState // presence is not: the latest wins
	if numbered {
		id := newMsgID(env)
		if _, dup := n.seen[id]; dup {
			n.Duplicates++
			return nil
		}
		n.seen[id] = struct{}{}
		n.order = append(n.order, id)
		if len(n.order) > dedupWindow {
			delete(n.seen, n.order[0])
			n.order = n.order[1:]
		}
	}
	if err := f.apply(n, env, now); err != nil {
		refused.Reason, refused.Seq, refused.Err = RefusedBody, env.Seq, err
		return f.refuse(refused, now)
	}
	if numbered {
		n.Messages++
	}
	return nil
}

// apply decodes a message's body and updates the fleet with it; the error
// is the body's that did not decode.
func (f *Fleet) apply(n *nodeState, env telemetry.Envelope, now time.Time) error {
	switch env.Kind {
	case telemetry.KindState:
		var st telemetry.State
		if err := env.DecodeBody(&st); err != nil {
			return err
		}
		f.presence(n, newMsgID(env), st, now)
	case telemetry.KindHeartbeat:
		var hb telemetry.Heartbeat
		if err := env.DecodeBody(&hb); err != nil {
			return err
		}
		// A late one from a backlog does not move the view back; a new
		// instance moves it whatever its numbers.
		if f.heardInstance(n, hb, now) && (hb.Instance != n.Instance || hb.Seq >= n.HeartbeatSeq) {
			n.HeartbeatSeq, n.LastHeartbeat, n.NodeTime, n.Unsynced = hb.Seq, now, hb.Time, env.Unsynced
			n.Version, n.Slot, n.Health, n.Why, n.BootID = hb.Version, hb.Slot, string(hb.Health), hb.Why, hb.BootID
			n.Instance, n.SpoolDepth, n.SpoolDropped = hb.Instance, hb.SpoolDepth, hb.Dropped
			// One the image that handed over sent before it (delivered late,
			// or from the spool the new image drains) does not say it is back.
			if id := newMsgID(env); n.State != upgrading || id.instance != n.announced.instance || id.seq > n.announced.seq {
				f.setOnline(n, now, "heartbeat")
			}
		}
	case telemetry.KindBatch:
		batches, err := env.DecodeBatches()
		if err != nil {
			return err
		}
		for _, b := range batches {
			utilization(n, b)
		}
	case telemetry.KindEvent:
		var e telemetry.Event
		if err := env.DecodeBody(&e); err != nil {
			return err
		}
		f.addEvent(n.ID, e)
	case telemetry.KindCommandResult:
		var r telemetry.CommandResult
		if err := env.DecodeBody(&r); err != nil {
			return err
		}
		if ch, ok := f.results[r.ID]; ok {
			select {
			case ch <- r:
			default: // a repeat of a result already delivered
			}
		}
	case telemetry.KindUpdateStatus:
		return f.updateStatus(n, env, now)
	}
	return nil
}

// Expect registers interest in the result of request id; the channel gets
// it when it arrives. Call the returned function when done waiting.
func (f *Fleet) Expect(id string) (<-chan telemetry.CommandResult, func()) {
	ch := make(chan telemetry.CommandResult, 1)
	f.mu.Lock()
	f.results[id] = ch
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.results, id)
		f.mu.Unlock()
	}
}

func (f *Fleet) node(id string) *nodeState {
	n := f.nodes[id]
	if n == nil {
		n = &nodeState{Node: Node{ID: id, State: offline}, seen: map[msgID]struct{}{}}
		f.nodes[id] = n
	}
	return n
}

// heardInstance follows which agent process speaks for n, to tell a restart
// (one instance replaces another for good) from two live agents claiming one
// node id (an instance replaced speaks again). The first time two alternate
// raises a critical conflict event, once per episode. It reports whether hb
// speaks for the node now (it is not a replaced instance's late backlog).
func (f *Fleet) heardInstance(n *nodeState, hb telemetry.Heartbeat, now time.Time) bool {
	if hb.Instance == "" {
		return true // an agent too old to say
	}
	heard := Instance{ID: hb.Instance, BootID: hb.BootID, LastHeard: now}
	if c := n.Conflict; c != nil {
		for i := range c.Instances {
			if c.Instances[i].ID == heard.ID {
				c.Instances[i] = heard
			}
		}
	}
	if heard.ID == n.speaker.ID {
		n.speaker = heard
		return true
	}
	window := conflictWindow * f.opts.HeartbeatInterval
	n.replaced = slices.DeleteFunc(n.replaced, func(r replaced) bool { return now.Sub(r.at) > window })
	i := slices.IndexFunc(n.replaced, func(r replaced) bool { return r.ID == heard.ID })
	if i >= 0 {
		if hb.Seq < n.replaced[i].below {
			return false // sent before it was replaced (a restart's backlog), arriving late
		}
		if n.Conflict == nil {
			n.Conflict = &Conflict{Since: now, Instances: []Instance{heard, n.speaker}}
			f.addEvent(n.ID, telemetry.Event{Time: now, Severity: telemetry.Critical, Kind: "node", Subject: n.ID,
				New: "conflict", Message: fmt.Sprintf("node %s is claimed by two live agents, whose heartbeats alternate: "+
					"instance %s (boot %s) and instance %s (boot %s)", n.ID, heard.ID, heard.BootID, n.speaker.ID, n.speaker.BootID)})
		}
		n.replaced = slices.Delete(n.replaced, i, i+1)
	}
	if n.speaker.ID != "" {
		n.replaced = append(n.replaced, replaced{Instance: n.speaker, at: now, below: hb.Seq})
	}
	n.speaker = heard
	return true
}

// utilization keeps the headline figures of a node's latest batches.
func utilization(n *nodeState, b telemetry.Batch) {
	if n.Utilization == nil {
		n.Utilization = map[string]float64{}
	}
	disk, seenDisk := 0.0, false
	for _, p := range b.Points {
		switch {
		case p.Name == "host.cpu.busy_percent" && p.Tags["cpu"] == "total":
			n.Utilization["cpu_percent"] = p.Value
		case p.Name == "host.memory.used_percent":
			n.Utilization["memory_percent"] = p.Value
		case p.Name == "host.load1":
			n.Utilization["load1"] = p.Value
		case p.Name == "fs.used_percent":
			disk, seenDisk = max(disk, p.Value), true
		}
	}
	if seenDisk {
		n.Utilization["disk_percent"] = disk
	}
}

// presence applies st, the retained state of message id.
func (f *Fleet) presence(n *nodeState, id msgID, st telemetry.State, now time.Time) {
	switch {
	case st.State == online:
		f.setOnline(n, now, "the node said online")
	case st.State == upgrading:
		f.setUpgrading(n, id, st, now)
	case st.Clean:
		f.setOffline(n, now, telemetry.Warning, "the node said "+st.State+", stopping cleanly")
	case n.State == upgrading:
		// The last will of the session that handed over, whose DISCONNECT
		// did not reach the broker: the node's deadline judges it.
	case st.State == offline:
		f.setOffline(n, now, telemetry.Critical, "last will: the connection broke")
	default:
		f.setOffline(n, now, telemetry.Critical, "the node said "+st.State)
	}
}

// setUpgrading records a node's hand-over to a new image of itself, with
// the deadline it announced, counted from now and capped at maxUpgrading.
func (f *Fleet) setUpgrading(n *nodeState, id msgID, st telemetry.State, now time.Time) {
	if n.State == upgrading && id == n.announced {
		return // the same announcement again: a redelivery, or retained and read again
	}
	back := 3 * f.opts.HeartbeatInterval
	if st.BackSec > 0 {
		back = min(time.Duration(st.BackSec)*time.Second, maxUpgrading)
	}
	doing := "reloading"
	n.handover = "reload"
	if st.NextVersion != "" && st.NextVersion != n.Version {
		doing, n.handover = "upgrading to "+st.NextVersion, "upgrade to "+st.NextVersion
	}
	n.announced = id
	f.setState(n, upgrading, telemetry.Event{Time: now, Severity: telemetry.Info,
		Message: fmt.Sprintf("node %s is %s, back within %s", n.ID, doing, seconds(back))})
	n.Upgrading = &Upgrading{Since: now, Until: now.Add(back), To: st.NextVersion}
}

// setOnline marks a node online, or back from its hand-over.
func (f *Fleet) setOnline(n *nodeState, now time.Time, why string) {
	msg := fmt.Sprintf("node %s is online (%s)", n.ID, why)
	switch n.State {
	case online:
		return
	case upgrading:
		msg = fmt.Sprintf("node %s is back from its %s after %s (%s)", n.ID, n.handover, seconds(now.Sub(n.Upgrading.Since)), why)
	}
	f.setState(n, online, telemetry.Event{Time: now, Severity: telemetry.Info, Message: msg})
}

// setOffline marks a node offline, with an alert: critical when it is lost,
// a warning when it stopped on purpose.
func (f *Fleet) setOffline(n *nodeState, now time.Time, severity telemetry.Severity, why string) {
	if n.State == offline {
		return
	}
	f.setState(n, offline, telemetry.Event{Time: now, Severity: severity, Message: fmt.Sprintf("node %s is offline (%s)", n.ID, why)})
}

// setState moves n to state and raises e about it.
func (f *Fleet) setState(n *nodeState, state string, e telemetry.Event) {
	e.Kind, e.Subject, e.Old, e.New = "node", n.ID, n.State, state
	n.State, n.Online, n.Upgrading = state, state == online, nil
	f.addEvent(n.ID, e)
}

// seconds writes d as whole seconds: "90s", not "1m30s".
func seconds(d time.Duration) string {
	return fmt.Sprintf("%ds", int64(d.Round(time.Second)/time.Second))
}

func (f *Fleet) addEvent(node string, e telemetry.Event) {
	f.nextID++
	f.events = append(f.events, EventRecord{ID: f.nextID, Node: node, Event: e})
	if len(f.events) > f.opts.KeepEvents {
		f.events = f.events[len(f.events)-f.opts.KeepEvents:]
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// Check marks nodes offline that missed three heartbeats, or that are not
// back from a hand-over by its deadline (missed heartbeats do not count
// before it), ends conflicts in which one agent fell silent, and raises the
// events of refused messages that were folded (see refusalEvery).
func (f *Fleet) Check(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushRefusals(now)
	deadline := 3 * f.opts.HeartbeatInterval
	for _, n := range f.nodes {
		switch {
		case n.State == online && now.Sub(n.LastSeen) > deadline && now.Sub(n.LastHeartbeat) > deadline:
			f.setOffline(n, now, telemetry.Critical, fmt.Sprintf("no heartbeat for %s", now.Sub(n.LastHeartbeat).Round(time.Second)))
		case n.State == upgrading && now.After(n.Upgrading.Until):
			f.setOffline(n, now, telemetry.Critical, fmt.Sprintf("did not come back from its %s within %s", n.handover,
				seconds(n.Upgrading.Until.Sub(n.Upgrading.Since))))
		}
		if c := n.Conflict; c != nil {
			speaks, silent := c.Instances[0], c.Instances[1]
			if speaks.LastHeard.Before(silent.LastHeard) {
				speaks, silent = silent, speaks
			}
			if now.Sub(speaks.LastHeard) <= deadline && now.Sub(silent.LastHeard) > conflictQuiet*f.opts.HeartbeatInterval {
				n.Conflict = nil
				f.addEvent(n.ID, telemetry.Event{Time: now, Severity: telemetry.Info, Kind: "node", Subject: n.ID,
					Old: "conflict", New: "resolved", Message: fmt.Sprintf("node %s: instance %s (boot %s) silent for %s; "+
						"only instance %s (boot %s) speaks for it now", n.ID, silent.ID, silent.BootID,
						now.Sub(silent.LastHeard).Round(time.Second), speaks.ID, speaks.BootID)})
			}
		}
	}
}

// Nodes returns every node, by id.
func (f *Fleet) Nodes() []Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Node, 0, len(f.nodes))
	for _, n := range f.nodes {
		c := n.Node
		if n.Upgrading != nil {
			up := *n.Upgrading
			c.Upgrading = &up
		}
		if n.Conflict != nil {
			conflict := *n.Conflict
			conflict.Instances = slices.Clone(conflict.Instances)
			c.Conflict = &conflict
		}
		if n.Utilization != nil {
			c.Utilization = make(map[string]float64, len(n.Utilization))
			for k, v := range n.Utilization {
				c.Utilization[k] = v
			}
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Events returns the events with an id above after, and a channel closed
// when a newer one arrives (for following).
func (f *Fleet) Events(after uint64) ([]EventRecord, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, _ := slices.BinarySearchFunc(f.events, after+1, func(e EventRecord, id uint64) int {
		return int(int64(e.ID) - int64(id))
	})
	return slices.Clone(f.events[i:]), f.changed
}
