package statsd

import "time"

// Gauge is one gauge's last value, handed from one image of the agent to
// the next at a reload, so that a +N/-N sent after it still applies to the
// value the clients built up.
type Gauge struct {
	Key   string            `json:"key"` // the series key: type, name and tags
	Name  string            `json:"name"`
	Tags  map[string]string `json:"tags,omitempty"`
	Value float64           `json:"value"`
}

// Gauges returns every gauge the server remembers. Call it once Run has
// returned (its last flush done).
func (s *Server) Gauges() []Gauge {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Gauge
	for key, ser := range s.agg.series {
		if ser.kind == gauge {
			out = append(out, Gauge{Key: key, Name: ser.name, Tags: ser.tags, Value: ser.value})
		}
	}
	return out
}

// RestoreGauges takes gauges an earlier image remembered, before Run; they
// are not sent until updated again, as after any flush.
func (s *Server) RestoreGauges(gauges []Gauge) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for _, g := range gauges {
		if len(g.Key) == 0 || kind(g.Key[0]) != gauge || len(s.agg.series) >= s.agg.maxSeries {
			continue
		}
		s.agg.series[g.Key] = &series{name: g.Name, kind: gauge, tags: g.Tags, value: g.Value, updated: now}
	}
}
