package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// envPrefix is the prefix of every flag's environment twin: --node-name is
// also GPULET_NODE_NAME.
const envPrefix = "GPULET_"

// envName is the environment twin of a flag.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// documents each flag's environment twin.
func newFlagSet(name, synopsis string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: gpulet %s [flags]\n\n%s\n\nFlags (each also read from its environment variable; a flag on the command line wins):\n", name, synopsis)
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		sort.Strings(names)
		for _, n := range names {
			f := fs.Lookup(n)
			def := ""
			if f.DefValue != "" {
				def = fmt.Sprintf(" (default %q)", f.DefValue)
			}
			fmt.Fprintf(out, "  --%s  [%s]\n      %s%s\n", n, envName(n), f.Usage, def)
		}
	}
	return fs
}

// parseFlags parses args, then fills every flag not given on the command
// line from its environment twin. lookupEnv is os.LookupEnv outside tests.
// Errors name the flag or variable and the value. A command-line error the
// flag package has already printed (with the usage) is returned as
// errUsage; flag.ErrHelp is returned as is.
func parseFlags(fs *flag.FlagSet, args []string, lookupEnv func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("gpulet %s: unexpected argument %q (flags start with --)", fs.Name(), fs.Arg(0))
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] {
			return
		}
		v, ok := lookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if e := f.Value.Set(v); e != nil {
			err = fmt.Errorf("environment variable %s=%q: %w", envName(f.Name), v, e)
		}
	})
	return err
}

// errUsage marks a command-line error the flag package has already
// reported.
var errUsage = errors.New("usage")

// osLookupEnv is the process environment; the one place gpulet reads it.
var osLookupEnv = os.LookupEnv
