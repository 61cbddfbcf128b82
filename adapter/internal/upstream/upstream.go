package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	cmv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	"k8s.io/metrics/pkg/apis/external_metrics"
	emv1beta1 "k8s.io/metrics/pkg/apis/external_metrics/v1beta1"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/backend"
)

// Self names this adapter's own rules and lag metrics in conflicts.
const Self = "purchase-metrics-adapter"

const (
	customPath   = "/apis/custom.metrics.k8s.io/v1beta2"
	externalPath = "/apis/external.metrics.k8s.io/v1beta1"
)

// Options configure the upstreams.
type Options struct {
	// ClientCertFile and ClientKeyFile are the adapter's identity as a
	// front proxy: the upstream trusts the CA that signed it as its
	// requestheader CA (re-read on every handshake: renewals apply).
	ClientCertFile, ClientKeyFile string
	// Timeout bounds one request to an upstream (default 10 s).
	Timeout time.Duration
	Backend *backend.Metrics
	Logger  *slog.Logger
}

// Upstream is one provider the adapter fronts.
type Upstream struct {
	spec   Spec
	claims []*regexp.Regexp
	client *http.Client
	obs    *backend.Observer
	logger *slog.Logger

	// self is who the adapter's own discovery asks as: the client
	// certificate's name, authenticated (the upstream refuses a front
	// proxy that names no user; system:discovery lets any authenticated
	// user list its APIs).
	self user.Info

	mu          sync.RWMutex
	custom      []cmprovider.CustomMetricInfo
	external    []string
	lastErr     error
	discovered  bool
	lastSuccess time.Time
}

// Name is the upstream's name in the config.
func (u *Upstream) Name() string { return u.spec.Name }

// New builds an upstream from a validated spec.
func New(spec Spec, o Options) (*Upstream, error) {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Backend == nil {
		o.Backend = backend.NewMetrics(nil)
	}
	pem, err := os.ReadFile(spec.CAFile)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: caFile: %w", spec.Name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("upstream %s: caFile %s: no PEM certificate in it", spec.Name, spec.CAFile)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: spec.ServerName()}
	if o.ClientCertFile == "" {
		return nil, fmt.Errorf("upstream %s: the adapter needs a client certificate (--upstream-client-cert-file, --upstream-client-key-file) that the upstream trusts as a front proxy: without it the upstream cannot know who asks", spec.Name)
	}
	pair, err := tls.LoadX509KeyPair(o.ClientCertFile, o.ClientKeyFile)
	if err != nil {
		return nil, fmt.Errorf("--upstream-client-cert-file/--upstream-client-key-file: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("--upstream-client-cert-file: %w", err)
	}
	if leaf.Subject.CommonName == "" {
		return nil, fmt.Errorf("--upstream-client-cert-file: the certificate has no common name: the upstreams' --requestheader-allowed-names and the adapter's own discovery need one")
	}
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, err := tls.LoadX509KeyPair(o.ClientCertFile, o.ClientKeyFile)
		return &c, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	u := &Upstream{spec: spec, client: &http.Client{Transport: tr, Timeout: o.Timeout}, logger: o.Logger,
		self: &user.DefaultInfo{Name: leaf.Subject.CommonName, Groups: []string{user.AllAuthenticated}},
		obs:  o.Backend.For("upstream/"+spec.Name, "discovery", Custom, External)}
	for _, c := range spec.Claims {
		u.claims = append(u.claims, regexp.MustCompile(c))
	}
	return u, nil
}

func (u *Upstream) claimed(name string) bool {
	for _, re := range u.claims {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

// ServesExternal reports whether the upstream claims an external metric:
// its discovery lists it, or a claim pattern matches it.
func (u *Upstream) ServesExternal(name string) bool {
	if !u.spec.serves(External) {
		return false
	}
	if u.claimed(name) {
		return true
	}
	u.mu.RLock()
	defer u.mu.RUnlock()
	return slices.Contains(u.external, name)
}

// ServesCustom reports whether the upstream claims a custom metric on a
// resource.
func (u *Upstream) ServesCustom(name string, gr schema.GroupResource) bool {
	if !u.spec.serves(Custom) {
		return false
	}
	if u.claimed(name) {
		return true
	}
	u.mu.RLock()
	defer u.mu.RUnlock()
	for _, info := range u.custom {
		if info.Metric == name && info.GroupResource == gr {
			return true
		}
	}
	return false
}

// Discover asks the upstream which metrics it serves. A failure keeps
// what it listed before.
func (u *Upstream) Discover(ctx context.Context) error {
	ctx = request.WithUser(ctx, u.self)
	var custom []cmprovider.CustomMetricInfo
	var external []string
	var errs []error
	if u.spec.serves(Custom) {
		list, err := u.resources(ctx, customPath)
		errs = append(errs, err)
		for _, r := range list {
			res, metric, ok := strings.Cut(r.Name, "/")
			if !ok {
				continue
			}
			custom = append(custom, cmprovider.CustomMetricInfo{GroupResource: schema.ParseGroupResource(res), Namespaced: r.Namespaced, Metric: metric})
		}
	}
	if u.spec.serves(External) {
		list, err := u.resources(ctx, externalPath)
		errs = append(errs, err)
		for _, r := range list {
			external = append(external, r.Name)
		}
	}
	err := errors.Join(errs...)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lastErr = err
	if err != nil {
		return err
	}
	u.custom, u.external, u.discovered, u.lastSuccess = custom, external, true, time.Now()
	return nil
}

func (u *Upstream) resources(ctx context.Context, path string) ([]metav1.APIResource, error) {
	start := time.Now()
	var list metav1.APIResourceList
	err := u.get(ctx, path, nil, &list)
	u.obs.Observe("discovery", start, err)
	return list.APIResources, err
}

// Listed returns what the upstream's discovery listed last.
func (u *Upstream) Listed() ([]cmprovider.CustomMetricInfo, []string) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.custom, u.external
}

// Status says how the upstream's last discovery went.
func (u *Upstream) Status() (lastSuccess time.Time, err error) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.lastSuccess, u.lastErr
}

// External forwards an external metric request.
func (u *Upstream) External(ctx context.Context, namespace, metric string, sel labels.Selector) (*external_metrics.ExternalMetricValueList, error) {
	start := time.Now()
	q := url.Values{}
	if sel != nil && !sel.Empty() {
		q.Set("labelSelector", sel.String())
	}
	var in emv1beta1.ExternalMetricValueList
	err := u.get(ctx, externalPath+"/namespaces/"+url.PathEscape(namespace)+"/"+url.PathEscape(metric), q, &in)
	u.obs.Observe(External, start, err)
	if err != nil {
		return nil, err
	}
	out := &external_metrics.ExternalMetricValueList{}
	if err := emv1beta1.Convert_v1beta1_ExternalMetricValueList_To_external_metrics_ExternalMetricValueList(&in, out, nil); err != nil {
		return nil, u.unavailable(err)
	}
	return out, nil
}

// CustomRequest is one custom metric request, as the API server received it.
type CustomRequest struct {
	Info      cmprovider.CustomMetricInfo
	Namespace string
	Name      string          // one object; "" with Selector
	Selector  labels.Selector // objects by label
	Metric    labels.Selector // metricLabelSelector
}

// path is the request's path under custom.metrics.k8s.io/v1beta2.
func (r CustomRequest) path() string {
	object := r.Name
	if object == "" {
		object = "*"
	}
	gr := r.Info.GroupResource
	switch {
	case gr.Group == "" && gr.Resource == "namespaces":
		return "/namespaces/" + url.PathEscape(object) + "/metrics/" + url.PathEscape(r.Info.Metric)
	case r.Info.Namespaced:
		return "/namespaces/" + url.PathEscape(r.Namespace) + "/" + url.PathEscape(gr.String()) + "/" + url.PathEscape(object) + "/" + url.PathEscape(r.Info.Metric)
	}
	return "/" + url.PathEscape(gr.String()) + "/" + url.PathEscape(object) + "/" + url.PathEscape(r.Info.Metric)
}

// Custom forwards a custom metric request.
func (u *Upstream) Custom(ctx context.Context, r CustomRequest) (*custom_metrics.MetricValueList, error) {
	start := time.Now()
	q := url.Values{}
	if r.Name == "" && r.Selector != nil && !r.Selector.Empty() {
		q.Set("labelSelector", r.Selector.String())
	}
	if r.Metric != nil && !r.Metric.Empty() {
		q.Set("metricLabelSelector", r.Metric.String())
	}
	// One object's answer is a MetricValueList too in v1beta2 (the
	// library answers lists for both).
	var in cmv1beta2.MetricValueList
	err := u.get(ctx, customPath+r.path(), q, &in)
	u.obs.Observe(Custom, start, err)
	if err != nil {
		return nil, err
	}
	out := &custom_metrics.MetricValueList{}
	if err := cmv1beta2.Convert_v1beta2_MetricValueList_To_custom_metrics_MetricValueList(&in, out, nil); err != nil {
		return nil, u.unavailable(err)
	}
	return out, nil
}

// get sends a GET with the caller's identity as front-proxy headers, the
// way the aggregator passes it, and decodes the answer into out; an
// answer of the upstream's that is an error keeps its code and message.
func (u *Upstream) get(ctx context.Context, path string, q url.Values, out any) error {
	target := u.spec.BaseURL() + path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return u.unavailable(err)
	}
	req.Header.Set("Accept", "application/json")
	if user, ok := request.UserFrom(ctx); ok {
		req.Header.Set("X-Remote-User", user.GetName())
		for _, g := range user.GetGroups() {
			req.Header.Add("X-Remote-Group", g)
		}
		for k, vs := range user.GetExtra() {
			for _, v := range vs {
				req.Header.Add("X-Remote-Extra-"+url.PathEscape(k), v)
			}
		}
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return u.unavailable(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return u.unavailable(err)
	}
	if resp.StatusCode != http.StatusOK {
		var st metav1.Status
		if json.Unmarshal(body, &st) == nil && st.Kind == "Status" && st.Code != 0 {
			st.Message = fmt.Sprintf("upstream %s: %s", u.spec.Name, st.Message)
			return &apierrors.StatusError{ErrStatus: st}
		}
		return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: int32(resp.StatusCode),
			Reason:  metav1.StatusReasonUnknown,
			Message: fmt.Sprintf("upstream %s answered %s: %.200s", u.spec.Name, resp.Status, body)}}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return u.unavailable(fmt.Errorf("decoding its answer: %w", err))
	}
	return nil
}

// unavailable is a failure to reach or read the upstream: 503, naming it.
func (u *Upstream) unavailable(err error) error {
	return apierrors.NewServiceUnavailable(fmt.Sprintf("upstream %s (%s): %v", u.spec.Name, u.spec.BaseURL(), err))
}

// Conflict is a metric two providers claim: neither serves it.
func Conflict(metric string, owners []string) error {
	sort.Strings(owners)
	return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: http.StatusConflict, Reason: metav1.StatusReasonConflict,
		Message: fmt.Sprintf("metric %s is claimed by %s: served by neither until one gives it up (a rule of this adapter, an upstream's discovery, or its claims in the config)", metric, strings.Join(owners, " and "))}}
}
