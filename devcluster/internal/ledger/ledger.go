// Package ledger is the local cluster's record of what it takes from its
// host. cluster up writes an entry before it creates the object (so an up
// that is interrupted halfway leaves a record the next down follows), and
// cluster down gives back exactly what is recorded, newest first, and
// nothing else: no cleanup by name, no well-known path removed because
// the cluster might have used it.
//
// The record is one JSON object a line, appended and synced as it goes, in
// the cluster's state directory. What the record does not name is the
// cluster's only by where it lies: under the cluster's bridge, cgroup root
// or directories (package node decides that, with the record's help).
package ledger

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Kind is what sort of host object an entry records.
type Kind string

// Kinds of entries.
const (
	// Process: a program the launcher started. Name is the component,
	// PID and Start (clock ticks after boot, /proc/<pid>/stat) tell the
	// process from a later one that reuses its pid.
	Process Kind = "process"
	// Sysctl: a kernel setting the cluster changed. Name is its path
	// under /proc/sys, Old the value before, New the value set. Down
	// puts Old back only while the setting still holds New.
	Sysctl Kind = "sysctl"
	// Link: a network interface the cluster created (its bridge).
	Link Kind = "link"
	// Route: a route the cluster added. Name is the destination, Args
	// the rest of `ip route add`.
	Route Kind = "route"
	// Chain: a netfilter chain the launcher itself created. Name is
	// family/table/chain (family iptables or ip6tables).
	Chain Kind = "chain"
	// Rule: a netfilter rule the launcher added. Name is
	// family/table/chain, Args the rule's matches and target.
	Rule Kind = "rule"
	// Policy: a built-in chain's policy a program changed. Name is
	// family/table/chain, Old and New the policies; given back only while
	// the chain still has New.
	Policy Kind = "policy"
	// Cgroup: a cgroup directory the cluster created (its cgroup root,
	// in one hierarchy).
	Cgroup Kind = "cgroup"
	// Dir and File: a path outside the cluster's directories that was
	// absent at up, which a part of the cluster creates. Down removes a
	// Dir only when it is empty by then: others may have put things in
	// it meanwhile.
	Dir  Kind = "dir"
	File Kind = "file"
	// Existing: the names a namespace held at the first up (Name is the
	// namespace, for example "iptables/nat chains" or "ipsets"; Args the
	// names). The cluster's programs (kube-proxy, kube-router, the CNI
	// plugins) create chains and sets on their own; of those, down
	// removes only names that were absent here.
	Existing Kind = "existing"
)

// Entry is one thing taken from the host.
type Entry struct {
	Kind  Kind     `json:"kind"`
	Name  string   `json:"name"`
	Old   string   `json:"old,omitempty"`
	New   string   `json:"new,omitempty"`
	PID   int      `json:"pid,omitempty"`
	Start uint64   `json:"start,omitempty"`
	Args  []string `json:"args,omitempty"`
}

func (e Entry) String() string {
	switch e.Kind {
	case Sysctl, Policy:
		return fmt.Sprintf("%s %s (was %q, set to %q)", e.Kind, e.Name, e.Old, e.New)
	case Process:
		return fmt.Sprintf("process %s (pid %d)", e.Name, e.PID)
	case Rule, Route:
		return fmt.Sprintf("%s %s %v", e.Kind, e.Name, e.Args)
	case Existing:
		return fmt.Sprintf("%d %s present at up", len(e.Args), e.Name)
	}
	return fmt.Sprintf("%s %s", e.Kind, e.Name)
}

// Ledger is the record of one cluster.
type Ledger struct {
	path    string
	entries []Entry
}

// ErrNone is returned by Load when no record exists: no cluster was ever
// brought up from this state directory by this launcher.
var ErrNone = errors.New("no record of what the cluster took from the host")

// Open reads the record at path, or starts an empty one (written at the
// first Record).
func Open(path string) (*Ledger, error) {
	l, err := Load(path)
	if errors.Is(err, ErrNone) {
		return &Ledger{path: path}, nil
	}
	return l, err
}

// Load reads the record at path; ErrNone if there is none.
func Load(path string) (*Ledger, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNone
	}
	if err != nil {
		return nil, err
	}
	l := &Ledger{path: path}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			// A line cut short by a crash mid-write is the last one:
			// what it was about to take was not taken yet.
			if !sc.Scan() {
				break
			}
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		l.entries = append(l.entries, e)
	}
	return l, sc.Err()
}

// Path is where the record is kept.
func (l *Ledger) Path() string { return l.path }

// Entries are the recorded entries, oldest first.
func (l *Ledger) Entries() []Entry { return slices.Clone(l.entries) }

// Find is the newest entry of kind with name.
func (l *Ledger) Find(kind Kind, name string) (Entry, bool) {
	for i := len(l.entries) - 1; i >= 0; i-- {
		if e := l.entries[i]; e.Kind == kind && e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// Record appends e and syncs it to disk before returning, so that what
// follows (creating the object) is never done unrecorded.
func (l *Ledger) Record(e Entry) error {
	if err := PrivateDir(filepath.Dir(l.path)); err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	l.entries = append(l.entries, e)
	return nil
}

// Keep replaces the record by the entries that could not be given back
// (down keeps them for the next down), or removes it when none is left.
func (l *Ledger) Keep(left []Entry) error {
	if len(left) == 0 {
		l.entries = nil
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	var buf bytes.Buffer
	for _, e := range left {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		buf.Write(append(b, '\n'))
	}
	tmp := l.path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return err
	}
	l.entries = slices.Clone(left)
	return nil
}

// PrivateDir makes dir, readable by its owner (root) only, with any
// missing parents readable by all: the checkout's .cache holds state of
// services that run as other users (PostgreSQL's data), and only the
// cluster's own directory holds keys.
func PrivateDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.Chmod(dir, 0o700)
}
