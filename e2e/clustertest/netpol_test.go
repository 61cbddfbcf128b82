package clustertest

import (
	"path/filepath"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// TestManagementAPIIsReachableOnlyInsideItsNamespace reads the
// NetworkPolicies of every rendered overlay: ingress to the management API
// is denied by default, and every rule that lets in a peer from outside
// the namespace (another namespace, an address block, anyone) names only
// the metrics port. Policies see ports, not paths: a rule that let
// Prometheus reach the API port would let it read every purchase through
// the bulk GET /purchases. The local node does not enforce policies, so
// this reads them; kind's network plugin enforces the same objects.
func TestManagementAPIIsReachableOnlyInsideItsNamespace(t *testing.T) {
	api := labels.Set{"app": "customer-management-api"}
	for _, dir := range []string{"manifests/overlays/local", "manifests/overlays/e2e", "manifests/overlays/e2e-three-brokers", "manifests/overlays/kind", "manifests/overlays/kind-e2e", systemOverlay} {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			rendered := kubectl(t, "kustomize", filepath.Join(repoRoot, dir))
			denied, rules := false, 0
			for _, doc := range strings.Split(rendered, "\n---\n") {
				var head struct{ Kind string }
				if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
					t.Fatal(err)
				}
				if head.Kind != "NetworkPolicy" {
					continue
				}
				var np networkingv1.NetworkPolicy
				mustUnmarshal(t, doc, &np)
				sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
				if err != nil {
					t.Fatal(err)
				}
				if np.Namespace != "purchase-system" || !sel.Matches(api) || !hasIngress(np) {
					continue
				}
				if len(np.Spec.Ingress) == 0 {
					denied = true
				}
				for _, r := range np.Spec.Ingress {
					rules++
					if !fromOutside(r) {
						continue
					}
					if len(r.Ports) == 0 {
						t.Errorf("NetworkPolicy %s lets peers from outside the namespace reach every port of the management API", np.Name)
					}
					for _, p := range r.Ports {
						if p.Port == nil || !isMetricsPort(*p.Port) {
							t.Errorf("NetworkPolicy %s lets peers from outside the namespace reach port %v of the management API; only its metrics port may be", np.Name, p.Port)
						}
					}
				}
			}
			if !denied {
				t.Error("no default-deny ingress policy selects the management API")
			}
			if rules == 0 {
				t.Fatal("no ingress rule selects the management API: the check read nothing")
			}
		})
	}
}

func hasIngress(np networkingv1.NetworkPolicy) bool {
	for _, p := range np.Spec.PolicyTypes {
		if p == networkingv1.PolicyTypeIngress {
			return true
		}
	}
	return len(np.Spec.PolicyTypes) == 0
}

// fromOutside: a rule with no peers admits anyone; a peer with a
// namespace selector or an address block may be outside the namespace.
func fromOutside(r networkingv1.NetworkPolicyIngressRule) bool {
	if len(r.From) == 0 {
		return true
	}
	for _, peer := range r.From {
		if peer.NamespaceSelector != nil || peer.IPBlock != nil {
			return true
		}
	}
	return false
}

func isMetricsPort(p intstr.IntOrString) bool {
	return p.StrVal == "metrics" || p.IntVal == 9101
}
