//go:build linux

package e2e

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The on-call path, against the real servers: the Prometheus alert fires,
// the stale-reuse series' exemplar gives a trace ID, and Jaeger returns
// that trace, holding the alert with the idle time and the advice.

const (
	job1pct       = "conntrace-example-1pct" // the scrape job scripts/e2e.sh adds for TestAlertToTrace
	alertSpanName = "stale_reuse/hang GET"   // an alert span is named after its alert and the request's method
)

// TestAlertToTrace runs the example sampled as in production, at 1 %
// (OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.01),
// and follows the alert to its trace. The hanging request's own span is
// sampled once in a hundred runs; otherwise the alert is in conntrace's
// alert span, which the exporters' sampler keeps whatever the ratio.
func TestAlertToTrace(t *testing.T) {
	s := needServers(t)
	t.Parallel()
	waitFor(t, "Jaeger's API", 60*time.Second, func() error { return getJSON(s.jaegerAPI+"/api/services", nil) })
	waitFor(t, "Prometheus", 60*time.Second, func() error { return getJSON(s.prometheus+"/-/ready", nil) })
	checkRulesLoaded(t, s.prometheus)
	// As in TestEndToEnd: the rule counts the hang only if its series
	// appeared after Prometheus began scraping the example's address.
	waitFor(t, "Prometheus scraping "+s.metrics1pct, time.Minute, func() error {
		up, err := promQuery(s.prometheus, `up{job="`+job1pct+`"}`)
		if err == nil && len(up) != 1 {
			err = fmt.Errorf("up{job=%q} has %d series", job1pct, len(up))
		}
		return err
	})

	_, port, _ := strings.Cut(s.metrics1pct, ":")
	service := fmt.Sprintf("conntrace-e2e-1pct-%d", time.Now().UnixNano())
	ex := startExample(t, []string{
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + s.jaegerOTLP,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_TRACES_SAMPLER=parentbased_traceidratio",
		"OTEL_TRACES_SAMPLER_ARG=0.01",
		"OTEL_METRICS_EXPORTER=prometheus",
		"OTEL_EXPORTER_PROMETHEUS_HOST=127.0.0.1",
		"OTEL_EXPORTER_PROMETHEUS_PORT=" + port,
		"OTEL_SERVICE_NAME=" + service,
	}, "-linger", "3m")
	ex.waitFor(t, "Serving http://"+s.metrics1pct+"/metrics", time.Minute)
	if did := ex.staleReuses(t); did["hang"] != 1 {
		t.Fatalf("the example counted %d hangs; the story has exactly one:\n%s", did["hang"], ex.out)
	}

	c := followChain(t, s, job1pct, ex.alertTrace(t))
	switch c.span.OperationName {
	case alertSpanName:
		// The alert span: marked for the sampler, about the request's
		// server, linked to the request's (unsampled) span in its own trace.
		if c.span.tag("conntrace.alert_span") != true || c.span.tag("server.address") != "backend.internal" {
			t.Errorf("alert span tags %v; want conntrace.alert_span=true, server.address=backend.internal", c.span.Tags)
		}
		var linked []string
		for _, r := range c.span.References {
			if r.RefType == "FOLLOWS_FROM" && r.TraceID != c.trace.TraceID {
				linked = append(linked, r.TraceID+"/"+r.SpanID)
			}
		}
		if len(linked) != 1 {
			t.Errorf("alert span references %+v; want one link to the request's span, in another trace", c.span.References)
		}
		t.Logf("the hanging request was not sampled; its alert span links to the request's span %v", linked)
	case "GET":
		t.Logf("the hanging request was sampled (a 1 in 100 chance): the alert is on its own span")
	default:
		t.Errorf("the alert is on span %q; want %q (or GET, the 1 %% of the time the request is sampled)", c.span.OperationName, alertSpanName)
	}

	// At 1 %, Jaeger holds the alert's trace and few others: the five
	// requests' spans were sampled at 1 %.
	var res struct {
		Data []jaegerTrace `json:"data"`
	}
	q := url.Values{"service": {service}, "limit": {"100"}}
	if err := getJSON(s.jaegerAPI+"/api/traces?"+q.Encode(), &res); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tr := range res.Data {
		for _, sp := range tr.Spans {
			names = append(names, sp.OperationName)
		}
	}
	t.Logf("Jaeger holds %d traces of %s, spans %v", len(res.Data), service, names)
	if len(res.Data) == 0 || len(res.Data) > 6 {
		t.Errorf("Jaeger holds %d traces of %s; want the alert's, and at most the five requests besides", len(res.Data), service)
	}
	ex.stop(t)
}

// chain is what an on-call person finds, step by step.
type chain struct {
	alert    promAlert
	exemplar string // trace_id
	trace    jaegerTrace
	span     jaegerSpan // the span holding the stale-reuse alert event
}

// followChain follows the alert of job to its trace: the
// ConntraceStaleReuseHang alert fires; the exemplar of its series gives a
// trace ID, the one the example printed with its ALERT (want); the
// conntrace_alerts_total series names the same trace; Jaeger returns that
// trace, and one of its spans holds the hang's alert event with the idle
// time and the advice.
func followChain(t *testing.T, s servers, job, want string) chain {
	var c chain
	waitFor(t, staleAlert+" firing for "+job, time.Minute, func() error {
		alerts, err := promAlerts(s.prometheus)
		for _, a := range alerts {
			if a.Labels["alertname"] == staleAlert && a.Labels["job"] == job && a.State == "firing" {
				c.alert = a
				return nil
			}
		}
		if err == nil {
			err = fmt.Errorf("not firing; active alerts: %+v", alerts)
		}
		return err
	})
	if c.alert.Labels["conntrace_outcome"] != "hang" || c.alert.Labels["server_address"] != "backend.internal" {
		t.Errorf("alert labels %v; want conntrace_outcome=hang, server_address=backend.internal", c.alert.Labels)
	}

	// The alert's expression keeps the series' labels: the same selector
	// finds its exemplars.
	series := `conntrace_stale_reuses_total{job="` + job + `",conntrace_outcome="hang",server_address="backend.internal"}`
	c.exemplar = exemplarTrace(t, s, series)
	if !sameTraceID(c.exemplar, want) {
		t.Errorf("%s: exemplar trace_id %s; want %s, the trace the example's ALERT named", series, c.exemplar, want)
	}
	alerts := `conntrace_alerts_total{job="` + job + `",conntrace_detector="stale_reuse",conntrace_outcome="hang"}`
	if got := exemplarTrace(t, s, alerts); !sameTraceID(got, c.exemplar) {
		t.Errorf("%s: exemplar trace_id %s; want %s, the stale-reuse series'", alerts, got, c.exemplar)
	}

	waitFor(t, "trace "+c.exemplar+" in Jaeger", time.Minute, func() error {
		var res struct {
			Data []jaegerTrace `json:"data"`
		}
		if err := getJSON(s.jaegerAPI+"/api/traces/"+c.exemplar, &res); err != nil {
			return err
		}
		if len(res.Data) != 1 {
			return fmt.Errorf("%d traces", len(res.Data))
		}
		c.trace = res.Data[0]
		return nil
	})
	var names []string
	found := false
	for _, sp := range c.trace.Spans {
		names = append(names, sp.OperationName)
		if a := sp.event("conntrace.alert"); a != nil && a["conntrace.detector"] == "stale_reuse" && a["conntrace.outcome"] == "hang" {
			c.span, found = sp, true
		}
	}
	if !found {
		t.Fatalf("Jaeger's trace %s (spans %v) holds no stale_reuse hang alert event", c.exemplar, names)
	}
	alert, got := c.span.event("conntrace.alert"), c.span.event("conntrace.got_conn")
	advice, _ := alert["conntrace.alert.advice"].(string)
	if !strings.Contains(advice, "IdleConnTimeout") || alert["conntrace.alert.message"] == nil {
		t.Errorf("alert event %v: want the message, and advice naming IdleConnTimeout", alert)
	}
	if idle, _ := alert["conntrace.connection.idle_time"].(float64); idle < natIdle.Seconds() {
		t.Errorf("alert event idle_time %v; want at least the NAT's %v", alert["conntrace.connection.idle_time"], natIdle)
	}
	if idle, _ := got["conntrace.connection.idle_time"].(float64); got["conntrace.connection.reused"] != true || idle < natIdle.Seconds() {
		t.Errorf("got_conn %v; want a reused connection idle at least %v", got, natIdle)
	}
	if c.span.event("conntrace.wrote_request") == nil {
		t.Errorf("span %s lacks the write: events %v", c.span.OperationName, c.span.eventNames())
	}
	t.Logf("CHAIN %s: alert %s %v -> exemplar trace_id=%s -> Jaeger GET /api/traces/%s: spans %v; span %q events %v; alert %v",
		job, staleAlert, c.alert.Labels, c.exemplar, c.exemplar, names, c.span.OperationName, c.span.eventNames(), alert)
	checkVerdict(t, job, c.span)
	return c
}

// checkVerdict: the span holding the hang's alert says the diagnosis in
// its own tags, which Jaeger's UI shows before the events it hides behind
// "show more": conntrace.detector, conntrace.outcome, conntrace.alert.level
// and the one-line conntrace.alert.summary, the alert event's first line
// too; the status is an error described by that summary, followed, on the
// request's own span, by the error that ended it (error.type keeps the
// error's class). On an alert span, which ends at the alert while the
// request still waits, the summary alone.
func checkVerdict(t *testing.T, job string, sp jaegerSpan) {
	t.Helper()
	summary, _ := sp.tag("conntrace.alert.summary").(string)
	desc, _ := sp.tag("otel.status_description").(string)
	for k, want := range map[string]any{
		"conntrace.detector": "stale_reuse", "conntrace.outcome": "hang", "conntrace.alert.level": "ERROR",
		"otel.status_code": "ERROR", "error": true,
	} {
		if got := sp.tag(k); got != want {
			t.Errorf("span %q tag %s=%v; want %v", sp.OperationName, k, got, want)
		}
	}
	// The example's NAT is simulated in-process: the fallback rule decides.
	if !strings.HasPrefix(summary, "stale_reuse/hang: reused after ") || !strings.Contains(summary, "the path likely forgot the connection") ||
		len(summary) > 120 {
		t.Errorf("span %q conntrace.alert.summary %q; want one line of at most 120 characters, stale_reuse/hang: reused after ...", sp.OperationName, summary)
	}
	if ev := sp.event("conntrace.alert"); ev == nil || ev["conntrace.alert.summary"] != summary {
		t.Errorf("alert event %v; want conntrace.alert.summary %q, the span's", ev, summary)
	}
	want := summary + "; context deadline exceeded"
	if sp.tag("conntrace.alert_span") == true {
		want = summary
		if sp.OperationName != alertSpanName {
			t.Errorf("alert span named %q; want %q", sp.OperationName, alertSpanName)
		}
	} else if sp.tag("error.type") != "timeout" {
		t.Errorf("span %q error.type=%v; want timeout", sp.OperationName, sp.tag("error.type"))
	}
	if desc != want {
		t.Errorf("span %q otel.status_description=%q; want %q", sp.OperationName, desc, want)
	}
	t.Logf("VERDICT %s: span %q status_description=%q conntrace.detector=%v conntrace.outcome=%v conntrace.alert.level=%v error.type=%v",
		job, sp.OperationName, desc, sp.tag("conntrace.detector"), sp.tag("conntrace.outcome"), sp.tag("conntrace.alert.level"), sp.tag("error.type"))
}

// exemplarTrace waits for an exemplar of series in Prometheus and returns
// the trace_id of the latest.
func exemplarTrace(t *testing.T, s servers, series string) string {
	var id string
	waitFor(t, "an exemplar of "+series, time.Minute, func() error {
		now := time.Now()
		res, err := promExemplars(s.prometheus, series, now.Add(-10*time.Minute), now)
		if err != nil {
			return err
		}
		var latest float64
		for _, r := range res {
			for _, e := range r.Exemplars {
				if e.Labels["trace_id"] != "" && e.Timestamp >= latest {
					id, latest = e.Labels["trace_id"], e.Timestamp
				}
			}
		}
		if id == "" {
			return fmt.Errorf("no exemplar with a trace_id: %+v", res)
		}
		return nil
	})
	return id
}

// sameTraceID compares trace IDs as hex, ignoring case and leading zeros
// (Jaeger's API drops those of a trace ID whose high half is zero).
func sameTraceID(a, b string) bool {
	return a != "" && strings.TrimLeft(strings.ToLower(a), "0") == strings.TrimLeft(strings.ToLower(b), "0")
}

var traceLine = regexp.MustCompile(`(?m)^     Trace: ([0-9a-f]{32})$`)

// alertTrace is the trace ID the example printed with its stale-reuse
// ALERT: the trace that holds the alert.
func (ex *example) alertTrace(t *testing.T) string {
	out := ex.out.String()
	_, after, ok := strings.Cut(out, "ALERT stale_reuse/hang")
	m := traceLine.FindStringSubmatch(after)
	if !ok || m == nil {
		t.Fatalf("the example printed no stale_reuse/hang ALERT with its trace:\n%s", out)
	}
	return m[1]
}
