// Package upstream lets the adapter front other metrics API servers: KEDA's
// metrics server, or any custom or external metrics provider. Kubernetes
// allows one APIService per group and version, so on a cluster that runs
// KEDA only one of the two can own v1beta1.external.metrics.k8s.io; with
// upstreams, the adapter owns it and passes every metric it does not serve
// to the provider that claims it, with the caller's identity.
//
// An upstream claims metric names by its discovery (what its API lists),
// or by patterns in the config (KEDA's discovery lists only
// "externalmetrics", and its names look like s0-kafka-orders). A name
// claimed by two providers is served by neither; the error names both.
package upstream

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Spec is one upstream in the adapter's config file:
//
//	upstreams:
//	  - name: keda
//	    service: {namespace: keda, name: keda-operator-metrics-apiserver, port: 443}
//	    caFile: /etc/adapter/upstreams/keda/ca.crt
//	    apis: [external]
//	    claims: ['^s[0-9]+-']
type Spec struct {
	Name    string `yaml:"name"`
	Service struct {
		Namespace string `yaml:"namespace"`
		Name      string `yaml:"name"`
		Port      int    `yaml:"port"`
	} `yaml:"service"`
	// URL reaches the upstream at another address than its Service's
	// (https://host:port), still verified as the Service's name.
	URL string `yaml:"url"`
	// CAFile verifies the upstream's serving certificate (as the
	// APIService's caBundle would).
	CAFile string `yaml:"caFile"`
	// APIs it serves: custom, external (default both).
	APIs []string `yaml:"apis"`
	// Claims are patterns of metric names it serves besides what its
	// discovery lists.
	Claims []string `yaml:"claims"`
}

// API names.
const (
	Custom   = "custom"
	External = "external"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// Validate checks a spec; where says which entry ("config.yaml:
// upstreams[0]").
func (s *Spec) Validate(where string) error {
	if !nameRE.MatchString(s.Name) || len(s.Name) > 63 {
		return fmt.Errorf("%s: name %q: want a DNS label such as keda (it names the provider in errors and self-metrics)", where, s.Name)
	}
	if s.Name == Self {
		return fmt.Errorf("%s: name %q is this adapter's", where, s.Name)
	}
	if s.Service.Namespace == "" || s.Service.Name == "" || s.Service.Port < 1 || s.Service.Port > 65535 {
		return fmt.Errorf("%s (%s): service needs namespace, name and a port from 1 to 65535", where, s.Name)
	}
	if s.URL != "" {
		u, err := url.Parse(s.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("%s (%s): url %q: want https://host:port, nothing after it", where, s.Name, s.URL)
		}
	}
	if s.CAFile == "" {
		return fmt.Errorf("%s (%s): caFile is required: the upstream's serving certificate is verified, as the APIService's caBundle would", where, s.Name)
	}
	if len(s.APIs) == 0 {
		s.APIs = []string{Custom, External}
	}
	for _, a := range s.APIs {
		if a != Custom && a != External {
			return fmt.Errorf("%s (%s): apis: %q is neither custom nor external", where, s.Name, a)
		}
	}
	for _, c := range s.Claims {
		if _, err := regexp.Compile(c); err != nil {
			return fmt.Errorf("%s (%s): claims: %q: %v", where, s.Name, c, err)
		}
	}
	return nil
}

// ServerName is the name its serving certificate must carry: the
// Service's, as the aggregator verifies an APIService's.
func (s *Spec) ServerName() string {
	return s.Service.Name + "." + s.Service.Namespace + ".svc"
}

// BaseURL is where requests go.
func (s *Spec) BaseURL() string {
	if s.URL != "" {
		return strings.TrimSuffix(s.URL, "/")
	}
	return "https://" + net.JoinHostPort(s.ServerName(), strconv.Itoa(s.Service.Port))
}

func (s *Spec) serves(api string) bool {
	for _, a := range s.APIs {
		if a == api {
			return true
		}
	}
	return false
}
