package clustertest

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestLocalOverlayIsWhatKindApplies holds the promise that lets make test
// stand for e2e/kind/run.sh: manifests/overlays/e2e (what the scenario and
// the fault table run here) renders the same objects as
// manifests/overlays/kind-e2e (what a kind user applies), field for field,
// except what the local overlay says it changes — every image pinned to
// the local registry's digest, the CPU requests of Kafka, PostgreSQL and
// Prometheus lowered for a 2-CPU node, the adapter's explain endpoint on
// its loopback — and the addons kind needs in its overlay and the local
// cluster starts itself (metrics-server, kube-state-metrics).
func TestLocalOverlayIsWhatKindApplies(t *testing.T) {
	local := renderObjects(t, "manifests/overlays/e2e")
	kind := renderObjects(t, "manifests/overlays/kind-e2e")
	lowered := map[string]bool{"StatefulSet/purchase-system/kafka": true, "StatefulSet/purchase-system/postgres": true, "Deployment/monitoring/prometheus": true}
	for key, k := range kind {
		l, ok := local[key]
		if !ok {
			if isClusterAddon(k) {
				continue
			}
			t.Errorf("%s: kind applies it, the local overlay does not", key)
			continue
		}
		for _, obj := range []map[string]any{l, k} {
			forEachContainer(obj, func(c map[string]any) {
				delete(c, "image")
				if lowered[key] {
					if r, ok := c["resources"].(map[string]any); ok {
						if req, ok := r["requests"].(map[string]any); ok {
							delete(req, "cpu")
						}
					}
				}
				if key == "Deployment/monitoring/purchase-metrics-adapter" {
					c["args"] = without(c["args"], "--debug-addr=127.0.0.1:6060")
				}
			})
		}
		if !reflect.DeepEqual(l, k) {
			lj, _ := yaml.Marshal(l)
			kj, _ := yaml.Marshal(k)
			t.Errorf("%s differs beyond images and lowered CPU requests:\n--- local\n%s\n--- kind\n%s", key, lj, kj)
		}
	}
	for key := range local {
		if _, ok := kind[key]; !ok {
			t.Errorf("%s: the local overlay applies it, kind does not", key)
		}
	}
	if len(local) < 30 {
		t.Fatalf("only %d objects rendered from manifests/overlays/e2e", len(local))
	}
}

// renderObjects renders a kustomization (kubectl kustomize) into its
// objects by kind/namespace/name.
func renderObjects(t *testing.T, dir string) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	for _, doc := range strings.Split(kubectl(t, "kustomize", filepath.Join(repoRoot, dir)), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		meta, _ := obj["metadata"].(map[string]any)
		key := fmt.Sprintf("%s/%v/%v", obj["kind"], meta["namespace"], meta["name"])
		key = strings.Replace(key, "/<nil>/", "//", 1)
		if _, dup := objs[key]; dup {
			t.Fatalf("%s: %s rendered twice", dir, key)
		}
		objs[key] = obj
	}
	return objs
}

// isClusterAddon: metrics-server's and kube-state-metrics' objects,
// which scripts/cluster.sh starts on the local cluster as addons.
func isClusterAddon(obj map[string]any) bool {
	meta, _ := obj["metadata"].(map[string]any)
	name := fmt.Sprint(meta["name"])
	labels, _ := meta["labels"].(map[string]any)
	app := fmt.Sprint(labels["app.kubernetes.io/name"], labels["k8s-app"], labels["app"])
	for _, s := range []string{name, app} {
		if strings.Contains(s, "metrics-server") || strings.Contains(s, "kube-state-metrics") || s == "v1beta1.metrics.k8s.io" {
			return true
		}
	}
	return false
}

func forEachContainer(obj map[string]any, f func(map[string]any)) {
	spec, _ := obj["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	podSpec, _ := tmpl["spec"].(map[string]any)
	for _, field := range []string{"initContainers", "containers"} {
		cs, _ := podSpec[field].([]any)
		for _, c := range cs {
			if m, ok := c.(map[string]any); ok {
				f(m)
			}
		}
	}
}

func without(list any, drop string) []any {
	var out []any
	items, _ := list.([]any)
	for _, it := range items {
		if it != drop {
			out = append(out, it)
		}
	}
	return out
}
