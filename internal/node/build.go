package node

import (
	"strconv"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/internal/buildinfo"
	"github.com/prometheus/client_golang/prometheus"
)

// thisBuild is this binary's build, read once.
var thisBuild = buildinfo.Read()

// buildInfoGauge is ding_build_info: always 1, its labels naming the
// build, so that a dashboard or an alert sees which build every node
// runs (a rolling upgrade half done: DingMixedBuilds) and which
// replication protocol it speaks.
func buildInfoGauge() prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ding_build_info",
		Help: "Always 1; the labels name this dingd's build: its module version, VCS revision (12 characters, +modified for a checkout with uncommitted changes), Go version, and the cluster replication protocol it speaks.",
		ConstLabels: prometheus.Labels{
			"version":   thisBuild.Version,
			"revision":  thisBuild.Build(),
			"goversion": thisBuild.GoVersion,
			"protocol":  strconv.Itoa(cluster.Protocol),
		},
	})
	g.Set(1)
	return g
}

// memberStatus is what a member says of itself in the registry: its
// addresses, its node's partitions (0 for one), its role, and this
// build and the protocol it speaks.
func memberStatus(http, socket string, partitions int, role string) cluster.Member {
	return cluster.Member{HTTP: http, Socket: socket, At: time.Now().UTC(), Partitions: partitions, Role: role,
		Protocol: cluster.Protocol, Build: thisBuild.Build()}
}
