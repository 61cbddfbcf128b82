package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

var localClient = &http.Client{Timeout: 2 * time.Second}

// registryOK asks the local registry for its API root with the node's
// client certificate.
func (c Config) registryOK(ctx context.Context) error {
	client, err := c.registryClient()
	if err != nil {
		return err
	}
	return httpOK(ctx, client, "https://"+LocalRegistry+"/v2/")
}

// registryClient speaks to the local registry as the node does.
func (c Config) registryClient() (*http.Client, error) {
	caPEM, err := os.ReadFile(c.RegistryTLS.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(c.RegistryTLS.ClientCert, c.RegistryTLS.ClientKey)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
	}}}, nil
}

func httpOK(ctx context.Context, client *http.Client, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil
}

// ContainerPID is the host pid of the first process of a pod's container,
// read from the container's cgroup (the kubelet with the cgroupfs driver
// puts it at <CgroupRoot>/kubepods/[<qos>/]pod<uid>/<container id>).
// containerID is the pod status' "containerd://<id>".
func ContainerPID(podUID, containerID string) (int, error) {
	id, ok := strings.CutPrefix(containerID, "containerd://")
	if !ok {
		return 0, fmt.Errorf("container %q is not run by containerd", containerID)
	}
	var files []string
	for _, pattern := range []string{"/sys/fs/cgroup/pids%s/kubepods/pod%s/%s/cgroup.procs", "/sys/fs/cgroup/pids%s/kubepods/*/pod%s/%s/cgroup.procs"} {
		m, _ := filepath.Glob(fmt.Sprintf(pattern, CgroupRoot, podUID, id))
		files = append(files, m...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if fields := strings.Fields(string(b)); len(fields) > 0 {
			return strconv.Atoi(fields[0])
		}
	}
	return 0, fmt.Errorf("no process in the cgroup of container %s of pod %s", id, podUID)
}
