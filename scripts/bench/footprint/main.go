// Command footprint measures what edgeagent costs a node, beside collectd
// doing the same job (cpu, load, memory, disk, df, interface, processes and
// its statsd plugin, every 10 s), over the same minutes on the same machine.
// The agents publish to a local mosquitto (not measured); collectd writes
// nowhere.
// Four daemons run at once: each of the two with a StatsD load of 1000
// metrics/s, and each idle (StatsD listening, no traffic). It samples RSS every second
// and reports the peak and mean RSS and the CPU share of one core.
//
//	go run ./scripts/bench/footprint -edgeagent dist/edgeagent-linux-amd64 [-duration 5m]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/hal/proc"
)

type daemon struct {
	name    string
	cmd     *exec.Cmd
	statsd  string // host:port where its StatsD server listens
	loaded  bool   // whether StatsD traffic is sent to it
	rssSum  float64
	rssPeak uint64
	samples int
	cpu0    float64
	cpu     float64
}

func main() {
	agentBin := flag.String("edgeagent", "dist/edgeagent-linux-amd64", "the edgeagent binary to measure")
	duration := flag.Duration("duration", 5*time.Minute, "how long to measure")
	rate := flag.Int("rate", 1000, "StatsD metrics per second sent to the loaded daemons")
	flag.Parse()
	if err := run(*agentBin, *duration, *rate); err != nil {
		fmt.Fprintln(os.Stderr, "footprint:", err)
		os.Exit(1)
	}
}

func run(agentBin string, duration time.Duration, rate int) error {
	collectd, err := exec.LookPath("collectd")
	if err != nil {
		if _, err = os.Stat("/usr/sbin/collectd"); err != nil {
			return fmt.Errorf("collectd not found: apt-get install collectd-core")
		}
		collectd = "/usr/sbin/collectd"
	}
	work, err := os.MkdirTemp("", "footprint")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	// The agents publish to a real broker, as in service; without one they
	// would be measured spooling to flash and reconnecting.
	broker, stopBroker, err := startMosquitto(work)
	if err != nil {
		return err
	}
	defer stopBroker()

	daemons := []*daemon{
		{name: "edgeagent, StatsD 1k/s", statsd: "127.0.0.1:18125", loaded: true},
		{name: "collectd, StatsD 1k/s", statsd: "127.0.0.1:18126", loaded: true},
		{name: "edgeagent, idle", statsd: "127.0.0.1:18127"},
		{name: "collectd, idle", statsd: "127.0.0.1:18128"},
	}
	for i, d := range daemons {
		dir := filepath.Join(work, fmt.Sprint(i))
		os.MkdirAll(dir, 0o755)
		if strings.HasPrefix(d.name, "edgeagent") {
			d.cmd = exec.Command(agentBin, "run", "--node-id", fmt.Sprintf("bench-%d", i), "--state-dir", dir,
				"--statsd", d.statsd, "--http", "", "--log-level", "warn", "--broker", broker)
		} else {
			conf := filepath.Join(dir, "collectd.conf")
			if err := os.WriteFile(conf, []byte(collectdConf(dir, d.statsd)), 0o644); err != nil {
				return err
			}
			d.cmd = exec.Command(collectd, "-f", "-C", conf)
		}
		d.cmd.Stdout, d.cmd.Stderr = nil, nil
		if err := d.cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", d.name, err)
		}
		defer func() { d.cmd.Process.Kill(); d.cmd.Wait() }()
	}
	time.Sleep(2 * time.Second) // past start-up: measure the steady state
	fs := proc.New("/sys", "/proc")
	for _, d := range daemons {
		p, err := fs.Process(d.cmd.Process.Pid)
		if err != nil {
			return fmt.Errorf("%s died at start", d.name)
		}
		d.cpu0 = p.CPUSeconds
	}
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	for _, d := range daemons {
		if d.loaded {
			go load(ctx, d.statsd, rate)
		}
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		<-tick.C
		for _, d := range daemons {
			p, err := fs.Process(d.cmd.Process.Pid)
			if err != nil {
				return fmt.Errorf("%s exited during the run", d.name)
			}
			d.rssSum += float64(p.RSSBytes)
			d.rssPeak = max(d.rssPeak, p.RSSBytes)
			d.samples++
			d.cpu = p.CPUSeconds - d.cpu0
		}
	}
	elapsed := time.Since(start)
	fmt.Printf("Footprint over %s, all four daemons at once, every collector at 10 s; RSS sampled each second\n\n", elapsed.Round(time.Second))
	fmt.Println("| daemon | RSS peak | RSS mean | CPU (% of one core) |")
	fmt.Println("|---|---|---|---|")
	for _, d := range daemons {
		fmt.Printf("| %s | %.1f MiB | %.1f MiB | %.3f %% |\n", d.name, mib(float64(d.rssPeak)), mib(d.rssSum/float64(d.samples)),
			100*d.cpu/elapsed.Seconds())
	}
	fmt.Println()
	for i := 0; i < 4; i += 2 {
		a, c := daemons[i], daemons[i+1]
		fmt.Printf("edgeagent/collectd (%s): RSS peak %.2f×, CPU %.2f×\n", strings.TrimPrefix(a.name, "edgeagent, "),
			float64(a.rssPeak)/float64(c.rssPeak), a.cpu/c.cpu)
	}
	la, li := daemons[0], daemons[2]
	fmt.Printf("\ntargets: RSS ≤ 12 MiB with StatsD load: %s (%.1f MiB); CPU ≤ 0.2 %% idle: %s (%.3f %%)\n",
		met(mib(float64(la.rssPeak)) <= 12), mib(float64(la.rssPeak)), met(100*li.cpu/elapsed.Seconds() <= 0.2), 100*li.cpu/elapsed.Seconds())
	return nil
}

// startMosquitto runs a broker on a free loopback port for the agents.
func startMosquitto(dir string) (url string, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\n"), 0o644); err != nil {
		return "", nil, err
	}
	bin := "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		bin = "mosquitto"
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start mosquitto (apt-get install mosquitto): %w", err)
	}
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "tcp://" + addr, func() { cmd.Process.Kill(); cmd.Wait() }, nil
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func mib(b float64) float64 { return b / (1 << 20) }

// load sends rate metrics per second, ten per datagram, every 10 ms, from 50
// series of every type.
func load(ctx context.Context, addr string, rate int) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return
	}
	defer c.Close()
	types := []string{"c", "g", "ms", "c|@0.5"}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	perTick := rate / 100
	n := 0
	for ctx.Err() == nil {
		<-tick.C
		var b []byte
		for i := 0; i < perTick; i++ {
			if i > 0 && i%10 == 0 {
				c.Write(b)
				b = b[:0]
			}
			if len(b) > 0 {
				b = append(b, '\n')
			}
			b = fmt.Appendf(b, "bench.metric%d:%d|%s", n%50, n%1000, types[n%len(types)])
			n++
		}
		c.Write(b)
	}
}

// collectdConf is collectd doing what edgeagent's collectors do. It writes
// nowhere: its network plugin would be the counterpart of the uplink, which
// the agents here do run, so the comparison favours collectd slightly.
func collectdConf(dir, statsd string) string {
	conf := fmt.Sprintf(`BaseDir "%s"
PIDFile "%s/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
Interval 10
LoadPlugin cpu
LoadPlugin load
LoadPlugin memory
LoadPlugin swap
LoadPlugin uptime
LoadPlugin disk
LoadPlugin df
LoadPlugin interface
LoadPlugin processes
<Plugin cpu>
  ReportByCpu true
  ValuesPercentage true
</Plugin>
<Plugin processes>
  Process "sshd"
</Plugin>
`, dir, dir)
	host, port, _ := net.SplitHostPort(statsd)
	conf += fmt.Sprintf(`LoadPlugin statsd
<Plugin statsd>
  Host "%s"
  Port "%s"
  TimerPercentile 90
  TimerPercentile 95
  TimerPercentile 99
  TimerLower true
  TimerUpper true
  TimerSum true
  TimerCount true
</Plugin>
`, host, port)
	return conf
}
