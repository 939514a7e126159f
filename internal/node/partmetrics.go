package node

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// membersCollector exposes what each member of a node with a member per
// partition does, one series per partition (label partition: its
// number, or dir for the directory's): the metrics a cluster of one
// partition serves from its stand-in (standin.go), plus the owner's
// role, so that a partition no node owns shows as a zero sum across the
// cluster (alert DingClusterPartitionUnowned). What an owner's
// replication does (ding_cluster_epoch, ding_cluster_has_standby, ...)
// comes from the partition's runtime, labelled the same way.
type membersCollector struct {
	ms  []*member
	dir int // the directory's member: ms[dir]
	// sentOn counts the admin API requests sent on to another node
	// (ownerProxy).
	sentOn prometheus.Counter
	// coord, if not nil, is the coordinator's own (Redis's commands and
	// connections), the node's as a whole.
	coord prometheus.Collector
}

var (
	membersStateDesc = prometheus.NewDesc("ding_cluster_member_state",
		"1 for what this node's member of the partition does now: owner, standby, joining, spare or drained.",
		[]string{"partition", "state"}, nil)
	membersSeqDesc = prometheus.NewDesc("ding_cluster_standby_seq",
		"The last batch of the partition's history this member holds while it follows the owner (0 while it holds none).",
		[]string{"partition"}, nil)
	membersFenceDesc = prometheus.NewDesc("ding_cluster_standby_fence_epoch",
		"The newest owner epoch this member has seen while it follows the owner; it refuses entries of older ones.",
		[]string{"partition"}, nil)
	membersJoinsDesc = prometheus.NewDesc("ding_cluster_standby_joins_total",
		"Times this node's member of the partition started following an owner: from a snapshot copied from it (from=snapshot) or from its own history, the one the owner took over with (from=own_history: after a hand-over, no copy).",
		[]string{"partition", "from"}, nil)
)

// Describe implements prometheus.Collector.
func (c membersCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- membersStateDesc
	ch <- membersSeqDesc
	ch <- membersFenceDesc
	ch <- membersJoinsDesc
	c.sentOn.Describe(ch)
	if c.coord != nil {
		c.coord.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c membersCollector) Collect(ch chan<- prometheus.Metric) {
	c.sentOn.Collect(ch)
	if c.coord != nil {
		c.coord.Collect(ch)
	}
	for i, m := range c.ms {
		label := strconv.Itoa(i)
		if i == c.dir {
			label = "dir"
		}
		ch <- prometheus.MustNewConstMetric(membersJoinsDesc, prometheus.CounterValue, float64(m.joinedSnapshot.Load()), label, "snapshot")
		ch <- prometheus.MustNewConstMetric(membersJoinsDesc, prometheus.CounterValue, float64(m.joinedOwn.Load()), label, "own_history")
		me := m.self() // its role, and as a follower its history's seq and fence
		role := me.Role
		ch <- prometheus.MustNewConstMetric(membersStateDesc, prometheus.GaugeValue, flag(role == "owner"), label, "owner")
		for _, s := range memberStates {
			ch <- prometheus.MustNewConstMetric(membersStateDesc, prometheus.GaugeValue, flag(role == string(s)), label, string(s))
		}
		if role == "owner" {
			continue // its runtime's replication metrics say the rest
		}
		seq, fence := float64(me.Seq), float64(me.Epoch)
		ch <- prometheus.MustNewConstMetric(membersSeqDesc, prometheus.GaugeValue, seq, label)
		ch <- prometheus.MustNewConstMetric(membersFenceDesc, prometheus.GaugeValue, fence, label)
	}
}

func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
