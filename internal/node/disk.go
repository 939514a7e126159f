package node

import (
	"fmt"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// diskCollector reports the free and total size of the filesystem that
// holds the data directory, for the "disk nearly full" alert: Pebble
// cannot commit (and so nothing is acknowledged) once it is full. One
// statfs per scrape gives both gauges, so their ratio is consistent.
type diskCollector struct {
	dir        string
	free, size *prometheus.Desc
}

// registerDiskMetrics registers ding_store_disk_free_bytes and
// ding_store_disk_size_bytes for the filesystem holding dir. It fails if
// dir cannot be statfs'd now; a later failure (the directory removed
// under the server) drops the two series from that scrape rather than
// failing the whole scrape.
func registerDiskMetrics(reg prometheus.Registerer, dir string) error {
	c := &diskCollector{
		dir: dir,
		free: prometheus.NewDesc("ding_store_disk_free_bytes",
			"Bytes available to the server on the filesystem holding the data directory (statfs f_bavail × f_bsize).", nil, nil),
		size: prometheus.NewDesc("ding_store_disk_size_bytes",
			"Size in bytes of the filesystem holding the data directory (statfs f_blocks × f_bsize).", nil, nil),
	}
	if _, _, err := c.statfs(); err != nil {
		return fmt.Errorf("node: disk metrics: %w", err)
	}
	return reg.Register(c)
}

func (c *diskCollector) statfs() (free, size float64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(c.dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", c.dir, err)
	}
	bs := float64(st.Bsize)
	return float64(st.Bavail) * bs, float64(st.Blocks) * bs, nil
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.free; ch <- c.size }

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	free, size, err := c.statfs()
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, free)
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, size)
}
