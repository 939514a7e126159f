package node

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dingmq/ding/engine/store/pebblestore"
)

// restoreTempPrefix names the directory a restore copies into, inside the
// data directory, before renaming it to DATA/store.
const restoreTempPrefix = ".restore-"

// restore makes a backup (a directory POST /v1/backup wrote) the store of
// the data directory dataDir, which must hold none yet: it verifies the
// backup (every key and value reads back), copies it into a temporary
// directory inside dataDir (0700, files 0600, each fsynced), and renames
// that to dataDir/store. The rename is the commit: a restore that fails,
// or a crash in the middle of one, leaves no store, so the same restore
// can simply be run again. The caller holds dataDir's lock (lockDataDir),
// so a temporary directory left by a crashed restore is removed here.
//
// The backup holds the store only: secret messages' keys are not in it
// (those messages burn at the first start, reason key_lost), and the data
// directory's signing secret and admin token are new unless copied from
// the old one (jwt.secret, admin.token), so clients need new tokens.
func restore(from, dataDir string) (_ pebblestore.BackupStats, err error) {
	st, err := pebblestore.Verify(from)
	if err != nil {
		return st, fmt.Errorf("node: restore: the backup does not verify: %w", err)
	}
	dst := filepath.Join(dataDir, "store")
	switch es, err := os.ReadDir(dst); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return st, fmt.Errorf("node: restore: %w", err)
	case len(es) > 0:
		return st, fmt.Errorf("node: restore: %s already holds a store; restore into an empty data dir", dst)
	}
	olds, _ := filepath.Glob(filepath.Join(dataDir, restoreTempPrefix+"*"))
	for _, o := range olds {
		if err := os.RemoveAll(o); err != nil {
			return st, fmt.Errorf("node: restore: remove a crashed restore's copy: %w", err)
		}
	}
	tmp, err := os.MkdirTemp(dataDir, restoreTempPrefix)
	if err != nil {
		return st, fmt.Errorf("node: restore: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	es, err := os.ReadDir(from)
	if err != nil {
		return st, fmt.Errorf("node: restore: %w", err)
	}
	for _, e := range es {
		if !e.Type().IsRegular() {
			continue
		}
		if err := copyFileSync(filepath.Join(from, e.Name()), filepath.Join(tmp, e.Name())); err != nil {
			return st, fmt.Errorf("node: restore: %w", err)
		}
	}
	if err := syncDir(tmp); err != nil {
		return st, fmt.Errorf("node: restore: %w", err)
	}
	// An empty store directory (checked above) gives way to the copy.
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("node: restore: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return st, fmt.Errorf("node: restore: %w", err)
	}
	if err := syncDir(dataDir); err != nil {
		os.RemoveAll(dst) // undone: its rename may not be durable
		return st, fmt.Errorf("node: restore: %w", err)
	}
	return st, nil
}

func copyFileSync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// syncDir makes the entries of dir durable (a rename into it, new files).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}
