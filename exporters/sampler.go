package exporters

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/conntrace/conntrace/vocab"
)

// The sampler variables New reads itself: it must wrap the sampler they
// select, and the SDK reads them only when it is given no sampler.
const (
	EnvTracesSampler    = "OTEL_TRACES_SAMPLER"
	EnvTracesSamplerArg = "OTEL_TRACES_SAMPLER_ARG"
)

// The samplers OTEL_TRACES_SAMPLER may name: those the Go SDK knows, in the
// order error messages list them.
var tracesSamplers = []string{
	"always_on", "always_off", "traceidratio",
	"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
}

// KeepAlertSpans returns a Sampler that samples every span started with the
// attribute conntrace.alert_span=true ([vocab.AttrAlertSpan]) and
// leaves every other decision, attributes and trace state to s. conntrace
// starts such a span to hold an alert raised on a request whose own span
// was not sampled, so that a trace of the hang exists whatever the ratio.
// A nil s means the SDK's default, ParentBased(AlwaysSample()).
//
// [New] and [Setup] use it around the sampler that OTEL_TRACES_SAMPLER
// selects; a program that builds its own TracerProvider wraps its sampler,
// as the example shows.
func KeepAlertSpans(s sdktrace.Sampler) sdktrace.Sampler {
	if s == nil {
		s = sdktrace.ParentBased(sdktrace.AlwaysSample())
	}
	return alertSpanSampler{next: s}
}

type alertSpanSampler struct {
	next sdktrace.Sampler
}

func (a alertSpanSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	r := a.next.ShouldSample(p)
	if r.Decision != sdktrace.RecordAndSample && isAlertSpan(p) {
		// Keep the wrapped sampler's attributes and trace state: only
		// the decision changes.
		r.Decision = sdktrace.RecordAndSample
	}
	return r
}

func (a alertSpanSampler) Description() string {
	return "KeepAlertSpans{" + a.next.Description() + "}"
}

// isAlertSpan reports whether the span starts with conntrace.alert_span=true.
func isAlertSpan(p sdktrace.SamplingParameters) bool {
	for _, kv := range p.Attributes {
		if kv.Key == vocab.AttrAlertSpan {
			return kv.Value.AsBool()
		}
	}
	return false
}

// samplerFromEnv is the sampler OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG select, read as the SDK reads them (name
// trimmed and case-insensitive, a ratio defaulting to 1, the argument
// ignored by samplers that take none); unset, the SDK's default,
// ParentBased(AlwaysSample()). Where the SDK reports a bad value to
// otel.Handle and samples everything, this is an error naming the
// variable.
func samplerFromEnv() (sdktrace.Sampler, error) {
	raw := os.Getenv(EnvTracesSampler)
	name := strings.ToLower(strings.TrimSpace(raw))
	switch name {
	case "":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio", "parentbased_traceidratio":
		ratio, err := samplerRatio(name)
		if err != nil {
			return nil, err
		}
		if name == "traceidratio" {
			return sdktrace.TraceIDRatioBased(ratio), nil
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), nil
	}
	return nil, fmt.Errorf("exporters: %s: unknown sampler '%s'; valid: %s", EnvTracesSampler, raw, strings.Join(tracesSamplers, ", "))
}

// samplerRatio is OTEL_TRACES_SAMPLER_ARG for a ratio sampler: a number
// from 0 to 1, or 1 when unset.
func samplerRatio(sampler string) (float64, error) {
	arg := strings.TrimSpace(os.Getenv(EnvTracesSamplerArg))
	if arg == "" {
		return 1, nil
	}
	v, err := strconv.ParseFloat(arg, 64)
	if err != nil || math.IsNaN(v) || v < 0 || v > 1 {
		return 0, fmt.Errorf("exporters: %s: '%s' is not a ratio from 0 to 1 (for %s=%s)", EnvTracesSamplerArg, arg, EnvTracesSampler, sampler)
	}
	return v, nil
}
