package text

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"eth0", "eth0"},
		{`C:\dir`, `C:\dir`}, // valid: unchanged, backslash too
		{"grüße ✓", "grüße ✓"},
		{"\uFFFD", "\uFFFD"}, // a real replacement character is valid text
		{"sd\xff", `sd\xff`},
		{"\xff\xfe", `\xff\xfe`},
		{"a\\b\xff", `a\\b\xff`},         // in an invalid string a backslash is doubled
		{"\xe2\x82", `\xe2\x82`},         // a truncated sequence: each byte
		{"\xe2\x82x✓", `\xe2\x82x✓`},     // valid runes after it are kept
		{"\xed\xa0\x80", `\xed\xa0\x80`}, // a surrogate half is not valid UTF-8
		{"\xc0\xaf", `\xc0\xaf`},         // nor an overlong form
	} {
		if got := EscapeString(tc.in); got != tc.want {
			t.Errorf("EscapeString(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := Escape([]byte(tc.in)); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestValidStringAllocatesNothing(t *testing.T) {
	s := strings.Repeat("mount/point ✓ ", 10)
	if n := testing.AllocsPerRun(100, func() { EscapeString(s) }); n != 0 {
		t.Errorf("EscapeString of valid text: %v allocations, want 0", n)
	}
}

// unescape undoes the rule for a string known to have been escaped: what a
// person does reading it.
func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case strings.HasPrefix(s[i:], `\\`):
			b.WriteByte('\\')
			i++
		case strings.HasPrefix(s[i:], `\x`) && i+4 <= len(s):
			n, _ := strconv.ParseUint(s[i+2:i+4], 16, 8)
			b.WriteByte(byte(n))
			i += 3
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// FuzzEscape checks the rule's promises on any bytes: the result is valid
// UTF-8; valid input is unchanged; escaping again changes nothing; and an
// escaped string gives the original bytes back, so distinct names stay
// distinct.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "eth0", "sd\xff", `a\b` + "\xfe", "\xe2\x82", "✓\xc0\xaf"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Escape(b)
		switch {
		case !utf8.ValidString(got):
			t.Fatalf("Escape(%q) = %q, not valid UTF-8", b, got)
		case utf8.Valid(b) && got != string(b):
			t.Fatalf("valid %q changed to %q", b, got)
		case EscapeString(got) != got:
			t.Fatalf("escaping %q again gives %q", got, EscapeString(got))
		case !utf8.Valid(b) && unescape(got) != string(b):
			t.Fatalf("%q escapes to %q, which reads back as %q", b, got, unescape(got))
		}
	})
}
