package memstore_test

import (
	"testing"

	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(testing.TB) store.Store { return memstore.New() })
}
