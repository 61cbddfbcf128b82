package lag

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// The lag source speaks to Kafka through franz-go (one client for every
// consumer group, see Source), but users configure Kafka clients with
// librdkafka's property names — the services here, KEDA's Kafka scaler
// and most tools do. ParseProperties and ClientOptions keep those names:
// each property the lag source uses is translated, and any other is
// refused by name rather than ignored.

// properties are the librdkafka properties the lag source understands.
var properties = map[string]string{
	"bootstrap.servers":                     "the brokers (--kafka-bootstrap-servers sets it)",
	"client.id":                             "the client id the brokers log",
	"security.protocol":                     "plaintext, ssl, sasl_plaintext or sasl_ssl",
	"sasl.mechanism":                        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
	"sasl.mechanisms":                       "librdkafka's older name of sasl.mechanism",
	"sasl.username":                         "the SASL user",
	"sasl.password":                         "the SASL password",
	"ssl.ca.location":                       "PEM file of the CAs that signed the brokers' certificates",
	"ssl.certificate.location":              "PEM file of the client certificate",
	"ssl.key.location":                      "PEM file of the client certificate's (unencrypted) key",
	"ssl.endpoint.identification.algorithm": "https (check the broker's host name, the default) or none",
	"socket.connection.setup.timeout.ms":    "how long one connection attempt may take",
}

// secretProperties are the properties that hold a secret: never given on
// the command line, where the Deployment, kubectl describe and every local
// account's /proc/<pid>/cmdline show them.
var secretProperties = []string{"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"}

// ParseProperties reads "k=v,k=v" (the --kafka-extra-config form). A
// secret property is refused there, naming the file option to use.
func ParseProperties(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--kafka-extra-config: %q is not key=value", kv)
		}
		k = strings.TrimSpace(k)
		if slices.Contains(secretProperties, k) {
			return nil, fmt.Errorf("--kafka-extra-config: %s is a secret: give it in --kafka-config-file (a properties file, for example a mounted Secret: the chart's kafka.existingSecret), not on the command line, which the Deployment and every local account's process list show", k)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// ReadPropertiesFile reads a file of librdkafka properties, one key=value
// a line, # starting a comment (the form Kafka's own client tools take).
func ReadPropertiesFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--kafka-config-file: %w", err)
	}
	out := map[string]string{}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("--kafka-config-file %s line %d: not key=value", path, n+1)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

// Merge is base with over's properties on top: the file's settings win
// over the flag's.
func Merge(base, over map[string]string) map[string]string {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, over)
	return out
}

// ClientOptions turns librdkafka properties into franz-go options. Every
// error names the property to fix. SASL authenticates with creds, set
// here from props.
func ClientOptions(props map[string]string, creds *Credentials) ([]kgo.Opt, error) {
	var unknown []string
	for k := range props {
		if _, ok := properties[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		known := make([]string, 0, len(properties))
		for k := range properties {
			known = append(known, k)
		}
		sort.Strings(known)
		return nil, fmt.Errorf("--kafka-extra-config: %s: not a property the lag source uses (it reads: %s)", strings.Join(unknown, ", "), strings.Join(known, ", "))
	}
	seeds := splitList(props["bootstrap.servers"])
	if len(seeds) == 0 {
		return nil, fmt.Errorf("bootstrap.servers: no broker given")
	}
	opts := []kgo.Opt{kgo.SeedBrokers(seeds...)}
	if id := props["client.id"]; id != "" {
		opts = append(opts, kgo.ClientID(id))
	}
	if v := props["socket.connection.setup.timeout.ms"]; v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("socket.connection.setup.timeout.ms: %q is not a positive number of milliseconds", v)
		}
		opts = append(opts, kgo.DialTimeout(time.Duration(ms)*time.Millisecond))
	}

	proto := strings.ToLower(props["security.protocol"])
	if proto == "" {
		proto = "plaintext"
	}
	var useTLS, useSASL bool
	switch proto {
	case "plaintext":
	case "ssl":
		useTLS = true
	case "sasl_plaintext":
		useSASL = true
	case "sasl_ssl":
		useTLS, useSASL = true, true
	default:
		return nil, fmt.Errorf("security.protocol: %q is not one of plaintext, ssl, sasl_plaintext, sasl_ssl", props["security.protocol"])
	}
	for _, k := range []string{"ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.endpoint.identification.algorithm"} {
		if props[k] != "" && !useTLS {
			return nil, fmt.Errorf("%s is set but security.protocol is %s: TLS is used only with ssl or sasl_ssl", k, proto)
		}
	}
	for _, k := range []string{"sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password"} {
		if props[k] != "" && !useSASL {
			return nil, fmt.Errorf("%s is set but security.protocol is %s: SASL is used only with sasl_plaintext or sasl_ssl", k, proto)
		}
	}
	if useTLS {
		cfg, err := tlsConfig(props)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if useSASL {
		m, err := saslMechanism(props, creds)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// Credentials are the SASL user and password the client authenticates
// each new connection with: a change of the properties file takes effect
// without a restart.
type Credentials struct{ v atomic.Pointer[[2]string] }

// Set changes them for the next connections.
func (c *Credentials) Set(user, password string) { c.v.Store(&[2]string{user, password}) }

func (c *Credentials) get() (string, string) {
	if p := c.v.Load(); p != nil {
		return p[0], p[1]
	}
	return "", ""
}

func tlsConfig(props map[string]string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	switch strings.ToLower(props["ssl.endpoint.identification.algorithm"]) {
	case "", "https":
	case "none":
		// librdkafka's meaning: the chain is still verified, the host
		// name is not.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = nil
	default:
		return nil, fmt.Errorf("ssl.endpoint.identification.algorithm: %q is not https or none", props["ssl.endpoint.identification.algorithm"])
	}
	if ca := props["ssl.ca.location"]; ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("ssl.ca.location: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ssl.ca.location: %s holds no PEM certificate", ca)
		}
		cfg.RootCAs = pool
	}
	if cfg.InsecureSkipVerify {
		roots := cfg.RootCAs
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("broker certificate (ssl.ca.location): %w", err)
			}
			return nil
		}
	}
	certFile, keyFile := props["ssl.certificate.location"], props["ssl.key.location"]
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		return nil, fmt.Errorf("ssl.certificate.location and ssl.key.location: give both (the client certificate and its key) or neither")
	default:
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("ssl.certificate.location / ssl.key.location: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func saslMechanism(props map[string]string, creds *Credentials) (sasl.Mechanism, error) {
	mech := props["sasl.mechanism"]
	if mech == "" {
		mech = props["sasl.mechanisms"]
	}
	user, pass := props["sasl.username"], props["sasl.password"]
	if mech == "" {
		return nil, fmt.Errorf("sasl.mechanism: not set (librdkafka's default, GSSAPI, is not supported): set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	}
	if user == "" || pass == "" {
		return nil, fmt.Errorf("sasl.username and sasl.password: both are needed for %s", mech)
	}
	creds.Set(user, pass)
	// Each connection asks for the credentials as they are then.
	scramAuth := func(context.Context) (scram.Auth, error) {
		u, p := creds.get()
		return scram.Auth{User: u, Pass: p}, nil
	}
	switch strings.ToUpper(mech) {
	case "PLAIN":
		return plain.Plain(func(context.Context) (plain.Auth, error) {
			u, p := creds.get()
			return plain.Auth{User: u, Pass: p}, nil
		}), nil
	case "SCRAM-SHA-256":
		return scram.Sha256(scramAuth), nil
	case "SCRAM-SHA-512":
		return scram.Sha512(scramAuth), nil
	default:
		return nil, fmt.Errorf("sasl.mechanism: %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", mech)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Logger hands franz-go's log lines at warning level and above to slog.
func Logger(l *slog.Logger) kgo.Opt { return kgo.WithLogger(kgoLogger{l}) }

type kgoLogger struct{ l *slog.Logger }

func (kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelWarn
	if level == kgo.LogLevelError {
		lvl = slog.LevelError
	}
	k.l.Log(context.Background(), lvl, msg, append([]any{"component", "kafka-client"}, keyvals...)...)
}

// hint names the --kafka-extra-config setting that most likely causes a
// connection error, so an operator knows what to fix.
func hint(err error) string {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var recordHeader tls.RecordHeaderError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, kerr.SaslAuthenticationFailed):
		return "the brokers refused the credentials: check sasl.username, sasl.password and sasl.mechanism"
	case errors.Is(err, kerr.UnsupportedSaslMechanism), errors.Is(err, kerr.IllegalSaslState):
		return "the brokers do not offer this mechanism: check sasl.mechanism"
	case errors.As(err, &unknownCA):
		return "the broker's certificate is not signed by a CA the adapter trusts: set ssl.ca.location"
	case errors.As(err, &hostname):
		return "the broker's certificate does not name the address dialled: fix the bootstrap address, or set ssl.endpoint.identification.algorithm=none"
	case errors.As(err, &recordHeader):
		return "the broker does not speak TLS there: check security.protocol"
	}
	// TLS alerts from the broker come back as net.OpError "remote error"
	// strings, and franz-go reports a TLS answer to a plaintext request
	// in its message.
	switch msg := err.Error(); {
	case strings.Contains(msg, "tls: certificate required"), strings.Contains(msg, "tls: bad certificate"):
		return "the broker asks for a client certificate it trusts: set ssl.certificate.location and ssl.key.location"
	case strings.Contains(msg, "plaintext connection speaking to a tls endpoint"):
		return "the broker speaks TLS there: set security.protocol to ssl or sasl_ssl"
	}
	return ""
}
