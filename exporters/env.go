package exporters

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The environment variables New reads itself. The OTLP exporters, the SDK
// and the resource read more (see the package documentation).
const (
	EnvTracesExporter  = "OTEL_TRACES_EXPORTER"
	EnvMetricsExporter = "OTEL_METRICS_EXPORTER"
	EnvPrometheusHost  = "OTEL_EXPORTER_PROMETHEUS_HOST"
	EnvPrometheusPort  = "OTEL_EXPORTER_PROMETHEUS_PORT"

	envOTLPProtocol        = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envOTLPTracesProtocol  = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envOTLPMetricsProtocol = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
)

// The exporter names each variable accepts, in the order error messages
// list them.
var (
	tracesExporters  = []string{"otlp", "console", "none"}
	metricsExporters = []string{"otlp", "prometheus", "console", "none"}
	otlpProtocols    = []string{"http/protobuf", "grpc"}
)

func checkName(name string, valid []string) error {
	if !slices.Contains(valid, name) {
		return fmt.Errorf("unknown exporter '%s'; valid: %s", name, strings.Join(valid, ", "))
	}
	return nil
}

// exporterName returns the exporter that the variable env names, or def
// when it is unset or empty. The specification allows a comma-separated
// list; the Go autoexport package takes one name, and so does New.
func exporterName(env, def string, valid []string) (string, error) {
	name := os.Getenv(env)
	if name == "" {
		return def, nil
	}
	if err := checkName(name, valid); err != nil {
		return "", fmt.Errorf("exporters: %s: %w", env, err)
	}
	return name, nil
}

// checkOTLPProtocol checks the protocol variables that the OTLP exporter of
// one signal reads, so that a typo is reported with the variable's name
// (autoexport's own error names neither).
func checkOTLPProtocol(signalEnv string) error {
	for _, env := range []string{signalEnv, envOTLPProtocol} {
		if p := os.Getenv(env); p != "" && !slices.Contains(otlpProtocols, p) {
			return fmt.Errorf("exporters: %s: unknown protocol '%s'; valid: %s", env, p, strings.Join(otlpProtocols, ", "))
		}
	}
	return nil
}

// prometheusAddr is where the Prometheus exporter serves /metrics: the
// specification's defaults are localhost:9464.
func prometheusAddr() (string, error) {
	host := os.Getenv(EnvPrometheusHost)
	if host == "" {
		host = "localhost"
	}
	port := os.Getenv(EnvPrometheusPort)
	if port == "" {
		port = "9464"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("exporters: %s: '%s' is not a port number (0-65535)", EnvPrometheusPort, port)
	}
	return net.JoinHostPort(host, port), nil
}
