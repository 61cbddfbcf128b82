package clustertest

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestEveryWorkloadIsRestricted reads every rendered kustomization and
// checks each pod template and container against what this project
// promises (docs/operations.md, Reliability and security): non-root, read-only root filesystem, no
// privilege escalation, every capability dropped, seccomp RuntimeDefault,
// no host namespaces or host paths; and every namespace it creates
// enforces Pod Security "restricted". The local node and the API server
// enforce the same at run time (the scenario's pods could not start
// otherwise); this test names the workload and field that slipped.
func TestEveryWorkloadIsRestricted(t *testing.T) {
	for _, dir := range []string{
		"manifests/overlays/local", "manifests/overlays/e2e", "manifests/overlays/e2e-three-brokers", "manifests/overlays/kind", "manifests/overlays/kind-e2e", systemOverlay,
		"manifests/monitoring", "manifests/addons/metrics-server", "manifests/addons/kube-state-metrics", "manifests/addons/coredns",
	} {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			rendered := kubectl(t, "kustomize", filepath.Join(repoRoot, dir))
			workloads := 0
			for _, doc := range strings.Split(rendered, "\n---\n") {
				var head struct {
					Kind     string
					Metadata struct {
						Name, Namespace string
						Labels          map[string]string
					}
				}
				if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
					t.Fatalf("%s: %v", dir, err)
				}
				name := head.Kind + " " + head.Metadata.Namespace + "/" + head.Metadata.Name
				var spec *corev1.PodSpec
				switch head.Kind {
				case "Namespace":
					if head.Metadata.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
						t.Errorf("%s: not labelled pod-security.kubernetes.io/enforce=restricted", name)
					}
					continue
				case "Deployment":
					var d appsv1.Deployment
					mustUnmarshal(t, doc, &d)
					spec = &d.Spec.Template.Spec
				case "StatefulSet":
					var s appsv1.StatefulSet
					mustUnmarshal(t, doc, &s)
					spec = &s.Spec.Template.Spec
				case "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod":
					t.Errorf("%s: a %s; this check reads Deployments and StatefulSets only, extend it", name, head.Kind)
					continue
				default:
					continue
				}
				workloads++
				for _, problem := range restrictedProblems(spec) {
					t.Errorf("%s: %s", name, problem)
				}
			}
			if workloads == 0 {
				t.Fatalf("%s renders no workloads: the check read nothing", dir)
			}
			t.Logf("%s: %d workloads checked", dir, workloads)
		})
	}
}

func mustUnmarshal(t *testing.T, doc string, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
		t.Fatalf("%v in\n%s", err, doc)
	}
}

// restrictedProblems lists what in spec falls short of the project's
// container hardening (a superset of Pod Security "restricted").
func restrictedProblems(spec *corev1.PodSpec) []string {
	var out []string
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		out = append(out, "uses a host namespace")
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			out = append(out, "volume "+v.Name+" is a hostPath")
		}
	}
	if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		out = append(out, "pod runAsUser is 0")
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			out = append(out, fmt.Sprintf("container %s has no securityContext", c.Name))
			continue
		}
		bad := func(what string) { out = append(out, fmt.Sprintf("container %s: %s", c.Name, what)) }
		if !isTrue(sc.RunAsNonRoot) && !isTrue(psc.RunAsNonRoot) {
			bad("runAsNonRoot is not true (pod or container)")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			bad("runAsUser is 0")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			bad("allowPrivilegeEscalation is not false")
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			bad("readOnlyRootFilesystem is not true")
		}
		if isTrue(sc.Privileged) {
			bad("privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			bad("capabilities do not drop ALL")
		} else if len(sc.Capabilities.Add) > 0 {
			bad(fmt.Sprintf("adds capabilities %v", sc.Capabilities.Add))
		}
		seccomp := psc.SeccompProfile
		if sc.SeccompProfile != nil {
			seccomp = sc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			bad("seccompProfile is not RuntimeDefault (pod or container)")
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				bad(fmt.Sprintf("hostPort %d", p.HostPort))
			}
		}
	}
	return out
}

func isTrue(b *bool) bool { return b != nil && *b }
