package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testConfig(t *testing.T) Config {
	tls := t.TempDir()
	return Config{
		Dir: t.TempDir(), ImageDir: filepath.Join(t.TempDir(), "root"), RegistryDir: filepath.Join(t.TempDir(), "registry"),
		Bin: Binaries{ContainerdDir: "/tools/containerd", Runc: "/tools/runc/runc", CNIDir: "/tools/cni"},
		RegistryTLS: RegistryTLS{CA: filepath.Join(tls, "ca.crt"), Cert: filepath.Join(tls, "server.crt"), Key: filepath.Join(tls, "server.key"),
			ClientCert: filepath.Join(tls, "client.crt"), ClientKey: filepath.Join(tls, "client.key")},
	}
}

func readConfig(t *testing.T, c Config, name string) string {
	t.Helper()
	b, err := os.ReadFile(c.path(name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantLines(t *testing.T, file, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q:\n%s", file, w, body)
		}
	}
}

// The node's configuration sends every image pull to this machine:
// containerd's registry config_path names a hosts directory whose _default
// entry points at LocalRegistry (without it containerd would go to
// registry-1.docker.io for any image that was not imported), over TLS
// with the node's client certificate.
func TestPullsGoOnlyToThisMachine(t *testing.T) {
	c := testConfig(t)
	if err := c.writeConfigs(); err != nil {
		t.Fatal(err)
	}
	wantLines(t, "containerd.toml", readConfig(t, c, "containerd.toml"), "config_path = \""+c.path("certs.d")+"\"")
	wantLines(t, "_default/hosts.toml", readConfig(t, c, "certs.d/_default/hosts.toml"),
		`server = "https://`+LocalRegistry+`"`,
		`ca = "`+c.RegistryTLS.CA+`"`,
		`client = [["`+c.RegistryTLS.ClientCert+`", "`+c.RegistryTLS.ClientKey+`"]]`)
}

// The local registry listens on loopback only, where containerd's mirror
// looks for it, asks every client for a certificate of the cluster's
// registry CA, and keeps its storage where it is told (kept across down).
func TestRegistryListensOnLoopbackForClientsWithCertificates(t *testing.T) {
	c := testConfig(t)
	if err := c.writeConfigs(); err != nil {
		t.Fatal(err)
	}
	wantLines(t, "registry.yaml", readConfig(t, c, "registry.yaml"),
		"addr: "+LocalRegistry+"\n", "rootdirectory: \""+c.RegistryDir+"\"",
		"clientcas:\n      - \""+c.RegistryTLS.CA+"\"", "certificate: \""+c.RegistryTLS.Cert+"\"")
	if !strings.HasPrefix(LocalRegistry, "127.0.0.1:") {
		t.Errorf("LocalRegistry %s is not on loopback", LocalRegistry)
	}
}

// containerd gets names of its own (socket, state, root, runc's state),
// runs the shim and runc by absolute path, and loads no drop-ins from
// /etc/containerd; the kubelet gets a cgroup root of its own and leaves
// the kernel's settings to the launcher.
func TestTheNodesProgramsUseNamesOfTheirOwn(t *testing.T) {
	c := testConfig(t)
	if err := c.writeConfigs(); err != nil {
		t.Fatal(err)
	}
	toml := readConfig(t, c, "containerd.toml")
	wantLines(t, "containerd.toml", toml,
		"root = \""+c.ImageDir+"\"", "state = \""+c.ContainerdState()+"\"", "address = \""+c.Socket()+"\"",
		"runtime_path = \"/tools/containerd/containerd-shim-runc-v2\"", "BinaryName = \"/tools/runc/runc\"",
		"Root = \""+c.path("runc")+"\"", "imports = []", "\"io.containerd.internal.v1.opt\"", "netns_mounts_under_state_dir = true")
	if strings.Contains(toml, "/run/containerd/containerd.sock") {
		t.Errorf("containerd.toml names the system containerd's socket:\n%s", toml)
	}
	wantLines(t, "kubelet.yaml", readConfig(t, c, "kubelet.yaml"),
		"cgroupRoot: "+CgroupRoot+"\n", "protectKernelDefaults: true\n", "containerRuntimeEndpoint: unix://"+c.Socket()+"\n",
		"podLogsDir: "+c.PodLogs()+"\n")
	wantLines(t, "the CNI network", readConfig(t, c, "cni/10-"+CNINetwork+".conflist"),
		`"name": "`+CNINetwork+`"`, `"dataDir": "`+c.path("cni-ipam")+`"`)
}
