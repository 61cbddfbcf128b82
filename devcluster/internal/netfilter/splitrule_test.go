package netfilter

import (
	"reflect"
	"testing"
)

func TestSplitRuleKeepsQuotedComments(t *testing.T) {
	got := SplitRule(`-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT`)
	want := []string{"-A", "INPUT", "-m", "comment", "--comment", "kube-router netpol - 4IA2OSFRMVNDXBVV", "-j", "KUBE-ROUTER-INPUT"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("splitRule = %q, want %q", got, want)
	}
	if got := SplitRule(`-A X --comment "a \"b\" c" -j KUBE-Y`); got[3] != `a "b" c` {
		t.Fatalf("escaped quotes: %q", got)
	}
}
