// Package cli is the small command-line frame shared by edgeagent and edgectl:
// subcommand dispatch, flag sets with useful --help, and exit codes.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/seed69aca190/edgeagent/internal/buildinfo"
)

// Exit codes, the same for every command.
const (
	ExitOK      = 0 // done
	ExitFailure = 1 // the command ran and failed
	ExitUsage   = 2 // bad arguments, or invalid input such as a config file
)

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string
	Run     func(args []string, stdout, stderr io.Writer) int
}

// Main dispatches args to the named command and returns the exit code.
func Main(program, about string, commands []Command, args []string, stdout, stderr io.Writer) int {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "%s — %s\n\nUsage: %s COMMAND [flags] [args]\n\nCommands:\n", program, about, program)
		for _, c := range commands {
			fmt.Fprintf(w, "  %-10s %s\n", c.Name, c.Summary)
		}
		fmt.Fprintf(w, "\nRun '%s COMMAND --help' for a command's flags.\n", program)
	}
	if len(args) == 0 {
		usage(stderr)
		return ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return ExitOK
	}
	for _, c := range commands {
		if c.Name == args[0] {
			return c.Run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "%s: unknown command %q\n\n", program, args[0])
	usage(stderr)
	return ExitUsage
}

// FlagSet is a flag set whose --help prints a synopsis, a description and the
// flags to stdout.
func FlagSet(name, synopsis, description string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\n%s\n", synopsis, description)
		first := true
		fs.VisitAll(func(f *flag.Flag) {
			if first {
				fmt.Fprintln(w, "\nFlags:")
				first = false
			}
			arg, help := flag.UnquoteUsage(f)
			if arg != "" {
				arg = " " + arg
			}
			fmt.Fprintf(w, "  --%s%s\n      %s", f.Name, arg, help)
			if f.DefValue != "" && f.DefValue != "false" {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			}
			fmt.Fprintln(w)
		})
	}
	return fs
}

// Parse parses args into fs. It reports whether the command should go on, and
// the exit code to return when it should not: 0 after --help, 2 after a bad
// flag (whose message goes to stderr).
func Parse(fs *flag.FlagSet, args []string, stderr io.Writer) (bool, int) {
	out := fs.Output()
	fs.SetOutput(io.Discard) // the flag package's own error text is replaced below
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return false, ExitOK
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v (see --help)\n", fs.Name(), err)
		return false, ExitUsage
	}
	return true, ExitOK
}

// ParseNoArgs is Parse for a command that takes only flags: positional
// arguments are a usage error.
func ParseNoArgs(fs *flag.FlagSet, args []string, stderr io.Writer) (bool, int) {
	if ok, code := Parse(fs, args, stderr); !ok {
		return false, code
	}
	if n := fs.NArg(); n != 0 {
		fmt.Fprintf(stderr, "%s: got %d arguments, want none (see --help)\n", fs.Name(), n)
		return false, ExitUsage
	}
	return true, ExitOK
}

// Version is the "version [--json]" command of a program.
func Version(program string) Command {
	return Command{
		Name:    "version",
		Summary: "print version, commit, build date, platform and Go version",
		Run: func(args []string, stdout, stderr io.Writer) int {
			fs := FlagSet("version", program+" version [--json]",
				"Print the version, git commit, build date, target platform (GOOS/GOARCH and\nGOARM) and the Go version this binary was built with.", stdout)
			asJSON := fs.Bool("json", false, "print JSON instead of one line")
			if ok, code := ParseNoArgs(fs, args, stderr); !ok {
				return code
			}
			if err := buildinfo.Read(program).Write(stdout, *asJSON); err != nil {
				return ExitFailure
			}
			return ExitOK
		},
	}
}
