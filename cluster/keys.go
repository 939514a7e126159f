package cluster

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"github.com/dingmq/ding/engine"
)

// Secret messages' keys live outside the store (engine/keyring: no backup
// of the store holds them), so the store's batches do not carry them. In
// cluster mode the owner's keyring is a KeyShipper: each key put (and
// each erased) rides with the next batch shipped, as the entry's Keys,
// sealed with the cluster secret because it passes through Redis; the
// standby's Follower opens them and puts them into its own keyring,
// durably, before it acks. A batch that stores a secret message is built
// after its key was put, so the entry that carries the message carries
// its key, and a standby that takes over can read every acknowledged
// secret message. (Level-3 keys are in memory only, by design: a
// takeover burns those messages, as a restart does.)

// KeyStore is a keyring of secret messages' keys (engine.Keys' methods;
// engine/keyring.Ring).
type KeyStore interface {
	Put(id [16]byte, key [32]byte) error
	Sync() error
	Get(id [16]byte) ([32]byte, bool)
	Erase(ids [][16]byte) error
	Each(fn func(id [16]byte) bool)
	Len() int
}

// KeyCodec seals and opens the keys an entry carries, with an AES-256-GCM
// key derived from the cluster secret.
type KeyCodec struct{ aead cipher.AEAD }

// NewKeyCodec derives the codec of a cluster secret.
func NewKeyCodec(secret string) (*KeyCodec, error) {
	if secret == "" {
		return nil, errors.New("cluster: keys: no cluster secret")
	}
	k := sha256.Sum256(append([]byte("ding cluster: secret-message keys\x00"), secret...))
	block, err := aes.NewCipher(k[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &KeyCodec{aead}, nil
}

// Key operations, as sealed: 'P' id(16) key(32) or 'E' id(16), back to back.
const (
	keyPut   = 'P'
	keyErase = 'E'
)

func (c *KeyCodec) seal(plain []byte) []byte {
	nonce := make([]byte, c.aead.NonceSize(), c.aead.NonceSize()+len(plain)+c.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("cluster: keys: nonce: %v", err)) // crypto/rand does not fail on Linux
	}
	return c.aead.Seal(nonce, nonce, plain, nil)
}

// SealKey seals one secret message's key for a relay frame that leaves
// the node (engine.KeySealer).
func (c *KeyCodec) SealKey(key []byte) []byte { return c.seal(key) }

// OpenKey opens what SealKey sealed (engine.KeySealer).
func (c *KeyCodec) OpenKey(sealed []byte) ([]byte, error) {
	n := c.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("cluster: keys: sealed key too short")
	}
	key, err := c.aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		return nil, errors.New("cluster: keys: cannot open a relayed key (a different cluster secret?)")
	}
	return key, nil
}

var _ engine.KeySealer = (*KeyCodec)(nil)

// Apply opens sealed key operations and applies them to ks (not synced).
func (c *KeyCodec) Apply(sealed []byte, ks KeyStore) error {
	n := c.aead.NonceSize()
	if len(sealed) < n {
		return errors.New("cluster: keys: sealed operations too short")
	}
	plain, err := c.aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		return errors.New("cluster: keys: cannot open the owner's keys (a different cluster secret?)")
	}
	defer clear(plain)
	var erase [][16]byte
	for len(plain) > 0 {
		var id [16]byte
		switch {
		case plain[0] == keyPut && len(plain) >= 1+16+32:
			var key [32]byte
			copy(id[:], plain[1:17])
			copy(key[:], plain[17:49])
			err := ks.Put(id, key)
			clear(key[:])
			if err != nil {
				return err
			}
			plain = plain[49:]
		case plain[0] == keyErase && len(plain) >= 1+16:
			copy(id[:], plain[1:17])
			erase = append(erase, id)
			plain = plain[17:]
		default:
			return errors.New("cluster: keys: malformed operations")
		}
	}
	if len(erase) > 0 {
		return ks.Erase(erase)
	}
	return nil
}

// KeyShipper is the owner's keyring in cluster mode: a KeyStore that
// records what is put and erased, for Take to hand to the next batch
// shipped (ReplicatedStore.Side).
type KeyShipper struct {
	KeyStore
	codec *KeyCodec

	mu      sync.Mutex
	pending []byte // guarded by mu
}

// NewKeyShipper records the operations on local.
func NewKeyShipper(local KeyStore, codec *KeyCodec) *KeyShipper {
	return &KeyShipper{KeyStore: local, codec: codec}
}

// Put implements KeyStore.
func (k *KeyShipper) Put(id [16]byte, key [32]byte) error {
	if err := k.KeyStore.Put(id, key); err != nil {
		return err
	}
	k.mu.Lock()
	k.pending = append(append(append(k.pending, keyPut), id[:]...), key[:]...)
	k.mu.Unlock()
	return nil
}

// Erase implements KeyStore.
func (k *KeyShipper) Erase(ids [][16]byte) error {
	err := k.KeyStore.Erase(ids)
	k.mu.Lock()
	for _, id := range ids {
		k.pending = append(append(k.pending, keyErase), id[:]...)
	}
	k.mu.Unlock()
	return err
}

// Take returns the operations recorded since the last Take, sealed (nil
// for none).
func (k *KeyShipper) Take() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.pending) == 0 {
		return nil
	}
	sealed := k.codec.seal(k.pending)
	clear(k.pending)
	k.pending = k.pending[:0]
	return sealed
}
