// Package keyring keeps secret messages' keys in one file of fixed-size
// slots, outside the LSM store, so that erasing a key really removes its
// bytes from the data directory: the slot is overwritten with zeros in
// place and the overwrite is synced before Erase returns.
//
// Why not the store: in Pebble (any LSM) a delete is a tombstone; the
// value's bytes stay in the write-ahead log and in table files until they
// are recycled or compacted away, which can take arbitrarily long. A burned
// message's ciphertext may linger there too, but without its key it is
// noise (crypto-shredding). So the key is the one thing that must be
// erasable at once, and it never enters the store.
//
// File layout:
//
//	 0                16
//	+-----------------+----------+----------+-----
//	| header (16)     | slot 0   | slot 1   | ...
//	+-----------------+----------+----------+-----
//
//	header: "DINGKEYS" | version (BE32) = 1 | slot size (BE32) = 64
//	slot:   | used 1 | id 16 | key 32 | crc32c of the first 49 bytes (BE32) | zero 11 |
//
// A free slot is all zeros. A slot whose checksum does not match (a torn
// write at a crash) is treated as free and zeroed at Open: its message
// then has no key and is burned at start-up (package engine).
//
// What this relies on: that overwriting a file's bytes in place replaces
// them in the file as the file system presents it (true of ext4 and xfs in
// their default modes; not of copy-on-write file systems such as btrfs or
// ZFS, nor of the physical blocks of an SSD, which remaps writes). A byte
// search of the data directory through the file system then cannot find
// an erased key. Against forensics on the raw device, run the data
// directory on an encrypted volume.
//
// Concurrency: Put and Sync are called by one writer (the engine's commit
// loop), Erase by one goroutine at a time (the engine's publish loop, or
// the commit loop for a discarded batch), Get and Len from any goroutine.
// A mutex guards the index; a slot being erased is reused only once its
// zeros are synced, so an Erase never races a Put into the same slot.
//
//	r, err := keyring.Open(filepath.Join(dir, "secret.keys"))
//	err = r.Put(id, key) // durable after Sync
//	err = r.Sync()
//	key, ok := r.Get(id)
//	err = r.Erase([][16]byte{id}) // zeroed and synced
package keyring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"sync"
)

const (
	headerLen = 16
	slotLen   = 64
	dataLen   = 1 + 16 + 32 // what the checksum covers
	magic     = "DINGKEYS"
	version   = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is returned by Open when the file is not a keyring.
var ErrCorrupt = errors.New("keyring: not a keyring file")

// Ring is a keyring file.
type Ring struct {
	f *os.File

	mu    sync.RWMutex
	slots map[[16]byte]int64 // id -> slot number; guarded by mu
	free  []int64            // free slot numbers, highest first; guarded by mu
	n     int64              // slots in the file; guarded by mu
	dirty bool               // a Put since the last Sync; guarded by mu
}

// Open opens or creates the keyring file at path. Torn slots are zeroed.
func Open(path string) (*Ring, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keyring: open: %w", err)
	}
	r := &Ring{f: f, slots: map[[16]byte]int64{}}
	if err := r.load(); err != nil {
		f.Close()
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	return r, nil
}

func (r *Ring) load() error {
	st, err := r.f.Stat()
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		h := make([]byte, headerLen)
		copy(h, magic)
		binary.BigEndian.PutUint32(h[8:], version)
		binary.BigEndian.PutUint32(h[12:], slotLen)
		if _, err := r.f.WriteAt(h, 0); err != nil {
			return err
		}
		return r.f.Sync()
	}
	h := make([]byte, headerLen)
	if _, err := r.f.ReadAt(h, 0); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if string(h[:8]) != magic || binary.BigEndian.Uint32(h[8:]) != version || binary.BigEndian.Uint32(h[12:]) != slotLen {
		return ErrCorrupt
	}
	r.n = (st.Size() - headerLen) / slotLen
	buf := make([]byte, 64<<10)
	zero := make([]byte, slotLen)
	var torn []int64
	for i := int64(0); i < r.n; {
		chunk := min(int64(len(buf)/slotLen), r.n-i)
		b := buf[:chunk*slotLen]
		if _, err := r.f.ReadAt(b, headerLen+i*slotLen); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for j := int64(0); j < chunk; j++ {
			s := b[j*slotLen : (j+1)*slotLen]
			switch {
			case bytes.Equal(s, zero):
				r.free = append(r.free, i+j)
			case s[0] == 1 && crc32.Checksum(s[:dataLen], castagnoli) == binary.BigEndian.Uint32(s[dataLen:]):
				r.slots[[16]byte(s[1:17])] = i + j
			default:
				torn = append(torn, i+j)
				r.free = append(r.free, i+j)
			}
		}
		i += chunk
	}
	for _, n := range torn {
		if _, err := r.f.WriteAt(zero, headerLen+n*slotLen); err != nil {
			return err
		}
	}
	if len(torn) > 0 {
		if err := r.f.Sync(); err != nil {
			return err
		}
	}
	slices.Reverse(r.free) // lowest first out (taken from the end)
	return nil
}

// Put writes id's key into a free slot. It is durable once Sync returns.
// Putting an id that has a key overwrites it.
func (r *Ring) Put(id [16]byte, key [32]byte) error {
	var s [slotLen]byte
	s[0] = 1
	copy(s[1:], id[:])
	copy(s[17:], key[:])
	binary.BigEndian.PutUint32(s[dataLen:], crc32.Checksum(s[:dataLen], castagnoli))
	r.mu.Lock()
	n, ok := r.slots[id]
	if !ok {
		if len(r.free) > 0 {
			n = r.free[len(r.free)-1]
			r.free = r.free[:len(r.free)-1]
		} else {
			n = r.n
			r.n++
		}
	}
	r.slots[id] = n
	r.dirty = true
	r.mu.Unlock()
	clear(key[:])
	if _, err := r.f.WriteAt(s[:], headerLen+n*slotLen); err != nil {
		return fmt.Errorf("keyring: put: %w", err)
	}
	clear(s[:])
	return nil
}

// Sync makes every Put durable (one fsync).
func (r *Ring) Sync() error {
	r.mu.Lock()
	dirty := r.dirty
	r.dirty = false
	r.mu.Unlock()
	if !dirty {
		return nil
	}
	if err := r.f.Sync(); err != nil {
		return fmt.Errorf("keyring: sync: %w", err)
	}
	return nil
}

// Get returns id's key, reading its slot.
func (r *Ring) Get(id [16]byte) (key [32]byte, ok bool) {
	r.mu.RLock()
	n, ok := r.slots[id]
	r.mu.RUnlock()
	if !ok {
		return key, false
	}
	var s [slotLen]byte
	if _, err := r.f.ReadAt(s[:], headerLen+n*slotLen); err != nil {
		return key, false
	}
	if s[0] != 1 || [16]byte(s[1:17]) != id || crc32.Checksum(s[:dataLen], castagnoli) != binary.BigEndian.Uint32(s[dataLen:]) {
		return key, false // erased meanwhile
	}
	copy(key[:], s[17:49])
	clear(s[:])
	return key, true
}

// Erase overwrites the slots of ids with zeros and syncs the file before
// returning. Ids without a key are ignored.
func (r *Ring) Erase(ids [][16]byte) error {
	var zero [slotLen]byte
	var n []int64
	r.mu.Lock()
	for _, id := range ids {
		if s, ok := r.slots[id]; ok {
			delete(r.slots, id)
			n = append(n, s)
		}
	}
	r.mu.Unlock()
	if len(n) == 0 {
		return nil
	}
	for _, s := range n {
		if _, err := r.f.WriteAt(zero[:], headerLen+s*slotLen); err != nil {
			return fmt.Errorf("keyring: erase: %w", err)
		}
	}
	if err := r.f.Sync(); err != nil {
		return fmt.Errorf("keyring: erase: sync: %w", err)
	}
	r.mu.Lock()
	r.free = append(r.free, n...) // reusable only once zeroed on disk
	r.mu.Unlock()
	return nil
}

// Each calls fn with every id that has a key, in no order, until fn
// returns false.
func (r *Ring) Each(fn func(id [16]byte) bool) {
	r.mu.RLock()
	ids := make([][16]byte, 0, len(r.slots))
	for id := range r.slots {
		ids = append(ids, id)
	}
	r.mu.RUnlock()
	for _, id := range ids {
		if !fn(id) {
			return
		}
	}
}

// Len returns how many keys the ring holds.
func (r *Ring) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.slots)
}

// Close closes the file.
func (r *Ring) Close() error { return r.f.Close() }
