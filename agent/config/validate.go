package config

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

var (
	logLevels     = []string{"debug", "info", "warn", "error"}
	logFormats    = []string{"text", "json"}
	brokerSchemes = []string{"tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss"}
	nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
)

// ValidNodeID reports whether id can serve as an MQTT client id and topic level.
func ValidNodeID(id string) bool { return nodeIDPattern.MatchString(id) }

const nodeIDRule = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters"

// Validate checks every value against what is allowed and reports all problems.
func (c *Config) Validate() error {
	v := validator{origin: c.origin}

	if c.Node.ID != "" && !ValidNodeID(c.Node.ID) {
		v.bad("node.id", c.Node.ID, nodeIDRule)
	}
	v.absPath("node.id_file", c.Node.IDFile, true)

	v.oneOf("log.level", c.Log.Level, logLevels)
	v.oneOf("log.format", c.Log.Format, logFormats)
	if o := c.Log.Output; o != "stderr" && o != "syslog" && !filepath.IsAbs(o) {
		v.bad("log.output", o, "stderr, syslog or an absolute file path")
	}

	v.absPath("paths.state_dir", c.Paths.StateDir, false)
	v.absPath("paths.spool_dir", c.Paths.SpoolDir, true)
	v.absPath("paths.plugin_dir", c.Paths.PluginDir, false)
	v.absPath("paths.slots_dir", c.Paths.SlotsDir, true)
	v.absPath("paths.sysfs", c.Paths.Sysfs, false)
	v.absPath("paths.procfs", c.Paths.Procfs, false)

	if len(c.Uplink.Brokers) == 0 {
		v.problem("uplink.brokers", "the list is empty; at least one broker URL is required, such as tcp://broker:1883")
	}
	for i, b := range c.Uplink.Brokers {
		if msg := brokerProblem(b); msg != "" {
			v.bad(fmt.Sprintf("uplink.brokers[%d]", i), b, msg)
		}
	}
	if p := c.Uplink.TopicPrefix; p == "" || strings.ContainsAny(p, "+#\x00") || strings.HasPrefix(p, "/") ||
		strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		v.bad("uplink.topic_prefix", p, "one or more topic levels separated by '/', without '+', '#' or empty levels")
	}
	v.absPath("uplink.ca_file", c.Uplink.CAFile, true)
	v.absPath("uplink.cert_file", c.Uplink.CertFile, true)
	v.absPath("uplink.key_file", c.Uplink.KeyFile, true)
	switch {
	case c.Uplink.CertFile != "" && c.Uplink.KeyFile == "":
		v.problem("uplink.cert_file", "is set but key_file is empty; set both or neither")
	case c.Uplink.CertFile == "" && c.Uplink.KeyFile != "":
		v.problem("uplink.key_file", "is set but cert_file is empty; set both or neither")
	}
	v.duration("uplink.keepalive", c.Uplink.Keepalive, time.Second, 65535*time.Second) // MQTT's field is 16-bit seconds
	v.duration("uplink.connect_timeout", c.Uplink.ConnectTimeout, 100*time.Millisecond, 10*time.Minute)
	v.duration("uplink.publish_timeout", c.Uplink.PublishTimeout, 100*time.Millisecond, 10*time.Minute)
	v.duration("uplink.flush_interval", c.Uplink.FlushInterval, 100*time.Millisecond, time.Hour)
	v.duration("uplink.max_backoff", c.Uplink.MaxBackoff, time.Second, time.Hour)
	if c.Uplink.MaxMessage < 4<<10 || c.Uplink.MaxMessage > 192<<10 {
		// The controller refuses messages over 256 KiB; leave room for the envelope.
		v.bad("uplink.max_message", c.Uplink.MaxMessage.String(), "a size from 4KiB to 192KiB")
	}

	if c.Spool.MaxBytes < 1<<20 {
		v.bad("spool.max_bytes", c.Spool.MaxBytes.String(), "at least 1MiB")
	}
	v.duration("spool.fsync_interval", c.Spool.FsyncInterval, 10*time.Millisecond, time.Hour)

	if a := c.StatsD.Listen; a != "" {
		if path, ok := strings.CutPrefix(a, "unix:"); ok {
			if !filepath.IsAbs(path) {
				v.bad("statsd.listen", a, "unix: followed by an absolute socket path, such as unix:/run/edgeagent/statsd.sock")
			}
		} else if msg := hostPortProblem(a); msg != "" {
			v.bad("statsd.listen", a, msg+", or unix:PATH, or empty to disable")
		}
	}
	v.duration("statsd.flush_interval", c.StatsD.FlushInterval, time.Second, time.Hour)
	if c.StatsD.ReadBuffer < 64<<10 || c.StatsD.ReadBuffer > 1<<30 {
		v.bad("statsd.read_buffer", c.StatsD.ReadBuffer.String(), "a size from 64KiB to 1GiB")
	}
	if c.StatsD.MaxSeries < 1 || c.StatsD.MaxSeries > 1_000_000 {
		v.bad("statsd.max_series", strconv.Itoa(c.StatsD.MaxSeries), "a number from 1 to 1000000")
	}
	if a := c.HTTP.Listen; a != "" {
		if msg := hostPortProblem(a); msg != "" {
			v.bad("http.listen", a, msg+", or empty to disable")
		}
	}

	v.duration("heartbeat.interval", c.Heartbeat.Interval, time.Second, time.Hour)

	if c.Disks.Smartctl != "" {
		v.absPath("disks.smartctl", c.Disks.Smartctl, false)
	}
	v.duration("disks.smart_timeout", c.Disks.SmartTimeout, time.Second, 10*time.Minute)

	names := map[string]bool{}
	for i, o := range c.Tunnels.OpenVPN {
		key := fmt.Sprintf("tunnels.openvpn[%d]", i)
		v.uniqueName(key+".name", o.Name, "tunnel", names)
		if path, ok := strings.CutPrefix(o.Management, "unix:"); ok {
			if !filepath.IsAbs(path) {
				v.bad(key+".management", o.Management, "unix: followed by an absolute socket path")
			}
		} else if msg := hostPortProblem(o.Management); msg != "" {
			v.bad(key+".management", o.Management, "unix:/path/to/socket, or "+msg)
		}
		v.absPath(key+".password_file", o.PasswordFile, true)
	}
	v.duration("tunnels.openvpn_grace", c.Tunnels.OpenVPNGrace, time.Second, time.Hour)
	v.duration("tunnels.wireguard_stale_after", c.Tunnels.WireGuardStaleAfter, time.Second, 24*time.Hour)

	for _, k := range []struct {
		key string
		d   time.Duration
	}{
		{"collect.host", c.Collect.Host}, {"collect.disk", c.Collect.Disk}, {"collect.net", c.Collect.Net},
		{"collect.tunnel", c.Collect.Tunnel}, {"collect.process", c.Collect.Process},
		{"collect.smart", c.Collect.Smart}, {"collect.agent", c.Collect.Agent},
	} {
		if k.d != 0 {
			v.duration(k.key, k.d, time.Second, 24*time.Hour)
		}
	}
	for _, l := range []struct {
		key   string
		globs []string
	}{{"collect.include", c.Collect.Include}, {"collect.exclude", c.Collect.Exclude}} {
		for i, g := range l.globs {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				v.bad(fmt.Sprintf("%s[%d]", l.key, i), g, "a glob such as disk.* or *.p99")
			}
		}
	}

	if p := c.Events.FilesystemFullPercent; p < 1 || p > 100 {
		v.bad("events.filesystem_full_percent", strconv.Itoa(p), "a percentage from 1 to 100")
	}
	if c.Events.Burst < 1 || c.Events.Burst > 1000 {
		v.bad("events.burst", strconv.Itoa(c.Events.Burst), "a number from 1 to 1000")
	}
	v.duration("events.rate_limit", c.Events.RateLimit, time.Second, 24*time.Hour)

	svcNames := map[string]bool{}
	for i, s := range c.Services {
		key := fmt.Sprintf("services[%d]", i)
		v.uniqueName(key+".name", s.Name, "service", svcNames)
		set := 0
		for _, f := range []string{s.PIDFile, s.Unit, s.Process} {
			if f != "" {
				set++
			}
		}
		if set != 1 {
			v.problem(key, fmt.Sprintf("has %d of pid_file, unit and process; want exactly one", set))
		}
		v.absPath(key+".pid_file", s.PIDFile, true)
		if strings.ContainsAny(s.Unit, "/ ") {
			v.bad(key+".unit", s.Unit, "a systemd unit name such as storaged.service")
		}
		if strings.ContainsAny(s.Process, "/") {
			v.bad(key+".process", s.Process, "a process name without a path, such as storaged")
		}
	}

	v.absPath("control.socket", c.Control.Socket, true)
	for i, k := range c.Update.TrustedKeys {
		v.absPath(fmt.Sprintf("update.trusted_keys[%d]", i), k, false)
	}
	v.duration("update.health_timeout", c.Update.HealthTimeout, 5*time.Second, time.Hour)
	if c.Update.Attempts < 1 || c.Update.Attempts > 10 {
		v.bad("update.attempts", strconv.Itoa(c.Update.Attempts), "1 to 10")
	}
	if c.Commands.Concurrency < 1 || c.Commands.Concurrency > 64 {
		v.bad("commands.concurrency", strconv.Itoa(c.Commands.Concurrency), "a number from 1 to 64")
	}
	if c.Commands.Queue < 0 || c.Commands.Queue > 10000 {
		v.bad("commands.queue", strconv.Itoa(c.Commands.Queue), "a number from 0 to 10000")
	}
	v.duration("commands.timeout", c.Commands.Timeout, time.Second, 24*time.Hour)
	v.duration("commands.max_timeout", c.Commands.MaxTimeout, c.Commands.Timeout, 24*time.Hour)
	if c.Commands.OutputLimit < 1<<10 || c.Commands.OutputLimit > 16<<20 {
		v.bad("commands.output_limit", c.Commands.OutputLimit.String(), "a size from 1KiB to 16MiB")
	}

	if len(v.problems) == 0 {
		return nil
	}
	return &Error{Problems: v.problems}
}

type validator struct {
	origin   map[string]string
	problems []Problem
}

func (v *validator) problem(key, msg string) {
	where, ok := v.origin[key]
	if !ok {
		base, _, _ := strings.Cut(key, "[") // brokers[2] was set where brokers was
		where = v.origin[base]
	}
	v.problems = append(v.problems, Problem{Where: where, Key: key, Msg: msg})
}

func (v *validator) bad(key, value, allowed string) {
	v.problem(key, fmt.Sprintf("%q is not allowed; want %s", value, allowed))
}

// uniqueName checks the name of one entry of a list whose entries are
// reported by name.
func (v *validator) uniqueName(key, name, what string, seen map[string]bool) {
	switch {
	case name == "":
		v.problem(key, "must not be empty; every "+what+" needs a name for reports")
	case seen[name]:
		v.bad(key, name, "a name not used by another entry")
	}
	seen[name] = true
}

func (v *validator) oneOf(key, value string, allowed []string) {
	if !slices.Contains(allowed, value) {
		v.bad(key, value, "one of "+strings.Join(allowed, ", "))
	}
}

func (v *validator) absPath(key, value string, emptyOK bool) {
	switch {
	case value == "" && emptyOK:
	case value == "":
		v.problem(key, "must not be empty; want an absolute path")
	case !filepath.IsAbs(value):
		v.bad(key, value, "an absolute path (the agent's working directory is not fixed)")
	}
}

func (v *validator) duration(key string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		v.bad(key, d.String(), fmt.Sprintf("a duration from %s to %s", lo, hi))
	}
}

func brokerProblem(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "a URL such as tcp://broker:1883 or ssl://broker:8883"
	}
	if !slices.Contains(brokerSchemes, u.Scheme) {
		return "a URL with scheme " + strings.Join(brokerSchemes, ", ")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "a port from 1 to 65535"
		}
	}
	return ""
}

func hostPortProblem(addr string) string {
	const want = "host:port with an IP address or localhost and a port from 1 to 65535 (such as 127.0.0.1:8125)"
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return want
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return want
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return want
	}
	return ""
}
