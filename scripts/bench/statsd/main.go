// Command statsd measures the embedded StatsD server's ingest over loopback:
// the server runs in a child process pinned to one core (taskset, GOMAXPROCS=1),
// the load generator on the other core (taskset -c 1) sends with sendmmsg. It reports the
// highest rate reached, the loss at 70 % of it, and the rate with many
// metrics per datagram.
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
// prints the accepted count whenever asked (a line on stdin).
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
		fmt.Println(st.Metrics, st.ReadBuffer)
	}
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

// accepted waits until the server's count stops moving, and returns it.
func (c *child) accepted() (uint64, int) {
	var last uint64
	var rcvbuf int
	for stable := 0; stable < 3; {
		time.Sleep(100 * time.Millisecond)
		fmt.Fprintln(c.in)
		c.out.Scan()
		f := strings.Fields(c.out.Text())
		n, _ := strconv.ParseUint(f[0], 10, 64)
		rcvbuf, _ = strconv.Atoi(f[1])
		if n == last {
			stable++
		} else {
			stable = 0
		}
		last = n
	}
	return last, rcvbuf
}

func (c *child) stop() { c.cmd.Process.Kill(); c.cmd.Wait() }

// datagrams builds n datagrams of perDatagram metrics each (a random count
// from lo to hi when perDatagram is 0), drawn from 100 series of every type.
func datagrams(n, lo, hi int) ([][]byte, int) {
	r := rand.New(rand.NewPCG(1, 2))
	types := []string{"c", "g", "ms", "h", "c|@0.5|#env:prod,zone:a"}
	var out [][]byte
	metrics := 0
	for range n {
		k := lo + r.IntN(hi-lo+1)
		var b []byte
		for j := range k {
			if j > 0 {
				b = append(b, '\n')
			}
			b = fmt.Appendf(b, "app.metric%d:%d|%s", r.IntN(100), r.IntN(1000), types[r.IntN(len(types))])
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
	lo, hi         int
	rate           float64 // datagrams/s; 0: flat out
	sent, accepted uint64
	perDatagram    int
	seconds        float64
	kernelDrops    uint64
	rcvbuf         int
}

func measure(p *phase, d time.Duration) error {
	c, err := startServer()
	if err != nil {
		return err
	}
	defer c.stop()
	set, per := datagrams(4096, p.lo, p.hi)
	p.perDatagram = per
	before, _ := nic.ReadUDPStats("/proc")
	start := time.Now()
	sentD, err := send(c.addr, set, d, p.rate)
	if err != nil {
		return err
	}
	p.seconds = time.Since(start).Seconds()
	p.accepted, p.rcvbuf = c.accepted()
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
	fmt.Printf("StatsD ingest over loopback, server on core 0 (GOMAXPROCS=1), generator on core 1, %s per phase\n\n", d)
	fmt.Printf("| phase | metrics sent | accepted | lost | kernel drops | accepted/s | target |\n|---|---|---|---|---|---|---|\n")
	for _, p := range []*phase{flat, paced, multi} {
		target := ""
		switch p {
		case flat:
			target = verdict(float64(p.accepted)/p.seconds >= 300e3, "≥ 300k/s")
		case paced:
			target = verdict(p.accepted == p.sent, "zero loss")
		case multi:
			target = verdict(float64(p.accepted)/p.seconds >= 1e6, "≥ 1M/s")
		}
		fmt.Printf("| %s | %d | %d | %d | %d | %.0f | %s |\n", p.name, p.sent, p.accepted, p.sent-p.accepted,
			p.kernelDrops, float64(p.accepted)/p.seconds, target)
	}
	if flat.sent == flat.accepted {
		fmt.Println("\nThe flat-out single-metric phase lost nothing: the generator's core, not the server, set that rate; the server's ceiling is higher.")
	}
	fmt.Printf("\nreceive buffer granted: %d bytes; mean metrics per datagram in the last phase: %d\n", multi.rcvbuf, multi.perDatagram)
	return nil
}

func verdict(met bool, target string) string {
	if met {
		return target + ": met"
	}
	return target + ": NOT met"
}
