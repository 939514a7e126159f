package node

import (
	"strconv"

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
