package clustertest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/purchase-system/purchase-system/devcluster/node"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// registryTLSDir holds the local registry's CA and the client
// certificate the node and the launcher present (root only).
func registryTLSDir() string {
	return filepath.Join(repoRoot, ".cache", "devcluster", "pki", "registry")
}

// registryClient speaks to the local registry as the node does, with its
// client certificate.
func registryClient(t *testing.T) *http.Client {
	t.Helper()
	dir := registryTLSDir()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
}

// manifestDigest reads a manifest from the local registry as a fresh
// pull would, and returns the digest the registry names and the one its
// bytes have.
func manifestDigest(t *testing.T, repo, reference string) (named, computed string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+node.LocalRegistry+"/v2/"+repo+"/manifests/"+reference, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := registryClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s:%s: %s %s", repo, reference, resp.Status, body)
	}
	return resp.Header.Get("Docker-Content-Digest"), fmt.Sprintf("sha256:%x", sha256.Sum256(body))
}

// make push's path (imagepush --into), against the local registry under a
// path of its own: each image arrives byte for byte — read back by digest
// and by tag, the registry's digest, the bytes' digest and the one printed
// agree — and the node pulls it by that digest.
func TestPushKeepsTheDigests(t *testing.T) {
	pins := filepath.Join(t.TempDir(), "kustomization.yaml")
	out, err := exec.Command(filepath.Join(repoRoot, "bin", "imagepush"), "--into", node.LocalRegistry+"/pushtest", "--tls-dir", registryTLSDir(), "--pins", pins,
		filepath.Join(repoRoot, "_output", "images", "webserver.tar"), filepath.Join(repoRoot, "_output", "images", "adapter.tar")).Output()
	if err != nil {
		t.Fatalf("imagepush: %v\n%s", err, out)
	}
	pinned := map[string]string{} // repository → digest
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		ref, _, _ := strings.Cut(line, " ")
		repo, digest, ok := strings.Cut(ref, "@")
		if !ok {
			t.Fatalf("printed %q, want <repository>@<digest> <source>", line)
		}
		pinned[strings.TrimPrefix(repo, node.LocalRegistry+"/")] = digest
	}
	for _, repo := range []string{"pushtest/webserver", "pushtest/adapter"} {
		digest := pinned[repo]
		if digest == "" {
			t.Fatalf("nothing printed for %s: %s", repo, out)
		}
		for _, reference := range []string{digest, "dev"} {
			named, computed := manifestDigest(t, repo, reference)
			if named != digest || computed != digest {
				t.Errorf("%s:%s read back as %s (bytes %s), printed %s", repo, reference, named, computed, digest)
			}
		}
	}
	b, err := os.ReadFile(pins)
	if err != nil || !strings.Contains(string(b), "newName: "+node.LocalRegistry+"/pushtest/webserver\n    digest: "+pinned["pushtest/webserver"]) {
		t.Errorf("pins file %s (%v) does not pin the pushed webserver", b, err)
	}

	// A fresh pull by the node, by digest.
	ns := namespace(t)
	ctx := context.Background()
	image := node.LocalRegistry + "/pushtest/webserver@" + pinned["pushtest/webserver"]
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pulled"}, Spec: corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyNever,
		Containers:    []corev1.Container{{Name: "web", Image: image, ImagePullPolicy: corev1.PullAlways, Args: []string{"--version"}}}}}
	if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testproc.Eventually(t, 60*time.Second, "the node pulled "+image, func() error {
		p, err := client.CoreV1().Pods(ns).Get(ctx, "pulled", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cs := range p.Status.ContainerStatuses {
			if strings.HasSuffix(cs.ImageID, "@"+pinned["pushtest/webserver"]) {
				return nil
			}
			if w := cs.State.Waiting; w != nil && strings.Contains(w.Reason, "Pull") {
				return fmt.Errorf("%s: %s", w.Reason, w.Message)
			}
		}
		return fmt.Errorf("status %+v", p.Status.ContainerStatuses)
	})
}

// Every pod the cluster runs from this project's or an addon's image runs
// it by the digest the local registry holds (manifests/generated/images):
// the addons', the storage provisioner's, and its helper's, which is named
// inside a ConfigMap the image pins of kustomize do not reach.
func TestPodsRunImagesByDigestFromTheLocalRegistry(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "manifests", "generated", "images", "kustomization.yaml"))
	if err != nil {
		t.Fatalf("the pins cluster up writes: %v", err)
	}
	pins := string(b)
	ctx := context.Background()
	var pods []corev1.Pod
	for _, ns := range []string{"kube-system", "local-path-storage"} {
		list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, list.Items...)
	}
	cm, err := client.CoreV1().ConfigMaps("local-path-storage").Get(ctx, "local-path-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var helper struct {
		Spec corev1.PodSpec `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["helperPod.yaml"]), &helper); err != nil || len(helper.Spec.Containers) != 1 {
		t.Fatalf("the provisioner's helper pod template: %v\n%s", err, cm.Data["helperPod.yaml"])
	}
	pods = append(pods, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "the storage helper (ConfigMap local-path-config)"}, Spec: helper.Spec})
	seen := 0
	for _, p := range pods {
		for i, c := range p.Spec.Containers {
			_, digest, ok := strings.Cut(c.Image, "@")
			if !ok || !strings.Contains(pins, "digest: "+digest) {
				t.Errorf("pod %s runs %s: not by a digest the local registry holds", p.Name, c.Image)
				continue
			}
			if i < len(p.Status.ContainerStatuses) && p.Status.ContainerStatuses[i].ImageID != "" &&
				!strings.HasSuffix(p.Status.ContainerStatuses[i].ImageID, "@"+digest) {
				t.Errorf("pod %s: imageID %s, want @%s", p.Name, p.Status.ContainerStatuses[i].ImageID, digest)
			}
			seen++
		}
	}
	if seen < 5 {
		t.Errorf("%d containers checked, want CoreDNS, metrics-server, kube-state-metrics, the storage provisioner and its helper", seen)
	}
}
