// Package text turns bytes from the operating system into strings that may go
// on the wire. The controller's decoder refuses a message holding a text string
// that is not valid UTF-8 (and with it every point of that flush), so every
// name the agent reads (an interface, a mount point, a disk's model, a
// process's comm, a client's common name) and every error text that embeds
// one passes through Escape on its way to a message.
//
// The rule: a valid UTF-8 string passes unchanged (and EscapeString allocates
// nothing for it). In a string that is not valid UTF-8, each byte of an invalid
// sequence becomes \xNN (two lower-case hex digits) and each backslash becomes
// \\; everything else is kept. So:
//
//   - two distinct invalid names never escape alike, and a person (or the
//     test's unescape) gets the exact bytes back;
//   - escaping is idempotent: what it returns is valid, so escaping a name in
//     the HAL and the error text around it later never escapes twice;
//   - an escaped name can equal a valid name that spells the escape out
//     literally ("a\xff" typed as four characters). Nothing that passes
//     valid names unchanged can avoid that; the controller sees such a name
//     as the person reading it would.
//
// An escaped name is for reading, not an OS handle: code that opens, stats or
// compares keeps the bytes it read and escapes only what it reports.
//
// The package is a leaf (it imports only the standard library): hal and
// telemetry, which import nothing else of edgeagent, use it.
package text

import (
	"strings"
	"unicode/utf8"
)

// EscapeString returns s, escaped by the package's rule when it is not valid
// UTF-8.
func EscapeString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return escape(s)
}

// Escape returns b as a string, escaped by the package's rule when it is not
// valid UTF-8.
func Escape(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return escape(string(b))
}

func escape(s string) string {
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\x`)
			b.WriteByte(hex[s[i]>>4])
			b.WriteByte(hex[s[i]&0xf])
		case s[i] == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
