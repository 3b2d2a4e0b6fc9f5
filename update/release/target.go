package release

import (
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/seed69aca190/edgeagent/telemetry"
)

// Target is what a binary runs on: GOOS, GOARCH and, for arm, GOARM.
type Target struct {
	OS, Arch string
	ARM      string // GOARM (7) when Arch is arm
}

// String spells the target as Go's docs and container registries do:
// linux/arm/v7.
func (t Target) String() string {
	s := t.OS + "/" + t.Arch
	if t.ARM != "" {
		s += "/v" + t.ARM
	}
	return s
}

func manifestTarget(m telemetry.Manifest) Target { return Target{m.OS, m.Arch, m.ARM} }

// RunningTarget returns the target of the running binary. GOARM is not
// visible through package runtime; the build settings record it.
func RunningTarget() Target {
	t := Target{OS: runtime.GOOS, Arch: runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		t.ARM = setting(bi, "GOARM")
	}
	return t
}

func setting(bi *debug.BuildInfo, key string) string {
	for _, s := range bi.Settings {
		if s.Key == key {
			return s.Value
		}
	}
	return ""
}

// elfArch maps an ELF machine, class and byte order to GOARCH.
func elfArch(f *elf.File) string {
	le := f.Data == elf.ELFDATA2LSB
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_386:
		return "386"
	case elf.EM_AARCH64:
		return "arm64"
	case elf.EM_ARM:
		return "arm"
	case elf.EM_RISCV:
		if f.Class == elf.ELFCLASS64 {
			return "riscv64"
		}
	case elf.EM_PPC64:
		if le {
			return "ppc64le"
		}
		return "ppc64"
	case elf.EM_S390:
		return "s390x"
	case elf.EM_LOONGARCH:
		return "loong64"
	case elf.EM_MIPS:
		switch {
		case f.Class == elf.ELFCLASS64 && le:
			return "mips64le"
		case f.Class == elf.ELFCLASS64:
			return "mips64"
		case le:
			return "mipsle"
		}
		return "mips"
	}
	return ""
}

// BinaryTarget reads the target of the executable at path: the architecture
// from its ELF header, which the kernel goes by; for a Go binary the OS and
// GOARM from its build information, which must agree with the header.
func BinaryTarget(path string) (Target, error) {
	f, err := os.Open(path)
	if err != nil {
		return Target{}, err
	}
	defer f.Close()
	return binaryTarget(f, path)
}

func binaryTarget(r io.ReaderAt, path string) (t Target, err error) {
	// The file may not be the release yet (its hash is checked after its
	// target): a parser bug it trips is a refusal, not the agent's end.
	defer func() {
		if p := recover(); p != nil {
			t, err = Target{}, fmt.Errorf("%s: unreadable ELF: %v", path, p)
		}
	}()
	f, err := elf.NewFile(r)
	if err != nil {
		return Target{}, fmt.Errorf("%s is not an ELF binary: %w", path, err)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return Target{}, fmt.Errorf("%s is not an executable (ELF type %s)", path, f.Type)
	}
	t = Target{Arch: elfArch(f)}
	if t.Arch == "" {
		return Target{}, fmt.Errorf("%s is for a machine Go does not build for (%s, %s)", path, f.Machine, f.Class)
	}
	switch f.OSABI {
	case elf.ELFOSABI_NONE, elf.ELFOSABI_LINUX: // Go writes NONE for linux
		t.OS = "linux"
	default:
		t.OS = f.OSABI.String()
	}
	bi, err := buildinfo.Read(r)
	if err != nil {
		return t, nil // not a Go binary: the header is all there is
	}
	goos, goarch := setting(bi, "GOOS"), setting(bi, "GOARCH")
	if goarch != t.Arch {
		return Target{}, fmt.Errorf("%s: its ELF header says %s, its Go build information GOARCH=%s", path, t.Arch, goarch)
	}
	if goos != "" {
		t.OS = goos
	}
	t.ARM = setting(bi, "GOARM")
	return t, nil
}
