package cluster

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
)

// PartitionRoutes serves the cluster routes (SnapshotHandler's: snapshot,
// standby, changes) of every partition a node owns, on one HTTP
// listener: a request's ?p= (0 when absent, as Endpoint sends for
// partition 0) picks the handler Set for that partition. A partition the
// node does not own now answers 421 Misdirected Request, so that the
// asking node looks the owner up again. Safe for concurrent use.
type PartitionRoutes struct {
	mu sync.RWMutex
	h  map[Partition]http.Handler // guarded by mu
}

// Set serves p's routes with h (a node took p's lease).
func (pr *PartitionRoutes) Set(p Partition, h http.Handler) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.h == nil {
		pr.h = map[Partition]http.Handler{}
	}
	pr.h[p] = h
}

// Delete stops serving p's routes (the node lost p's lease).
func (pr *PartitionRoutes) Delete(p Partition) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	delete(pr.h, p)
}

func (pr *PartitionRoutes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var p Partition
	if v := r.URL.Query().Get("p"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			http.Error(w, "cluster: p must name a partition", http.StatusBadRequest)
			return
		}
		p = Partition(n)
	}
	pr.mu.RLock()
	h := pr.h[p]
	pr.mu.RUnlock()
	if h == nil {
		http.Error(w, fmt.Sprintf("cluster: this node does not own partition %d now", p), http.StatusMisdirectedRequest)
		return
	}
	h.ServeHTTP(w, r)
}
