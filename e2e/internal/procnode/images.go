package procnode

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/purchase-system/purchase-system/e2e/internal/podexec"
	"github.com/purchase-system/purchase-system/images/oci"
)

// ImageStore resolves a container's image to its unpacked root and
// configuration (the image store make images and devcluster load-image
// fill).
type ImageStore interface {
	Resolve(ref string) (oci.Image, error)
}

// containerSpec is what pod-exec needs to start container c of the pod:
// the image's Entrypoint, Cmd, Env, User and WorkingDir, overridden by the
// pod spec as the kubelet does, and the security context enforced.
func containerSpec(pod *corev1.Pod, c *corev1.Container, img oci.Image, env []string, mounts []mount, dir string, files []podexec.Mount) (podexec.Spec, error) {
	s := podexec.Spec{
		Rootfs: img.Rootfs,
		Upper:  filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Root: filepath.Join(dir, "root"),
		Files:    files,
		Hostname: pod.Name,
	}
	for _, m := range mounts {
		s.Mounts = append(s.Mounts, podexec.Mount{Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	// Environment: the image's, then the pod's (which wins).
	s.Env = mergeEnv(img.Config.Env, env)
	lookup := func(k string) (string, bool) {
		for i := len(s.Env) - 1; i >= 0; i-- {
			if v, ok := strings.CutPrefix(s.Env[i], k+"="); ok {
				return v, true
			}
		}
		return "", false
	}
	// command replaces the Entrypoint (and drops the Cmd), args replace
	// the Cmd; $(VAR) is expanded from the container's environment.
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(append(argv, c.Command...), c.Args...)
	case len(c.Args) > 0:
		argv = append(append(argv, img.Config.Entrypoint...), c.Args...)
	default:
		argv = append(append(argv, img.Config.Entrypoint...), img.Config.Cmd...)
	}
	if len(argv) == 0 {
		return s, fmt.Errorf("no command specified: image %s has no entrypoint or cmd and the container sets no command", img.Ref)
	}
	for i, a := range argv {
		argv[i] = expand(a, lookup)
	}
	s.Argv = argv
	s.WorkingDir = c.WorkingDir
	if s.WorkingDir == "" {
		s.WorkingDir = img.Config.WorkingDir
	}

	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := c.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	if csc.Privileged != nil && *csc.Privileged {
		return s, fmt.Errorf("privileged containers are not supported by the process node")
	}
	uid, gid, named, err := imageUser(img)
	if err != nil {
		return s, err
	}
	switch {
	case csc.RunAsUser != nil:
		uid, named = uint32(*csc.RunAsUser), false
	case psc.RunAsUser != nil:
		uid, named = uint32(*psc.RunAsUser), false
	}
	switch {
	case csc.RunAsGroup != nil:
		gid = uint32(*csc.RunAsGroup)
	case psc.RunAsGroup != nil:
		gid = uint32(*psc.RunAsGroup)
	}
	nonRoot := csc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = psc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot {
		// The kubelet's words, so what users search for matches.
		podName := fmt.Sprintf("%s_%s(%s)", pod.Name, pod.Namespace, pod.UID)
		explicit := csc.RunAsUser != nil || psc.RunAsUser != nil
		switch {
		case explicit && uid == 0:
			return s, fmt.Errorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", podName, c.Name)
		case named:
			return s, fmt.Errorf("container has runAsNonRoot and image has non-numeric user (%s), cannot verify user is non-root (pod: %q, container: %s)", img.Config.User, podName, c.Name)
		case uid == 0:
			return s, fmt.Errorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", podName, c.Name)
		}
	}
	s.UID, s.GID = uid, gid
	for _, g := range psc.SupplementalGroups {
		s.Groups = append(s.Groups, uint32(g))
	}
	if psc.FSGroup != nil {
		s.Groups = append(s.Groups, uint32(*psc.FSGroup))
	}
	s.ReadOnlyRoot = csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem
	s.NoNewPrivs = csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation
	s.Capabilities, err = capabilities(csc.Capabilities)
	return s, err
}

// capabilities is the runtime's default set with the security context's
// adds and drops ("ALL" drops every one).
func capabilities(c *corev1.Capabilities) ([]string, error) {
	set := map[string]bool{}
	for _, n := range podexec.DefaultCapabilities {
		set[n] = true
	}
	if c != nil {
		for _, d := range c.Drop {
			n := strings.TrimPrefix(strings.ToUpper(string(d)), "CAP_")
			if n == "ALL" {
				set = map[string]bool{}
				continue
			}
			delete(set, n)
		}
		for _, a := range c.Add {
			n := strings.TrimPrefix(strings.ToUpper(string(a)), "CAP_")
			if !podexec.KnownCapability(n) {
				return nil, fmt.Errorf("securityContext.capabilities.add: unknown capability %q", a)
			}
			set[n] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	return out, nil
}

// imageUser reads the image's User ("uid", "uid:gid", "name" or
// "name:group"), resolving names in the image's /etc/passwd and
// /etc/group; named says the user was given by name.
func imageUser(img oci.Image) (uid, gid uint32, named bool, err error) {
	user, group, _ := strings.Cut(img.Config.User, ":")
	if user == "" {
		return 0, 0, false, nil
	}
	if n, perr := strconv.ParseUint(user, 10, 32); perr == nil {
		uid = uint32(n)
		gid = lookupPasswdGID(img.Rootfs, uid)
	} else {
		named = true
		u, g, ok := lookupPasswd(img.Rootfs, user)
		if !ok {
			return 0, 0, true, fmt.Errorf("image %s: user %q is not in its /etc/passwd", img.Ref, user)
		}
		uid, gid = u, g
	}
	if group != "" {
		if n, perr := strconv.ParseUint(group, 10, 32); perr == nil {
			gid = uint32(n)
		} else if g, ok := lookupGroup(img.Rootfs, group); ok {
			gid = g
		} else {
			return 0, 0, named, fmt.Errorf("image %s: group %q is not in its /etc/group", img.Ref, group)
		}
	}
	return uid, gid, named, nil
}

func passwdLines(path string) [][]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, strings.Split(sc.Text(), ":"))
	}
	return out
}

func lookupPasswd(root, name string) (uint32, uint32, bool) {
	for _, f := range passwdLines(filepath.Join(root, "etc", "passwd")) {
		if len(f) >= 4 && f[0] == name {
			u, e1 := strconv.ParseUint(f[2], 10, 32)
			g, e2 := strconv.ParseUint(f[3], 10, 32)
			return uint32(u), uint32(g), e1 == nil && e2 == nil
		}
	}
	return 0, 0, false
}

// lookupPasswdGID is the primary group of uid in the image, 0 if none.
func lookupPasswdGID(root string, uid uint32) uint32 {
	for _, f := range passwdLines(filepath.Join(root, "etc", "passwd")) {
		if len(f) >= 4 && f[2] == strconv.FormatUint(uint64(uid), 10) {
			if g, err := strconv.ParseUint(f[3], 10, 32); err == nil {
				return uint32(g)
			}
		}
	}
	return 0
}

func lookupGroup(root, name string) (uint32, bool) {
	for _, f := range passwdLines(filepath.Join(root, "etc", "group")) {
		if len(f) >= 3 && f[0] == name {
			g, err := strconv.ParseUint(f[2], 10, 32)
			return uint32(g), err == nil
		}
	}
	return 0, false
}

// mergeEnv is base with over's variables replacing those of one name.
func mergeEnv(base, over []string) []string {
	names := map[string]bool{}
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		names[k] = true
	}
	var out []string
	for _, e := range base {
		k, _, _ := strings.Cut(e, "=")
		if !names[k] {
			out = append(out, e)
		}
	}
	return append(out, over...)
}
