package session

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/socket/pb"
)

type metrics struct {
	connections prometheus.Gauge
	handshakes  *prometheus.CounterVec
	framesIn    *prometheus.CounterVec
	// framesByType resolves framesIn per type byte once (it is counted for
	// every frame); bytes that are not client frame types share "other",
	// which also keeps the label set bounded.
	framesByType  [256]prometheus.Counter
	errors        *prometheus.CounterVec
	slowConsumers prometheus.Counter
	flushFrames   prometheus.Histogram
	bytesOut      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ding_socket_connections", Help: "Open client connections, authenticated or not.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_socket_handshakes_total", Help: "HELLO frames handled, by result.",
		}, []string{"result"}),
		framesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_socket_frames_received_total", Help: "Frames received from clients, by frame type (other: not a client frame type).",
		}, []string{"type"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_socket_errors_sent_total", Help: "ERROR frames sent to clients, by code.",
		}, []string{"code"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ding_socket_slow_consumer_disconnects_total",
			Help: "Connections closed because their outbound queue overflowed.",
		}),
		flushFrames: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_socket_flush_frames",
			Help:    "Frames written by one flush (one write syscall): write coalescing.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ding_socket_written_bytes_total", Help: "Bytes written to client connections.",
		}),
	}
	other := m.framesIn.WithLabelValues("other")
	for i := range m.framesByType {
		m.framesByType[i] = other
	}
	for _, ft := range []pb.FrameType{pb.FrameType_HELLO, pb.FrameType_SUBMIT, pb.FrameType_ACK, pb.FrameType_READ,
		pb.FrameType_PING, pb.FrameType_PONG, pb.FrameType_RECEIPTS_QUERY, pb.FrameType_CONFIRM,
		pb.FrameType_SECRET_CREATE, pb.FrameType_SCREENSHOT, pb.FrameType_PUSH_REGISTER, pb.FrameType_PUSH_OPENED} {
		m.framesByType[ft] = m.framesIn.WithLabelValues(ft.String())
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.connections, m.handshakes, m.framesIn, m.errors, m.slowConsumers, m.flushFrames, m.bytesOut} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
