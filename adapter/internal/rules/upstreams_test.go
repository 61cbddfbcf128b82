package rules_test

import (
	"strings"
	"testing"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

const kedaUpstream = `upstreams:
  - name: keda
    service: {namespace: keda, name: keda-metrics-apiserver, port: 443}
    caFile: /etc/adapter-upstreams/keda-ca.crt
    apis: [external]
    claims: ['^s[0-9]+-']
`

// An upstreams file (--upstreams-file) adds to the config's upstreams
// and holds nothing else: a rule in it would be served by no reload.
func TestUpstreamsFileAddsToTheConfigsAndHoldsNothingElse(t *testing.T) {
	extra, err := rules.ParseUpstreams("upstreams.yaml", []byte(kedaUpstream))
	if err != nil {
		t.Fatal(err)
	}
	if len(extra) != 1 || extra[0].Name != "keda" || extra[0].Service.Name != "keda-metrics-apiserver" || len(extra[0].Claims) != 1 {
		t.Fatalf("parsed %+v", extra)
	}
	cfg := parse(t, strings.Replace(kedaUpstream, "name: keda\n", "name: other\n", 1))
	all, err := rules.MergeUpstreams("config.yaml", cfg.Upstreams, "upstreams.yaml", extra)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Name != "other" || all[1].Name != "keda" {
		t.Fatalf("merged %+v", all)
	}

	for _, tc := range []struct{ name, file, want string }{
		{"a rule", kedaUpstream + "rules: []\n", "upstreams only"},
		{"an upstream without a service", "upstreams:\n  - name: x\n", "upstreams.yaml: upstreams[0]"},
	} {
		if _, err := rules.ParseUpstreams("upstreams.yaml", []byte(tc.file)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to say %q", tc.name, err, tc.want)
		}
	}
	if _, err := rules.MergeUpstreams("config.yaml", extra, "upstreams.yaml", extra); err == nil ||
		!strings.Contains(err.Error(), "keda is in both config.yaml and upstreams.yaml") {
		t.Errorf("a name in both files: err = %v", err)
	}
	if _, err := rules.MergeUpstreams("config.yaml", nil, "upstreams.yaml", append(extra, extra...)); err == nil ||
		!strings.Contains(err.Error(), "a second upstream named keda") {
		t.Errorf("a name twice in the upstreams file: err = %v", err)
	}
}
