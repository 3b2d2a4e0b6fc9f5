package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/cli"
	"github.com/seed69aca190/edgeagent/telemetry"
)

var rolloutCommand = cli.Command{
	Name:    "rollout",
	Summary: "offer a signed release to nodes (or all) and follow their upgrades to the end",
	Run:     rollout,
}

const rolloutHelp = `Offer the release that MANIFEST (signed with 'edgectl release sign') describes
to each NODE, or with --all to every node the controller knows. With
--artifact, the binary is uploaded to the controller, which serves it to the
nodes (see 'edgectl serve --public-url'); without it, nodes fetch it from the
manifest's own URLs. Each node's phase and download percent are shown as they
move (redrawn in place on a terminal, as lines otherwise); at the end, one line
per node says how its upgrade ended: committed, rolled back (and why), refused
(the check that failed, and why), failed (why), or timed out (where it stood).
A node the controller does not know is an error before anything is sent.
Exit 0 only when every node committed.`

func rollout(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("rollout", "edgectl rollout [--server URL] [--artifact FILE] [--timeout D] (NODE... | --all) MANIFEST",
		rolloutHelp, stdout)
	server := flags.String("server", defaultServer, "the controller's HTTP API")
	all := flags.Bool("all", false, "offer the release to every node the controller knows")
	artifact := flags.String("artifact", "", "the release's binary, served to the nodes by the controller")
	timeout := flags.Duration("timeout", 15*time.Minute, "how long to follow the upgrades before giving up on them")
	// Flags may follow the arguments too (NODE MANIFEST --artifact FILE).
	var rest []string
	for {
		if ok, code := cli.Parse(flags, args, stderr); !ok {
			return code
		}
		if flags.NArg() == 0 {
			break
		}
		rest, args = append(rest, flags.Arg(0)), flags.Args()[1:]
	}
	if (*all && len(rest) != 1) || (!*all && len(rest) < 2) {
		fmt.Fprintln(stderr, "rollout: want NODE... MANIFEST, or --all MANIFEST (see --help)")
		return cli.ExitUsage
	}
	req := controller.RolloutRequest{All: *all, Nodes: rest[:len(rest)-1]}
	manifestFile := rest[len(rest)-1]
	fail := func(err error) int {
		fmt.Fprintf(stderr, "edgectl rollout: %v\n", err)
		return cli.ExitFailure
	}
	var err error
	if req.Manifest, err = os.ReadFile(manifestFile); err != nil {
		return fail(err)
	}
	m, peeked := peekManifest(req.Manifest)
	if err := knownNodes(*server, req.Nodes); err != nil {
		return fail(err)
	}
	if *artifact != "" {
		info, err := upload(*server, *artifact)
		if err != nil {
			return fail(err)
		}
		if peeked && (info.SHA256 != hex.EncodeToString(m.SHA256) || uint64(info.Size) != m.Size) {
			return fail(fmt.Errorf("%s is not the manifest's binary: sha256 %s, %d bytes; the manifest says %x, %d bytes",
				*artifact, info.SHA256, info.Size, m.SHA256, m.Size))
		}
		req.Artifact = info.SHA256
		fmt.Fprintf(stdout, "artifact %s (%d bytes) served at %s\n", info.SHA256, info.Size, info.URL)
	}
	var ro controller.Rollout
	if err := postJSON(*server, "/api/rollouts", req, &ro); err != nil {
		return fail(err)
	}
	release := "the release"
	if peeked {
		release = fmt.Sprintf("%s (%s/%s)", m.Version, m.OS, m.Arch)
	}
	fmt.Fprintf(stdout, "rollout %s: %s offered to %d nodes in %s\n", ro.ID, release, len(ro.Nodes), ro.OfferTime.Round(time.Microsecond))

	deadline := time.Now().Add(*timeout)
	live := newProgress(stdout)
	for {
		live.show(ro)
		left := time.Until(deadline)
		if ro.Done() || left <= 0 {
			break
		}
		// A large rollout changes at every status: look at most four
		// times a second, so the controller sends the whole of it less often.
		time.Sleep(min(left, pollEvery))
		left = time.Until(deadline)
		var next controller.Rollout
		path := fmt.Sprintf("/api/rollouts/%s?after=%d&wait=%s", ro.ID, ro.Gen, min(left, 30*time.Second).Round(time.Millisecond))
		if err := get(*server, path, &next); err != nil {
			live.end()
			return fail(err)
		}
		ro = next
	}
	live.end()
	committed := 0
	for _, n := range ro.Nodes {
		fmt.Fprintf(stdout, "%-20s %s\n", clip(n.Node, 20), outcome(n, *timeout))
		if n.Phase == telemetry.PhaseCommitted {
			committed++
		}
	}
	fmt.Fprintf(stdout, "%d nodes, %d committed, %d not\n", len(ro.Nodes), committed, len(ro.Nodes)-committed)
	if committed != len(ro.Nodes) {
		return cli.ExitFailure
	}
	return cli.ExitOK
}

// pollEvery is how often the CLI asks for a rollout's progress, at most.
const pollEvery = 250 * time.Millisecond

// outcome is the last word on one node's upgrade.
func outcome(n controller.RolloutNode, timeout time.Duration) string {
	switch n.Phase {
	case telemetry.PhaseCommitted:
		s := "committed " + orDash(n.Version)
		if n.Slot != "" {
			s += " (slot " + n.Slot + ")"
		}
		return s
	case telemetry.PhaseRolledBack:
		s := "rolled back from " + orDash(n.Version)
		if n.Slot != "" {
			s += " to slot " + n.Slot
		}
		return s + ": " + orDash(n.Reason)
	case telemetry.PhaseRefused:
		return fmt.Sprintf("refused %s (%s): %s", orDash(n.Version), orDash(n.Check), orDash(n.Reason))
	case telemetry.PhaseFailed:
		return "failed: " + orDash(n.Reason)
	}
	if n.Error != "" {
		return "not offered: " + n.Error
	}
	if n.Phase == "" {
		return fmt.Sprintf("timed out after %s: no status from the node", timeout)
	}
	return fmt.Sprintf("timed out after %s in %s", timeout, phaseText(n))
}

// phaseText is where a node stands: its phase, with the percent while it
// downloads.
func phaseText(n controller.RolloutNode) string {
	switch {
	case n.Phase == "" && n.Error != "":
		return "not offered"
	case n.Phase == "":
		return "waiting"
	case n.Phase == telemetry.PhaseDownloading:
		return fmt.Sprintf("%s %d%%", n.Phase, n.Percent)
	}
	return n.Phase
}

// progress shows a rollout as it moves: on a terminal a block of lines
// redrawn in place (one per node, or counts by phase for a large rollout);
// otherwise a line for each node's change of phase, and every 10% of its
// download.
type progress struct {
	w     io.Writer
	tty   bool
	drawn int               // lines of the block on the terminal
	last  map[string]string // what was printed last for a node, not on a terminal
}

// perNode is the largest rollout shown a line per node on a terminal.
const perNode = 20

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	tty := false
	if ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb" {
			tty = true
		}
	}
	return &progress{w: w, tty: tty, last: map[string]string{}}
}

func (p *progress) show(ro controller.Rollout) {
	if !p.tty {
		for _, n := range ro.Nodes {
			s := phaseText(n)
			if n.Phase == telemetry.PhaseDownloading {
				s = fmt.Sprintf("%s %d%%", n.Phase, n.Percent/10*10)
			}
			if s != p.last[n.Node] && !controller.Terminal(n.Phase) {
				fmt.Fprintf(p.w, "%-20s %s\n", clip(n.Node, 20), s)
			}
			p.last[n.Node] = s
		}
		return
	}
	var lines []string
	if len(ro.Nodes) <= perNode {
		for _, n := range ro.Nodes {
			lines = append(lines, fmt.Sprintf("%-20s %s", clip(n.Node, 20), phaseText(n)))
		}
	} else {
		counts := map[string]int{}
		for _, n := range ro.Nodes {
			ph := n.Phase
			if ph == "" {
				ph = phaseText(n) // waiting, not offered
			}
			counts[ph]++
		}
		phases := make([]string, 0, len(counts))
		for ph := range counts {
			phases = append(phases, ph)
		}
		slices.Sort(phases)
		var b strings.Builder
		for _, ph := range phases {
			fmt.Fprintf(&b, "%s %d  ", ph, counts[ph])
		}
		lines = append(lines, strings.TrimSpace(b.String()))
	}
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dF", p.drawn) // to the start of the block's first line
	}
	for _, l := range lines {
		b.WriteString("\x1b[2K" + l + "\n")
	}
	p.drawn = len(lines)
	io.WriteString(p.w, b.String())
}

// end leaves the live view: on a terminal the block is cleared, as the
// final lines say it all.
func (p *progress) end() {
	if p.tty && p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dF\x1b[J", p.drawn)
		p.drawn = 0
	}
}

// peekManifest reads the manifest inside a signed one (COSE_Sign1: a tagged
// array of protected header, unprotected header, payload, signature)
// without verifying it, to show what is rolled out and to catch an artifact
// that is not the manifest's before any node downloads it. ok is false when
// it does not read as one.
func peekManifest(signed []byte) (m telemetry.Manifest, ok bool) {
	var sign1 struct {
		_           struct{} `cbor:",toarray"`
		Protected   []byte
		Unprotected cbor.RawMessage
		Payload     []byte
		Signature   []byte
	}
	if cbor.Unmarshal(signed, &sign1) != nil || cbor.Unmarshal(sign1.Payload, &m) != nil || m.Version == "" {
		return telemetry.Manifest{}, false
	}
	return m, true
}

// knownNodes fails when a node is not one the controller knows.
func knownNodes(server string, want []string) error {
	if len(want) == 0 {
		return nil
	}
	var list []controller.Node
	if err := get(server, "/api/nodes", &list); err != nil {
		return err
	}
	var unknown []string
	for _, id := range want {
		if !slices.ContainsFunc(list, func(n controller.Node) bool { return n.ID == id }) {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("unknown node: %s (see 'edgectl nodes'); nothing was offered", strings.Join(unknown, ", "))
	}
	return nil
}

// upload sends the artifact to the controller.
func upload(server, file string) (controller.ArtifactInfo, error) {
	var info controller.ArtifactInfo
	f, err := os.Open(file)
	if err != nil {
		return info, err
	}
	defer f.Close()
	c := http.Client{Timeout: 30 * time.Minute}
	resp, err := c.Post(strings.TrimSuffix(server, "/")+"/api/artifacts", "application/octet-stream", f)
	if err != nil {
		return info, fmt.Errorf("controller at %s: %w (is 'edgectl serve' running?)", server, err)
	}
	return info, decodeAnswer(resp, &info)
}

// postJSON posts v as JSON and decodes the answer into out.
func postJSON(server, path string, v, out any) error {
	body, _ := json.Marshal(v)
	c := http.Client{Timeout: 2 * time.Minute}
	resp, err := c.Post(strings.TrimSuffix(server, "/")+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("controller at %s: %w (is 'edgectl serve' running?)", server, err)
	}
	return decodeAnswer(resp, out)
}

func decodeAnswer(resp *http.Response, out any) error {
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return errors.New(strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
