package config

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestDefaultYAMLIsTheDefault(t *testing.T) {
	c, err := Parse("default.yaml", DefaultYAML())
	if err != nil {
		t.Fatalf("default.yaml does not pass validation:\n%v", err)
	}
	want := Default()
	c.origin, want.origin = nil, nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("parsing default.yaml over the defaults changed them:\n got %+v\nwant %+v", c, want)
	}
}

// Every key of Config appears in default.yaml with a comment, and nothing else does.
func TestDefaultYAMLDocumentsEveryKey(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal(DefaultYAML(), &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		lastComment := "" // the comment of the nearest commented key before this one
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := joinKey(prefix, k.Value)
			if v.Kind == yaml.MappingNode {
				walk(v, key)
				continue
			}
			// A key is documented by its own comment, or, in a group such as
			// username/password, by being named in the comment of the group.
			if c := k.HeadComment + k.LineComment; c != "" {
				lastComment = c
			} else if !strings.Contains(lastComment, k.Value) {
				t.Errorf("default.yaml: %s has no comment and is not named in the one before it", key)
			}
			documented[key] = true
		}
	}
	walk(doc.Content[0], "")
	for _, k := range allKeys(reflect.TypeFor[Config](), "") {
		if !documented[k] {
			t.Errorf("default.yaml does not show %s", k)
		}
		delete(documented, k)
	}
	for k := range documented {
		t.Errorf("default.yaml shows %s, which Config does not have", k)
	}
}

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear in one problem line, in this order
	}{
		{"unknown key with suggestion", "log:\n  levle: debug\n",
			[]string{`f.yaml:2: log.levle: unknown key; did you mean "log.level"? (allowed here: format, level, output)`}},
		{"unknown key found in another section", "keepalive: 10s\n",
			[]string{`f.yaml:1: keepalive: unknown key; did you mean "uplink.keepalive"?`}},
		{"unknown key without a near miss", "log:\n  colour: red\n",
			[]string{`f.yaml:2: log.colour: unknown key (allowed here: format, level, output)`}},
		{"bad enum", "log:\n  level: verbose\n",
			[]string{`f.yaml:2: log.level: "verbose" is not allowed; want one of debug, info, warn, error`}},
		{"duration without unit", "heartbeat:\n  interval: 10\n",
			[]string{`f.yaml:2: heartbeat.interval: "10" has no unit`}},
		{"duration not a duration", "uplink:\n  keepalive: soon\n",
			[]string{`f.yaml:2: uplink.keepalive: "soon" is not a duration`}},
		{"duration out of range", "uplink:\n  keepalive: 20h\n",
			[]string{`uplink.keepalive: "20h0m0s" is not allowed; want a duration from 1s to 18h12m15s`}},
		{"size", "spool:\n  max_bytes: lots\n",
			[]string{`f.yaml:2: spool.max_bytes: "lots" is not a size such as 512KiB, 64MiB or 1GiB`}},
		{"size too small", "spool:\n  max_bytes: 4KiB\n",
			[]string{`f.yaml:2: spool.max_bytes: "4KiB" is not allowed; want at least 1MiB`}},
		{"list given a scalar", "uplink:\n  brokers: tcp://b:1883\n",
			[]string{`f.yaml:2: uplink.brokers: "tcp://b:1883" is not a list of strings`}},
		{"empty list", "uplink:\n  brokers: []\n",
			[]string{`f.yaml:2: uplink.brokers: the list is empty`}},
		{"bad broker", "uplink:\n  brokers: [tcp://ok:1883, 'http://b', 'tcp://b:0']\n",
			[]string{`uplink.brokers[1]: "http://b" is not allowed; want a URL with scheme`,
				`uplink.brokers[2]: "tcp://b:0" is not allowed; want a port from 1 to 65535`}},
		{"section given a scalar", "log: debug\n",
			[]string{`f.yaml:1: log: "debug" is not a mapping of keys (allowed keys: level, format, output)`}},
		{"duplicate key", "log:\n  level: debug\n  level: info\n",
			[]string{`f.yaml:3: log.level: set twice in the same mapping`}},
		{"relative path", "paths:\n  state_dir: var/lib\n",
			[]string{`f.yaml:2: paths.state_dir: "var/lib" is not allowed; want an absolute path`}},
		{"node id", "node:\n  id: a/b\n",
			[]string{`f.yaml:2: node.id: "a/b" is not allowed; want letters, digits`}},
		{"topic prefix wildcard", "uplink:\n  topic_prefix: edge/#\n",
			[]string{`f.yaml:2: uplink.topic_prefix: "edge/#" is not allowed`}},
		{"cert without key", "uplink:\n  cert_file: /etc/c.pem\n",
			[]string{`f.yaml:2: uplink.cert_file: is set but key_file is empty`}},
		{"bad listen", "statsd:\n  listen: 'example.com:8125'\nhttp:\n  listen: '127.0.0.1:http'\n",
			[]string{`f.yaml:2: statsd.listen: "example.com:8125" is not allowed`, `f.yaml:4: http.listen: "127.0.0.1:http" is not allowed`}},
		{"relative unix socket", "statsd:\n  listen: unix:statsd.sock\n",
			[]string{`f.yaml:2: statsd.listen: "unix:statsd.sock" is not allowed; want unix: followed by an absolute`}},
		{"list of sections", "tunnels:\n  openvpn:\n    - name: ctl\n      management: unix:/run/ctl.sock\n    - name: ctl\n      managment: 127.0.0.1:7505\n",
			[]string{`f.yaml:3: tunnels.openvpn[1].management: "" is not allowed; want unix:/path/to/socket`,
				`f.yaml:5: tunnels.openvpn[1].name: "ctl" is not allowed; want a name not used by another entry`,
				`f.yaml:6: tunnels.openvpn[1].managment: unknown key; did you mean "tunnels.openvpn[1].management"?`}},
		{"service selectors", "services:\n  - name: store\n    unit: store.service\n    process: storaged\n  - name: repl\n    pid_file: run/repl.pid\n",
			[]string{`f.yaml:2: services[0]: has 2 of pid_file, unit and process; want exactly one`,
				`f.yaml:6: services[1].pid_file: "run/repl.pid" is not allowed; want an absolute path`}},
		{"metric globs", "collect:\n  exclude: ['disk.*', '[bad']\n",
			[]string{`f.yaml:2: collect.exclude[1]: "[bad" is not allowed; want a glob`}},
		{"collector interval", "collect:\n  smart: 0s\n  host: 100ms\n",
			[]string{`f.yaml:3: collect.host: "100ms" is not allowed; want a duration from 1s to 24h0m0s`}},
		{"statsd limits", "statsd:\n  read_buffer: 1KiB\n  max_series: 0\nevents:\n  filesystem_full_percent: 120\n",
			[]string{`f.yaml:2: statsd.read_buffer: "1KiB" is not allowed; want a size from 64KiB to 1GiB`,
				`f.yaml:3: statsd.max_series: "0" is not allowed`,
				`f.yaml:5: events.filesystem_full_percent: "120" is not allowed; want a percentage from 1 to 100`}},
		{"syntax error", "log:\n  level: [\n",
			[]string{`f.yaml:2: invalid YAML: did not find expected node content`}},
		{"every problem, in line order", "log:\n  level: loud\n  formt: json\nspool:\n  max_bytes: 1B\n",
			[]string{`f.yaml:2: log.level`, `f.yaml:3: log.formt`, `f.yaml:5: spool.max_bytes`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.yaml))
			problems := Problems(err)
			if len(problems) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(problems), len(tt.want), err)
			}
			for i, want := range tt.want {
				if got := problems[i].String(); !strings.Contains(got, want) {
					t.Errorf("problem %d:\n got %s\nwant it to contain %s", i, got, want)
				}
			}
		})
	}
}

func TestParseValid(t *testing.T) {
	c, err := Parse("f.yaml", []byte(`
node: {id: nas-01}
log: {level: debug, format: json}
uplink:
  brokers: [ssl://a.example:8883, wss://b.example/mqtt]
  topic_prefix: fleet/eu
  cert_file: /etc/edgeagent/node.pem
  key_file: /etc/edgeagent/node.key
  keepalive: 1m
spool: {max_bytes: 1GiB}
statsd: {listen: unix:/run/edgeagent/statsd.sock}
http: {listen: ""}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.ID != "nas-01" || c.Log.Format != "json" || c.Uplink.Keepalive != time.Minute ||
		c.Spool.MaxBytes != 1<<30 || len(c.Uplink.Brokers) != 2 || c.HTTP.Listen != "" {
		t.Errorf("values not applied: %+v", c)
	}
	if c.Paths.StateDir != "/var/lib/edgeagent" || c.Heartbeat.Interval != 10*time.Second {
		t.Errorf("keys not in the file lost their defaults: %+v", c)
	}
	for _, empty := range []string{"", "# nothing\n", "log:\n"} {
		if _, err := Parse("f.yaml", []byte(empty)); err != nil {
			t.Errorf("Parse(%q): %v", empty, err)
		}
	}
}

func TestOverride(t *testing.T) {
	c := Default()
	if err := c.Override("--broker", "uplink.brokers", "tcp://a:1883", "tcp://b:1883"); err != nil {
		t.Fatal(err)
	}
	if err := c.Override("--log-level", "log.level", "debug"); err != nil {
		t.Fatal(err)
	}
	if err := c.Override("--node-id", "node.id", "12345"); err != nil { // digits stay a string
		t.Fatal(err)
	}
	if got := c.Uplink.Brokers; len(got) != 2 || got[1] != "tcp://b:1883" {
		t.Errorf("brokers = %v", got)
	}
	if c.Log.Level != "debug" || c.Node.ID != "12345" {
		t.Errorf("overrides not applied: %+v", c)
	}

	if err := c.Override("--log-level", "log.level", "loud"); err != nil {
		t.Fatal(err) // a string is a string; Validate judges it
	}
	err := c.Validate()
	if got := err.Error(); got != `flag --log-level: log.level: "loud" is not allowed; want one of debug, info, warn, error` {
		t.Errorf("Validate after a bad override: %s", got)
	}
	if err := c.Override("--beat", "heartbeat.interval", "5"); err == nil || !strings.Contains(err.Error(), `flag --beat: heartbeat.interval: "5" has no unit`) {
		t.Errorf("duration override without unit: %v", err)
	}
	if err := c.Override("--x", "no.such.key", "1"); err == nil {
		t.Error("override of an unknown key succeeded")
	}
}

func TestByteSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want ByteSize
		str  string
	}{
		{"64MiB", 64 << 20, "64MiB"},
		{"512 KiB", 512 << 10, "512KiB"},
		{"1GiB", 1 << 30, "1GiB"},
		{"1MB", 1000 * 1000, "1000000B"},
		{"4096", 4096, "4KiB"},
		{"1536KiB", 1536 << 10, "1536KiB"},
		{"10B", 10, "10B"},
	} {
		got, err := ParseByteSize(tt.in)
		if err != nil || got != tt.want || got.String() != tt.str {
			t.Errorf("ParseByteSize(%q) = %d (%s), %v; want %d (%s)", tt.in, got, got, err, tt.want, tt.str)
		}
	}
	for _, bad := range []string{"", "MiB", "-1MiB", "1.5GiB", "1TiB", "99999999999GiB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded", bad)
		}
	}
}

// FuzzParse: any input yields a config or problems, never a panic, and a
// config only when it validates.
func FuzzParse(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add([]byte("log:\n  level: debug\nuplink:\n  brokers: [tcp://a:1]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config that does not validate: %v", verr)
			}
		}
	})
}
