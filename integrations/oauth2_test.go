package integrations

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/conntrace/conntrace"
)

// TestOAuth2: conntrace under golang.org/x/oauth2, as the Base of its
// oauth2.Transport. Put in the context as oauth2.HTTPClient, the one
// client carries both the token request and the API requests: all three
// are spans, on one reused connection. Both forms the README names: a
// clientcredentials.Config's Client(ctx), and an oauth2.Config's
// Client(ctx, token) whose token has expired and is refreshed.
func TestOAuth2(t *testing.T) {
	integrated(t, "golang.org/x/oauth2")
	for _, form := range []struct {
		name   string
		client func(ctx context.Context, tokenURL string) *http.Client
	}{
		{"clientcredentials.Config", func(ctx context.Context, tokenURL string) *http.Client {
			cc := clientcredentials.Config{ClientID: "id", ClientSecret: "secret", TokenURL: tokenURL}
			return cc.Client(ctx)
		}},
		{"oauth2.Config", func(ctx context.Context, tokenURL string) *http.Client {
			c := oauth2.Config{ClientID: "id", ClientSecret: "secret", Endpoint: oauth2.Endpoint{TokenURL: tokenURL}}
			return c.Client(ctx, &oauth2.Token{RefreshToken: "r3fr3sh", Expiry: time.Now().Add(-time.Hour)})
		}},
	} {
		t.Run(form.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					w.Header().Set("Content-Type", "application/json")
					fmt.Fprint(w, `{"access_token":"t0k3n","token_type":"Bearer","expires_in":3600}`)
					return
				}
				if r.Header.Get("Authorization") != "Bearer t0k3n" {
					http.Error(w, "no token", http.StatusUnauthorized)
					return
				}
				okHandler(w, r)
			}))
			t.Cleanup(srv.Close)
			rec := newRecorded(t)

			// The wiring (README, With other clients):
			ctx := context.WithValue(t.Context(), oauth2.HTTPClient, &http.Client{Transport: conntrace.NewTransport(nil, rec.options()...)})
			client := form.client(ctx, srv.URL+"/token") // its *oauth2.Transport's Base is conntrace's

			if _, ok := client.Transport.(*oauth2.Transport).Base.(*conntrace.Transport); !ok {
				t.Fatalf("oauth2.Transport.Base is %T; want *conntrace.Transport", client.Transport.(*oauth2.Transport).Base)
			}
			for range 2 {
				res, err := client.Get(srv.URL + "/api")
				if err != nil || res.StatusCode != 200 {
					t.Fatalf("%v, %v", res, err)
				}
				res.Body.Close()
				time.Sleep(20 * time.Millisecond)
			}
			if got := len(rec.clientSpans()); got != 3 {
				t.Errorf("%d spans; want 3: the token request and two API requests", got)
			}
			reusedOnce(t, rec)
		})
	}
}
