// Package promtest is a stand-in for Prometheus' HTTP API in unit tests
// and benchmarks of the adapter: it holds series with values and answers
// the adapter's three kinds of request (metric names, label names, instant
// queries of the shape the rules produce) and counts them. Integration
// tests use a real Prometheus instead.
package promtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Series is one stored series and its current value.
type Series struct {
	Labels    map[string]string // __name__ included
	Value     float64
	Timestamp time.Time
}

// Server is a fake Prometheus.
type Server struct {
	*httptest.Server
	mu      sync.Mutex
	series  []Series
	Queries atomic.Int64 // instant queries answered
	Down    atomic.Bool  // answer 503
}

// New starts a fake Prometheus holding series.
func New(series ...Series) *Server {
	s := &Server{series: series}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/label/__name__/values", s.names)
	mux.HandleFunc("/api/v1/labels", s.labels)
	mux.HandleFunc("/api/v1/query", s.query)
	s.Server = httptest.NewServer(mux)
	return s
}

// Set replaces the stored series.
func (s *Server) Set(series ...Series) {
	s.mu.Lock()
	s.series = series
	s.mu.Unlock()
}

var selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\{([^}]*)\}`)
var matcherRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)

// selector parses the first series selector in a query.
func selector(q string) (string, func(map[string]string) bool) {
	m := selectorRE.FindStringSubmatch(q)
	if m == nil {
		name := strings.TrimSpace(q)
		return name, func(l map[string]string) bool { return l["__name__"] == name }
	}
	name := m[1]
	var preds []func(map[string]string) bool
	for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
		label, op := mm[1], mm[2]
		val, _ := strconv.Unquote(`"` + mm[3] + `"`)
		switch op {
		case "=":
			preds = append(preds, func(l map[string]string) bool { return l[label] == val })
		case "!=":
			preds = append(preds, func(l map[string]string) bool { return l[label] != val })
		case "=~", "!~":
			re := regexp.MustCompile("^(?:" + val + ")$")
			want := op == "=~"
			preds = append(preds, func(l map[string]string) bool { return re.MatchString(l[label]) == want })
		}
	}
	return name, func(l map[string]string) bool {
		if name != "" && l["__name__"] != name {
			return false
		}
		for _, p := range preds {
			if !p(l) {
				return false
			}
		}
		return true
	}
}

func (s *Server) matching(match string) []Series {
	_, pred := selector(match)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Series
	for _, se := range s.series {
		if pred(se.Labels) {
			out = append(out, se)
		}
	}
	return out
}

func (s *Server) write(w http.ResponseWriter, data any) {
	if s.Down.Load() {
		http.Error(w, `{"status":"error","errorType":"unavailable","error":"down"}`, http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"status": "success", "data": data})
}

func (s *Server) names(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	set := map[string]bool{}
	for _, m := range r.Form["match[]"] {
		for _, se := range s.matching(m) {
			set[se.Labels["__name__"]] = true
		}
	}
	s.write(w, sorted(set))
}

func (s *Server) labels(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	set := map[string]bool{}
	for _, m := range r.Form["match[]"] {
		for _, se := range s.matching(m) {
			for k := range se.Labels {
				set[k] = true
			}
		}
	}
	s.write(w, sorted(set))
}

var groupRE = regexp.MustCompile(`^max by \((\w+)\) \(timestamp\(`)

// query answers "max by (l) (timestamp(sel))" with the newest timestamp
// per l, "max(timestamp(sel))" with the newest overall, and anything else
// with the values of the series its first selector matches (as a rate()
// or plain selector over those series would).
func (s *Server) query(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	s.Queries.Add(1)
	q := r.Form.Get("query")
	at := r.Form.Get("time")
	evalTime, _ := strconv.ParseFloat(at, 64)
	if evalTime == 0 {
		evalTime = float64(time.Now().UnixNano()) / 1e9
	}
	series := s.matching(q)
	type sample struct {
		Metric map[string]string `json:"metric"`
		Value  [2]any            `json:"value"`
	}
	result := []sample{}
	switch {
	case groupRE.MatchString(q):
		by := groupRE.FindStringSubmatch(q)[1]
		newest := map[string]float64{}
		for _, se := range series {
			ts := float64(se.Timestamp.UnixNano()) / 1e9
			if ts > newest[se.Labels[by]] {
				newest[se.Labels[by]] = ts
			}
		}
		for k, ts := range newest {
			result = append(result, sample{Metric: map[string]string{by: k}, Value: [2]any{evalTime, strconv.FormatFloat(ts, 'f', -1, 64)}})
		}
	case strings.HasPrefix(q, "max(timestamp("):
		var newest float64
		for _, se := range series {
			newest = max(newest, float64(se.Timestamp.UnixNano())/1e9)
		}
		if len(series) > 0 {
			result = append(result, sample{Metric: map[string]string{}, Value: [2]any{evalTime, strconv.FormatFloat(newest, 'f', -1, 64)}})
		}
	default:
		for _, se := range series {
			result = append(result, sample{Metric: se.Labels, Value: [2]any{evalTime, strconv.FormatFloat(se.Value, 'f', -1, 64)}})
		}
	}
	s.write(w, map[string]any{"resultType": "vector", "result": result})
}

func sorted(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// PodSeries builds the seed's flask_http_request_total series for a pod:
// one per (method, status, path) with the given values.
func PodSeries(namespace, pod string, at time.Time, values ...float64) []Series {
	var out []Series
	for i, v := range values {
		out = append(out, Series{Labels: map[string]string{
			"__name__": "flask_http_request_total", "namespace": namespace, "pod": pod,
			"method": "POST", "path": "/buy", "status": fmt.Sprint(200 + i),
		}, Value: v, Timestamp: at})
	}
	return out
}
