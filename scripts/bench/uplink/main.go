// Command uplink measures the uplink against a real mosquitto on loopback:
//
//   - backlog drain: 24 hours of 10-second telemetry messages (8,640) sit in
//     the spool on flash; how long until the broker has acknowledged them all
//     (a subscriber, as the controller, receives them too);
//
//   - flash writes while the broker is up (target: none) and during an
//     outage (target: at most 1.2 × the payload), from /proc/self/io.
//
//     go run ./scripts/bench/uplink
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/internal/seqfile"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/uplink"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "uplink bench:", err)
		os.Exit(1)
	}
}

type broker struct {
	cmd  *exec.Cmd
	conf string
	url  string
}

func startBroker(dir string) (*broker, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	body := fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n", port)
	if os.Geteuid() == 0 {
		body += "user root\n"
	}
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, err
	}
	b := &broker{conf: conf, url: "tcp://" + addr}
	return b, b.start()
}

func (b *broker) start() error {
	bin := "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		bin = "mosquitto"
	}
	b.cmd = exec.Command(bin, "-c", b.conf)
	if err := b.cmd.Start(); err != nil {
		return fmt.Errorf("start mosquitto (apt-get install mosquitto): %w", err)
	}
	for range 100 {
		if c, err := net.Dial("tcp", strings.TrimPrefix(b.url, "tcp://")); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("mosquitto does not listen")
}

func (b *broker) stop() { b.cmd.Process.Kill(); b.cmd.Wait() }

// flashWritten is this process's bytes sent to storage (write_bytes).
func flashWritten() uint64 {
	data, _ := os.ReadFile("/proc/self/io")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	return 0
}

// flush is one 10-second telemetry message of a typical node: the host, disk,
// net and agent collectors' points.
func flush(t time.Time) []telemetry.Batch {
	var pts []telemetry.Point
	add := func(name string, v float64, tags ...string) {
		p := telemetry.Point{Name: name, Value: v}
		if len(tags) == 2 {
			p.Tags = map[string]string{tags[0]: tags[1]}
		}
		pts = append(pts, p)
	}
	for i, cpu := range []string{"cpu0", "cpu1", "cpu2", "cpu3", "total"} {
		add("host.cpu.busy_percent", 3.14159*float64(i+1), "cpu", cpu)
	}
	for _, n := range []string{"host.load1", "host.load5", "host.load15", "host.memory.used_percent", "host.memory.available_bytes", "host.uptime_seconds"} {
		add(n, 123456.789)
	}
	for _, dev := range []string{"sda", "sdb", "nvme0n1"} {
		for _, n := range []string{"disk.read_iops", "disk.write_iops", "disk.read_bytes_per_sec", "disk.write_bytes_per_sec", "disk.util_percent", "disk.queue_depth"} {
			add(n, 17.25, "device", dev)
		}
	}
	for _, link := range []string{"eth0", "eth1", "wg0"} {
		for _, n := range []string{"net.up", "net.rx_bytes_per_sec", "net.tx_bytes_per_sec", "net.rx_errors"} {
			add(n, 98765.4321, "link", link)
		}
	}
	return []telemetry.Batch{{Source: "host", Time: t, Points: pts}}
}

func newUplink(dir, url string, sp *spool.Spool, flushEvery time.Duration, log *slog.Logger) (*uplink.Uplink, error) {
	seq, err := seqfile.Open(filepath.Join(dir, "seq"), 100000, time.Now)
	if err != nil {
		return nil, err
	}
	return uplink.New(uplink.Options{Brokers: []string{url}, Node: "bench-node", TopicPrefix: "edge",
		Keepalive: 10 * time.Second, ConnectTimeout: time.Second, PublishTimeout: 10 * time.Second,
		FlushInterval: flushEvery, Spool: sp, Seq: seq, Log: log})
}

func run() error {
	dir, err := os.MkdirTemp("", "uplink-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := startBroker(dir)
	if err != nil {
		return err
	}
	defer b.stop()

	// 1. Flash writes while the broker is up.
	sp, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool-up"), Log: log})
	if err != nil {
		return err
	}
	u, err := newUplink(dir, b.url, sp, 20*time.Millisecond, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	for u.Status().State != "connected" {
		time.Sleep(10 * time.Millisecond)
	}
	w0 := flashWritten()
	const upMessages = 500
	for i := range upMessages {
		u.Batch(flush(time.Now())[0])
		if i%10 == 0 {
			u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "bench", Subject: "x", New: "y", Message: "an event"})
		}
		u.Heartbeat(telemetry.Heartbeat{Node: "bench-node", Seq: uint64(900000 + i), Time: time.Now(), Health: telemetry.Healthy})
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the last flush
	for sp.Stats().Depth() > 0 {
		time.Sleep(10 * time.Millisecond)
	}
	upPublished := u.Status().Published
	upWritten := flashWritten() - w0

	// 2. Flash writes during an outage.
	b.stop()
	for u.Status().State == "connected" {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	w1 := flashWritten()
	// Records the size of a telemetry message (the heartbeat's why padded):
	// the payload is exactly what the encoder makes of each.
	var e telemetry.Encoder
	var payload int
	const outageMessages = 2000
	pad := strings.Repeat("x", 1200)
	for i := range outageMessages {
		hb := telemetry.Heartbeat{Node: "bench-node", Seq: uint64(800000 + i), Time: time.Now(), Health: telemetry.Degraded, Why: pad}
		data, _ := e.Encode(telemetry.Header{Node: "bench-node", Seq: hb.Seq, Time: hb.Time, Kind: telemetry.KindHeartbeat}, hb)
		payload += len(data)
		u.Heartbeat(hb)
		if i%100 == 0 {
			time.Sleep(50 * time.Millisecond) // spread over several fsync intervals
		}
	}
	time.Sleep(1500 * time.Millisecond) // the last fsync
	outWritten := flashWritten() - w1
	cancel()
	<-done

	// 3. Backlog drain: 8,640 ten-second messages queued on flash.
	sp2, err := spool.Open(spool.Options{Dir: filepath.Join(dir, "spool-backlog"), Log: log})
	if err != nil {
		return err
	}
	sp2.Spill()
	var bytes int
	start := time.Now().Add(-24 * time.Hour)
	for i := range 8640 {
		t := start.Add(time.Duration(i) * 10 * time.Second)
		data := e.EncodeBatches(telemetry.Header{Node: "bench-node", Seq: uint64(i + 1), Time: t, Kind: telemetry.KindBatch}, flush(t))
		bytes += len(data)
		if err := sp2.Put(uint64(i+1), spool.Record{Topic: "telemetry", Payload: append([]byte(nil), data...), Queued: t.Unix()}); err != nil {
			return err
		}
	}
	sp2.Close()
	if err := b.start(); err != nil {
		return err
	}
	// The controller's side: counts what arrives.
	var received atomic.Int64
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.url).SetClientID("bench-controller"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return fmt.Errorf("subscriber: %v", tok.Error())
	}
	sub.Subscribe("edge/+/telemetry", 1, func(mqtt.Client, mqtt.Message) { received.Add(1) }).Wait()
	defer sub.Disconnect(100)
	sp2, err = spool.Open(spool.Options{Dir: filepath.Join(dir, "spool-backlog"), Log: log})
	if err != nil {
		return err
	}
	u2, err := newUplink(dir, b.url, sp2, time.Hour, log)
	if err != nil {
		return err
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go func() { done <- u2.Run(ctx2) }()
	t0 := time.Now()
	for sp2.Stats().Depth() > 0 || received.Load() < 8640 {
		if time.Since(t0) > 5*time.Minute {
			return fmt.Errorf("drain stalled: %+v, received %d", sp2.Stats(), received.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	drain := time.Since(t0)
	cancel2()
	<-done

	fmt.Println("Uplink against mosquitto on loopback (QoS 1, in-flight window 32)")
	fmt.Println()
	fmt.Println("| measure | figure | target |")
	fmt.Println("|---|---|---|")
	fmt.Printf("| backlog drain: 8,640 messages (%.1f MiB, %d B each) from flash to broker and subscriber | %.1f s (%.0f msg/s) | ≤ 60 s: %s |\n",
		float64(bytes)/(1<<20), bytes/8640, drain.Seconds(), 8640/drain.Seconds(), met(drain <= time.Minute))
	fmt.Printf("| flash written while the broker is up (%d messages: telemetry every 20 ms, events, heartbeats) | %d bytes | 0: %s |\n",
		upPublished, upWritten, met(upWritten == 0))
	fmt.Printf("| flash written during an outage, per payload byte (%d records of ~1.3 KB, %d B of payload) | %.2f× (%d bytes) | ≤ 1.2×: %s |\n",
		outageMessages, payload, float64(outWritten)/float64(payload), outWritten, met(float64(outWritten) <= 1.2*float64(payload)))
	return nil
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
