package release

import (
	"strings"

	"golang.org/x/mod/semver"
)

// CompareVersions compares two versions as semver, with or without the
// leading v (1.4.0 and v1.4.0 are equal): -1, 0 or +1. A version that is not
// semver (a dev build's git describe) is lower than every one that is.
func CompareVersions(a, b string) int { return semver.Compare(canonical(a), canonical(b)) }

// IsSemver reports whether v is a full semver version (major.minor.patch,
// then an optional pre-release and build), with or without the leading v.
func IsSemver(v string) bool { return canonical(v) != "" }

// canonical returns v with a leading v, or "" when v is not full semver:
// x/mod/semver also takes the shorthands v1 and v1.4, which a release's
// version must not be.
func canonical(v string) string {
	if !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	if !semver.IsValid(v) {
		return ""
	}
	core := strings.TrimSuffix(strings.TrimSuffix(v, semver.Build(v)), semver.Prerelease(v))
	if strings.Count(core, ".") != 2 {
		return ""
	}
	return v
}
