package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Mosquitto is a real mosquitto broker run by a test on a free loopback port,
// with persistence in a temporary directory so that sessions and queued
// messages survive Stop and Start, as on a real broker's restart.
type Mosquitto struct {
	t    testing.TB
	bin  string
	conf string
	Addr string // host:port
	URL  string // tcp://host:port
	cmd  *exec.Cmd
	Log  Buffer
}

// StartMosquitto starts mosquitto with extra configuration lines appended
// (TLS listeners, ACLs); without them it listens on plain TCP, anonymous.
// The broker is stopped when the test ends.
func StartMosquitto(t testing.TB, extra string) *Mosquitto {
	t.Helper()
	bin := "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		bin = LookPath(t, "mosquitto")
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	// The queue for an offline persistent session must hold a drained
	// backlog: mosquitto's default (1000) drops the rest of it, silently.
	body := fmt.Sprintf("persistence true\npersistence_location %s/\nautosave_interval 1\nmax_queued_messages 100000\n"+
		"log_dest stderr\nlog_type error\nlog_type warning\n", dir)
	if os.Geteuid() == 0 {
		// Started as root, mosquitto switches to its own user, which may not
		// write the test's directory: persistence would fail silently.
		body += "user root\n"
	}
	if extra == "" {
		body += fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\n", port)
	} else {
		body += fmt.Sprintf(extra, port)
	}
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &Mosquitto{t: t, bin: bin, conf: conf, Addr: addr, URL: "tcp://" + addr}
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// Start runs the broker and waits until it accepts connections.
func (m *Mosquitto) Start() {
	m.t.Helper()
	m.cmd = exec.Command(m.bin, "-c", m.conf)
	m.cmd.Stderr = &m.Log
	m.cmd.Stdout = &m.Log
	if err := m.cmd.Start(); err != nil {
		m.t.Fatalf("start mosquitto: %v", err)
	}
	WaitFor(m.t, 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", m.Addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, func() string { return "mosquitto does not listen on " + m.Addr + ":\n" + m.Log.String() })
}

// Pause freezes the broker (SIGSTOP), as a broker that hangs: connections
// stay open, what clients send waits unread in its sockets, and nothing is
// acknowledged until Resume.
func (m *Mosquitto) Pause() {
	if m.cmd != nil {
		m.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Resume lets a paused broker run again (SIGCONT).
func (m *Mosquitto) Resume() {
	if m.cmd != nil {
		m.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Stop ends the broker as a restart would (SIGTERM: it saves its state).
func (m *Mosquitto) Stop() {
	if m.cmd == nil {
		return
	}
	m.Resume() // a paused broker would not see SIGTERM
	m.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		m.cmd.Process.Kill()
		<-done
	}
	m.cmd = nil
}
