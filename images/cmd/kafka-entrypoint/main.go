// Command kafka-entrypoint starts Apache Kafka in the image built here
// (scripts/images.sh kafka) with the contract of the apache/kafka image,
// so a manifest written for that image runs unchanged:
//
//   - every KAFKA_* variable is a server property: KAFKA_ stripped,
//     lower-cased, "___" for "-", "__" for "_", "_" for "." (so
//     KAFKA_LISTENER_SECURITY_PROTOCOL_MAP is listener.security.protocol.map);
//     the launcher's own variables (KAFKA_HEAP_OPTS, KAFKA_OPTS, ...) are
//     not properties; with no property given, a single-node KRaft
//     configuration is used;
//   - CLUSTER_ID names the cluster when the log directories are formatted
//     (apache/kafka's default id otherwise); formatting is skipped when
//     they already are;
//   - the configuration is written to /opt/kafka/config, where the image's
//     users mount a writable directory under a read-only root.
//
// It has no shell and runs the JVM itself (java -cp /opt/kafka/libs/*).
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

const (
	java      = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
	libs      = "/opt/kafka/libs/*"
	configDir = "/opt/kafka/config"
	// log4j2's configuration shipped in the image (console only: the
	// container's log is its output).
	log4j = "/etc/kafka/docker/log4j2.properties"
	// apache/kafka's default cluster id.
	defaultClusterID = "5L6g3nShT-eMCtK--X86sw"
)

// launcherVars are KAFKA_* variables the apache/kafka image reads itself;
// they never become properties.
var launcherVars = map[string]bool{
	"KAFKA_VERSION": true, "KAFKA_HEAP_OPTS": true, "KAFKA_OPTS": true, "KAFKA_JMX_OPTS": true,
	"KAFKA_JVM_PERFORMANCE_OPTS": true, "KAFKA_GC_LOG_OPTS": true, "KAFKA_LOG4J_OPTS": true,
	"KAFKA_LOG4J_ROOT_LOGLEVEL": true, "KAFKA_LOG4J_LOGGERS": true, "KAFKA_TOOLS_LOG4J_LOGLEVEL": true,
	"KAFKA_JMX_HOSTNAME": true, "KAFKA_JMX_PORT": true,
}

// defaultConfig is the single-node configuration used when no property is
// given, as in apache/kafka.
var defaultConfig = map[string]string{
	"process.roles":                                    "broker,controller",
	"node.id":                                          "1",
	"controller.quorum.voters":                         "1@localhost:9093",
	"listeners":                                        "PLAINTEXT://:9092,CONTROLLER://:9093",
	"advertised.listeners":                             "PLAINTEXT://localhost:9092",
	"controller.listener.names":                        "CONTROLLER",
	"listener.security.protocol.map":                   "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
	"log.dirs":                                         "/tmp/kraft-combined-logs",
	"offsets.topic.replication.factor":                 "1",
	"transaction.state.log.replication.factor":         "1",
	"transaction.state.log.min.isr":                    "1",
	"share.coordinator.state.topic.replication.factor": "1",
	"share.coordinator.state.topic.min.isr":            "1",
}

// propertyName turns KAFKA_FOO___BAR__BAZ_QUX into foo-bar_baz.qux.
func propertyName(env string) string {
	s := strings.ToLower(strings.TrimPrefix(env, "KAFKA_"))
	s = strings.ReplaceAll(s, "___", "\x00")
	s = strings.ReplaceAll(s, "__", "\x01")
	s = strings.ReplaceAll(s, "_", ".")
	s = strings.ReplaceAll(s, "\x01", "_")
	return strings.ReplaceAll(s, "\x00", "-")
}

// properties reads the server properties from the environment.
func properties(environ []string) map[string]string {
	props := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "KAFKA_") || launcherVars[k] {
			continue
		}
		props[propertyName(k)] = v
	}
	if len(props) == 0 {
		for k, v := range defaultConfig {
			props[k] = v
		}
	}
	return props
}

// render writes properties in a stable order, escaped as
// java.util.Properties reads them.
func render(props map[string]string) string {
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by the image's entrypoint from the KAFKA_* environment.\n")
	for _, k := range keys {
		v := strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(props[k])
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	return b.String()
}

// jvmArgs are the JVM's options, from the launcher's variables with
// apache/kafka's defaults.
func jvmArgs(getenv func(string) string) []string {
	or := func(name, def string) []string {
		if v := getenv(name); v != "" {
			return strings.Fields(v)
		}
		return strings.Fields(def)
	}
	args := or("KAFKA_HEAP_OPTS", "-Xmx1G -Xms1G")
	args = append(args, or("KAFKA_JVM_PERFORMANCE_OPTS", "-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true")...)
	args = append(args, or("KAFKA_LOG4J_OPTS", "-Dlog4j2.configurationFile="+log4j)...)
	args = append(args, strings.Fields(getenv("KAFKA_JMX_OPTS"))...)
	return append(args, strings.Fields(getenv("KAFKA_OPTS"))...)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kafka-entrypoint:", err)
		os.Exit(1)
	}
}

func run() error {
	props := properties(os.Environ())
	config := filepath.Join(configDir, "server.properties")
	if err := os.WriteFile(config, []byte(render(props)), 0o644); err != nil {
		return fmt.Errorf("writing the configuration (mount a writable directory at %s under a read-only root): %w", configDir, err)
	}
	jvm := jvmArgs(os.Getenv)
	clusterID := os.Getenv("CLUSTER_ID")
	if clusterID == "" {
		clusterID = defaultClusterID
	}
	// Format the log directories unless they already are (a restart
	// keeps its data and its cluster id).
	format := exec.Command(java, "-Xmx256m", "-Dlog4j2.configurationFile="+log4j, "-cp", libs, "kafka.tools.StorageTool",
		"format", "--cluster-id", clusterID, "--config", config, "--ignore-formatted")
	format.Stdout, format.Stderr = os.Stdout, os.Stderr
	if err := format.Run(); err != nil {
		return fmt.Errorf("formatting the log directories: %w", err)
	}
	argv := append(append([]string{java}, jvm...), "-cp", libs, "kafka.Kafka", config)
	return syscall.Exec(java, argv, os.Environ())
}
