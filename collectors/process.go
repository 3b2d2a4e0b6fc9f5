package collectors

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/seed69aca190/edgeagent/hal/proc"
	"github.com/seed69aca190/edgeagent/internal/text"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// Service states, as supervisorctl names them.
const (
	Running  = "RUNNING"
	Stopped  = "STOPPED"
	Flapping = "FLAPPING" // running, but restarted too often lately
)

// Service names a daemon that makes the appliance work, found by exactly one
// of a pid file, a systemd unit or an exact process name.
type Service struct {
	Name    string `json:"name"`
	PIDFile string `json:"pid_file,omitempty"`
	Unit    string `json:"unit,omitempty"`
	Process string `json:"process,omitempty"`
}

// ServiceStatus is what `supervisorctl status` tells an operator.
type ServiceStatus struct {
	Service
	State      string    `json:"state"`
	PID        int       `json:"pid,omitempty"`
	Since      time.Time `json:"since"` // when it entered State (started, for RUNNING)
	Restarts   int       `json:"restarts"`
	RSSBytes   uint64    `json:"rss_bytes,omitempty"`
	CPUPercent float64   `json:"cpu_percent,omitempty"`
	Reason     string    `json:"reason,omitempty"` // why it counts as stopped
}

// Processes watches the configured services: state, pid, uptime, RSS, CPU
// and restarts, with events when one stops, starts or flaps.
type Processes struct {
	fs       proc.FS
	services []Service
	// A service restarted FlapRestarts times within FlapWindow is flapping.
	FlapRestarts int
	FlapWindow   time.Duration

	mu    sync.Mutex
	state map[string]*serviceState
}

type serviceState struct {
	status    ServiceStatus
	identity  string        // pid and start time of the process last seen
	age       time.Duration // of that process, when last read
	restarts  []time.Time
	cpu       float64
	cpuAt     time.Time
	everFound bool
}

// NewProcesses returns the process collector for services.
func NewProcesses(sysfs, procfs string, services []Service) *Processes {
	return &Processes{fs: proc.New(sysfs, procfs), services: services, FlapRestarts: 3, FlapWindow: 5 * time.Minute,
		state: map[string]*serviceState{}}
}

// Name implements Collector.
func (*Processes) Name() string { return "process" }

// Status returns every service's status, in configuration order.
func (c *Processes) Status() []ServiceStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ServiceStatus
	for _, s := range c.services {
		if st, ok := c.state[s.Name]; ok {
			out = append(out, st.status)
		}
	}
	return out
}

func (c *Processes) find(s Service) (proc.Process, error) {
	switch {
	case s.PIDFile != "":
		return c.fs.PIDFile(s.PIDFile)
	case s.Unit != "":
		return c.fs.Unit(s.Unit)
	default:
		return c.fs.Named(s.Process)
	}
}

// Collect implements Collector.
func (c *Processes) Collect(ctx context.Context, r *Report) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.services {
		st := c.state[s.Name]
		if st == nil {
			st = &serviceState{status: ServiceStatus{Service: s}}
			c.state[s.Name] = st
		}
		old := st.status.State
		p, err := c.find(s)
		if err != nil {
			c.stopped(st, r.Time, err)
		} else {
			c.running(st, p, r.Time)
		}
		c.report(r, st, old)
	}
	return nil
}

func (c *Processes) stopped(st *serviceState, now time.Time, err error) {
	if st.status.State != Stopped {
		st.status.Since = now
	}
	st.status.State, st.status.PID, st.status.RSSBytes, st.status.CPUPercent = Stopped, 0, 0, 0
	st.status.Reason = text.EscapeString(err.Error())
}

func (c *Processes) running(st *serviceState, p proc.Process, now time.Time) {
	id := p.Identity()
	if id != st.identity {
		if st.everFound { // a different process than last seen: a restart
			st.restarts = append(st.restarts, now)
			st.status.Restarts++
		}
		st.identity, st.everFound = id, true
		st.cpu, st.cpuAt = p.CPUSeconds, now
		st.status.CPUPercent = 0
	} else if secs := now.Sub(st.cpuAt).Seconds(); secs > 0 {
		st.status.CPUPercent = 100 * (p.CPUSeconds - st.cpu) / secs
		st.cpu, st.cpuAt = p.CPUSeconds, now
	}
	st.restarts = slices.DeleteFunc(st.restarts, func(t time.Time) bool { return now.Sub(t) > c.FlapWindow })
	state := Running
	if len(st.restarts) >= c.FlapRestarts {
		state = Flapping
	}
	switch {
	case state == Running:
		// Derived at every read: the wall clock may have stepped since.
		st.status.Since = now.Add(-p.Age)
	case state != st.status.State || st.status.PID != p.PID:
		st.status.Since = now
	}
	st.age = p.Age
	st.status.State, st.status.PID, st.status.RSSBytes, st.status.Reason = state, p.PID, p.RSSBytes, ""
}

func (c *Processes) report(r *Report, st *serviceState, old string) {
	s := st.status
	tags := []string{"service", s.Name}
	r.Add("process.up", bool01(s.State != Stopped), tags...)
	r.Add("process.restarts", float64(s.Restarts), tags...)
	if s.State != Stopped {
		r.Add("process.pid", float64(s.PID), tags...)
		r.Add("process.uptime_seconds", st.age.Seconds(), tags...)
		r.Add("process.rss_bytes", float64(s.RSSBytes), tags...)
		r.Add("process.cpu_percent", s.CPUPercent, tags...)
	}
	restarted := s.State != Stopped && len(st.restarts) > 0 && st.restarts[len(st.restarts)-1].Equal(r.Time)
	switch {
	case s.State == old && !(restarted && s.State == Running):
		return
	case old == "" && s.State == Running:
		return // found running at start: not news
	}
	switch s.State {
	case Stopped:
		r.Event(telemetry.Critical, "process", s.Name, old, Stopped, "service %s is not running: %s", s.Name, s.Reason)
	case Flapping:
		r.Event(telemetry.Warning, "process", s.Name, old, Flapping, "service %s restarted %d times within %s (pid %d now)",
			s.Name, len(st.restarts), c.FlapWindow, s.PID)
	case Running:
		how := "started"
		if restarted {
			how = "restarted"
		}
		r.Event(telemetry.Info, "process", s.Name, old, Running, "service %s %s (pid %d)", s.Name, how, s.PID)
	}
}
