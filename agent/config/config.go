// Package config is edgeagent's configuration: one YAML file whose documented
// defaults are embedded (default.yaml), strict decoding that names the key, the
// value and what is allowed for every problem, and overrides from flags.
package config

import (
	"cmp"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the documented default configuration, every key commented.
func DefaultYAML() []byte { return defaultYAML }

// Config is the agent's whole configuration.
type Config struct {
	Node      Node      `yaml:"node"`
	Log       Log       `yaml:"log"`
	Paths     Paths     `yaml:"paths"`
	Uplink    Uplink    `yaml:"uplink"`
	Spool     Spool     `yaml:"spool"`
	StatsD    StatsD    `yaml:"statsd"`
	HTTP      HTTP      `yaml:"http"`
	Heartbeat Heartbeat `yaml:"heartbeat"`
	Disks     Disks     `yaml:"disks"`
	Tunnels   Tunnels   `yaml:"tunnels"`
	Collect   Collect   `yaml:"collect"`
	Events    Events    `yaml:"events"`
	Services  []Service `yaml:"services"`
	Commands  Commands  `yaml:"commands"`
	Control   Control   `yaml:"control"`
	Update    Update    `yaml:"update"`

	// origin maps a dotted key to where its value was set ("file:line" or a
	// flag), so that a problem found later can point at it.
	origin map[string]string
}

// Node identifies this appliance.
type Node struct {
	ID     string `yaml:"id"`
	IDFile string `yaml:"id_file"`
}

// Log configures log/slog output.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
	Output string `yaml:"output"`
}

// Paths are every place on disk the agent reads or writes.
type Paths struct {
	StateDir  string `yaml:"state_dir"`
	SpoolDir  string `yaml:"spool_dir"`
	PluginDir string `yaml:"plugin_dir"`
	SlotsDir  string `yaml:"slots_dir"`
	Sysfs     string `yaml:"sysfs"`
	Procfs    string `yaml:"procfs"`
}

// Uplink configures the MQTT session to the controller.
type Uplink struct {
	Brokers        []string      `yaml:"brokers"`
	TopicPrefix    string        `yaml:"topic_prefix"`
	Username       string        `yaml:"username"`
	Password       string        `yaml:"password"`
	CAFile         string        `yaml:"ca_file"`
	CertFile       string        `yaml:"cert_file"`
	KeyFile        string        `yaml:"key_file"`
	Keepalive      time.Duration `yaml:"keepalive"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	FlushInterval  time.Duration `yaml:"flush_interval"`
	MaxMessage     ByteSize      `yaml:"max_message"`
	MaxBackoff     time.Duration `yaml:"max_backoff"`
}

// Spool configures the on-flash store-and-forward queue.
type Spool struct {
	MaxBytes      ByteSize      `yaml:"max_bytes"`
	FsyncInterval time.Duration `yaml:"fsync_interval"`
}

// StatsD configures the embedded StatsD server.
type StatsD struct {
	Listen        string        `yaml:"listen"`
	FlushInterval time.Duration `yaml:"flush_interval"`
	ReadBuffer    ByteSize      `yaml:"read_buffer"`
	MaxSeries     int           `yaml:"max_series"`
}

// HTTP configures the local status endpoint.
type HTTP struct {
	Listen string `yaml:"listen"`
}

// Heartbeat configures the liveness messages.
type Heartbeat struct {
	Interval time.Duration `yaml:"interval"`
}

// Disks configures what the disk inventory includes and how health is read.
type Disks struct {
	IncludeLoop  bool          `yaml:"include_loop"`
	IncludeRAM   bool          `yaml:"include_ram"`
	Smartctl     string        `yaml:"smartctl"`
	SmartTimeout time.Duration `yaml:"smart_timeout"`
}

// Tunnels configures which VPN tunnels are watched and how they are judged.
type Tunnels struct {
	OpenVPN             []OpenVPN     `yaml:"openvpn"`
	OpenVPNGrace        time.Duration `yaml:"openvpn_grace"`
	WireGuardStaleAfter time.Duration `yaml:"wireguard_stale_after"`
}

// OpenVPN names one OpenVPN instance's management interface.
type OpenVPN struct {
	Name         string `yaml:"name"`
	Management   string `yaml:"management"`
	PasswordFile string `yaml:"password_file"`
}

// Collect sets each collector's interval (zero turns it off) and which
// metrics leave the node.
type Collect struct {
	Host    time.Duration `yaml:"host"`
	Disk    time.Duration `yaml:"disk"`
	Net     time.Duration `yaml:"net"`
	Tunnel  time.Duration `yaml:"tunnel"`
	Process time.Duration `yaml:"process"`
	Smart   time.Duration `yaml:"smart"`
	Agent   time.Duration `yaml:"agent"`
	Include []string      `yaml:"include"`
	Exclude []string      `yaml:"exclude"`
}

// Events configures when state changes are reported.
type Events struct {
	FilesystemFullPercent int           `yaml:"filesystem_full_percent"`
	Burst                 int           `yaml:"burst"`
	RateLimit             time.Duration `yaml:"rate_limit"`
}

// Commands configures how the controller's requests are carried out.
type Commands struct {
	Concurrency int           `yaml:"concurrency"`
	Queue       int           `yaml:"queue"`
	Timeout     time.Duration `yaml:"timeout"`
	MaxTimeout  time.Duration `yaml:"max_timeout"`
	OutputLimit ByteSize      `yaml:"output_limit"`
}

// Redacted returns the configuration as YAML with secrets replaced, for
// showing to an operator.
func (c *Config) Redacted() ([]byte, error) {
	r := *c
	if r.Uplink.Password != "" {
		r.Uplink.Password = "<redacted>"
	}
	return yaml.Marshal(&r)
}

// Update configures self-upgrade.
type Update struct {
	TrustedKeys   []string      `yaml:"trusted_keys"`
	HealthTimeout time.Duration `yaml:"health_timeout"`
	Attempts      int           `yaml:"attempts"`
}

// SlotsDir is paths.slots_dir, or its default under the state directory.
func (c *Config) SlotsDir() string {
	if c.Paths.SlotsDir != "" {
		return c.Paths.SlotsDir
	}
	return filepath.Join(c.Paths.StateDir, "slots")
}

// Control configures the agent's local control socket.
type Control struct {
	Socket string `yaml:"socket"`
}

// Service names a daemon whose health the process collector reports.
type Service struct {
	Name    string `yaml:"name"`
	PIDFile string `yaml:"pid_file"`
	Unit    string `yaml:"unit"`
	Process string `yaml:"process"`
}

// Default returns the default configuration, decoded from default.yaml so that
// the documentation and the defaults cannot drift apart.
func Default() *Config {
	c := &Config{origin: map[string]string{}}
	if err := c.decode("default.yaml", defaultYAML); err != nil {
		panic("config: embedded default.yaml is invalid: " + err.Error())
	}
	// Origins point at the user's file, not at the defaults.
	c.origin = map[string]string{}
	return c
}

// Load reads and validates the file at path on top of the defaults.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data (named name in messages) on top of the defaults and
// validates the result. Every problem found is reported, as a *Error.
func Parse(name string, data []byte) (*Config, error) {
	c := Default()
	// A value that could not be decoded keeps its default, so validating after
	// a failed decode reports the remaining problems without repeating those.
	problems := append(Problems(c.decode(name, data)), Problems(c.Validate())...)
	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b Problem) int { return cmp.Compare(a.line(), b.line()) })
		return nil, &Error{Problems: problems}
	}
	return c, nil
}

// decode applies a YAML document to c, reporting unknown keys and ill-typed
// values as problems.
func (c *Config) decode(name string, data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return &Error{Problems: []Problem{syntaxProblem(name, err)}}
	}
	if len(doc.Content) == 0 { // an empty file: all defaults
		return nil
	}
	d := decoder{file: name, origin: c.origin}
	d.value(doc.Content[0], structValue(c), "")
	return d.err()
}

// Problem is one thing wrong with a configuration.
type Problem struct {
	Where string // "file:line" or "flag --name"; empty when unknown
	Key   string // dotted key, such as "log.level"
	Msg   string // what is wrong and what is allowed
}

func (p Problem) String() string {
	s := p.Msg
	if p.Key != "" {
		s = p.Key + ": " + s
	}
	if p.Where != "" {
		s = p.Where + ": " + s
	}
	return s
}

// line is the line number in Where, for ordering; problems without one sort last.
func (p Problem) line() int {
	if i := strings.LastIndexByte(p.Where, ':'); i >= 0 {
		if n, err := strconv.Atoi(p.Where[i+1:]); err == nil {
			return n
		}
	}
	return math.MaxInt
}

// Error lists every problem found in a configuration.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	s := ""
	for i, p := range e.Problems {
		if i > 0 {
			s += "\n"
		}
		s += p.String()
	}
	return s
}

// Problems returns the problems carried by err, or nil when err is not a config
// error.
func Problems(err error) []Problem {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Problems
	}
	return nil
}
