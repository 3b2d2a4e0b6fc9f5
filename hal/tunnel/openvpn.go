package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/hal/internal/kfile"
	"github.com/seed69aca190/edgeagent/internal/text"
)

// OpenVPN reads one OpenVPN instance through its management interface.
type OpenVPN struct {
	Name    string // what the tunnel is called in reports
	Address string // unix:/run/openvpn/client.sock, or host:port
	// PasswordFile holds the management password on its first line; empty
	// when the interface asks for none. It is read at every reading, so a
	// file that appears later, or a new password, is picked up.
	PasswordFile string
	Timeout      time.Duration // for the whole exchange; zero means 5 s
	Grace        time.Duration // how long a state other than CONNECTED is tolerated; zero means 30 s
}

// OpenVPNClient is one client connected to an OpenVPN server.
type OpenVPNClient struct {
	CommonName     string `json:"common_name"`
	RealAddress    string `json:"real_address"`
	VirtualAddress string `json:"virtual_address"`
	BytesIn        uint64 `json:"bytes_in"`
	BytesOut       uint64 `json:"bytes_out"`
	ConnectedSince int64  `json:"connected_since"`
}

// Read asks the management interface for state, byte counts and (for a
// server) the client list, and judges the tunnel by the wall clock at now.
// What went wrong, if anything, is the verdict's reason. A Tracker judges
// repeated readings by the monotonic clock instead.
func (o OpenVPN) Read(ctx context.Context, now time.Time) Tunnel {
	t, _ := o.read(ctx, wallClock(now))
	return t
}

// read reads and judges the tunnel; the error is why it could not be read.
func (o OpenVPN) read(ctx context.Context, a ager) (Tunnel, error) {
	t := Tunnel{Name: o.Name, Type: "openvpn"}
	floating, err := o.ask(ctx, &t)
	if err != nil {
		t.Verdict, t.Reason = Down, text.EscapeString(err.Error()) // it may name a path
		return t, err
	}
	var since time.Time // zero while connected
	if t.DisconnectedSince != 0 {
		since = time.Unix(t.DisconnectedSince, 0)
	}
	t.Verdict, t.Reason = o.judge(t.State, a.age("openvpn/"+o.Name, since, floating))
	return t, nil
}

// judge gives the verdict on a tunnel in state, out of CONNECTED for outage.
func (o OpenVPN) judge(state string, outage time.Duration) (string, string) {
	grace := o.Grace
	if grace <= 0 {
		grace = 30 * time.Second
	}
	if state == "CONNECTED" {
		return Up, ""
	}
	since := outage.Truncate(time.Second)
	if since > grace {
		return Down, fmt.Sprintf("not connected for %v (now %s), longer than the %v grace period", since, state, grace)
	}
	return Stale, fmt.Sprintf("not connected for %v (now %s), within the %v grace period", since, state, grace)
}

// password reads the management password from the first line of
// PasswordFile.
func (o OpenVPN) password() (string, error) {
	if o.PasswordFile == "" {
		return "", nil
	}
	data, err := kfile.Read(o.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSuffix(line, "\r"), nil
}

// ask fills t from the management interface; floating is parseState's.
func (o OpenVPN) ask(ctx context.Context, t *Tunnel) (floating bool, err error) {
	password, err := o.password()
	if err != nil {
		return false, err
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	network, addr := "tcp", o.Address
	if path, ok := strings.CutPrefix(o.Address, "unix:"); ok {
		network, addr = "unix", path
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return false, fmt.Errorf("management interface unreachable: %w", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	return (&mgmt{conn: conn, r: bufio.NewReader(conn)}).query(password, t)
}

// query logs in and fills t from the answers to "state all", "load-stats"
// and "status 3"; floating is parseState's.
func (m *mgmt) query(password string, t *Tunnel) (floating bool, err error) {
	if err := m.login(password); err != nil {
		return false, err
	}
	state, err := m.multi("state all")
	if err != nil {
		return false, err
	}
	if floating, err = parseState(state, t); err != nil {
		return false, err
	}
	stats, err := m.single("load-stats")
	if err != nil {
		return false, err
	}
	if t.BytesIn, t.BytesOut, err = parseLoadStats(stats); err != nil {
		return false, err
	}
	status, err := m.multi("status 3")
	if err != nil {
		return false, err
	}
	t.Role, t.Clients, err = parseStatus3(status)
	return floating, err
}

// mgmt speaks OpenVPN's management protocol: line-based commands, one-line
// "SUCCESS:"/"ERROR:" answers or multi-line ones ending in "END", and real-time
// notifications (lines starting with '>') that may arrive at any point.
type mgmt struct {
	conn net.Conn
	r    *bufio.Reader
}

const passwordPrompt = "ENTER PASSWORD:"

// login answers the password prompt if there is one. The prompt has no newline
// after it, so the first bytes are read with that in mind.
func (m *mgmt) login(password string) error {
	first, err := m.r.Peek(len(passwordPrompt))
	if err != nil {
		return fmt.Errorf("management interface: read greeting: %w", err)
	}
	if string(first) != passwordPrompt {
		return nil
	}
	m.r.Discard(len(passwordPrompt))
	if password == "" {
		return fmt.Errorf("management interface asks for a password and none is configured")
	}
	if _, err := fmt.Fprintf(m.conn, "%s\n", password); err != nil {
		return fmt.Errorf("management interface: send password: %w", err)
	}
	// A wrong password is answered by the prompt again, not by an error line.
	var answer []byte
	for len(answer) < 256 {
		b, err := m.r.ReadByte()
		if err != nil {
			return fmt.Errorf("management interface: read password answer: %w", err)
		}
		if b == '\n' {
			break
		}
		answer = append(answer, b)
		if string(answer) == passwordPrompt {
			return fmt.Errorf("management interface refused the password")
		}
	}
	if line := text.Escape(bytes.TrimRight(answer, "\r")); !strings.HasPrefix(line, "SUCCESS:") {
		return fmt.Errorf("management interface refused the password: %s", line)
	}
	return nil
}

// line returns the next line that is not a real-time notification, as text
// (escaped: a client's common name, for one, is whatever its certificate
// says), so that everything parsed from it is text too.
func (m *mgmt) line() (string, error) {
	for {
		s, err := m.r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("management interface: %w", err)
		}
		s = strings.TrimRight(s, "\r\n")
		if !strings.HasPrefix(s, ">") {
			return text.EscapeString(s), nil
		}
	}
}

func (m *mgmt) send(cmd string) error {
	if _, err := fmt.Fprintf(m.conn, "%s\n", cmd); err != nil {
		return fmt.Errorf("management interface: send %q: %w", cmd, err)
	}
	return nil
}

// single sends a command whose answer is one SUCCESS line.
func (m *mgmt) single(cmd string) (string, error) {
	if err := m.send(cmd); err != nil {
		return "", err
	}
	line, err := m.line()
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(line, "SUCCESS:") {
		return "", fmt.Errorf("management interface: %s: %s", cmd, line)
	}
	return line, nil
}

// multi sends a command whose answer is lines ending with END.
func (m *mgmt) multi(cmd string) ([]string, error) {
	if err := m.send(cmd); err != nil {
		return nil, err
	}
	var lines []string
	for len(lines) < 10000 { // a server with thousands of clients, not an endless stream
		line, err := m.line()
		if err != nil {
			return nil, err
		}
		if line == "END" {
			return lines, nil
		}
		if strings.HasPrefix(line, "ERROR:") {
			return nil, fmt.Errorf("management interface: %s: %s", cmd, line)
		}
		lines = append(lines, line)
	}
	return nil, fmt.Errorf("management interface: %s: no END after 10000 lines", cmd)
}

// parseState reads the answer to "state all", the state history, oldest first;
// each line is "time,STATE,detail,tun-ip,remote-ip,remote-port,local-ip,
// local-port[,tun-ipv6]" and the last one is the current state. While not
// connected, DisconnectedSince is when the last CONNECTED state was left: a
// client cycling through RECONNECTING, RESOLVE and WAIT is judged on the whole
// outage. Without CONNECTED in the history (it never connected, or it went
// out of the 100 states OpenVPN keeps) it is the oldest state's time, and
// floating reports that it moves later as states go out while the outage
// stays the same.
func parseState(lines []string, t *Tunnel) (floating bool, err error) {
	if len(lines) == 0 {
		return false, fmt.Errorf("openvpn state: empty answer")
	}
	t.DisconnectedSince, floating = 0, true
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.SplitN(lines[i], ",", 3)
		if len(f) >= 2 && f[1] == "CONNECTED" {
			floating = false
			break
		}
		if ts, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			t.DisconnectedSince = ts
		}
	}
	f := strings.Split(lines[len(lines)-1], ",")
	if len(f) < 5 {
		return false, fmt.Errorf("openvpn state: %q has %d fields, want at least 5", lines[len(lines)-1], len(f))
	}
	ts, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return false, fmt.Errorf("openvpn state: time %q is not a number", f[0])
	}
	t.State, t.StateSince, t.LocalAddress = f[1], ts, f[3]
	if t.State == "CONNECTED" {
		t.ConnectedSince = ts
	}
	if f[4] != "" {
		t.RemoteAddress = f[4]
		if len(f) > 5 && f[5] != "" {
			t.RemoteAddress = net.JoinHostPort(f[4], f[5])
		}
	}
	return floating, nil
}

// parseLoadStats reads "SUCCESS: nclients=1,bytesin=2065,bytesout=2050".
func parseLoadStats(line string) (in, out uint64, err error) {
	body := strings.TrimSpace(strings.TrimPrefix(line, "SUCCESS:"))
	found := 0
	for kv := range strings.SplitSeq(body, ",") {
		k, v, _ := strings.Cut(kv, "=")
		var dst *uint64
		switch k {
		case "bytesin":
			dst = &in
		case "bytesout":
			dst = &out
		default:
			continue
		}
		if *dst, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, 0, fmt.Errorf("openvpn load-stats: %s=%q is not a number", k, v)
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("openvpn load-stats: %q lacks bytesin or bytesout", line)
	}
	return in, out, nil
}

// parseStatus3 reads the answer to "status 3". A server answers with TITLE,
// HEADER and CLIENT_LIST rows (tab-separated, columns named by the HEADER row);
// a client with "OpenVPN STATISTICS" and comma-separated counters.
func parseStatus3(lines []string) (role string, clients []OpenVPNClient, err error) {
	if len(lines) == 0 || lines[0] == "OpenVPN STATISTICS" {
		return "client", nil, nil
	}
	var cols map[string]int
	for _, l := range lines {
		f := strings.Split(l, "\t")
		switch {
		case f[0] == "HEADER" && len(f) > 1 && f[1] == "CLIENT_LIST":
			cols = map[string]int{}
			for i, name := range f[1:] {
				cols[name] = i
			}
		case f[0] == "CLIENT_LIST":
			if cols == nil {
				return "server", nil, fmt.Errorf("openvpn status: CLIENT_LIST before its HEADER")
			}
			get := func(name string) string {
				if i, ok := cols[name]; ok && i < len(f) {
					return f[i]
				}
				return ""
			}
			c := OpenVPNClient{CommonName: get("Common Name"), RealAddress: get("Real Address"), VirtualAddress: get("Virtual Address")}
			c.BytesIn, _ = strconv.ParseUint(get("Bytes Received"), 10, 64)
			c.BytesOut, _ = strconv.ParseUint(get("Bytes Sent"), 10, 64)
			c.ConnectedSince, _ = strconv.ParseInt(get("Connected Since (time_t)"), 10, 64)
			clients = append(clients, c)
		}
	}
	return "server", clients, nil
}
