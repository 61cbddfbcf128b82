// Package netfilter reads and changes iptables state through the
// iptables commands, for what the local cluster (and the Docker daemon a
// test starts) takes from the host: chains and rules it adds, recorded in
// a ledger before they are added, and the chains and ipsets programs it
// runs create on their own, told apart from everyone else's by the names
// the host held before (ledger.Existing).
package netfilter

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
)

// Families are the two iptables front ends; kube-proxy programs both when
// the host has IPv6.
var Families = []string{"iptables", "ip6tables"}

// Tables that programs here write to.
var Tables = []string{"filter", "nat", "mangle", "raw"}

// HasPrefix reports whether name starts with one of prefixes.
func HasPrefix(name string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// TakeChain creates family/table/chain unless it exists, recorded first.
func TakeChain(led *ledger.Ledger, where string) error {
	family, table, chain, err := splitWhere(where)
	if err != nil {
		return err
	}
	if ChainExists(family, table, chain) {
		return nil
	}
	if err := led.Record(ledger.Entry{Kind: ledger.Chain, Name: where}); err != nil {
		return err
	}
	return Run(family, "-t", table, "-N", chain)
}

// TakeRule adds a rule to family/table/chain unless it is there already,
// recorded first; insert puts it first, else it is appended.
func TakeRule(led *ledger.Ledger, where string, insert bool, rule []string) error {
	family, table, chain, err := splitWhere(where)
	if err != nil {
		return err
	}
	if RuleExists(family, table, chain, rule) {
		return nil
	}
	if err := led.Record(ledger.Entry{Kind: ledger.Rule, Name: where, Args: rule}); err != nil {
		return err
	}
	op := []string{"-t", table, "-A", chain}
	if insert {
		op = []string{"-t", table, "-I", chain, "1"}
	}
	return Run(family, append(op, rule...)...)
}

func splitWhere(where string) (family, table, chain string, err error) {
	f := strings.SplitN(where, "/", 3)
	if len(f) != 3 {
		return "", "", "", fmt.Errorf("netfilter place %q is not family/table/chain", where)
	}
	return f[0], f[1], f[2], nil
}

// Run runs an iptables command of family, waiting for the xtables lock.
func Run(family string, args ...string) error {
	out, err := exec.Command(family, append([]string{"-w", "5"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", family, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// RuleExists reports whether the rule is in family/table/chain.
func RuleExists(family, table, chain string, rule []string) bool {
	return exec.Command(family, append([]string{"-w", "5", "-t", table, "-C", chain}, rule...)...).Run() == nil
}

// ChainExists reports whether family/table/chain exists.
func ChainExists(family, table, chain string) bool {
	return exec.Command(family, "-w", "5", "-t", table, "-n", "-L", chain).Run() == nil
}

// DeleteRule removes every copy of the rule from family/table/chain.
func DeleteRule(where string, rule []string) error {
	family, table, chain, err := splitWhere(where)
	if err != nil {
		return err
	}
	for RuleExists(family, table, chain, rule) {
		if err := Run(family, append([]string{"-t", table, "-D", chain}, rule...)...); err != nil {
			return err
		}
	}
	return nil
}

// DeleteChain removes family/table/chain with the rules that jump to it.
func DeleteChain(where string) error {
	family, table, chain, err := splitWhere(where)
	if err != nil {
		return err
	}
	if !ChainExists(family, table, chain) {
		return nil
	}
	if err := DropJumpsTo(family, table, []string{chain}); err != nil {
		return err
	}
	if err := Run(family, "-t", table, "-F", chain); err != nil {
		return err
	}
	return Run(family, "-t", table, "-X", chain)
}

// Table is one table's chains, their policies and rules, from
// iptables-save.
type Table struct {
	Chains   []string
	Policies map[string]string // built-in chain → ACCEPT or DROP
	Rules    [][]string        // each as iptables-save writes it: "-A", chain, matches...
}

// Dump reads a table; ok is false when the family or table is not there
// (no IPv6 on this host, say).
func Dump(family, table string) (Table, bool) {
	out, err := exec.Command(family+"-save", "-t", table).Output()
	if err != nil {
		return Table{}, false
	}
	d := Table{Policies: map[string]string{}}
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			if f := strings.Fields(line[1:]); len(f) > 1 {
				d.Chains = append(d.Chains, f[0])
				if f[1] != "-" {
					d.Policies[f[0]] = f[1]
				}
			}
		case strings.HasPrefix(line, "-A "):
			d.Rules = append(d.Rules, SplitRule(line))
		}
	}
	return d, true
}

// ExistingName is the ledger's name for the chains of one table.
func ExistingName(family, table string) string { return family + "/" + table + " chains" }

// ExistingSets is the ledger's name for the ipsets.
const ExistingSets = "ipsets"

// RecordExisting writes down, once, the chains of every table and the
// ipsets the host holds before a program that makes its own runs.
func RecordExisting(led *ledger.Ledger) error {
	for _, f := range Families {
		for _, t := range Tables {
			d, ok := Dump(f, t)
			if !ok {
				continue
			}
			if _, done := led.Find(ledger.Existing, ExistingName(f, t)); done {
				continue
			}
			if err := led.Record(ledger.Entry{Kind: ledger.Existing, Name: ExistingName(f, t), Args: d.Chains}); err != nil {
				return err
			}
		}
	}
	if _, done := led.Find(ledger.Existing, ExistingSets); !done {
		if err := led.Record(ledger.Entry{Kind: ledger.Existing, Name: ExistingSets, Args: IPSets()}); err != nil {
			return err
		}
	}
	return nil
}

// IPSets lists the host's ipsets.
func IPSets() []string {
	out, err := exec.Command("ipset", "list", "-n").Output()
	if err != nil {
		return nil
	}
	return strings.Fields(string(out))
}

// Created are the chains of one table with one of prefixes that were
// absent when RecordExisting ran. With no such record nothing can be told
// apart: none.
func Created(led *ledger.Ledger, family, table string, d Table, prefixes []string) []string {
	before, ok := led.Find(ledger.Existing, ExistingName(family, table))
	if !ok {
		return nil
	}
	var out []string
	for _, ch := range d.Chains {
		if HasPrefix(ch, prefixes) && !slices.Contains(before.Args, ch) {
			out = append(out, ch)
		}
	}
	return out
}

// RemoveCreated removes the chains and ipsets with the given prefixes
// that were absent when RecordExisting ran, with every rule that jumps to
// those chains.
func RemoveCreated(led *ledger.Ledger, chainPrefixes, setPrefixes []string) error {
	var errs []error
	for _, f := range Families {
		for _, t := range Tables {
			d, ok := Dump(f, t)
			if !ok {
				continue
			}
			ours := Created(led, f, t, d, chainPrefixes)
			if len(ours) == 0 {
				continue
			}
			if err := DropJumpsTo(f, t, ours); err != nil {
				errs = append(errs, err)
			}
			for _, ch := range ours {
				_ = Run(f, "-t", t, "-F", ch)
			}
			for _, ch := range ours {
				if err := Run(f, "-t", t, "-X", ch); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if before, ok := led.Find(ledger.Existing, ExistingSets); ok && len(setPrefixes) > 0 {
		for _, s := range IPSets() {
			if HasPrefix(s, setPrefixes) && !slices.Contains(before.Args, s) {
				if out, err := exec.Command("ipset", "destroy", s).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("ipset destroy %s: %s", s, strings.TrimSpace(string(out))))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// DropJumpsTo deletes, from the chains not in targets, every rule that
// jumps or goes to one of targets.
func DropJumpsTo(family, table string, targets []string) error {
	d, ok := Dump(family, table)
	if !ok {
		return nil
	}
	var errs []error
	for _, r := range d.Rules {
		if len(r) < 2 || slices.Contains(targets, r[1]) {
			continue
		}
		for i := range r {
			if (r[i] == "-j" || r[i] == "-g") && i+1 < len(r) && slices.Contains(targets, r[i+1]) {
				if err := Run(family, append([]string{"-t", table, "-D"}, r[1:]...)...); err != nil {
					errs = append(errs, err)
				}
				break
			}
		}
	}
	return errors.Join(errs...)
}

// SplitRule splits an iptables-save line into arguments, keeping quoted
// comments ("kube-router netpol - X") whole.
func SplitRule(line string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			inQuote, have = !inQuote, true
		case ch == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}
