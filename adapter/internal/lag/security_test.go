package lag_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// The adapter reaches a broker that asks for SASL/SCRAM over TLS with
// client certificates — as managed and production clusters do — through
// the librdkafka property names users already have; every mistake gets an
// error that names the setting to fix, never a lag.
func TestLagThroughSASLSSL(t *testing.T) {
	plain := testkafka.Real(t)
	secure, dir := testkafka.Secure(t)
	const user, password = "adapter", "s3cret-for-the-test"
	cl, err := kgo.NewClient(kgo.SeedBrokers(plain))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := kadm.NewClient(cl).AlterUserSCRAMs(ctx, nil, []kadm.UpsertSCRAM{{User: user, Mechanism: kadm.ScramSha512, Iterations: 4096, Password: password}})
	cl.Close()
	if err != nil || res.Error() != nil {
		t.Fatalf("creating the SCRAM user: %v %v", err, res.Error())
	}
	topic, group := unique("secure"), unique("group")
	createTopic(t, plain, topic, 2)
	produce(t, plain, topic, []int{9, 4}, false)
	consume(t, plain, group, topic, []int{2, 4})

	good := map[string]string{
		"bootstrap.servers":        secure,
		"security.protocol":        "SASL_SSL",
		"sasl.mechanism":           "SCRAM-SHA-512",
		"sasl.username":            user,
		"sasl.password":            password,
		"ssl.ca.location":          filepath.Join(dir, "ca.crt"),
		"ssl.certificate.location": filepath.Join(dir, "client.crt"),
		"ssl.key.location":         filepath.Join(dir, "client.key"),
	}
	with := func(change map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range good {
			out[k] = v
		}
		for k, v := range change {
			if v == "" {
				delete(out, k)
			} else {
				out[k] = v
			}
		}
		return out
	}
	fetch := func(props map[string]string) (float64, error) {
		s, err := lag.NewSource(props, nil, nil)
		if err != nil {
			return 0, err
		}
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		defer cancel()
		samples, err := s.Fetch(ctx, lag.Query{Groups: []string{group}, Topics: []string{topic}})
		if err != nil {
			return 0, err
		}
		return samples[0].Value, nil
	}

	if got, err := fetch(good); err != nil || got != 7 {
		t.Fatalf("through SASL_SSL: lag %v, err %v; want 7", got, err)
	}
	for name, c := range map[string]struct {
		change map[string]string
		want   string
	}{
		"wrong password":        {map[string]string{"sasl.password": "nope"}, "sasl.password"},
		"wrong mechanism":       {map[string]string{"sasl.mechanism": "SCRAM-SHA-256"}, "sasl.mechanism"},
		"no CA":                 {map[string]string{"ssl.ca.location": ""}, "ssl.ca.location"},
		"no client certificate": {map[string]string{"ssl.certificate.location": "", "ssl.key.location": ""}, "ssl.certificate.location"},
		"TLS not asked for":     {map[string]string{"security.protocol": "SASL_PLAINTEXT", "ssl.ca.location": "", "ssl.certificate.location": "", "ssl.key.location": ""}, "security.protocol"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := fetch(with(c.change))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("lag %v, err %v: want an error naming %s", got, err, c.want)
			}
			t.Logf("%v", err)
		})
	}
}

// A rotated SASL password, written into the properties file (a mounted
// Secret the operator updates), reaches the broker without a restart:
// the source started with the old one fails, and reads the lag once the
// file has the new one.
func TestARotatedPasswordInThePropertiesFileAppliesWithoutARestart(t *testing.T) {
	plain := testkafka.Real(t)
	secure, dir := testkafka.Secure(t)
	const user, password = "adapter-rotated", "the-new-password"
	cl, err := kgo.NewClient(kgo.SeedBrokers(plain))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := kadm.NewClient(cl).AlterUserSCRAMs(ctx, nil, []kadm.UpsertSCRAM{{User: user, Mechanism: kadm.ScramSha512, Iterations: 4096, Password: password}})
	cl.Close()
	if err != nil || res.Error() != nil {
		t.Fatalf("creating the SCRAM user: %v %v", err, res.Error())
	}
	topic, group := unique("rotated"), unique("group")
	createTopic(t, plain, topic, 1)
	produce(t, plain, topic, []int{5}, false)
	consume(t, plain, group, topic, []int{2})

	file := filepath.Join(t.TempDir(), "kafka.properties")
	write := func(pass string) {
		t.Helper()
		body := "sasl.username=" + user + "\nsasl.password=" + pass + "\n"
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("the-old-password")
	base := map[string]string{
		"bootstrap.servers": secure, "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
		"ssl.ca.location":          filepath.Join(dir, "ca.crt"),
		"ssl.certificate.location": filepath.Join(dir, "client.crt"),
		"ssl.key.location":         filepath.Join(dir, "client.key"),
	}
	fromFile, err := lag.ReadPropertiesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := lag.NewSource(lag.Merge(base, fromFile), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go s.FollowPropertiesFile(ctx, file, base, 200*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	fetch := func() (float64, error) {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		samples, err := s.Fetch(c, lag.Query{Groups: []string{group}, Topics: []string{topic}})
		if err != nil {
			return 0, err
		}
		return samples[0].Value, nil
	}
	if got, err := fetch(); err == nil {
		t.Fatalf("with the old password the lag read %v: the broker should have refused it", got)
	}
	write(password)
	testproc.Eventually(t, 30*time.Second, "the lag read with the new password", func() error {
		got, err := fetch()
		if err != nil {
			return err
		}
		if got != 3 {
			return fmt.Errorf("lag %v, want 3", got)
		}
		return nil
	})
}
