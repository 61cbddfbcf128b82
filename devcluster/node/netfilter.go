package node

import (
	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/netfilter"
)

// The node's netfilter state. kube-proxy, kube-router and the portmap
// plugin make chains (KUBE-*, CNI-*) and kube-router ipsets of their own;
// the launcher adds two chains (DEVCLUSTER-*) with a jump each. Down
// removes the programs' chains and sets whose names were absent at the
// first up, every rule elsewhere that jumps to one of them, and the
// launcher's recorded chains and rules: never a chain or set by its name
// alone, so Docker's, or a real kube-proxy's, stay.

// programChainPrefixes and programSetPrefixes are the names the node's
// programs give what they create.
var (
	programChainPrefixes = []string{"KUBE-", "CNI-"}
	programSetPrefixes   = []string{"KUBE-", "kube-router-"}
)

// The launcher's chains.
const (
	// LocalnetChain (raw PREROUTING) drops packets to 127.0.0.0/8 that
	// arrive on any interface but lo, before route_localnet could let
	// them reach a service bound to loopback.
	LocalnetChain = ChainPrefix + "LOCALNET"
	// ForwardChain (filter FORWARD, appended) accepts the pods' traffic,
	// so the node works whatever FORWARD's policy (Docker sets DROP when
	// it finds ip_forward off at its start); policies are enforced before
	// it, in kube-router's chains, which it inserts first.
	ForwardChain = ChainPrefix + "FORWARD"
)

// takeNetfilter adds the launcher's chains and their jumps, recorded.
func takeNetfilter(led *ledger.Ledger) error {
	steps := []struct {
		table, chain string
		insert       bool // jump inserted first in the built-in chain, else appended
		from         string
		rules        [][]string
	}{
		{"raw", LocalnetChain, true, "PREROUTING", [][]string{
			{"!", "-i", "lo", "-d", "127.0.0.0/8", "-m", "comment", "--comment", "devcluster: no packets to loopback from other interfaces (route_localnet)", "-j", "DROP"},
		}},
		{"filter", ForwardChain, false, "FORWARD", [][]string{
			{"-i", Bridge, "-m", "comment", "--comment", "devcluster: the pods' traffic", "-j", "ACCEPT"},
			{"-o", Bridge, "-m", "comment", "--comment", "devcluster: the pods' traffic", "-j", "ACCEPT"},
		}},
	}
	for _, s := range steps {
		where := "iptables/" + s.table + "/" + s.chain
		if err := netfilter.TakeChain(led, where); err != nil {
			return err
		}
		for _, r := range s.rules {
			if err := netfilter.TakeRule(led, where, false, r); err != nil {
				return err
			}
		}
		if err := netfilter.TakeRule(led, "iptables/"+s.table+"/"+s.from, s.insert, []string{"-j", s.chain}); err != nil {
			return err
		}
	}
	return nil
}

// removeProgramsNetfilter removes the chains and ipsets the node's
// programs made, with every rule that jumps to those chains.
func removeProgramsNetfilter(led *ledger.Ledger) error {
	return netfilter.RemoveCreated(led, programChainPrefixes, programSetPrefixes)
}
