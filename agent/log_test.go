package agent

import (
	"log/slog"
	"log/syslog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSyslogSeverities: through log.output syslog, each line goes at the
// severity of its level (daemon.err is <27>, daemon.warning <28>,
// daemon.info <30>), without the handler's own time, which syslog adds.
func TestSyslogSeverities(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w, err := syslog.Dial("unixgram", path, syslog.LOG_DAEMON|syslog.LOG_INFO, "edgeagent")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(syslogWriter{w}, &slog.HandlerOptions{ReplaceAttr: dropTime}))
	log.Error("disk failing", "dev", "sda")
	log.Warn("collector failing")
	log.Info("started")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, want := range []string{"<27>", "<28>", "<30>"} {
		buf := make([]byte, 2048)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got := string(buf[:n])
		if !strings.HasPrefix(got, want) || strings.Contains(got, "time=") {
			t.Errorf("syslog got %q, want priority %s and no time=", got, want)
		}
	}
}
