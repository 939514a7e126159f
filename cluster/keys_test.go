package cluster

import (
	"bytes"
	"maps"
	"testing"
)

// memKeyStore is a KeyStore in a map.
type memKeyStore struct {
	m      map[[16]byte][32]byte
	synced int
}

func (s *memKeyStore) Put(id [16]byte, key [32]byte) error { s.m[id] = key; return nil }
func (s *memKeyStore) Sync() error                         { s.synced++; return nil }
func (s *memKeyStore) Get(id [16]byte) ([32]byte, bool)    { k, ok := s.m[id]; return k, ok }
func (s *memKeyStore) Erase(ids [][16]byte) error {
	for _, id := range ids {
		delete(s.m, id)
	}
	return nil
}
func (s *memKeyStore) Each(fn func([16]byte) bool) {
	for id := range s.m {
		if !fn(id) {
			return
		}
	}
}
func (s *memKeyStore) Len() int { return len(s.m) }

// The owner's keyring operations, taken per batch, sealed, and applied on
// the standby, leave the standby's keyring equal to the owner's; the
// sealed form holds no key in the clear; another cluster secret cannot
// open it, and a damaged one is refused.
func TestKeysRideWithBatches(t *testing.T) {
	codec, err := NewKeyCodec("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	owner, standby := &memKeyStore{m: map[[16]byte][32]byte{}}, &memKeyStore{m: map[[16]byte][32]byte{}}
	ks := NewKeyShipper(owner, codec)
	if ks.Take() != nil {
		t.Fatal("Take with nothing recorded returned operations")
	}
	id := func(i byte) [16]byte { return [16]byte{i} }
	key := func(i byte) [32]byte { return [32]byte{0xAA, i, 0xBB} }
	var batches [][]byte
	for i := byte(1); i <= 3; i++ {
		if err := ks.Put(id(i), key(i)); err != nil {
			t.Fatal(err)
		}
	}
	batches = append(batches, ks.Take())
	if err := ks.Erase([][16]byte{id(2)}); err != nil {
		t.Fatal(err)
	}
	if err := ks.Put(id(4), key(4)); err != nil {
		t.Fatal(err)
	}
	batches = append(batches, ks.Take())
	for _, b := range batches {
		k := key(1)
		if bytes.Contains(b, k[:3]) {
			t.Fatal("a key is readable in the sealed operations")
		}
		if err := codec.Apply(b, standby); err != nil {
			t.Fatal(err)
		}
	}
	if !maps.Equal(owner.m, standby.m) || len(standby.m) != 3 {
		t.Fatalf("the standby's keys %v differ from the owner's %v", standby.m, owner.m)
	}
	other, _ := NewKeyCodec("another secret")
	if err := other.Apply(batches[0], standby); err == nil {
		t.Fatal("another cluster secret opened the keys")
	}
	bad := bytes.Clone(batches[0])
	bad[len(bad)-1] ^= 1
	if err := codec.Apply(bad, standby); err == nil {
		t.Fatal("damaged sealed keys were applied")
	}
	if _, err := NewKeyCodec(""); err == nil {
		t.Fatal("a codec without a cluster secret")
	}
}
