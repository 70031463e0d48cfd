package exporters

import (
	"context"
	"os"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The OTLP receivers on this host that the OpenTelemetry specification's
// default endpoints name, reached without TLS (plain HTTP, gRPC insecure).
// Variables so that a test can point them at its own receiver.
var (
	localOTLPHTTP = "localhost:4318"
	localOTLPGRPC = "localhost:4317"
)

// otlpConfigured reports whether any variable names an OTLP endpoint or
// its security for the signal ("TRACES" or "METRICS").
func otlpConfigured(signal string) bool {
	for _, k := range []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_" + signal + "_ENDPOINT",
		"OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_" + signal + "_INSECURE",
	} {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return false
}

// otlpProtocol is the signal's OTLP protocol, already checked by
// checkOTLPProtocol.
func otlpProtocol(signal string) string {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL", envOTLPProtocol} {
		if p := os.Getenv(k); p != "" {
			return p
		}
	}
	return "http/protobuf"
}

// newOTLPSpanExporter builds the OTLP trace exporter. Where a variable
// names the endpoint, autoexport builds it as the Go exporters read the
// variables. Where none does, the Go exporters would use TLS to localhost
// (https://localhost:4318), which no local receiver such as Jaeger or a
// collector serves by default; the specification's default is plain
// http://localhost:4318, and so it is here.
func newOTLPSpanExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	if otlpConfigured("TRACES") {
		return autoexport.NewSpanExporter(ctx)
	}
	if otlpProtocol("TRACES") == "grpc" {
		return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(localOTLPGRPC), otlptracegrpc.WithInsecure())
	}
	return otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(localOTLPHTTP), otlptracehttp.WithInsecure())
}

// newOTLPMetricReader is newOTLPSpanExporter for metrics: a periodic
// reader (OTEL_METRIC_EXPORT_INTERVAL) over the OTLP metric exporter.
func newOTLPMetricReader(ctx context.Context) (sdkmetric.Reader, error) {
	if otlpConfigured("METRICS") {
		return autoexport.NewMetricReader(ctx)
	}
	var exp sdkmetric.Exporter
	var err error
	if otlpProtocol("METRICS") == "grpc" {
		exp, err = otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(localOTLPGRPC), otlpmetricgrpc.WithInsecure())
	} else {
		exp, err = otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpoint(localOTLPHTTP), otlpmetrichttp.WithInsecure())
	}
	if err != nil {
		return nil, err
	}
	return sdkmetric.NewPeriodicReader(exp), nil
}
