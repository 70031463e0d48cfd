package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/conntrace/conntrace/internal/probe"
)

// Exit codes.
const (
	exitOK          = 0
	exitNoResult    = 1
	exitBadInput    = 2
	exitInterrupted = 130 // 128 + SIGINT, as a shell reports it
)

const usage = `usage: conntrace probe [flags] URL

Finds the idle timeout of the network path to URL: opens one connection per
idle period (TCP keep-alive off), makes a request, leaves the connection idle,
then reuses it, and classifies what happened: reused ok, closed by peer (FIN or
reset), or silent drop (no answer: a NAT or firewall forgot the flow). Then it
narrows the first change down to --resolution and prints Go settings that stay
below it. A run takes about as long as the longest idle period it needs, a few
times over (the default ladder goes up to 20m).

flags:
`

// run is the command line, minus the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, "usage: conntrace probe [flags] URL\n\nRun 'conntrace probe -h' for the flags.\n")
		if len(args) == 0 {
			return exitBadInput
		}
		return exitOK
	}
	if args[0] != "probe" {
		fmt.Fprintf(stderr, "conntrace: unknown command %q; the command is: conntrace probe [flags] URL\n", args[0])
		return exitBadInput
	}
	return probeCmd(ctx, args[1:], stdout, stderr)
}

func probeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("conntrace probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var (
		maxIdle    = duration(probe.DefaultMax)
		resolution = duration(probe.DefaultResolution)
		timeout    = duration(probe.DefaultTimeout)
		ladder     ladderFlag
	)
	fs.Var(&maxIdle, "max", "the longest idle `duration` to probe")
	fs.Var(&ladder, "ladder", "the first round's idle periods, a comma-separated `list` of durations, each at most --max (default 30s,1m,2m,4m,350s,10m,20m, cut at --max, plus --max)")
	fs.Var(&resolution, "resolution", "stop refining when the bracket is no wider than this `duration`")
	fs.Var(&timeout, "timeout", "the `duration` a reused connection may stay silent before it counts as a silent drop")
	split := fs.Int("split", probe.DefaultSplit, "`connections` per refining round: each round shrinks the bracket to 1/(split+1)")
	asJSON := fs.Bool("json", false, "print the report as JSON (durations in seconds)")

	url, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "conntrace probe: %v\n", err)
		return exitBadInput
	}
	for _, d := range []struct {
		name string
		v    duration
	}{{"--max", maxIdle}, {"--resolution", resolution}, {"--timeout", timeout}} {
		if d.v <= 0 {
			fmt.Fprintf(stderr, "conntrace probe: %s %v: must be positive\n", d.name, time.Duration(d.v))
			return exitBadInput
		}
	}

	cfg := probe.Config{
		URL:        url,
		Ladder:     ladder,
		Max:        time.Duration(maxIdle),
		Resolution: time.Duration(resolution),
		Timeout:    time.Duration(timeout),
		Split:      *split,
	}
	display := newDisplay(stderr)
	cfg.Progress = display.Update
	display.Start()
	rep, err := probe.Run(ctx, cfg)
	display.Stop()
	var inErr *probe.InputError
	switch {
	case errors.As(err, &inErr):
		fmt.Fprintf(stderr, "conntrace probe: %v\n", err)
		return exitBadInput
	case err != nil:
		fmt.Fprintf(stderr, "conntrace probe: %v\n", err)
		return exitNoResult
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "conntrace probe: writing the report: %v\n", err)
		return exitNoResult
	}
	switch {
	case rep.Interrupted:
		fmt.Fprintln(stderr, "conntrace probe: interrupted; the report above is what was learned so far")
		return exitInterrupted
	case rep.Measured() == 0:
		fmt.Fprintln(stderr, "conntrace probe: no rung could measure anything")
		return exitNoResult
	}
	return exitOK
}

// parseInterleaved parses flags before and after the one URL argument, so
// that both "probe --json URL" and "probe URL --json" work.
func parseInterleaved(fs *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch len(pos) {
	case 0:
		return "", errors.New("no URL given; usage: conntrace probe [flags] URL")
	case 1:
		return pos[0], nil
	}
	return "", fmt.Errorf("one URL at a time; got %d arguments: %s", len(pos), strings.Join(pos, " "))
}

// newDisplay shows progress live when stderr is a terminal, else as plain
// lines.
func newDisplay(stderr io.Writer) *probe.Progress {
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && os.Getenv("TERM") != "dumb" {
		width, _, err := term.GetSize(int(f.Fd()))
		if err != nil || width <= 0 {
			width = 80 // a terminal that does not say; lines must not wrap
		}
		return probe.NewProgress(stderr, true, width)
	}
	return probe.NewProgress(stderr, false, 0)
}

// duration is a flag.Value: a Go duration (30s, 5m, 1m30s) or a plain number
// of seconds.
type duration time.Duration

func (d *duration) String() string { return probe.Human(time.Duration(*d)) }

func (d *duration) Set(s string) error {
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f > (1<<63-1)/float64(time.Second) || f < -(1<<63-1)/float64(time.Second) {
			return 0, fmt.Errorf("bad duration %q: too long", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q: want a Go duration such as 30s, 5m, 1m30s, or a number of seconds", s)
	}
	return d, nil
}

// ladderFlag is a comma-separated list of durations.
type ladderFlag []time.Duration

func (l *ladderFlag) String() string {
	s := make([]string, len(*l))
	for i, d := range *l {
		s[i] = probe.Human(d)
	}
	return strings.Join(s, ",")
}

func (l *ladderFlag) Set(s string) error {
	var ds []time.Duration
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		d, err := parseDuration(part)
		if err != nil {
			return err
		}
		if d <= 0 {
			return fmt.Errorf("ladder rung %v: must be positive", d)
		}
		ds = append(ds, d)
	}
	if len(ds) == 0 {
		return fmt.Errorf("empty ladder %q", s)
	}
	*l = ds
	return nil
}
