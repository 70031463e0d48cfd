package integrations

import (
	"bytes"
	"context"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/vocab"
)

// s3Server answers every GetObject with a small object.
func s3Server(t *testing.T, tls bool) (*httptest.Server, []byte) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	}))
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	if !tls {
		return srv, nil
	}
	return srv, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// TestAWSSDK: conntrace in aws-sdk-go-v2, loaded with and without a custom
// CA bundle (AWS_CA_BUNDLE, config.WithCustomCABundle). The wiring that
// works in both: load the config with a *awshttp.BuildableClient, which
// LoadDefaultConfig fills with the bundle's roots, then wrap its
// transport. Handing LoadDefaultConfig a client whose transport is already
// conntrace's fails at load time when a bundle is set, as the SDK's
// error says.
func TestAWSSDK(t *testing.T) {
	integrated(t, "github.com/aws/aws-sdk-go-v2/service/s3")
	integrated(t, "github.com/aws/aws-sdk-go-v2/config")
	for _, withCA := range []bool{false, true} {
		name := "no CA bundle"
		if withCA {
			name = "custom CA bundle"
		}
		t.Run(name, func(t *testing.T) {
			srv, ca := s3Server(t, withCA)
			rec := newRecorded(t)
			opts := []func(*config.LoadOptions) error{
				config.WithRegion("eu-west-1"),
				config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "")),
			}
			if withCA {
				opts = append(opts, config.WithCustomCABundle(bytes.NewReader(ca)))
			}
			// The wiring (README, With other clients):
			cfg, err := config.LoadDefaultConfig(t.Context(), append(opts, config.WithHTTPClient(awshttp.NewBuildableClient()))...)
			if err != nil {
				t.Fatal(err)
			}
			tr := cfg.HTTPClient.(*awshttp.BuildableClient).GetTransport() // holds the bundle's roots
			cfg.HTTPClient = &http.Client{Transport: conntrace.NewTransport(tr, rec.options()...)}

			client := s3.NewFromConfig(cfg, func(o *s3.Options) {
				o.BaseEndpoint = aws.String(srv.URL)
				o.UsePathStyle = true
				o.DisableLogOutputChecksumValidationSkipped = true
			})
			for range 2 {
				out, err := client.GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String("b"), Key: aws.String("k")})
				if err != nil {
					t.Fatal(err)
				}
				if b, _ := io.ReadAll(out.Body); string(b) != "hello" {
					t.Fatalf("object %q", b)
				}
				out.Body.Close()
				time.Sleep(20 * time.Millisecond)
			}
			if got := len(rec.clientSpans()); got != 2 {
				t.Errorf("%d spans; want 2, one per GetObject", got)
			}
			reusedOnce(t, rec)
			if got := rec.Collect(t).Total(vocab.MetricConfigIdleConnTimeout); got != 90 {
				t.Errorf("%s: got %v; want 90, the SDK transport's IdleConnTimeout", vocab.MetricConfigIdleConnTimeout, got)
			}

			if !withCA {
				return
			}
			// What fails: the conntrace client handed to LoadDefaultConfig.
			_, err = config.LoadDefaultConfig(context.Background(), append(opts,
				config.WithHTTPClient(&http.Client{Transport: conntrace.NewTransport(nil, rec.options()...)}))...)
			if err == nil || !strings.Contains(err.Error(), "has no WithTransportOptions") {
				t.Errorf("LoadDefaultConfig with a CA bundle and a non-buildable client: err %v; want the SDK's WithTransportOptions error", err)
			}
		})
	}
}
