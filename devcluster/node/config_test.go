package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The node's configuration sends every image pull to this machine:
// containerd's registry config_path names a hosts directory whose _default
// entry points at LocalRegistry (without it containerd would go to
// registry-1.docker.io for any image that was not imported).
func TestPullsGoOnlyToThisMachine(t *testing.T) {
	c := Config{Dir: t.TempDir(), ImageDir: filepath.Join(t.TempDir(), "root"), RegistryDir: filepath.Join(t.TempDir(), "registry")}
	if err := c.writeConfigs(); err != nil {
		t.Fatal(err)
	}
	toml, err := os.ReadFile(c.path("containerd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(toml), "config_path = \""+c.path("certs.d")+"\"") {
		t.Fatalf("containerd.toml does not name the hosts directory:\n%s", toml)
	}
	hosts, err := os.ReadFile(c.path("certs.d", "_default", "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(hosts), `server = "http://`+LocalRegistry+`"`) {
		t.Fatalf("_default/hosts.toml = %q, want the local registry as the server", hosts)
	}
}

// The local registry listens on loopback only, where containerd's mirror
// looks for it, and keeps its storage where it is told (kept across down).
func TestRegistryListensOnLoopbackOnly(t *testing.T) {
	c := Config{Dir: t.TempDir(), ImageDir: filepath.Join(t.TempDir(), "root"), RegistryDir: filepath.Join(t.TempDir(), "registry")}
	if err := c.writeConfigs(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(c.path("registry.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"addr: " + LocalRegistry + "\n", "rootdirectory: \"" + c.RegistryDir + "\""} {
		if !strings.Contains(string(b), want) {
			t.Errorf("registry.yaml lacks %q:\n%s", want, b)
		}
	}
	if !strings.HasPrefix(LocalRegistry, "127.0.0.1:") {
		t.Errorf("LocalRegistry %s is not on loopback", LocalRegistry)
	}
}
