package explain

import (
	"context"
	"net/http"
	"time"
)

// Handler serves the explanations of the running adapter: GET /explain
// for the rules, GET /explain?metric=…&resource=pods&namespace=…
// [&selector=…|&name=…][&metricSelector=…] for one request (no resource:
// an external metric). It shows label values, so main serves it on a
// loopback address only.
func Handler(e *Explainer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /explain", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		q := r.URL.Query()
		if q.Get("metric") == "" {
			e.Rules(w)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		req := Request{Namespace: q.Get("namespace"), Resource: q.Get("resource"), Metric: q.Get("metric"),
			Name: q.Get("name"), Selector: q.Get("selector"), MetricSelector: q.Get("metricSelector")}
		if err := e.Explain(ctx, w, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	return mux
}
