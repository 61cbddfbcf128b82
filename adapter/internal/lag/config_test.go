package lag_test

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/testkit/testpki"
)

// The librdkafka names users already have keep working with the lag
// source's client; every mistake is refused naming the property to fix.
func TestLibrdkafkaPropertiesBecomeClientOptions(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, dir, testpki.Options{Name: "lag"})
	cert, key := pki.Path("client.crt"), pki.Path("client.key")
	ok := []string{
		"",
		"client.id=adapter,socket.connection.setup.timeout.ms=3000",
		"security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=u,sasl.password=p,ssl.ca.location=" + cert,
		"security.protocol=sasl_plaintext,sasl.mechanisms=PLAIN,sasl.username=u,sasl.password=p",
		"security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-256,sasl.username=u,sasl.password=p",
		"security.protocol=SSL,ssl.ca.location=" + cert + ",ssl.certificate.location=" + cert + ",ssl.key.location=" + key,
		"security.protocol=ssl,ssl.endpoint.identification.algorithm=none,ssl.ca.location=" + cert,
	}
	// The secret comes from the properties file (--kafka-config-file); the
	// rest as --kafka-extra-config gives it.
	parse := func(extra string) (map[string]string, error) {
		password, had := "", strings.Contains(extra, "sasl.password=")
		if had {
			var rest []string
			for _, kv := range strings.Split(extra, ",") {
				if v, ok := strings.CutPrefix(kv, "sasl.password="); ok {
					password = v
				} else {
					rest = append(rest, kv)
				}
			}
			extra = strings.Join(rest, ",")
		}
		props, err := lag.ParseProperties(extra)
		if err == nil && had {
			props["sasl.password"] = password
		}
		return props, err
	}
	for _, extra := range ok {
		props, err := parse(extra)
		if err != nil {
			t.Fatalf("%q: %v", extra, err)
		}
		props["bootstrap.servers"] = "127.0.0.1:9092"
		if _, err := lag.ClientOptions(props, &lag.Credentials{}); err != nil {
			t.Errorf("%q: %v", extra, err)
		}
	}
	bad := map[string]string{
		"fetch.wait.max.ms=50":    "fetch.wait.max.ms: not a property the lag source uses",
		"security.protocol=tls":   "security.protocol",
		"ssl.ca.location=" + cert: "ssl.ca.location is set but security.protocol is plaintext",
		"sasl.username=u":         "sasl.username is set but security.protocol is plaintext",
		"security.protocol=sasl_ssl,sasl.username=u,sasl.password=p":                         "sasl.mechanism: not set",
		"security.protocol=sasl_ssl,sasl.mechanism=GSSAPI,sasl.username=u,sasl.password=p":   "sasl.mechanism: \"GSSAPI\"",
		"security.protocol=sasl_ssl,sasl.mechanism=PLAIN,sasl.username=u":                    "sasl.username and sasl.password",
		"security.protocol=ssl,ssl.ca.location=" + filepath.Join(dir, "nope.pem"):            "ssl.ca.location: open",
		"security.protocol=ssl,ssl.ca.location=" + key:                                       "ssl.ca.location: " + key + " holds no PEM certificate",
		"security.protocol=ssl,ssl.certificate.location=" + cert:                             "give both",
		"security.protocol=ssl,ssl.certificate.location=" + key + ",ssl.key.location=" + key: "ssl.certificate.location / ssl.key.location",
		"security.protocol=ssl,ssl.endpoint.identification.algorithm=dns":                    "ssl.endpoint.identification.algorithm",
		"socket.connection.setup.timeout.ms=soon":                                            "socket.connection.setup.timeout.ms",
		"security.protocol": "is not key=value",
	}
	for extra, want := range bad {
		props, err := parse(extra)
		if err == nil {
			props["bootstrap.servers"] = "127.0.0.1:9092"
			_, err = lag.ClientOptions(props, &lag.Credentials{})
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want one saying %q", extra, err, want)
		}
	}
}

// A secret on the command line is seen by whoever can read the Deployment
// or /proc/<pid>/cmdline: --kafka-extra-config refuses it and names the
// file option; the file gives it, and its settings win over the flag's.
func TestSecretsComeFromTheFileNotTheFlag(t *testing.T) {
	for _, secret := range []string{"sasl.password", "ssl.key.password"} {
		_, err := lag.ParseProperties("security.protocol=SASL_SSL," + secret + "=hunter2")
		if err == nil || !strings.Contains(err.Error(), "--kafka-config-file") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s in --kafka-extra-config: %v, want a refusal naming --kafka-config-file (and not echoing the secret)", secret, err)
		}
	}
	file := filepath.Join(t.TempDir(), "kafka.properties")
	if err := os.WriteFile(file, []byte("# from a Secret\nsasl.username = adapter\nsasl.password=s3cret=with=equals\n\nsecurity.protocol=SASL_SSL\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile, err := lag.ReadPropertiesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	flag, err := lag.ParseProperties("security.protocol=PLAINTEXT,client.id=adapter-1")
	if err != nil {
		t.Fatal(err)
	}
	got := lag.Merge(flag, fromFile)
	want := map[string]string{"sasl.username": "adapter", "sasl.password": "s3cret=with=equals", "security.protocol": "SASL_SSL", "client.id": "adapter-1"}
	if !maps.Equal(got, want) {
		t.Fatalf("merged %v, want %v", got, want)
	}
	if err := os.WriteFile(file, []byte("no equals sign here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := lag.ReadPropertiesFile(file); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("a line without key=value: %v, want an error naming the line", err)
	}
}
