// Command statsd measures the embedded StatsD server's ingest over loopback:
// the server runs in a child process pinned to one core (taskset, GOMAXPROCS=1),
// the load generator on the other core (taskset -c 1) sends with sendmmsg. It reports the
// highest rate reached, the loss at 70 % of it, the rate with many metrics
// per datagram, and the rate with datagrams of 60 KB (what loopback clients
// with a large buffer send), of many series and of one counter (where the
// server's memory is mostly its read buffers); for each phase the server's
// resident memory (VmRSS before and after, VmHWM the peak) and the lines it
// refused as truncated.
//
//	go run ./scripts/bench/statsd [-duration 5s]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/seed69aca190/edgeagent/collectors/statsd"
	"github.com/seed69aca190/edgeagent/hal/nic"
)

func main() {
	if os.Getenv("STATSD_BENCH_SERVER") != "" {
		server()
		return
	}
	if os.Getenv("STATSD_BENCH_GENERATOR") == "" {
		// The generator gets the other core, so the two never share one.
		self, _ := os.Executable()
		cmd := exec.Command("taskset", "-c", "1", self)
		cmd.Args = append(cmd.Args, os.Args[1:]...)
		cmd.Env = append(os.Environ(), "STATSD_BENCH_GENERATOR=1")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "statsd bench:", err)
			os.Exit(1)
		}
		return
	}
	duration := flag.Duration("duration", 5*time.Second, "length of each phase")
	flag.Parse()
	if err := run(*duration); err != nil {
		fmt.Fprintln(os.Stderr, "statsd bench:", err)
		os.Exit(1)
	}
}

// server is the child: it serves on an ephemeral port, prints it, then
// prints the accepted count, the receive buffer, the lines refused as
// truncated and its VmRSS and VmHWM in KiB whenever asked (a line on stdin).
func server() {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s := statsd.New(conn, statsd.Options{
		FlushInterval: time.Second,
		ReadBuffer:    8 << 20,
		Log:           slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	go s.Run(context.Background())
	fmt.Println(conn.LocalAddr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		st := s.Stats()
		rss, hwm := memory("/proc/self/status")
		fmt.Println(st.Metrics, st.ReadBuffer, st.Rejected["truncated"], rss, hwm)
	}
}

// memory reads VmRSS and VmHWM, in KiB, from a /proc/PID/status file.
func memory(status string) (rss, hwm uint64) {
	data, _ := os.ReadFile(status)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			hwm = n
		}
	}
	return rss, hwm
}

type child struct {
	cmd  *exec.Cmd
	in   io.Writer
	out  *bufio.Scanner
	addr string
}

func startServer() (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("taskset", "-c", "0", self)
	cmd.Env = append(os.Environ(), "STATSD_BENCH_SERVER=1", "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server (taskset from util-linux is needed): %w", err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if !c.out.Scan() {
		return nil, fmt.Errorf("server did not start")
	}
	c.addr = c.out.Text()
	return c, nil
}

// report is what the server says when asked.
type report struct {
	accepted, truncated uint64
	rcvbuf              int
	rss, hwm            uint64 // KiB
}

func (c *child) ask() report {
	fmt.Fprintln(c.in)
	c.out.Scan()
	f := strings.Fields(c.out.Text())
	var r report
	r.accepted, _ = strconv.ParseUint(f[0], 10, 64)
	r.rcvbuf, _ = strconv.Atoi(f[1])
	r.truncated, _ = strconv.ParseUint(f[2], 10, 64)
	r.rss, _ = strconv.ParseUint(f[3], 10, 64)
	r.hwm, _ = strconv.ParseUint(f[4], 10, 64)
	return r
}

// settled waits until the server's count stops moving, and returns its report.
func (c *child) settled() report {
	var last report
	for stable := 0; stable < 3; {
		time.Sleep(100 * time.Millisecond)
		r := c.ask()
		if r.accepted == last.accepted {
			stable++
		} else {
			stable = 0
		}
		last = r
	}
	return last
}

func (c *child) stop() { c.cmd.Process.Kill(); c.cmd.Wait() }

// datagrams builds n datagrams of lo to hi metrics each (a random count),
// drawn from 100 series of every type, or all of one counter when one; with
// fill > 0, each datagram instead holds as many metrics as fit in fill bytes.
func datagrams(n, lo, hi, fill int, one bool) ([][]byte, int) {
	r := rand.New(rand.NewPCG(1, 2))
	types := []string{"c", "g", "ms", "h", "c|@0.5|#env:prod,zone:a"}
	var out [][]byte
	metrics := 0
	for range n {
		k := lo + r.IntN(hi-lo+1)
		var b []byte
		for j := 0; j < k || fill > 0; j++ {
			line := fmt.Appendf(nil, "app.metric%d:%d|%s", r.IntN(100), r.IntN(1000), types[r.IntN(len(types))])
			if one {
				line = []byte("app.requests:1|c")
			}
			if fill > 0 && len(b)+1+len(line) > fill {
				k = j
				break
			}
			if j > 0 {
				b = append(b, '\n')
			}
			b = append(b, line...)
		}
		out = append(out, b)
		metrics += k
	}
	return out, metrics / n
}

// send sends datagrams round-robin for d at rate datagrams/s (0: as fast as
// possible) and returns how many were sent.
func send(addr string, set [][]byte, d time.Duration, rate float64) (uint64, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c.(*net.UDPConn))
	msgs := make([]ipv4.Message, 64)
	var sent uint64
	start := time.Now()
	i := 0
	for {
		elapsed := time.Since(start)
		if elapsed >= d {
			return sent, nil
		}
		burst := len(msgs)
		if rate > 0 {
			due := uint64(elapsed.Seconds()*rate) - sent
			if due == 0 {
				time.Sleep(200 * time.Microsecond)
				continue
			}
			burst = int(min(due, uint64(len(msgs))))
		}
		for j := range burst {
			msgs[j].Buffers = [][]byte{set[i%len(set)]}
			i++
		}
		n, err := pc.WriteBatch(msgs[:burst], 0)
		if err != nil {
			// ENOBUFS and the like: the sender's own limit, not the server's.
			continue
		}
		sent += uint64(n)
	}
}

type phase struct {
	name           string
	lo, hi, fill   int
	one            bool    // one counter: the server's memory is then mostly its buffers
	rate           float64 // datagrams/s; 0: flat out
	sent, accepted uint64
	perDatagram    int
	seconds        float64
	kernelDrops    uint64
	rcvbuf         int
	truncated      uint64 // lines refused as truncated
	rssIdle, rss   uint64 // KiB, before and after the load
	hwm            uint64 // KiB, the peak
}

func measure(p *phase, d time.Duration) error {
	c, err := startServer()
	if err != nil {
		return err
	}
	defer c.stop()
	set, per := datagrams(4096, p.lo, p.hi, p.fill, p.one)
	p.perDatagram = per
	time.Sleep(time.Second) // started and idle
	p.rssIdle = c.ask().rss
	before, _ := nic.ReadUDPStats("/proc")
	start := time.Now()
	sentD, err := send(c.addr, set, d, p.rate)
	if err != nil {
		return err
	}
	p.seconds = time.Since(start).Seconds()
	r := c.settled()
	p.accepted, p.rcvbuf, p.truncated, p.rss, p.hwm = r.accepted, r.rcvbuf, r.truncated, r.rss, r.hwm
	after, _ := nic.ReadUDPStats("/proc")
	p.kernelDrops = after.RcvbufErrors - before.RcvbufErrors
	// Exact count of metrics sent: datagrams cycle through set in order.
	full, rest := sentD/uint64(len(set)), sentD%uint64(len(set))
	var inSet, inRest uint64
	for i, b := range set {
		n := uint64(strings.Count(string(b), "\n") + 1)
		inSet += n
		if uint64(i) < rest {
			inRest += n
		}
	}
	p.sent = full*inSet + inRest
	return nil
}

func run(d time.Duration) error {
	flat := &phase{name: "1 metric/datagram, flat out", lo: 1, hi: 1}
	if err := measure(flat, d); err != nil {
		return err
	}
	maxRate := float64(flat.accepted) / flat.seconds
	paced := &phase{name: "1 metric/datagram at 70 % of that", lo: 1, hi: 1, rate: 0.7 * maxRate}
	if err := measure(paced, d); err != nil {
		return err
	}
	multi := &phase{name: "10-50 metrics/datagram, flat out", lo: 10, hi: 50}
	if err := measure(multi, d); err != nil {
		return err
	}
	large := &phase{name: "60 KB datagrams, flat out", fill: 60000}
	if err := measure(large, d); err != nil {
		return err
	}
	largeOne := &phase{name: "60 KB datagrams of one counter, flat out", fill: 60000, one: true}
	if err := measure(largeOne, d); err != nil {
		return err
	}
	fmt.Printf("StatsD ingest over loopback, server on core 0 (GOMAXPROCS=1), generator on core 1, %s per phase\n\n", d)
	fmt.Printf("| phase | metrics sent | accepted | lost | kernel drops | accepted/s | target |\n|---|---|---|---|---|---|---|\n")
	phases := []*phase{flat, paced, multi, large, largeOne}
	for _, p := range phases {
		target := ""
		switch p {
		case flat:
			target = verdict(float64(p.accepted)/p.seconds >= 300e3, "≥ 300k/s")
		case paced:
			target = verdict(p.accepted == p.sent, "zero loss")
		case multi:
			target = verdict(float64(p.accepted)/p.seconds >= 1e6, "≥ 1M/s")
		case large, largeOne:
			target = verdict(p.truncated == 0, "none truncated")
		}
		fmt.Printf("| %s | %d | %d | %d | %d | %.0f | %s |\n", p.name, p.sent, p.accepted, p.sent-p.accepted,
			p.kernelDrops, float64(p.accepted)/p.seconds, target)
	}
	if flat.sent == flat.accepted {
		fmt.Println("\nThe flat-out single-metric phase lost nothing: the generator's core, not the server, set that rate; the server's ceiling is higher.")
	}
	fmt.Printf("\nreceive buffer granted: %d bytes; mean metrics per datagram: %d (10-50 phase), %d (60 KB phase)\n",
		multi.rcvbuf, multi.perDatagram, large.perDatagram)
	fmt.Printf("\nServer memory (KiB; VmRSS idle before the load and after it, VmHWM the peak) and lines refused as truncated:\n\n")
	fmt.Printf("| phase | RSS idle | RSS after | RSS peak | truncated |\n|---|---|---|---|---|\n")
	for _, p := range phases {
		fmt.Printf("| %s | %d | %d | %d | %d |\n", p.name, p.rssIdle, p.rss, p.hwm, p.truncated)
	}
	return nil
}

func verdict(met bool, target string) string {
	if met {
		return target + ": met"
	}
	return target + ": NOT met"
}
