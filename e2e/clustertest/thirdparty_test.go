package clustertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// kindManifest reads one of manifests/overlays/kind's files: its Services
// and StatefulSet, moved into namespace ns.
func kindManifest(t *testing.T, file, ns string) (services []*corev1.Service, set *appsv1.StatefulSet) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "manifests", "overlays", "kind", file))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(raw), "\n---\n")
	for _, doc := range docs {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		switch o := obj.(type) {
		case *corev1.Service:
			o.Namespace = ns
			services = append(services, o)
		case *appsv1.StatefulSet:
			o.Namespace = ns
			set = o
		default:
			t.Fatalf("%s: unexpected %T", file, obj)
		}
	}
	if set == nil {
		t.Fatalf("%s: no StatefulSet", file)
	}
	return services, set
}

// TestKindOverlaysKafkaAndPostgresRunHere runs the kind overlay's Kafka and
// PostgreSQL — the StatefulSets a kind user applies, with their
// securityContext (non-root, read-only root, no capabilities), probes and
// claims — on the local node, from the images built here
// (scripts/images.sh kafka and postgres, Debian's packages), pulled from
// the local registry by the tags the overlay names. Each honours the
// official image's contract the overlay relies on (PostgreSQL's
// POSTGRES_PASSWORD and POSTGRES_DB, with password authentication from
// another address; apache/kafka's KAFKA_* configuration) and keeps what was
// written when its pod is deleted.
func TestKindOverlaysKafkaAndPostgresRunHere(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	const password = "kind-overlay-test"
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "postgres"},
		StringData: map[string]string{"POSTGRES_PASSWORD": password},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"postgres.yaml", "kafka.yaml"} {
		services, set := kindManifest(t, file, ns)
		c := &set.Spec.Template.Spec.Containers[0]
		// The node has 2 CPUs that the services' tests share: the local
		// overlays lower the third-party parts' CPU requests (never their
		// limits or the services').
		c.Resources.Requests[corev1.ResourceCPU] = resource.MustParse("50m")
		// By the digest cluster up pushed, as the local overlays pin every
		// image (a tag alone could run what an earlier run left in
		// containerd's store).
		name, _, _ := strings.Cut(c.Image, ":")
		c.Image += "@" + pinnedDigest(t, name)
		for i, e := range c.Env {
			if e.Name == "KAFKA_ADVERTISED_LISTENERS" {
				c.Env[i].Value = "PLAINTEXT://kafka." + ns + ".svc:9092"
			}
		}
		for _, s := range services {
			if _, err := client.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := client.AppsV1().StatefulSets(ns).Create(ctx, set, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ready := func(app string) corev1.Pod {
		t.Helper()
		var pod corev1.Pod
		testproc.Eventually(t, 180*time.Second, app+" ready", func() error {
			pods, err := readyPods(ctx, ns, "app="+app)
			if err != nil {
				return err
			}
			if len(pods) != 1 {
				all, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
				if err != nil || len(all.Items) == 0 {
					return fmt.Errorf("no %s pod yet (%v)", app, err)
				}
				p := all.Items[0]
				for _, cs := range p.Status.ContainerStatuses {
					if w := cs.State.Waiting; w != nil {
						last, _ := execKubectl("-n", ns, "logs", p.Name, "--previous", "--tail=15")
						return fmt.Errorf("%s: %s %s; its last run's log:\n%s", p.Name, w.Reason, w.Message, last)
					}
				}
				return fmt.Errorf("%s: %s", p.Name, p.Status.Phase)
			}
			pod = pods[0]
			return nil
		})
		return pod
	}
	pg, kafka := ready("postgres"), ready("kafka")
	for _, p := range []corev1.Pod{pg, kafka} {
		cs := p.Status.ContainerStatuses[0]
		if _, digest, _ := strings.Cut(p.Spec.Containers[0].Image, "@"); !strings.HasSuffix(cs.ImageID, "@"+digest) {
			t.Errorf("%s runs %s, want the local registry's %s", p.Name, cs.ImageID, digest)
		}
	}

	// PostgreSQL: the database the overlay names, the password checked
	// (SCRAM: the host is another address to the pod).
	pgURL := func(pod corev1.Pod, pw string) string {
		return fmt.Sprintf("postgres://postgres:%s@%s/purchases?sslmode=disable&connect_timeout=5", pw, net.JoinHostPort(pod.Status.PodIP, "5432"))
	}
	if conn, err := pgx.Connect(ctx, pgURL(pg, "wrong")); err == nil {
		conn.Close(ctx)
		t.Error("PostgreSQL accepted a wrong password")
	}
	token := fmt.Sprintf("kept-%d", time.Now().UnixNano())
	conn, err := pgx.Connect(ctx, pgURL(pg, password))
	if err != nil {
		t.Fatalf("PostgreSQL with the Secret's password: %v", err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('"+token+"')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	// Kafka: its advertised listener is the Service's name in the cluster;
	// the test's client dials the pod for it.
	kafkaClient := func(pod corev1.Pod, opts ...kgo.Opt) *kgo.Client {
		addr := net.JoinHostPort(pod.Status.PodIP, "9092")
		d := &net.Dialer{Timeout: 5 * time.Second}
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr),
			kgo.Dialer(func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			}),
		}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	cl := kafkaClient(kafka)
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, "kept"); err != nil {
		t.Fatalf("creating a topic: %v", err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "kept", Value: []byte(token)}).FirstErr(); err != nil {
		t.Fatalf("producing: %v", err)
	}
	cl.Close()

	// Both pods deleted: the StatefulSets start new ones on the same claims.
	for _, p := range []corev1.Pod{pg, kafka} {
		if err := client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []corev1.Pod{pg, kafka} {
		testproc.Eventually(t, 60*time.Second, p.Name+" replaced", func() error {
			now, err := client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if now.UID == p.UID {
				return fmt.Errorf("still the old pod")
			}
			return nil
		})
	}
	pg, kafka = ready("postgres"), ready("kafka")

	conn, err = pgx.Connect(ctx, pgURL(pg, password))
	if err != nil {
		t.Fatalf("PostgreSQL after its pod was deleted: %v", err)
	}
	defer conn.Close(ctx)
	var got string
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&got); err != nil || got != token {
		t.Errorf("PostgreSQL after its pod was deleted: %q (%v), want %q", got, err, token)
	}

	cl = kafkaClient(kafka, kgo.ConsumeTopics("kept"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	defer cl.Close()
	fetchCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var values []string
	for len(values) == 0 && fetchCtx.Err() == nil {
		fs := cl.PollFetches(fetchCtx)
		fs.EachRecord(func(r *kgo.Record) { values = append(values, string(r.Value)) })
	}
	if len(values) != 1 || values[0] != token {
		t.Errorf("Kafka after its pod was deleted: %q, want [%s]", values, token)
	}
}
