package rules

import (
	"fmt"
	"slices"
	"strings"
)

// LagAccess says which namespaces may read which consumer groups' lag on
// which topics. Anyone who may create an HPA in a namespace can make the
// adapter ask Kafka about any group it names: the lag of another team's
// group is not theirs to read, and each group asked about costs the
// adapter a Kafka client.
type LagAccess struct {
	Grants []LagGrant
}

// LagGrant lets HPAs of Namespace read the lag of ConsumerGroups on Topics
// ("*" in a list: any).
type LagGrant struct {
	Namespace      string   `yaml:"namespace"`
	ConsumerGroups []string `yaml:"consumerGroups"`
	Topics         []string `yaml:"topics"`
	// PartitionLimitation, when set, are the only partitions whose lag
	// counts for these groups and topics ("0,2,10-20", KEDA's
	// partitionLimitation: commas and ranges are not label values, so it
	// lives here rather than in the metric selector).
	PartitionLimitation string `yaml:"partitionLimitation"`
}

// DefaultLagAccess, when the file has no kafkaLag section: the purchase
// system's consumer group, to its own namespace.
var DefaultLagAccess = LagAccess{Grants: []LagGrant{{
	Namespace: "purchase-system", ConsumerGroups: []string{"purchase-consumer-group"}, Topics: []string{"purchases"},
}}}

func allows(list []string, v string) bool {
	return slices.Contains(list, "*") || slices.Contains(list, v)
}

// Allow reports whether namespace may read the lag of groups on topics
// (topics empty: every topic the groups committed on, which needs a grant
// of any topic), with an error saying what to change otherwise.
func (a LagAccess) Allow(namespace string, groups, topics []string) error {
	var grants []LagGrant
	for _, g := range a.Grants {
		if g.Namespace == namespace || g.Namespace == "*" {
			grants = append(grants, g)
		}
	}
	if len(grants) == 0 {
		return fmt.Errorf("namespace %q may not read Kafka lag (the adapter's config, kafkaLag.access, grants it to no consumer group)", namespace)
	}
	for _, group := range groups {
		ok := false
		for _, g := range grants {
			if !allows(g.ConsumerGroups, group) {
				continue
			}
			if len(topics) == 0 {
				ok = ok || slices.Contains(g.Topics, "*") || len(g.Topics) == 0
				continue
			}
			all := true
			for _, t := range topics {
				all = all && (len(g.Topics) == 0 || allows(g.Topics, t))
			}
			ok = ok || all
		}
		if !ok {
			what := "consumer group " + group
			if len(topics) > 0 {
				what += " on topics " + strings.Join(topics, ", ")
			} else {
				what += " without naming its topic (topic=...)"
			}
			return fmt.Errorf("namespace %q may not read the lag of %s (the adapter's config, kafkaLag.access, decides)", namespace, what)
		}
	}
	return nil
}

// PartitionLimitation is the partitionLimitation of the first grant of
// namespace that covers every group asked about ("": every partition).
func (a LagAccess) PartitionLimitation(namespace string, groups, topics []string) string {
	for _, g := range a.Grants {
		if g.Namespace != namespace && g.Namespace != "*" {
			continue
		}
		if (LagAccess{Grants: []LagGrant{g}}).Allow(namespace, groups, topics) == nil {
			return g.PartitionLimitation
		}
	}
	return ""
}
