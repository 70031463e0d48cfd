//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/testkit"
)

// Set by scripts/e2e.sh.
const (
	envJaegerOTLP  = "CONNTRACE_E2E_JAEGER_OTLP"       // Jaeger's OTLP/HTTP endpoint, http://127.0.0.1:port
	envJaegerAPI   = "CONNTRACE_E2E_JAEGER_API"        // Jaeger's query HTTP API
	envPrometheus  = "CONNTRACE_E2E_PROMETHEUS_API"    // Prometheus's HTTP API
	envMetricsAddr = "CONNTRACE_E2E_METRICS_ADDR"      // where the example must serve /metrics: Prometheus scrapes it
	envMetrics1pct = "CONNTRACE_E2E_METRICS_ADDR_1PCT" // the same for the example sampled at 1 % (chain_test.go)
	natIdle        = 2 * time.Second                   // the example's default -nat-idle
	hangTimeout    = time.Second                       // the example's default -hang
	jobName        = "conntrace-example"               // the scrape job in scripts/prometheus.yml
	rulesGroup     = "conntrace"                       // the group in exporters/prometheus/alerts.yml
	staleAlert     = "ConntraceStaleReuseHang"         // the alert the example's hang must fire
	scopeName      = "github.com/conntrace/conntrace"  // conntrace's instrumentation scope
)

type servers struct {
	jaegerOTLP, jaegerAPI, prometheus, metricsAddr, metrics1pct string
}

func needServers(t *testing.T) servers {
	s := servers{
		jaegerOTLP:  os.Getenv(envJaegerOTLP),
		jaegerAPI:   os.Getenv(envJaegerAPI),
		prometheus:  os.Getenv(envPrometheus),
		metricsAddr: os.Getenv(envMetricsAddr),
		metrics1pct: os.Getenv(envMetrics1pct),
	}
	if s.jaegerOTLP == "" || s.jaegerAPI == "" || s.prometheus == "" || s.metricsAddr == "" || s.metrics1pct == "" {
		t.Skip("e2e: not driven by scripts/e2e.sh (needs a real Jaeger and Prometheus on loopback); run: scripts/e2e.sh")
	}
	return s
}

// TestEndToEnd runs the example once, exporting its traces to Jaeger over
// OTLP and serving its metrics to Prometheus, then checks each server, and
// that the alert leads to the hang's trace. It runs alongside
// TestAlertToTrace, which does the same at 1 % sampling.
func TestEndToEnd(t *testing.T) {
	s := needServers(t)
	t.Parallel()
	waitFor(t, "Jaeger's API", 60*time.Second, func() error { return getJSON(s.jaegerAPI+"/api/services", nil) })
	waitFor(t, "Prometheus", 60*time.Second, func() error { return getJSON(s.prometheus+"/-/ready", nil) })
	checkRulesLoaded(t, s.prometheus)
	// Prometheus hands new targets to its scrapers about 5 s after it
	// starts. The rule counts the example's hang as new only if its series
	// appeared after the first scrapes of the example (in production the
	// first hang comes a NAT idle timeout after the start), so wait until
	// Prometheus is scraping the example's address, down as it still is.
	waitFor(t, "Prometheus scraping "+s.metricsAddr, time.Minute, func() error {
		up, err := promQuery(s.prometheus, `up{job="`+jobName+`"}`)
		if err == nil && len(up) != 1 {
			err = fmt.Errorf("up{job=%q} has %d series", jobName, len(up))
		}
		return err
	})

	_, port, _ := strings.Cut(s.metricsAddr, ":")
	service := fmt.Sprintf("conntrace-e2e-%d", time.Now().UnixNano())
	ex := startExample(t, []string{
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + s.jaegerOTLP,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_METRICS_EXPORTER=prometheus",
		"OTEL_EXPORTER_PROMETHEUS_HOST=127.0.0.1",
		"OTEL_EXPORTER_PROMETHEUS_PORT=" + port,
		"OTEL_SERVICE_NAME=" + service,
	}, "-linger", "3m")
	ex.waitFor(t, "Serving http://"+s.metricsAddr+"/metrics", time.Minute)
	did := ex.staleReuses(t)
	t.Logf("the example counted stale reuses %v", did)
	if did["hang"] != 1 {
		t.Fatalf("the example counted %d hangs; the story has exactly one:\n%s", did["hang"], ex.out)
	}

	t.Run("prometheus", func(t *testing.T) { checkPrometheus(t, s, did) })
	t.Run("jaeger", func(t *testing.T) { checkJaeger(t, s, service) })
	t.Run("chain", func(t *testing.T) {
		// Every request is sampled: the exemplar is the hung request's own
		// span, and its trace holds the alert.
		c := followChain(t, s, jobName, ex.alertTrace(t))
		if c.span.OperationName != "GET" || c.span.tag("conntrace.alert_span") != nil {
			t.Errorf("the trace's alert is on span %q (alert span %v); want the request's GET span", c.span.OperationName, c.span.tag("conntrace.alert_span"))
		}
	})

	ex.stop(t)
}

// checkPrometheus: the shipped stale-reuse alert fires for the example's
// hang, though its counter series first appeared already at 1; the
// counters Prometheus scraped are the ones the example printed; nothing
// else fires.
func checkPrometheus(t *testing.T, s servers, did map[string]int) {
	var firing promAlert
	waitFor(t, staleAlert+" firing", time.Minute, func() error {
		alerts, err := promAlerts(s.prometheus)
		if err != nil {
			return err
		}
		for _, a := range alerts {
			if a.Labels["alertname"] == staleAlert && a.Labels["job"] == jobName && a.State == "firing" {
				firing = a
				return nil
			}
		}
		return fmt.Errorf("not firing; active alerts: %+v", alerts)
	})
	t.Logf("%s firing: labels %v, value %s, summary %q", staleAlert, firing.Labels, firing.Value, firing.Annotations["summary"])
	for k, want := range map[string]string{
		"conntrace_outcome": "hang", "job": jobName, "instance": s.metricsAddr,
		"server_address": "backend.internal", "severity": "critical",
	} {
		if got := firing.Labels[k]; got != want {
			t.Errorf("alert label %s=%q; want %q", k, got, want)
		}
	}
	if !strings.Contains(firing.Annotations["summary"], "hung on a pooled connection that sat idle past the NAT idle timeout") ||
		!strings.Contains(firing.Annotations["description"], "http.Transport.IdleConnTimeout") {
		t.Errorf("the alert does not say what happened and what to change: %v", firing.Annotations)
	}
	if v, _ := strconv.ParseFloat(firing.Value, 64); v != 1 {
		t.Errorf("alert value %s; want 1 (one hang)", firing.Value)
	}

	// The counters, under the names and labels the rules use.
	series, err := promQuery(s.prometheus, `conntrace_stale_reuses_total{job="`+jobName+`"}`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, r := range series {
		if r.Metric["otel_scope_name"] != scopeName || r.Metric["server_address"] != "backend.internal" {
			t.Errorf("series %v lacks otel_scope_name=%q or server_address=backend.internal", r.Metric, scopeName)
		}
		got[r.Metric["conntrace_outcome"]] = int(r.value(t))
	}
	if fmt.Sprint(got) != fmt.Sprint(did) {
		t.Errorf("Prometheus has conntrace_stale_reuses_total %v; the example counted %v", got, did)
	}
	// Why the rule needs more than increase(): the series appeared at 1.
	if inc, err := promQuery(s.prometheus, `increase(conntrace_stale_reuses_total{job="`+jobName+`"}[10m])`); err == nil {
		t.Logf("for the record, increase(conntrace_stale_reuses_total[10m]) is %v", inc)
	}

	alerts, err := promAlerts(s.prometheus)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if a.Labels["alertname"] != staleAlert {
			t.Errorf("unexpected alert for the example: %+v", a)
		}
	}
}

// checkJaeger: Jaeger has the five requests, the connection events on
// them, and the stale-reuse alert event on the one that hung, raised while
// it still hung.
func checkJaeger(t *testing.T, s servers, service string) {
	var traces []jaegerTrace
	waitFor(t, "five traces in Jaeger", time.Minute, func() error {
		var res struct {
			Data []jaegerTrace `json:"data"`
		}
		q := url.Values{"service": {service}, "limit": {"100"}}
		if err := getJSON(s.jaegerAPI+"/api/traces?"+q.Encode(), &res); err != nil {
			return err
		}
		if len(res.Data) != 5 {
			return fmt.Errorf("%d traces for service %s", len(res.Data), service)
		}
		traces = res.Data
		return nil
	})

	var spans []jaegerSpan
	for _, tr := range traces {
		if len(tr.Spans) != 1 {
			t.Errorf("trace %s has %d spans; want one client span per request", tr.TraceID, len(tr.Spans))
		}
		for _, sp := range tr.Spans {
			if name := tr.Processes[sp.ProcessID].ServiceName; name != service {
				t.Errorf("span %s from service %q; want %q", sp.SpanID, name, service)
			}
			spans = append(spans, sp)
		}
	}
	var dialled, reused int
	var hung []jaegerSpan
	for _, sp := range spans {
		if sp.OperationName != "GET" || sp.tag("span.kind") != "client" {
			t.Errorf("span %q kind %v; want GET, client", sp.OperationName, sp.tag("span.kind"))
		}
		// The wait for the connection is got_conn's; the write is a number
		// on every span, seconds from its start (an event too where a
		// detector suspected the request: the hang, below).
		if got := sp.event("conntrace.got_conn"); got == nil || got["conntrace.connection.wait_time"] == nil {
			t.Errorf("span %s lacks got_conn, or its wait time: %v", sp.SpanID, got)
		}
		if wrote, _ := sp.tag("conntrace.request.wrote_at").(float64); wrote <= 0 {
			t.Errorf("span %s: conntrace.request.wrote_at %v; want the write's moment: tags %v", sp.SpanID, sp.tag("conntrace.request.wrote_at"), sp.Tags)
		}
		if got := sp.event("conntrace.got_conn"); got != nil && got["conntrace.connection.reused"] == false {
			dialled++
		}
		if got := sp.event("conntrace.got_conn"); got != nil && got["conntrace.connection.reused"] == true {
			reused++
		}
		if a := sp.event("conntrace.alert"); a != nil && a["conntrace.detector"] == "stale_reuse" {
			hung = append(hung, sp)
		} else if v := sp.tag("conntrace.detector"); v != nil {
			t.Errorf("span %s, with no alert, has conntrace.detector=%v; a healthy request carries no verdict", sp.SpanID, v)
		}
	}
	// The story: dial, reuse, stale reuse (hang); cure: dial, dial.
	if dialled != 3 || reused != 2 {
		t.Errorf("%d spans on a new connection and %d reused; want 3 and 2", dialled, reused)
	}
	if len(hung) != 1 {
		t.Fatalf("%d spans with a stale_reuse conntrace.alert event; want 1, the hang", len(hung))
	}
	sp := hung[0]
	alert, got, wrote := sp.event("conntrace.alert"), sp.event("conntrace.got_conn"), sp.event("conntrace.wrote_request")
	t.Logf("hang span %s: events %v; alert %v", sp.SpanID, sp.eventNames(), alert)
	for k, want := range map[string]any{
		"conntrace.detector": "stale_reuse", "conntrace.outcome": "hang", "conntrace.alert.level": "ERROR",
	} {
		if alert[k] != want {
			t.Errorf("alert event %s=%v; want %v", k, alert[k], want)
		}
	}
	if advice, _ := alert["conntrace.alert.advice"].(string); !strings.Contains(advice, "IdleConnTimeout") {
		t.Errorf("alert advice %q does not name IdleConnTimeout", advice)
	}
	if idle, _ := got["conntrace.connection.idle_time"].(float64); got["conntrace.connection.reused"] != true || idle < natIdle.Seconds() {
		t.Errorf("got_conn %v; want a reused connection idle at least %v", got, natIdle)
	}
	if wrote == nil {
		t.Fatalf("the hung request lacks its wrote_request event: events %v", sp.eventNames())
	}
	if sp.event("conntrace.first_response_byte") != nil || sp.tag("conntrace.response.first_byte_at") != nil {
		t.Error("the hung request has a first response byte")
	}
	if sp.tag("error") != true {
		t.Errorf("the hung request's span is not marked as an error: tags %v", sp.Tags)
	}
	// Raised once the hang timeout has passed since the connection was
	// handed out (WithHangTimeout's clock; the write follows within
	// microseconds), while the request still waited for its deadline
	// (4 x the hang timeout): not after the fact. The got_conn event is
	// stamped when it is added, a few microseconds after the moment the
	// timer counts from: a millisecond of slack.
	waited := time.Duration(alert.time()-got.time()) * time.Microsecond
	sinceWrite := time.Duration(alert.time()-wrote.time()) * time.Microsecond
	left := time.Duration(sp.StartTime+sp.Duration-alert.time()) * time.Microsecond
	t.Logf("the alert came %v after got_conn (%v after the write), %v before the request ended", waited, sinceWrite, left)
	if waited < hangTimeout-time.Millisecond || sinceWrite <= 0 || left < hangTimeout {
		t.Errorf("alert %v after got_conn, %v after the write and %v before the end; want at least %v, after the write, and at least %v",
			waited, sinceWrite, left, hangTimeout, hangTimeout)
	}
}

// checkRulesLoaded: Prometheus loaded the shipped rules, so the test does
// not wait a minute for an alert that cannot come.
func checkRulesLoaded(t *testing.T, api string) {
	var res struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				File  string `json:"file"`
				Rules []struct {
					Name string `json:"name"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := getJSON(api+"/api/v1/rules", &res); err != nil {
		t.Fatal(err)
	}
	for _, g := range res.Data.Groups {
		for _, r := range g.Rules {
			if g.Name == rulesGroup && r.Name == staleAlert {
				t.Logf("Prometheus loaded %s from %s (%d rules)", staleAlert, g.File, len(g.Rules))
				return
			}
		}
	}
	t.Fatalf("Prometheus has not loaded %s: %+v", staleAlert, res.Data.Groups)
}

// example is the example program, running.
type example struct {
	cmd  *exec.Cmd
	out  *testkit.SyncBuffer
	done chan error
}

// startExample builds the example and starts it with env added to the
// test's environment. It is killed if the test binary dies, and at the end
// of the test at the latest.
func startExample(t *testing.T, env []string, args ...string) *example {
	bin := filepath.Join(t.TempDir(), "example")
	// Built in its own module's directory (the test runs in lab/e2e), so
	// that it builds with or without the repository's go.work.
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join("..", "..", "example")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./example: %v\n%s", err, out)
	}
	ex := &example{cmd: exec.Command(bin, args...), out: &testkit.SyncBuffer{}, done: make(chan error, 1)}
	ex.cmd.Env = append(os.Environ(), env...)
	ex.cmd.Stdout, ex.cmd.Stderr = ex.out, ex.out
	ex.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ex.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { ex.done <- ex.cmd.Wait() }()
	t.Cleanup(func() {
		if ex.cmd.ProcessState == nil {
			ex.cmd.Process.Kill()
			<-ex.done
		}
	})
	return ex
}

func (ex *example) waitFor(t *testing.T, text string, limit time.Duration) {
	t.Helper()
	deadline := time.After(limit)
	for !strings.Contains(ex.out.String(), text) {
		select {
		case err := <-ex.done:
			ex.done <- err
			t.Fatalf("the example exited (%v) before printing %q:\n%s", err, text, ex.out)
		case <-deadline:
			t.Fatalf("the example did not print %q within %v:\n%s", text, limit, ex.out)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var staleReuseLine = regexp.MustCompile(`(?m)^\s+conntrace\.stale_reuses\s+\{conntrace\.outcome=(\w+)\}\s+(\d+)$`)

// staleReuses are the stale-reuse counts the example printed, by outcome.
func (ex *example) staleReuses(t *testing.T) map[string]int {
	m := map[string]int{}
	for _, sub := range staleReuseLine.FindAllStringSubmatch(ex.out.String(), -1) {
		m[sub[1]], _ = strconv.Atoi(sub[2])
	}
	return m
}

// stop ends the linger with SIGTERM, as Ctrl-C would: the example must
// flush and exit cleanly.
func (ex *example) stop(t *testing.T) {
	ex.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-ex.done:
		if err != nil {
			t.Errorf("the example exited with %v after SIGTERM:\n%s", err, ex.out)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("the example did not exit within 20s of SIGTERM:\n%s", ex.out)
	}
}

// Jaeger's HTTP API (api/traces), the parts the test reads.
type jaegerTrace struct {
	TraceID   string       `json:"traceID"`
	Spans     []jaegerSpan `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

type jaegerSpan struct {
	SpanID        string     `json:"spanID"`
	OperationName string     `json:"operationName"`
	ProcessID     string     `json:"processID"`
	StartTime     int64      `json:"startTime"` // µs since the epoch
	Duration      int64      `json:"duration"`  // µs
	Tags          []jaegerKV `json:"tags"`
	References    []struct {
		RefType string `json:"refType"` // CHILD_OF (the parent), FOLLOWS_FROM (a link)
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Logs []struct {
		Timestamp int64      `json:"timestamp"` // µs since the epoch
		Fields    []jaegerKV `json:"fields"`
	} `json:"logs"`
}

type jaegerKV struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

func (s jaegerSpan) tag(key string) any {
	for _, kv := range s.Tags {
		if kv.Key == key {
			return kv.Value
		}
	}
	return nil
}

// event is a span event's fields by key, with its time under "@time"; nil
// if the span has no event of that name.
type event map[string]any

func (e event) time() int64 { return e["@time"].(int64) }

func (s jaegerSpan) event(name string) event {
	for _, l := range s.Logs {
		e := event{"@time": l.Timestamp}
		for _, kv := range l.Fields {
			e[kv.Key] = kv.Value
		}
		if e["event"] == name {
			return e
		}
	}
	return nil
}

func (s jaegerSpan) eventNames() []string {
	var names []string
	for _, l := range s.Logs {
		for _, kv := range l.Fields {
			if kv.Key == "event" {
				names = append(names, fmt.Sprint(kv.Value))
			}
		}
	}
	return names
}

// Prometheus's HTTP API, the parts the test reads.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	Value       string            `json:"value"`
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"` // [unix time, "value"]
}

func (s promSample) value(t *testing.T) float64 {
	v, err := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
	if err != nil {
		t.Fatalf("sample %v: %v", s, err)
	}
	return v
}

func promAlerts(api string) ([]promAlert, error) {
	var res struct {
		Data struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	err := getJSON(api+"/api/v1/alerts", &res)
	return res.Data.Alerts, err
}

func promQuery(api, query string) ([]promSample, error) {
	var res struct {
		Data struct {
			Result []promSample `json:"result"`
		} `json:"data"`
	}
	err := getJSON(api+"/api/v1/query?"+url.Values{"query": {query}}.Encode(), &res)
	return res.Data.Result, err
}

// promSeriesExemplars are the exemplars of one series, as
// /api/v1/query_exemplars returns them.
type promSeriesExemplars struct {
	SeriesLabels map[string]string `json:"seriesLabels"`
	Exemplars    []struct {
		Labels    map[string]string `json:"labels"` // trace_id, span_id
		Value     string            `json:"value"`
		Timestamp float64           `json:"timestamp"`
	} `json:"exemplars"`
}

// promExemplars asks Prometheus for the exemplars of the series that query
// selects between start and end; Prometheus keeps them only with
// --enable-feature=exemplar-storage.
func promExemplars(api, query string, start, end time.Time) ([]promSeriesExemplars, error) {
	var res struct {
		Data []promSeriesExemplars `json:"data"`
	}
	q := url.Values{
		"query": {query},
		"start": {strconv.FormatInt(start.Unix(), 10)},
		"end":   {strconv.FormatInt(end.Unix()+1, 10)},
	}
	err := getJSON(api+"/api/v1/query_exemplars?"+q.Encode(), &res)
	return res.Data, err
}

var client = &http.Client{Timeout: 10 * time.Second}

// getJSON GETs u and decodes its JSON body into v (if not nil).
func getJSON(u string, v any) error {
	res, err := client.Get(u)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, res.Status)
	}
	if v == nil {
		return nil
	}
	return json.NewDecoder(res.Body).Decode(v)
}

// waitFor polls ready every 250ms until it returns nil, and fails the test
// with its last error after limit.
func waitFor(t *testing.T, what string, limit time.Duration, ready func() error) {
	t.Helper()
	start := time.Now()
	for {
		err := ready()
		if err == nil {
			t.Logf("%s after %v", what, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > limit {
			t.Fatalf("waited %v for %s: %v", limit, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
