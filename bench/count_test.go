package bench

import (
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

// Settings of the count mode (CONNTRACE_BENCH_COUNT=VARIANT).
const (
	envRequests = "CONNTRACE_BENCH_REQUESTS" // GETs counted; default 2000
	envWarmup   = "CONNTRACE_BENCH_WARMUP"   // GETs sent first, not counted; default 500
)

// countMain is the process callgrind.sh runs under valgrind: it sends the
// warm-up GETs through the named variant, then the counted ones, and prints
// the heap allocations the counted ones made (runtime.MemStats, every
// goroutine of the process). callgrind counts the instructions of the whole
// process; the script runs it at two request counts and divides the
// difference, which cancels start-up, warm-up and exit.
func countMain(name string) int {
	if err := count(name); err != nil {
		fmt.Fprintf(os.Stderr, "count %s: %v\n", name, err)
		return 1
	}
	return 0
}

func count(name string) (err error) {
	// NAME@N is variant NAME over N servers (servers_test.go).
	servers := 1
	if base, n, ok := strings.Cut(name, "@"); ok {
		if servers, err = strconv.Atoi(n); err != nil || servers < 1 {
			return fmt.Errorf("variant %q: want NAME@SERVERS, SERVERS a whole number above 0", name)
		}
		name = base
	}
	v, err := lookupVariant(name)
	if err != nil {
		return err
	}
	if servers > 1 {
		// Over many servers the heap holds every pooled connection's
		// buffers (about 10 KB each: 100 MB at 10,000), and each garbage
		// collection marks all of it; how many the warm-up takes depends on
		// the pacer's timing, so one collection more in one of the two runs
		// the script compares moved a figure by 10k instructions per GET
		// and more. So a run over many servers never collects: its
		// instructions are without the collector's work, which follows the
		// bytes allocated, printed beside them. (The one-server figures
		// include it.)
		debug.SetGCPercent(-1)
	}
	requests, err := envInt(envRequests, 2000)
	if err != nil {
		return err
	}
	warmup, err := envInt(envWarmup, 500)
	if err != nil {
		return err
	}
	url, err := startServer()
	if err != nil {
		return err
	}
	defer stopServer()
	p := newProviders()
	defer func() {
		if serr := p.shutdown(); err == nil {
			err = serr
		}
	}()
	get, c, err := countClient(p, v, url, servers)
	if err != nil {
		return err
	}
	defer c.close()

	// Over many servers, at least two rounds: every server's connection is
	// pooled, and reused once (its idle-time series made), before the count.
	warmup = max(warmup, 2*servers)
	for range warmup {
		if err := get(); err != nil {
			return err
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	countStart()
	for range requests {
		if err := get(); err != nil {
			return err
		}
	}
	countEnd()
	runtime.ReadMemStats(&after)
	// More than one dial per server (see maxDials) is not an error here:
	// the script runs again, so that every count is of reused connections
	// only.
	fmt.Printf("variant=%s requests=%d mallocs=%d bytes=%d dials=%d servers=%d\n",
		v.name, requests, after.Mallocs-before.Mallocs, after.TotalAlloc-before.TotalAlloc, c.dials.Load(), servers)
	return nil
}

// countStart and countEnd mark the counted GETs for callgrind.sh, which
// zeroes callgrind's counts when countStart is called and dumps them when
// countEnd is: the dump holds the instructions of the counted GETs alone,
// on every goroutine (--zero-before, --dump-before). They must not be
// inlined, or callgrind would not see them called.
//
//go:noinline
func countStart() {}

//go:noinline
func countEnd() {}

// countClient returns the client of v over the given number of servers,
// and its get.
func countClient(p *providers, v variant, url string, servers int) (func() error, *client, error) {
	if servers == 1 {
		c, err := newClient(p, v, url)
		if err != nil {
			return nil, nil, err
		}
		return c.get, c, nil
	}
	s, err := newSpreadClient(p, v, url, servers)
	if err != nil {
		return nil, nil, err
	}
	return s.get, s.client, nil
}

func envInt(name string, def int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s=%q: want a whole number of requests", name, s)
	}
	return n, nil
}

// TestCallgrindVariants keeps callgrind.sh's default lists of variants the
// same as variants and spreadVariants, in the same order, so the script
// measures every one, its numbers of servers the same as serverCounts, and
// the count markers it names the functions count calls.
func TestCallgrindVariants(t *testing.T) {
	script, err := os.ReadFile("callgrind.sh")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(script), "\nvariants=(")
	list, _, ok2 := strings.Cut(rest, ")")
	if !ok || !ok2 {
		t.Fatal("callgrind.sh has no line starting 'variants=(' with a closing ')'")
	}
	got := strings.Join(strings.Fields(list), " ")
	var names []string
	for _, v := range variants {
		names = append(names, v.name)
	}
	if want := strings.Join(names, " "); got != want {
		t.Errorf("callgrind.sh measures %q; want every variant of variants_test.go, in order: %q", got, want)
	}
	_, rest, ok = strings.Cut(string(script), "\nspread=(")
	list, _, ok2 = strings.Cut(rest, ")")
	if !ok || !ok2 {
		t.Fatal("callgrind.sh has no line starting 'spread=(' with a closing ')'")
	}
	if got, want := strings.Join(strings.Fields(list), " "), strings.Join(spreadVariants, " "); got != want {
		t.Errorf("callgrind.sh measures %q over many servers; want spreadVariants: %q", got, want)
	}
	// The count's markers the script zeroes and dumps at over many
	// servers: renamed here and not there, the script finds no dump.
	for _, f := range []func(){countStart, countEnd} {
		name := runtime.FuncForPC(reflect.ValueOf(f).Pointer()).Name()
		marker := "'*bench." + name[strings.LastIndex(name, ".")+1:] + "'"
		if !strings.Contains(string(script), marker) {
			t.Errorf("callgrind.sh does not name %s as %s", name, marker)
		}
	}
	var counts []string
	for _, n := range serverCounts {
		counts = append(counts, strconv.Itoa(n))
	}
	if want := "servers=${CALLGRIND_SERVERS-" + strings.Join(counts, " ") + "}"; !strings.Contains(string(script), "\n"+want+"\n") {
		t.Errorf("callgrind.sh has no line %q: its numbers of servers are not serverCounts", want)
	}
}

// TestCountMode runs this binary in count mode as callgrind.sh does, and
// checks the line the script reads: a GET allocates, and the counts are
// of the requests asked for, over one server and, for a NAME@N variant,
// over N, with one dial per server.
func TestCountMode(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		variant string
		servers int
	}{{"conntrace", 1}, {"conntrace@10", 10}} {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), envCount+"="+tt.variant, envRequests+"=50", envWarmup+"=5", envURL+"="+serverURL(t))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("count mode, %s: %v", tt.variant, err)
		}
		var variant string
		var requests, mallocs, bytes, dials, servers int
		if _, err := fmt.Sscanf(string(out), "variant=%s requests=%d mallocs=%d bytes=%d dials=%d servers=%d\n",
			&variant, &requests, &mallocs, &bytes, &dials, &servers); err != nil {
			t.Fatalf("count mode printed %q: %v", out, err)
		}
		if variant != "conntrace" || requests != 50 || servers != tt.servers {
			t.Errorf("count mode of %s counted %d GETs of %s over %d servers; want 50 of conntrace over %d",
				tt.variant, requests, variant, servers, tt.servers)
		}
		if dials < tt.servers || int64(dials) > int64(tt.servers)+maxDials(55)-1 {
			t.Errorf("count mode of %s dialled %d connections for 55 GETs; want %d", tt.variant, dials, tt.servers)
		}
		// A GET through net/http alone allocates dozens of objects.
		if mallocs < 10*requests || bytes < 1000*requests {
			t.Errorf("count mode saw %d allocations, %d bytes for %d GETs: too few to be counting them", mallocs, bytes, requests)
		}
	}
}
