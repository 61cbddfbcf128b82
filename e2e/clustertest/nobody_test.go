package clustertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What another local account can do to the cluster: nothing. Each probe
// runs as nobody, the way any account on the machine could; a control run
// as root with the cluster's own credentials shows the probe reaches what
// it would open.

const nobody = 65534

// asNobody runs a command as nobody and returns its combined output.
func asNobody(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func stateFile(parts ...string) string {
	return filepath.Join(append([]string{repoRoot, ".cache", "devcluster"}, parts...)...)
}

// A key from etcd: every object, Secrets and RBAC included, lives there;
// whoever can write it is cluster-admin and, with a privileged pod, root.
func TestEtcdLetsNoOtherAccountIn(t *testing.T) {
	rangeAll := `{"key":"L3JlZ2lzdHJ5Lw==","range_end":"L3JlZ2lzdHJ5MA==","keys_only":true,"limit":5}` // /registry/ … /registry0
	// The control: the API server's etcd client certificate lists keys.
	out, err := exec.Command("curl", "-s", "--max-time", "10",
		"--cacert", stateFile("pki", "etcd", "ca.crt"),
		"--cert", stateFile("pki", "apiserver-etcd-client.crt"), "--key", stateFile("pki", "apiserver-etcd-client.key"),
		"-X", "POST", "https://127.0.0.1:2379/v3/kv/range", "-d", rangeAll).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"kvs"`) {
		t.Fatalf("the control (root, the API server's client certificate) did not list etcd's keys: %v %s", err, out)
	}
	for name, args := range map[string][]string{
		"plain HTTP":              {"-s", "--max-time", "5", "-X", "POST", "http://127.0.0.1:2379/v3/kv/range", "-d", rangeAll},
		"TLS without certificate": {"-s", "-k", "--max-time", "5", "-X", "POST", "https://127.0.0.1:2379/v3/kv/range", "-d", rangeAll},
	} {
		out, _ := asNobody("curl", args...)
		if strings.Contains(out, `"kvs"`) || strings.Contains(out, `"count"`) {
			t.Errorf("nobody, %s: etcd answered a range request: %s", name, out)
		}
	}
	for _, f := range []string{stateFile("pki", "etcd", "ca.key"), stateFile("pki", "apiserver-etcd-client.key"), stateFile("pki", "etcd", "healthcheck-client.key"), stateFile("etcd", "member", "snap", "db")} {
		if out, err := asNobody("cat", f); err == nil {
			t.Errorf("nobody read %s (%d bytes)", f, len(out))
		}
	}
}

// The local registry holds every image the node runs: an account that
// could push or delete there would run its code in the cluster.
func TestRegistryLetsNoOtherAccountIn(t *testing.T) {
	base := "https://127.0.0.1:5000/v2/"
	control, err := exec.Command("curl", "-s", "--max-time", "10", "--cacert", filepath.Join(registryTLSDir(), "ca.crt"),
		"--cert", filepath.Join(registryTLSDir(), "client.crt"), "--key", filepath.Join(registryTLSDir(), "client.key"),
		base+"_catalog").CombinedOutput()
	if err != nil || !strings.Contains(string(control), "purchase-system/webserver") {
		t.Fatalf("the control (root, the node's client certificate) did not list the registry: %v %s", err, control)
	}
	// A manifest the catalog holds, by tag, for the pull and delete tries.
	manifest := base + "purchase-system/webserver/manifests/dev"
	for name, args := range map[string][]string{
		"list":                {"-s", "-k", "--max-time", "5", base + "_catalog"},
		"list, plain HTTP":    {"-s", "--max-time", "5", "http://127.0.0.1:5000/v2/_catalog"},
		"pull":                {"-s", "-k", "--max-time", "5", manifest},
		"push (start upload)": {"-s", "-k", "--max-time", "5", "-X", "POST", base + "purchase-system/webserver/blobs/uploads/"},
		"delete":              {"-s", "-k", "--max-time", "5", "-X", "DELETE", manifest},
	} {
		out, _ := asNobody("curl", append(args, "-w", "\nHTTP %{http_code}")...)
		if !strings.HasSuffix(out, "HTTP 000") && !strings.Contains(out, "HTTP 400") {
			t.Errorf("nobody, %s: the registry answered: %s", name, out)
		}
	}
	if out, err := asNobody("cat", filepath.Join(registryTLSDir(), "client.key")); err == nil {
		t.Errorf("nobody read the registry client key (%d bytes)", len(out))
	}
	// And the images are all still there.
	after, _ := exec.Command("curl", "-s", "--max-time", "10", "--cacert", filepath.Join(registryTLSDir(), "ca.crt"),
		"--cert", filepath.Join(registryTLSDir(), "client.crt"), "--key", filepath.Join(registryTLSDir(), "client.key"),
		"-H", "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
		manifest, "-o", "/dev/null", "-w", "%{http_code}").Output()
	if string(after) != "200" {
		t.Errorf("the webserver image's manifest answers %s after the tries, want 200", after)
	}
}

// Keys, kubeconfigs, the ledger and etcd's data are root's only.
func TestTheClustersSecretsAreRootsOnly(t *testing.T) {
	for _, f := range []string{stateFile("kubeconfig"), stateFile("pki", "ca.key"), stateFile("pki", "sa.key"), stateFile("host-ledger.jsonl"), stateFile("kubeconfigs", "node.kubeconfig")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if out, err := asNobody("cat", f); err == nil {
			t.Errorf("nobody read %s (%d bytes)", f, len(out))
		}
	}
	if st, err := os.Stat(stateFile()); err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("the cluster's state directory: mode %v (%v), want no access for group and others", st.Mode(), err)
	}
}

// While the cluster runs, route_localnet is on (kube-proxy answers the
// NodePort on 127.0.0.1): a packet to 127.0.0.1 that arrives from another
// network namespace through a veth must be dropped, or anything in it (a
// neighbour, a container) reaches services bound to loopback
// (CVE-2020-8558). The control: the same namespace reaches the host's
// address on that veth.
func TestLoopbackIsUnreachableFromOtherNetworkNamespaces(t *testing.T) {
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/all/route_localnet"); strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("route_localnet is %q while the cluster runs: this test proves nothing without it", strings.TrimSpace(string(b)))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const hostAddr, peerAddr = "169.254.253.1", "169.254.253.2"
	if l, err := net.Listen("tcp", hostAddr+":0"); err == nil {
		l.Close()
		t.Fatal("the veth's host address is in use before the test made it")
	}
	go serve(ln)

	// A network namespace held by a sleeping process (gone with it).
	holder := exec.Command("unshare", "--net", "sleep", "120")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Process.Kill(); _ = holder.Wait() }()
	pid := strconv.Itoa(holder.Process.Pid)
	in := func(args ...string) (string, error) {
		out, err := exec.Command("nsenter", append([]string{"--net", "--target", pid}, args...)...).CombinedOutput()
		return string(out), err
	}
	must := func(out string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		return string(out), err
	}
	must(run("ip", "link", "add", "psltest0", "type", "veth", "peer", "name", "psltest1"))
	defer func() { _, _ = run("ip", "link", "del", "psltest0") }()
	must(run("ip", "link", "set", "psltest1", "netns", pid))
	must(run("ip", "addr", "add", hostAddr+"/30", "dev", "psltest0"))
	must(run("ip", "link", "set", "psltest0", "up"))
	must(in("ip", "addr", "add", peerAddr+"/30", "dev", "psltest1"))
	must(in("ip", "link", "set", "psltest1", "up"))
	// The namespace's lo stays down, so 127.0.0.1 is not its own; it
	// sends to 127.0.0.1 through the veth, as a neighbour on a shared
	// segment could.
	must(in("sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1"))
	must(in("ip", "route", "add", "127.0.0.1/32", "via", hostAddr, "dev", "psltest1"))

	control, err := net.Listen("tcp", hostAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	go serve(control)
	if out, err := in("curl", "-s", "--max-time", "5", "http://"+control.Addr().String()+"/"); err != nil || !strings.Contains(out, "hello") {
		t.Fatalf("the control: the namespace did not reach the host's veth address %s: %v %s", control.Addr(), err, out)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	dropped := localnetDrops(t)
	if out, err := in("curl", "-s", "--max-time", "5", "http://127.0.0.1:"+port+"/"); err == nil || strings.Contains(out, "hello") {
		t.Fatalf("a packet to 127.0.0.1 from another network namespace reached a loopback-only listener: %v %q", err, out)
	}
	// Dropped by the launcher's rule in the raw table, before anything
	// else sees it: not only by kube-proxy's own localnet rule, which
	// exists only once kube-proxy runs (route_localnet is set before).
	if after := localnetDrops(t); after <= dropped {
		t.Fatalf("the launcher's %s rule dropped %d packets before the try and %d after: something else dropped them", "DEVCLUSTER-LOCALNET", dropped, after)
	}
}

// localnetDrops is the packet count of the launcher's rule that drops
// packets to 127.0.0.0/8 from other interfaces.
func localnetDrops(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("iptables", "-w", "5", "-t", "raw", "-L", "DEVCLUSTER-LOCALNET", "-v", "-x", "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("the launcher's localnet chain: %v %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == "DROP" && strings.Contains(line, "127.0.0.0/8") {
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	t.Fatalf("no DROP rule for 127.0.0.0/8 in DEVCLUSTER-LOCALNET:\n%s", out)
	return 0
}

// route_localnet is set only once the drop rule is in place: the ledger,
// written as up takes each thing, has the rule before the setting.
func TestRouteLocalnetIsSetOnlyAfterTheDropRule(t *testing.T) {
	b, err := os.ReadFile(stateFile("host-ledger.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	rule, setting := -1, -1
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.Contains(line, `"kind":"rule"`) && strings.Contains(line, "DEVCLUSTER-LOCALNET") && strings.Contains(line, `"DROP"`):
			rule = i
		case strings.Contains(line, `"kind":"sysctl"`) && strings.Contains(line, "route_localnet"):
			setting = i
		}
	}
	if rule < 0 {
		t.Fatalf("the ledger records no localnet drop rule:\n%s", b)
	}
	if setting >= 0 && setting < rule {
		t.Fatalf("route_localnet was set (ledger line %d) before the drop rule was added (line %d)", setting+1, rule+1)
	}
}

// serve answers every connection with a line, until ln closes.
func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = fmt.Fprint(c, "HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
		_ = c.Close()
	}
}
