package main

import (
	"strings"
	"testing"
)

func TestEnvironmentBecomesServerProperties(t *testing.T) {
	for env, want := range map[string]string{
		"KAFKA_NODE_ID":                        "node.id",
		"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "listener.security.protocol.map",
		"KAFKA_CONTROLLER_QUORUM_VOTERS":       "controller.quorum.voters",
		// apache/kafka's escapes: "__" is "_", "___" is "-".
		"KAFKA_LISTENER_NAME_SASL__SSL_SCRAM___SHA___512_SASL_JAAS_CONFIG": "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
	} {
		if got := propertyName(env); got != want {
			t.Errorf("%s: %q, want %q", env, got, want)
		}
	}

	props := properties([]string{"KAFKA_NODE_ID=2", "KAFKA_HEAP_OPTS=-Xmx512m", "KAFKA_OPTS=-Dx=1", "PATH=/bin", "CLUSTER_ID=abc"})
	if len(props) != 1 || props["node.id"] != "2" {
		t.Fatalf("properties %v, want only node.id=2 (the launcher's variables and others are not properties)", props)
	}
	if props := properties([]string{"KAFKA_HEAP_OPTS=-Xmx512m"}); props["process.roles"] != "broker,controller" || props["node.id"] != "1" {
		t.Fatalf("with no property given: %v, want the single-node default", props)
	}
}

func TestRenderEscapesAndSorts(t *testing.T) {
	got := render(map[string]string{"b": `x\y`, "a": "1\n2"})
	want := "a=1\\n2\nb=x\\\\y\n"
	if !strings.HasSuffix(got, want) {
		t.Fatalf("render: %q, want it to end %q", got, want)
	}
}

func TestJVMArgsFollowTheLauncherVariables(t *testing.T) {
	env := map[string]string{"KAFKA_HEAP_OPTS": "-Xmx512m -Xms512m", "KAFKA_OPTS": "-Dfoo=bar"}
	args := strings.Join(jvmArgs(func(k string) string { return env[k] }), " ")
	for _, want := range []string{"-Xmx512m -Xms512m", "-XX:+UseG1GC", "-Dlog4j2.configurationFile=" + log4j, "-Dfoo=bar"} {
		if !strings.Contains(args, want) {
			t.Errorf("JVM args %q lack %q", args, want)
		}
	}
	if strings.Contains(args, "-Xmx1G") {
		t.Errorf("JVM args %q keep the default heap although KAFKA_HEAP_OPTS is set", args)
	}
}
