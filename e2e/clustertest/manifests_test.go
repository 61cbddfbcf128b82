package clustertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestManifestsAreAcceptedByTheAPIServer renders every kustomization a
// user applies and has the real API server validate it (server-side dry
// run: schemas, defaults, admission), without changing anything. The
// namespaces the rendering names are created first: a dry run cannot
// create the namespace its other objects go into.
func TestManifestsAreAcceptedByTheAPIServer(t *testing.T) {
	deploySystem(t)
	// components/kafka-postgres's generated Secrets, as every deployment
	// writes them.
	if out, err := exec.Command(filepath.Join(repoRoot, "scripts", "secrets.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/secrets.sh: %v\n%s", err, out)
	}
	for _, dir := range []string{
		"manifests/overlays/local",
		"manifests/overlays/e2e",
		"manifests/overlays/e2e-three-brokers",
		systemOverlay,
		"manifests/overlays/kind",
		"manifests/overlays/kind-e2e",
		"manifests/monitoring",
		"manifests/addons/metrics-server",
		"manifests/addons/kube-state-metrics",
		"manifests/addons/coredns",
		"manifests/addons/local-path-provisioner",
		"manifests/addons/local",
	} {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			path := filepath.Join(repoRoot, dir)
			rendered := kubectl(t, "kustomize", path)
			for _, doc := range strings.Split(rendered, "\n---\n") {
				if strings.Contains(doc, "\nkind: Namespace\n") || strings.HasPrefix(doc, "apiVersion: v1\nkind: Namespace\n") {
					name := between(doc, "\n  name: ", "\n")
					if _, err := execKubectl("create", "namespace", name); err != nil {
						t.Logf("namespace %s: exists", name)
					}
				}
			}
			cmd := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "apply", "--dry-run=server", "-f", "-")
			cmd.Stdin = strings.NewReader(rendered)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server -k %s: %v\n%s", dir, err, out)
			}
			// The namespaces are labelled warn=restricted: a workload
			// whose pods Pod Security would refuse is flagged here.
			if strings.Contains(string(out), "would violate PodSecurity") {
				t.Fatalf("kubectl apply --dry-run=server -k %s: Pod Security warnings:\n%s", dir, out)
			}
			t.Logf("%s: %d objects accepted", dir, strings.Count(string(out), "(server dry run)"))
		})
	}
}

func between(s, from, to string) string {
	_, rest, ok := strings.Cut(s, from)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, to)
	return strings.TrimSpace(v)
}

// A generated database.env from before the application had a role of its
// own named the superuser: scripts/secrets.sh rewrites it for the role
// purchases, keeps the superuser's password (the running database was
// initialised with it) and does not put it in the application's Secret.
func TestSecretsMoveTheApplicationOffTheSuperuser(t *testing.T) {
	dir := filepath.Join(repoRoot, "manifests", "components", "kafka-postgres", "generated")
	files := map[string][]byte{}
	for _, f := range []string{"postgres.env", "database.env"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
			files[f] = b
		}
	}
	t.Cleanup(func() {
		for f, b := range files {
			_ = os.WriteFile(filepath.Join(dir, f), b, 0o600)
		}
	})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A fresh checkout has neither file (a CI run on a clean clone failed
	// so: the script stopped reading the missing postgres.env).
	for _, f := range []string{"postgres.env", "database.env"} {
		_ = os.Remove(filepath.Join(dir, f))
	}
	if out, err := exec.Command(filepath.Join(repoRoot, "scripts", "secrets.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/secrets.sh in a fresh checkout: %v\n%s", err, out)
	}
	if db, err := os.ReadFile(filepath.Join(dir, "database.env")); err != nil || !strings.HasPrefix(string(db), "DATABASE_URL=postgres://purchases:") {
		t.Fatalf("a fresh checkout's database.env: %v %q", err, db)
	}
	const old = "the-old-superuser-password"
	if err := os.WriteFile(filepath.Join(dir, "postgres.env"), []byte("POSTGRES_PASSWORD="+old+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "database.env"), []byte("DATABASE_URL=postgres://postgres:"+old+"@postgres:5432/purchases?sslmode=disable\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(repoRoot, "scripts", "secrets.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/secrets.sh: %v\n%s", err, out)
	}
	pg, _ := os.ReadFile(filepath.Join(dir, "postgres.env"))
	db, _ := os.ReadFile(filepath.Join(dir, "database.env"))
	if !strings.Contains(string(pg), "POSTGRES_PASSWORD="+old+"\n") || !strings.Contains(string(pg), "POSTGRES_APP_PASSWORD=") {
		t.Errorf("postgres.env lost the superuser's password or lacks the application's:\n%s", pg)
	}
	if !strings.HasPrefix(string(db), "DATABASE_URL=postgres://purchases:") || strings.Contains(string(db), old) {
		t.Errorf("database.env is not the application role's, or carries the superuser's password:\n%s", db)
	}
}
