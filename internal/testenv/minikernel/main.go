//go:build linux

// Command minikernel runs a program as if on a kernel built without some
// socket families, for tests: a seccomp filter makes socket(2) fail for them
// with the very errno such a kernel returns (EPROTONOSUPPORT for a netlink
// protocol, EAFNOSUPPORT for an address family), then the program is
// executed with the filter in place.
//
//	minikernel [-netlink route,xfrm,netfilter,generic] [-inet6] -- PROGRAM ARGS...
//
// Firmware kernels are often built without XFRM or netfilter netlink, or
// without IPv6; the QEMU tests boot such kernels for real, this lets the
// fast host tests do the same to one process.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var netlinkProtocols = map[string]uint32{
	"route": unix.NETLINK_ROUTE, "xfrm": unix.NETLINK_XFRM,
	"netfilter": unix.NETLINK_NETFILTER, "generic": unix.NETLINK_GENERIC,
}

func main() {
	netlink := flag.String("netlink", "", "comma-separated netlink protocols to refuse: "+names())
	inet6 := flag.Bool("inet6", false, "refuse AF_INET6 sockets (a kernel without IPv6)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: minikernel [-netlink LIST] [-inet6] -- PROGRAM ARGS...")
		os.Exit(2)
	}
	var deny []uint32
	for _, n := range strings.Split(*netlink, ",") {
		if n == "" {
			continue
		}
		p, ok := netlinkProtocols[n]
		if !ok {
			fmt.Fprintf(os.Stderr, "minikernel: unknown netlink protocol %q; want %s\n", n, names())
			os.Exit(2)
		}
		deny = append(deny, p)
	}
	path, err := exec.LookPath(flag.Arg(0))
	if err == nil {
		err = install(filter(deny, *inet6))
	}
	if err == nil {
		err = syscall.Exec(path, flag.Args(), os.Environ())
	}
	fmt.Fprintln(os.Stderr, "minikernel:", err)
	os.Exit(1)
}

func names() string {
	var n []string
	for k := range netlinkProtocols {
		n = append(n, k)
	}
	return strings.Join(n, ", ")
}

// Offsets in struct seccomp_data (little-endian: the low word of each
// argument comes first).
const (
	offNr     = 0
	offArch   = 4
	offArg0   = 16 // socket's domain
	offArg2   = 32 // socket's protocol
	retAllow  = unix.SECCOMP_RET_ALLOW
	retErrno  = unix.SECCOMP_RET_ERRNO
	bpfLoad   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	bpfJumpEq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	bpfReturn = unix.BPF_RET | unix.BPF_K
)

// filter returns a program that refuses socket(AF_NETLINK, _, p) for each p
// in protocols and, if inet6, socket(AF_INET6, …); everything else passes.
func filter(protocols []uint32, inet6 bool) []unix.SockFilter {
	var a asm
	a.load(offArch)
	a.jumpIf(auditArch(), "", "allow")
	a.load(offNr)
	a.jumpIf(uint32(unix.SYS_SOCKET), "", "allow")
	a.load(offArg0)
	a.jumpIf(unix.AF_NETLINK, "", "inet")
	a.load(offArg2)
	for _, p := range protocols {
		a.jumpIf(p, "noProtocol", "")
	}
	a.ret(retAllow)
	a.label("inet")
	if inet6 {
		a.jumpIf(unix.AF_INET6, "noFamily", "")
	}
	a.label("allow")
	a.ret(retAllow)
	a.label("noProtocol")
	a.ret(retErrno | uint32(unix.EPROTONOSUPPORT))
	a.label("noFamily")
	a.ret(retErrno | uint32(unix.EAFNOSUPPORT))
	return a.assemble()
}

// asm builds a classic BPF program with forward jumps to labels ("" falls
// through).
type asm struct {
	prog   []unix.SockFilter
	jumps  map[int][2]string // instruction → its true and false labels
	labels map[string]int
}

func (a *asm) load(off uint32) {
	a.prog = append(a.prog, unix.SockFilter{Code: bpfLoad, K: off})
}

func (a *asm) ret(k uint32) { a.prog = append(a.prog, unix.SockFilter{Code: bpfReturn, K: k}) }

func (a *asm) jumpIf(k uint32, yes, no string) {
	if a.jumps == nil {
		a.jumps = map[int][2]string{}
	}
	a.jumps[len(a.prog)] = [2]string{yes, no}
	a.prog = append(a.prog, unix.SockFilter{Code: bpfJumpEq, K: k})
}

func (a *asm) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	a.labels[name] = len(a.prog)
}

func (a *asm) assemble() []unix.SockFilter {
	offset := func(from int, label string) uint8 {
		if label == "" {
			return 0
		}
		return uint8(a.labels[label] - from - 1)
	}
	for i, j := range a.jumps {
		a.prog[i].Jt, a.prog[i].Jf = offset(i, j[0]), offset(i, j[1])
	}
	return a.prog
}

func auditArch() uint32 {
	switch runtime.GOARCH {
	case "amd64":
		return 0xc000003e // AUDIT_ARCH_X86_64
	case "arm64":
		return 0xc00000b7 // AUDIT_ARCH_AARCH64
	}
	panic("minikernel: no audit arch for " + runtime.GOARCH)
}

// install applies the filter to every thread of this process; it survives
// execve.
func install(prog []unix.SockFilter) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}
