//go:build linux

package natlab

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// TestMatrixScore scores made-up matrices, without the lab: the fault
// matrix must pass when the library meets issue 11's targets, and miss
// each target the library misses.
func TestMatrixScore(t *testing.T) {
	const (
		info = "INFO"
		warn = "WARN"
		fail = "ERROR"
	)
	kernel := detectors.EvidenceKernel
	// right is a library that meets the targets.
	right := func(c *matrixCase, _ int) run {
		switch {
		case c.role == beyondHop:
			return run{alerts: []seen{{detectors.OutcomeBeyondFirstHop, info, kernel, time.Second}}}
		case c.expect == detectors.OutcomeHang:
			return run{alerts: []seen{{detectors.OutcomeHang, fail, kernel, 850 * time.Millisecond}}}
		case c.expect == detectors.OutcomeRetried:
			return run{alerts: []seen{{c.expect, warn, kernel, 5 * time.Millisecond}}}
		case c.expect != "":
			return run{alerts: []seen{{c.expect, fail, kernel, time.Millisecond}}}
		}
		return run{alerts: []seen{{detectors.OutcomeOK, info, kernel, time.Millisecond}}}
	}
	// today is the library before issue 11, as the lab measured it.
	today := func(c *matrixCase, i int) run {
		switch c.id {
		case "1", "8":
			return run{alerts: []seen{{detectors.OutcomeHang, fail, "", 5 * time.Second}}}
		case "3", "10":
			return run{alerts: []seen{{detectors.OutcomeHang, fail, "", time.Second}}}
		case "5a", "5b", "4", "9":
			return run{}
		case "7 GET":
			return run{alerts: []seen{{detectors.OutcomeRetried, warn, "", 5 * time.Millisecond}}}
		case "7 POST":
			return run{alerts: []seen{{detectors.OutcomeFailed, fail, "", time.Millisecond}}}
		}
		return run{alerts: []seen{{detectors.OutcomeOK, info, "", time.Millisecond}}}
	}
	but := func(id string, r run) func(*matrixCase, int) run {
		return func(c *matrixCase, i int) run {
			if c.id == id && i == 0 {
				return r
			}
			return right(c, i)
		}
	}

	tests := []struct {
		name       string
		run        func(c *matrixCase, i int) run
		wantScore  string
		wantMissed []string // a phrase of each target missed
	}{
		{name: "targets met", run: right, wantScore: "precision=1.00 recall=1.00"},
		{name: "today", run: today, wantScore: "precision=0.80 recall=0.67",
			wantMissed: append(append([]string{"precision 0.80, recall 0.67"},
				repeat(3, "case 1 run %d: hang decided by evidence \"\" 5s")...),
				append(append(append(repeat(3, "case 5a run %d: no hang verdict"), repeat(3, "case 5b run %d: no hang verdict")...),
					repeat(3, "case 8 run %d: hang decided by evidence \"\" 5s")...),
					"case 10: 3 of 3 runs")...)},
		{name: "slow kernel verdict", run: but("5a", run{alerts: []seen{{detectors.OutcomeHang, fail, kernel, 1600 * time.Millisecond}}}),
			wantScore: "precision=1.00 recall=1.00", wantMissed: []string{"case 5a run 1: hang decided by evidence \"kernel\" 1.6s"}},
		{name: "timeout verdict", run: but("8", run{alerts: []seen{{detectors.OutcomeHang, fail, detectors.EvidenceTimeout, time.Second}}}),
			wantScore: "precision=1.00 recall=1.00", wantMissed: []string{"case 8 run 1: hang decided by evidence \"timeout\""}},
		{name: "false hang in 9", run: but("9", run{alerts: []seen{{detectors.OutcomeHang, fail, kernel, 900 * time.Millisecond}}}),
			wantScore: "false_hangs_case9=1/30", wantMissed: []string{"case 9: 1 false hangs in 30 runs"}},
		{name: "runs of 9 that reused nothing do not count", run: func(c *matrixCase, i int) run {
			if c.id == "9" && i < 11 {
				return run{notReused: true, alerts: []seen{{detectors.OutcomeHang, fail, kernel, 900 * time.Millisecond}}}
			}
			return right(c, i)
		}, wantScore: "false_hangs_case9=0/19", wantMissed: []string{"case 9: 0 false hangs in 19 runs; want none in 20"}},
		{name: "a run of 9 whose request the loss killed is no false hang", run: but("9", run{lost: true,
			alerts: []seen{{detectors.OutcomeHang, fail, kernel, 900 * time.Millisecond}}}),
			wantScore: "false_hangs_case9=0/29"},
		{name: "wrong outcome", run: but("7 POST", run{alerts: []seen{{detectors.OutcomeHang, fail, kernel, 900 * time.Millisecond}}}),
			wantScore: "precision=0.94 recall=0.94", wantMissed: []string{"TP 17, FP 1, FN 1"}},
		{name: "INFO alerts are not alarms", run: but("3", run{alerts: []seen{{detectors.OutcomeBeyondFirstHop, info, kernel, time.Second}}}),
			wantScore: "precision=1.00 recall=1.00"},
		{name: "lab", run: but("2", run{lab: errors.New("the measured request failed")}),
			wantScore: "precision=1.00 recall=1.00", wantMissed: []string{"lab: case 2 run 1: the measured request failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cases []*matrixCase
			for _, p := range (lab{ctTimeout: 3 * time.Second}).matrix() {
				for _, c := range p.cases {
					c.results = make([]run, c.runs)
					for i := range c.results {
						c.results[i] = tt.run(c, i)
					}
					cases = append(cases, c)
				}
			}
			s := score(cases)
			tab := table(cases, s)
			if line := tab[strings.LastIndex(tab, "MATRIX "):]; !strings.Contains(line, tt.wantScore) {
				t.Errorf("MATRIX line lacks %q:\n%s", tt.wantScore, tab)
			}
			missed := missedTargets(s)
			if len(missed) != len(tt.wantMissed) {
				t.Fatalf("missed %d targets; want %d:\n%s", len(missed), len(tt.wantMissed), strings.Join(missed, "\n"))
			}
			for i, want := range tt.wantMissed {
				if !strings.Contains(missed[i], want) {
					t.Errorf("missed[%d] = %q; want it to contain %q", i, missed[i], want)
				}
			}
		})
	}
}

// repeat formats a phrase with run numbers 1..n.
func repeat(n int, format string) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf(format, i+1))
	}
	return out
}
