package node

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/purchase-system/purchase-system/devcluster/internal/daemon"
)

// writeConfigs writes containerd's, the CNI network's, the kubelet's and
// kube-proxy's configuration files into the node's directory.
func (c Config) writeConfigs() error {
	for _, d := range []string{"cni", "cni-ipam", "kubelet", "pod-logs", "run", "certs.d/_default"} {
		if err := os.MkdirAll(c.path(d), 0o700); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(c.ImageDir, 0o711); err != nil {
		return err
	}
	if err := os.MkdirAll(c.RegistryDir, 0o700); err != nil {
		return err
	}
	files := map[string]string{
		"registry.yaml":                      c.registryConfig(),
		"containerd.toml":                    c.containerdConfig(),
		"cni/10-" + CNINetwork + ".conflist": c.cniConfig(),
		"kubelet.yaml":                       c.kubeletConfig(),
		"kube-proxy.yaml":                    c.kubeProxyConfig(),
		"certs.d/_default/hosts.toml":        c.hostsConfig(),
		// Pods with dnsPolicy Default (CoreDNS itself) get no upstream
		// resolver: nothing outside the cluster is to be resolved from here.
		"resolv.conf": "",
	}
	for name, body := range files {
		// Unchanged files are left alone: kube-proxy exits when its
		// configuration file is written while it runs.
		if old, err := os.ReadFile(c.path(name)); err == nil && string(old) == body {
			continue
		}
		if err := os.WriteFile(c.path(name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// registryConfig: distribution's registry on loopback only, storage kept
// across Down. Every request must come with a client certificate the
// cluster's registry CA signed (only root can read its key): any local
// account could otherwise list, pull, push or delete the images the node
// runs.
func (c Config) registryConfig() string {
	return fmt.Sprintf(`# Written by the local cluster's launcher (devcluster/node).
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
http:
  addr: %s
  tls:
    certificate: %q
    key: %q
    clientcas:
      - %q
    minimumtls: tls1.2
  debug:
    addr: ""
`, c.RegistryDir, LocalRegistry, c.RegistryTLS.Cert, c.RegistryTLS.Key, c.RegistryTLS.CA)
}

// hostsConfig: every pull, whatever registry the image names, goes to the
// local registry with the node's client certificate; nothing is fetched
// from the internet (an image that was not pushed there fails at once).
func (c Config) hostsConfig() string {
	return fmt.Sprintf(`# Written by the local cluster's launcher (devcluster/node).
server = "https://%s"
ca = %q
client = [[%q, %q]]
`, LocalRegistry, c.RegistryTLS.CA, c.RegistryTLS.ClientCert, c.RegistryTLS.ClientKey)
}

// containerdConfig: the CRI plugin with runc, the CNI bridge network, the
// pinned pause image, and the two settings this kind of VM needs. Its
// socket, state and root are the node's own; the shim and runc are named
// by absolute path, and runc keeps its state in the node's directory.
func (c Config) containerdConfig() string {
	return fmt.Sprintf(`# Written by the local cluster's launcher (devcluster/node).
version = 3
root = %q
state = %q
# No drop-ins from /etc/containerd/conf.d: those are a system containerd's.
imports = []
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  # NRI (on by default in containerd 2) would put its socket in /run/nri
  # on the host; nothing here plugs into it.
  "io.containerd.nri.v1.nri",
  # The opt service would create /opt/containerd on the host.
  "io.containerd.internal.v1.opt",
]

[grpc]
  address = %q

[plugins.'io.containerd.cri.v1.runtime']
  # The VM's capability bounding set lacks CAP_SYS_RESOURCE: runc cannot
  # lower a container's oom_score_adj below its parent's, and every
  # sandbox would fail to start.
  restrict_oom_score_adj = true
  # The pods' network namespaces in the node's state, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # By path: not whatever containerd-shim-runc-v2 PATH finds first.
      runtime_path = %q
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %q
        Root = %q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
    max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  # Registries: certs.d/_default sends every pull to this machine, never
  # to the internet (an image that was not imported fails at once).
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
`, c.ImageDir, c.ContainerdState(), c.Socket(), c.Bin.Shim(), c.Bin.Runc, c.path("runc"), c.Bin.CNIDir, c.path("cni"), c.path("certs.d"), PauseImage)
}

// cniConfig: every pod on the bridge with an address of 10.88.1.0 and up.
// Pods get routes to the cluster's ranges only, no default route: nothing
// in a pod can reach past this machine.
func (c Config) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q, "rangeStart": "10.88.1.1", "rangeEnd": "10.88.255.254", "gateway": %q}]],
        "routes": [{"dst": %q}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, CNINetwork, Bridge, c.path("cni-ipam"), PodCIDR, HostIP, ServiceCIDR)
}

// kubeletConfig: a KubeletConfiguration for this machine (cgroup v1
// hybrid, no systemd, no swap accounting) serving its API on the bridge
// address with client certificates and webhook authorization.
func (c Config) kubeletConfig() string {
	return fmt.Sprintf(`# Written by the local cluster's launcher (devcluster/node).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://%s
# Pods' cgroups under a root of the cluster's own in every hierarchy, not
# /kubepods, which a kubelet of another cluster on this machine uses.
cgroupRoot: %s
cgroupsPerQOS: true
# This VM mounts cgroup v1 (v2 only beside it) and has no systemd as PID 1.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
# Every container gets the runtime's default seccomp profile unless its pod
# asks otherwise (a pod that says nothing is not left unconfined).
seccompDefault: true
# Pods see a changed ConfigMap or Secret volume within seconds (the
# adapter's rules are hot-reloaded from one), not after the default 1 min.
syncFrequency: 10s
clusterDomain: cluster.local
clusterDNS: [%s]
resolvConf: %s
podLogsDir: %s
staticPodPath: ""
serializeImagePulls: false
# Nothing to pull from: images are imported (make images) or pulled from
# the local registry; garbage collection would delete imported ones.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
# No eviction for disk (as kind does): a dev machine's disk is shared, and
# its free share can be a few percent of a large volume (statfs counts
# reserved blocks as not available). With a percentage threshold the
# kubelet evicted every pod of the system mid-test when the free space
# crossed it (docs/RELIABILITY.md). A full disk fails writes loudly instead.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
  imagefs.inodesFree: "0%%"
# The kubelet checks the kernel settings it needs and fails instead of
# changing them: the launcher sets them, recorded in its ledger, and puts
# the host's values back at cluster down.
protectKernelDefaults: true
`, HostIP, c.ServingCert, c.ServingKey, c.CAFile, c.Socket(), CgroupRoot, ClusterDNS, c.path("resolv.conf"), c.PodLogs())
}

// kubeProxyConfig: iptables mode, NodePorts on 127.0.0.1 (the seed's
// localhost:30080) and the bridge address only; conntrack left as the host
// has it.
func (c Config) kubeProxyConfig() string {
	return fmt.Sprintf(`# Written by the local cluster's launcher (devcluster/node).
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: %s
bindAddress: %s
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["127.0.0.1/32", "%s/32"]
clientConnection:
  kubeconfig: %s
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  syncPeriod: 10s
  minSyncPeriod: 0s
# 0: leave the host's conntrack table size and timeouts alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, c.Name, HostIP, PodCIDR, HostIP, c.ProxyConfig)
}

func (c Config) specs() map[string]daemon.Spec {
	return map[string]daemon.Spec{
		Registry: {Name: Registry, Path: c.Bin.Registry, Args: []string{"serve", c.path("registry.yaml")}},
		Containerd: {Name: Containerd, Path: filepath.Join(c.Bin.ContainerdDir, "containerd"),
			Args: []string{"--config", c.path("containerd.toml"), "--log-level", "warn"}},
		Kubelet: {Name: Kubelet, Path: c.Bin.Kubelet, Args: []string{
			"--config=" + c.path("kubelet.yaml"),
			"--kubeconfig=" + c.KubeletConfig,
			"--root-dir=" + c.path("kubelet"),
			"--cert-dir=" + c.path("kubelet", "pki"),
			"--hostname-override=" + c.Name,
			"--node-ip=" + HostIP,
			"--v=1",
		}},
		KubeProxy: {Name: KubeProxy, Path: c.Bin.KubeProxy, Args: []string{
			"--config=" + c.path("kube-proxy.yaml"), "--v=1",
		}},
		KubeRouter: {Name: KubeRouter, Path: c.Bin.KubeRouter, Args: []string{
			"--kubeconfig=" + c.KubeRouterConfig,
			"--hostname-override=" + c.Name,
			// NetworkPolicies only: kube-proxy serves Services and the
			// bridge routes pods.
			"--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--health-port=20244",
			"--v=1",
		}},
	}
}
