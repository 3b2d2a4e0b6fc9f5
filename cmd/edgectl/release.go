package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/internal/atomicfile"
	"github.com/seed69aca190/edgeagent/internal/cli"
	"github.com/seed69aca190/edgeagent/telemetry"
	"github.com/seed69aca190/edgeagent/update/release"
)

var releaseCommand = cli.Command{
	Name:    "release",
	Summary: "make release keys, sign a release's manifest, check one by hand",
	Run: func(args []string, stdout, stderr io.Writer) int {
		return cli.Main("edgectl release", "release keys and signed manifests (docs/upgrades.md)", []cli.Command{
			{Name: "keygen", Summary: "make a signing key and its public key", Run: releaseKeygen},
			{Name: "sign", Summary: "write the signed manifest of a binary", Run: releaseSign},
			{Name: "verify", Summary: "check a signed manifest, and its binary, as a node would", Run: releaseVerify},
		}, args, stdout, stderr)
	},
}

func releaseKeygen(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("keygen", "edgectl release keygen --out FILE",
		`Make an Ed25519 signing key: FILE (PKCS#8 PEM, mode 0600) and FILE.pub
(PKIX PEM), which openssl reads too. An existing file is never overwritten.
Keep FILE off the fleet; nodes trust FILE.pub (update.trusted_keys).`, stdout)
	out := flags.String("out", "", "the private key's file")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	if *out == "" {
		fmt.Fprintln(stderr, "keygen: --out is required (see --help)")
		return cli.ExitUsage
	}
	pub, err := release.GenerateKey(*out)
	if err != nil {
		fmt.Fprintf(stderr, "edgectl release keygen: %v\n", err)
		return cli.ExitFailure
	}
	fmt.Fprintf(stdout, "key %s: wrote %s (private, mode 0600) and %s.pub\n", release.KeyID(pub), *out, *out)
	return cli.ExitOK
}

// repeated is a flag that may be given several times.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ", ") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func releaseSign(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("sign", "edgectl release sign --key FILE --binary BIN --version V [--expires 720h] [--allow-downgrade] [--url URL]... [--notes TEXT] --out MANIFEST",
		`Write MANIFEST, the manifest of BIN signed with the key in FILE (a COSE_Sign1
message): its version, its target (read from BIN's ELF header and Go build
information), its size and SHA-256, where to fetch it, and when it expires.
A version that is not semver (a dev build) needs --allow-downgrade, without
which no node installs it.`, stdout)
	keyFile := flags.String("key", "", "the signing key (edgectl release keygen)")
	binary := flags.String("binary", "", "the release's agent binary")
	version := flags.String("version", "", "the release's version, as its binary reports it (1.4.0)")
	expires := flags.Duration("expires", 720*time.Hour, "how long nodes may install it")
	downgrade := flags.Bool("allow-downgrade", false, "let nodes install it over a higher version, or a version that is not semver")
	var urls repeated
	flags.Var(&urls, "url", "where nodes may fetch the binary (repeat for mirrors)")
	notes := flags.String("notes", "", "free text for whoever reads the manifest")
	out := flags.String("out", "", "the signed manifest's file")
	if ok, code := cli.ParseNoArgs(flags, args, stderr); !ok {
		return code
	}
	switch {
	case *keyFile == "" || *binary == "" || *version == "" || *out == "":
		fmt.Fprintln(stderr, "sign: --key, --binary, --version and --out are required (see --help)")
		return cli.ExitUsage
	case *expires <= 0:
		fmt.Fprintf(stderr, "sign: --expires %v: want a positive duration\n", *expires)
		return cli.ExitUsage
	case !release.IsSemver(*version) && !*downgrade:
		fmt.Fprintf(stderr, "sign: --version %q is not semver (1.4.0): nodes refuse it unless the manifest allows a downgrade (--allow-downgrade)\n", *version)
		return cli.ExitUsage
	}
	key, err := release.LoadPrivateKey(*keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "edgectl release sign: %v\n", err)
		return cli.ExitUsage
	}
	m, err := describeBinary(*binary)
	if err != nil {
		fmt.Fprintf(stderr, "edgectl release sign: %v\n", err)
		return cli.ExitFailure
	}
	now := time.Now().UTC().Truncate(time.Second) // the wire keeps whole seconds
	m.Version, m.URLs, m.Notes, m.AllowDowngrade = *version, urls, *notes, *downgrade
	m.IssuedAt, m.ExpiresAt = now, now.Add(*expires)
	signed, err := release.Sign(m, key)
	if err == nil {
		err = atomicfile.WriteFile(*out, signed, 0o644)
	}
	if err != nil {
		fmt.Fprintf(stderr, "edgectl release sign: %v\n", err)
		return cli.ExitFailure
	}
	fmt.Fprintf(stdout, "signed %s for %s (%d bytes) with key %s, expires %s: %s\n",
		m.Version, target(m), m.Size, release.KeyID(key.Public().(ed25519.PublicKey)), m.ExpiresAt.Format(time.RFC3339), *out)
	return cli.ExitOK
}

// describeBinary returns the manifest fields that BIN itself decides.
func describeBinary(path string) (telemetry.Manifest, error) {
	t, err := release.BinaryTarget(path)
	if err != nil {
		return telemetry.Manifest{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return telemetry.Manifest{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return telemetry.Manifest{}, fmt.Errorf("read %s: %w", path, err)
	}
	return telemetry.Manifest{OS: t.OS, Arch: t.Arch, ARM: t.ARM, Size: uint64(n), SHA256: h.Sum(nil)}, nil
}

func target(m telemetry.Manifest) release.Target {
	return release.Target{OS: m.OS, Arch: m.Arch, ARM: m.ARM}
}

func releaseVerify(args []string, stdout, stderr io.Writer) int {
	flags := cli.FlagSet("verify", "edgectl release verify --pub FILE.pub [--pub ...] [--highest V] MANIFEST [BIN]",
		`Check MANIFEST as a node would, in the node's order: signed by one of the
trusted keys, not expired, then with BIN: BIN's target is the manifest's, its
size and SHA-256 are; last, the version (higher than --highest unless the
manifest allows a downgrade). Print the manifest and "ok", or the refusal and
exit 1. The node's target is taken to be the manifest's own.`, stdout)
	var pubs repeated
	flags.Var(&pubs, "pub", "a trusted public key file (repeat for several)")
	highest := flags.String("highest", "", "the highest version the node committed")
	if ok, code := cli.Parse(flags, args, stderr); !ok {
		return code
	}
	if len(pubs) == 0 || flags.NArg() < 1 || flags.NArg() > 2 {
		fmt.Fprintln(stderr, "verify: want --pub FILE.pub and MANIFEST [BIN] (see --help)")
		return cli.ExitUsage
	}
	keys, err := release.LoadPublicKeys(pubs...)
	if err != nil {
		fmt.Fprintf(stderr, "edgectl release verify: %v\n", err)
		return cli.ExitUsage
	}
	signed, err := os.ReadFile(flags.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "edgectl release verify: %v\n", err)
		return cli.ExitFailure
	}
	v := release.Verifier{Trusted: keys, Highest: *highest}
	// By hand, on a machine that is not the node: the manifest's target
	// stands for the node's (known once the signature verified).
	if m, _ := v.Manifest(signed); m.OS != "" {
		v.Running = target(m)
	}
	var m telemetry.Manifest
	if flags.NArg() == 2 {
		m, err = v.Verify(signed, flags.Arg(1))
	} else {
		m, err = v.Manifest(signed)
	}
	if m.Version != "" || m.OS != "" {
		printManifest(stdout, m)
	}
	var refusal *release.Refusal
	switch {
	case errors.As(err, &refusal):
		fmt.Fprintln(stdout, refusal)
		return cli.ExitFailure
	case err != nil:
		fmt.Fprintf(stderr, "edgectl release verify: %v\n", err)
		return cli.ExitFailure
	case flags.NArg() == 1:
		fmt.Fprintln(stdout, "ok (the manifest; give BIN to check the binary too)")
	default:
		fmt.Fprintln(stdout, "ok")
	}
	return cli.ExitOK
}

func printManifest(w io.Writer, m telemetry.Manifest) {
	line := func(k, v string) { fmt.Fprintf(w, "%-10s %s\n", k, v) }
	line("version", m.Version)
	line("target", target(m).String())
	line("size", fmt.Sprint(m.Size))
	line("sha256", fmt.Sprintf("%x", m.SHA256))
	for _, u := range m.URLs {
		line("url", u)
	}
	line("issued", m.IssuedAt.UTC().Format(time.RFC3339))
	line("expires", m.ExpiresAt.UTC().Format(time.RFC3339))
	if m.AllowDowngrade {
		line("downgrade", "allowed")
	}
	if m.Notes != "" {
		line("notes", m.Notes)
	}
}
