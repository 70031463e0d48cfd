package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// conntrace runs the command line with args and returns its exit code,
// stdout and stderr.
func conntrace(ctx context.Context, args ...string) (int, string, string) {
	var stdout, stderr strings.Builder
	code := run(ctx, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func newServer(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello\n")
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}

func TestBadInput(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/"
	ln.Close()
	url := "http://127.0.0.1:1/" // never dialled: the flags fail first

	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no command", nil, "usage: conntrace probe [flags] URL"},
		{"unknown command", []string{"prob", url}, `unknown command "prob"`},
		{"no URL", []string{"probe"}, "no URL given"},
		{"two URLs", []string{"probe", url, url}, "one URL at a time"},
		{"bad URL", []string{"probe", "htp://example.test/"}, "the scheme must be http or https"},
		{"URL without host", []string{"probe", "http://"}, "no host"},
		{"ladder above max", []string{"probe", "--max", "5m", "--ladder", "1m,10m", url}, "ladder rung 10m is above max 5m"},
		{"bad duration", []string{"probe", "--max", "5x", url}, `bad duration "5x"`},
		{"bad ladder", []string{"probe", "--ladder", "30s,soon", url}, `bad duration "soon"`},
		{"negative rung", []string{"probe", "--ladder", "-30s", url}, "ladder rung -30s: must be positive"},
		{"zero timeout", []string{"probe", "--timeout", "0", url}, "--timeout 0s: must be positive"},
		{"unknown flag", []string{"probe", "--maxx", "5m", url}, "flag provided but not defined: -maxx"},
		{"unreachable host", []string{"probe", "--timeout", "2s", refused}, "cannot reach " + refused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := conntrace(t.Context(), tt.args...)
			if code != exitBadInput {
				t.Errorf("exit code %d; want %d", code, exitBadInput)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q; want it to contain %q", stderr, tt.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q; want nothing", stdout)
			}
		})
	}
}

func TestProbeText(t *testing.T) {
	url := newServer(t)
	// Flags on both sides of the URL.
	code, stdout, stderr := conntrace(t.Context(), "probe", "--ladder", "100ms,200ms", url, "--max", "0.2", "--timeout", "2s")
	if code != exitOK {
		t.Fatalf("exit code %d; want 0; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		"conntrace probe " + url + "\n",
		"  ladder:   100ms 200ms (max 200ms); resolution 10s; timeout 2s; 4 rungs per refining round\n",
		"No idle timeout up to 200ms: every connection was reused fine after up to 200ms idle.",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	// Progress goes to stderr, as plain lines: it is not a terminal.
	if !strings.Contains(stderr, "probe: ladder 200ms: reused ok") || strings.Contains(stderr, "\x1b[") {
		t.Errorf("stderr: want plain progress lines, no escapes:\n%q", stderr)
	}
}

func TestProbeJSON(t *testing.T) {
	url := newServer(t)
	code, stdout, stderr := conntrace(t.Context(), "probe", "--json", "--ladder", "100ms", "--max", "100ms", url)
	if code != exitOK {
		t.Fatalf("exit code %d; want 0; stderr:\n%s", code, stderr)
	}
	var got struct {
		URL   string `json:"url"`
		Rungs []struct {
			Idle   float64 `json:"idle_s"`
			Result string  `json:"result"`
		} `json:"rungs"`
		Bracket   *struct{} `json:"bracket"`
		LongestOK float64   `json:"longest_ok_s"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
	}
	if got.URL != url || len(got.Rungs) != 1 || got.Rungs[0].Idle != 0.1 || got.Rungs[0].Result != "reused-ok" || got.Bracket != nil || got.LongestOK != 0.1 {
		t.Errorf("got %+v; want one reused-ok rung of 0.1 s and no bracket", got)
	}
}

// TestProbeInterrupted: Ctrl-C (the context cancelled) prints what was
// learned so far and exits 130.
func TestProbeInterrupted(t *testing.T) {
	url := newServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(time.Second, cancel) // the 100ms rung is done; the 1m one idles
	start := time.Now()
	code, stdout, stderr := conntrace(ctx, "probe", "--ladder", "100ms,1m", "--max", "1m", url)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v after an interrupt at 1s; want prompt", took)
	}
	if code != exitInterrupted {
		t.Errorf("exit code %d; want %d", code, exitInterrupted)
	}
	for _, want := range []string{"INTERRUPTED", "reused ok", "interrupted", "So far no change: connections were reused fine after up to 100ms idle."} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "interrupted; the report above is what was learned so far") {
		t.Errorf("stderr: %s", stderr)
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"30s", 30 * time.Second},
		{"5m", 5 * time.Minute},
		{"1m30s", 90 * time.Second},
		{"350", 350 * time.Second},
		{"0.5", 500 * time.Millisecond},
		{" 2s ", 2 * time.Second},
	}
	for _, tt := range tests {
		if got, err := parseDuration(tt.in); err != nil || got != tt.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "soon", "5x", "1e300"} {
		if _, err := parseDuration(bad); err == nil {
			t.Errorf("parseDuration(%q): no error; want one", bad)
		}
	}
}
