package scenario

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// expression is one PromQL expression a file of the project gives users,
// and whether it must return data while the system is under load.
type expression struct {
	where, expr string
	wantData    bool
}

// monitoringExpressions reads every expression of the dashboard and of the
// rules file. Recording rules and dashboard panels must have data during
// the scenario; alert conditions only must evaluate (nothing should be
// alerting), and each recorded series must exist (Prometheus loaded the
// file).
func monitoringExpressions(t *testing.T) []expression {
	t.Helper()
	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var out []expression
	b, err := os.ReadFile(filepath.Join(root, "manifests", "monitoring", "dashboards", "purchase-system.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			out = append(out, expression{"dashboard panel " + p.Title, tg.Expr, true})
		}
	}
	b, err = os.ReadFile(filepath.Join(root, "manifests", "monitoring", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Record, Alert, Expr string
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("rules.yaml: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out = append(out, expression{"recording rule " + r.Record, r.Expr, true})
				out = append(out, expression{"recorded series " + r.Record, r.Record, true})
			} else {
				out = append(out, expression{"alert " + r.Alert, r.Expr, false})
			}
		}
	}
	return out
}

// checkExpressions runs every expression against Prometheus.
func checkExpressions(t *testing.T, promURL string, note func(string, ...any)) {
	t.Helper()
	exprs := monitoringExpressions(t)
	client := &http.Client{Timeout: 10 * time.Second}
	failed := 0
	for _, e := range exprs {
		n, err := instantQuery(client, promURL, e.expr)
		switch {
		case err != nil:
			t.Errorf("%s: %v\n  %s", e.where, err, e.expr)
			failed++
		case e.wantData && n == 0:
			t.Errorf("%s returns no data during the scenario:\n  %s", e.where, e.expr)
			failed++
		}
	}
	note("monitoring: %d dashboard and rule expressions run against Prometheus, %d failed", len(exprs), failed)
}

func instantQuery(c *http.Client, promURL, q string) (int, error) {
	resp, err := c.Get(promURL + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, err
	}
	if body.Status != "success" {
		return 0, fmt.Errorf("prometheus: %s", body.Error)
	}
	return len(body.Data.Result), nil
}
