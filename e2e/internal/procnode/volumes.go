package procnode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// volumes materialises a pod's volumes as directories under the pod's
// state directory, which the pod-exec helper bind-mounts at each
// container's mountPath. ConfigMap, Secret, projected and downward-API
// volumes are written the way the kubelet writes them (files are symlinks
// into a ..data directory swapped atomically), so programs that watch
// their mounted config for changes see updates as they would in a cluster.
type volumes struct {
	client kubernetes.Interface
	src    envSources

	mu     sync.Mutex
	tokens map[string]cachedToken // by pod uid + volume + path
}

type cachedToken struct {
	token   string
	refresh time.Time
}

// mount is one bind mount for the pod-exec helper.
type mount struct {
	Source, Target string
	ReadOnly       bool
}

// sync writes every volume of pod under dir and returns each volume's
// host path. It is called at pod start and then periodically, so changed
// ConfigMaps and expiring tokens are refreshed.
func (v *volumes) sync(ctx context.Context, pod *corev1.Pod, dir, podIP, hostIP string) (map[string]string, error) {
	paths := map[string]string{}
	for _, vol := range pod.Spec.Volumes {
		path := filepath.Join(dir, "volumes", vol.Name)
		var files map[string][]byte
		var err error
		switch {
		case vol.EmptyDir != nil:
			// World-writable, as the kubelet makes it: containers run as
			// users other than the node's.
			if err = os.MkdirAll(path, 0o777); err == nil {
				err = os.Chmod(path, 0o777)
			}
		case vol.HostPath != nil:
			path = vol.HostPath.Path
		case vol.ConfigMap != nil:
			files, err = v.configMapFiles(pod.Namespace, vol.ConfigMap.Name, vol.ConfigMap.Items, vol.ConfigMap.Optional)
		case vol.Secret != nil:
			files, err = v.secretFiles(pod.Namespace, vol.Secret.SecretName, vol.Secret.Items, vol.Secret.Optional)
		case vol.DownwardAPI != nil:
			files, err = downwardFiles(pod, vol.DownwardAPI.Items, podIP, hostIP)
		case vol.Projected != nil:
			files, err = v.projectedFiles(ctx, pod, vol.Name, vol.Projected.Sources, podIP, hostIP)
		default:
			err = fmt.Errorf("volume type not supported by the process node (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)")
		}
		if err == nil && files != nil {
			err = writeAtomic(path, files)
		}
		if err != nil {
			return nil, fmt.Errorf("volume %q: %w", vol.Name, err)
		}
		paths[vol.Name] = path
	}
	return paths, nil
}

// mounts turns a container's volumeMounts into bind mounts.
func mounts(c *corev1.Container, paths map[string]string) ([]mount, error) {
	var out []mount
	for _, vm := range c.VolumeMounts {
		src, ok := paths[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %q names no volume of the pod", vm.Name)
		}
		if vm.SubPath != "" {
			// Like the kubelet, a subPath mount is of the file as it is
			// now; later updates of the volume do not reach it.
			resolved, err := filepath.EvalSymlinks(filepath.Join(src, vm.SubPath))
			if err != nil {
				return nil, fmt.Errorf("volumeMount %q subPath %q: %w", vm.Name, vm.SubPath, err)
			}
			src = resolved
		}
		out = append(out, mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	return out, nil
}

func selectItems(data map[string][]byte, items []corev1.KeyToPath, what string) (map[string][]byte, error) {
	out := map[string][]byte{}
	if len(items) == 0 {
		for k, b := range data {
			out[k] = b
		}
		return out, nil
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		out[it.Path] = b
	}
	return out, nil
}

func (v *volumes) configMapFiles(ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	cm, err := v.src.configMaps.ConfigMaps(ns).Get(name)
	if err != nil {
		if optional != nil && *optional {
			return map[string][]byte{}, nil
		}
		return nil, fmt.Errorf("configMap %s: %w", name, err)
	}
	data := map[string][]byte{}
	for k, s := range cm.Data {
		data[k] = []byte(s)
	}
	for k, b := range cm.BinaryData {
		data[k] = b
	}
	return selectItems(data, items, "configMap "+name)
}

func (v *volumes) secretFiles(ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	sec, err := v.src.secrets.Secrets(ns).Get(name)
	if err != nil {
		if optional != nil && *optional {
			return map[string][]byte{}, nil
		}
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	return selectItems(sec.Data, items, "secret "+name)
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, podIP, hostIP string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, it := range items {
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = fieldValue(pod, it.FieldRef.FieldPath, podIP, hostIP)
		case it.ResourceFieldRef != nil:
			c := containerByName(pod, it.ResourceFieldRef.ContainerName)
			if c == nil {
				return nil, fmt.Errorf("downwardAPI %s: no container %q", it.Path, it.ResourceFieldRef.ContainerName)
			}
			val, err = resourceValue(c, it.ResourceFieldRef)
		}
		if err != nil {
			return nil, fmt.Errorf("downwardAPI %s: %w", it.Path, err)
		}
		out[it.Path] = []byte(val)
	}
	return out, nil
}

func containerByName(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name || name == "" {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

func (v *volumes) projectedFiles(ctx context.Context, pod *corev1.Pod, vol string, sources []corev1.VolumeProjection, podIP, hostIP string) (map[string][]byte, error) {
	out := map[string][]byte{}
	add := func(files map[string][]byte, err error) error {
		for k, b := range files {
			out[k] = b
		}
		return err
	}
	for _, s := range sources {
		var err error
		switch {
		case s.ServiceAccountToken != nil:
			var tok string
			tok, err = v.token(ctx, pod, vol, s.ServiceAccountToken)
			out[s.ServiceAccountToken.Path] = []byte(tok)
		case s.ConfigMap != nil:
			err = add(v.configMapFiles(pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional))
		case s.Secret != nil:
			err = add(v.secretFiles(pod.Namespace, s.Secret.Name, s.Secret.Items, s.Secret.Optional))
		case s.DownwardAPI != nil:
			err = add(downwardFiles(pod, s.DownwardAPI.Items, podIP, hostIP))
		default:
			err = fmt.Errorf("projected source not supported by the process node")
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// token asks the API server for a token bound to the pod, as the kubelet
// does for projected service account tokens, and reuses it until 80% of
// its lifetime has passed.
func (v *volumes) token(ctx context.Context, pod *corev1.Pod, vol string, src *corev1.ServiceAccountTokenProjection) (string, error) {
	key := string(pod.UID) + "/" + vol + "/" + src.Path
	v.mu.Lock()
	if t, ok := v.tokens[key]; ok && time.Now().Before(t.refresh) {
		v.mu.Unlock()
		return t.token, nil
	}
	v.mu.Unlock()

	expiry := int64(3600)
	if src.ExpirationSeconds != nil {
		expiry = *src.ExpirationSeconds
	}
	var audiences []string
	if src.Audience != "" {
		audiences = []string{src.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := v.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         audiences,
			ExpirationSeconds: &expiry,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	life := time.Until(tr.Status.ExpirationTimestamp.Time)
	v.mu.Lock()
	if v.tokens == nil {
		v.tokens = map[string]cachedToken{}
	}
	v.tokens[key] = cachedToken{token: tr.Status.Token, refresh: time.Now().Add(life * 8 / 10)}
	v.mu.Unlock()
	return tr.Status.Token, nil
}

// forget drops a deleted pod's cached tokens.
func (v *volumes) forget(podUID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for k := range v.tokens {
		if strings.HasPrefix(k, podUID+"/") {
			delete(v.tokens, k)
		}
	}
}

// writeAtomic lays files out as the kubelet's atomic writer does: the data
// in a timestamped directory, ..data a symlink to it, and each top-level
// name a symlink through ..data. An update writes a new directory and
// renames a new ..data symlink over the old one, so a reader never sees a
// half-written set. Unchanged content is left alone.
func writeAtomic(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if same(filepath.Join(dir, "..data"), files) {
		return nil
	}
	ts := filepath.Join(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05.000000000"))
	for name, b := range files {
		p := filepath.Join(ts, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(ts, 0o755); err != nil {
		return err
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	top := map[string]bool{}
	for name := range files {
		top[strings.SplitN(name, "/", 2)[0]] = true
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if n := e.Name(); !strings.HasPrefix(n, "..") && !top[n] {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	if old != "" && old != filepath.Base(ts) {
		_ = os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

func same(dataDir string, files map[string][]byte) bool {
	var have []string
	_ = filepath.WalkDir(dataDir+"/", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dataDir, p)
			have = append(have, rel)
		}
		return nil
	})
	if len(have) != len(files) {
		return false
	}
	sort.Strings(have)
	for _, rel := range have {
		want, ok := files[rel]
		if !ok {
			return false
		}
		got, err := os.ReadFile(filepath.Join(dataDir, rel))
		if err != nil || !bytes.Equal(got, want) {
			return false
		}
	}
	return true
}
