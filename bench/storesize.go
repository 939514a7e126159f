package bench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// storeSize is the data directory's size at one point (dingd stopped).
type storeSize struct {
	raw      int64 // every file's apparent size right after the clean stop (WAL included), dingd.log excluded
	flushed  int64 // the same after opening and closing the store, which flushes the WAL into sstables
	sst      int64 // the sstables after that flush (and any compaction it set off)
	tables   int   // how many
	walFiles int64 // bytes in *.log files of the store right after the stop
	// What the announcement left, by key (only when measured with an id).
	entries, entryBytes   int64 // stream entries pointing at it: key+value bytes
	receipts, rcptBytes   int64 // its receipts
	msgBytes              int64 // its message record (the body, once)
	audience, audienceLen int64 // audience chunks and job records left (0 when the fanout is done)
}

type storeFigures struct{ before, after storeSize }

// measureStore measures a stopped dingd's data directory; with id, it also
// counts the announcement's keys. The key layout is engine/keys.go's: 'i'
// user 0x00 seq -> entry (kind 1, id(16), ...), 'r' id(16) user ->
// receipt, 'm' id(16) -> message, 'a' id(16) chunk and 'j' id(16) -> the
// fanout job.
func measureStore(data string, id *engine.ID) (storeSize, error) {
	var s storeSize
	var err error
	dir := filepath.Join(data, "store")
	if s.raw, _, err = dirSize(data); err != nil {
		return s, err
	}
	if s.walFiles, err = sizeOf(dir, ".log"); err != nil {
		return s, err
	}
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		return s, err
	}
	if id != nil {
		scanErr := db.Scan([]byte{'i'}, []byte{'i' + 1}, func(k, v []byte) bool {
			if len(v) >= 17 && v[0] == byte(engine.EntryMessage) && bytes.Equal(v[1:17], id[:]) {
				s.entries++
				s.entryBytes += int64(len(k) + len(v))
			}
			return true
		})
		rp := append([]byte{'r'}, id[:]...)
		scanErr = errors.Join(scanErr, db.Scan(rp, append(bytes.Clone(rp), 0xff), func(k, v []byte) bool {
			s.receipts++
			s.rcptBytes += int64(len(k) + len(v))
			return true
		}))
		mk := append([]byte{'m'}, id[:]...)
		if v, err := db.Get(mk); err == nil {
			s.msgBytes = int64(len(mk) + len(v))
		}
		for _, p := range []byte{'a', 'j'} {
			lo := append([]byte{p}, id[:]...)
			scanErr = errors.Join(scanErr, db.Scan(lo, append(bytes.Clone(lo), 0xff), func(k, v []byte) bool {
				s.audience++
				s.audienceLen += int64(len(k) + len(v))
				return true
			}))
		}
		if scanErr != nil {
			db.Close()
			return s, scanErr
		}
	}
	// Opening flushed the WAL into a new table; Pebble may then compact
	// (whether it does depends on the tree's shape and on timing), so wait
	// until the set of tables holds still for a second.
	settle(dir)
	if err := db.Close(); err != nil {
		return s, err
	}
	if s.flushed, _, err = dirSize(data); err != nil {
		return s, err
	}
	s.sst, err = sizeOf(dir, ".sst")
	if ents, _ := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".sst") {
				s.tables++
			}
		}
	}
	return s, err
}

// settle waits until the names of the .sst files in dir have not changed
// for a second (at most 30 s).
func settle(dir string) {
	list := func() string {
		ents, _ := os.ReadDir(dir)
		var b strings.Builder
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".sst") {
				b.WriteString(e.Name())
			}
		}
		return b.String()
	}
	last, since := list(), time.Now()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		if l := list(); l != last {
			last, since = l, time.Now()
		} else if time.Since(since) >= time.Second {
			return
		}
	}
}

// dirSize sums the apparent sizes of the files under dir, except the
// bench's dingd.log.
func dirSize(dir string) (int64, int, error) {
	var total int64
	n := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "dingd.log" {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += fi.Size()
		n++
		return nil
	})
	return total, n, err
}

func sizeOf(dir, suffix string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return 0, err
		}
		total += fi.Size()
	}
	return total, nil
}

// fanoutChunk is the engine's default Config.FanoutChunk (engine.go's
// setDefaults; keep them equal by hand): recipients written per commit
// batch. With --against, an older dingd may use another size; the
// announce table's per-chunk cadence assumes this one.
const fanoutChunk = 1024

// pebbleFanout is the store-only baseline for the whole fanout: what the
// fanout writes per recipient in engine/keys.go's layout (a stream entry
// 'i' user 0x00 seq -> kind, id, from, flag; a receipt 'r' id user ->
// state and two times), for users recipients in synced batches of
// fanoutChunk, into a fresh Pebble, with nothing else (no head lookups,
// no pushes). It returns recipients/s.
func pebbleFanout(tmp string, users int) (float64, error) {
	dir, err := os.MkdirTemp(tmp, "dingbench-baseline-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	id := make([]byte, 16)
	binary.BigEndian.PutUint64(id, uint64(time.Now().UnixNano()))
	entry := append(append([]byte{byte(engine.EntryMessage)}, id...), 5, 'a', 'd', 'm', 'i', 'n', 2)
	receipt := make([]byte, 17)
	receipt[0] = byte(engine.StateSent)
	start := time.Now()
	for lo := 0; lo < users; lo += fanoutChunk {
		b := db.NewBatch()
		for i := lo; i < min(lo+fanoutChunk, users); i++ {
			u := "u" + strconv.Itoa(i)
			b.Set(binary.BigEndian.AppendUint64(append([]byte("i"+u), 0), 1), entry)
			b.Set(append(append([]byte{'r'}, id...), u...), receipt)
		}
		if err := b.Commit(true); err != nil {
			b.Close()
			return 0, err
		}
		b.Close()
	}
	return rate(int64(users), time.Since(start)), nil
}
