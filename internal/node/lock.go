package node

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the file in the data directory that a running node keeps
// locked (flock) and that names its process id: a second server on the
// same directory is refused and told which process holds it. The lock,
// not the file, says whether a server runs: the file stays after a stop.
const LockFile = "dingd.lock"

// DataDirInUseError is returned by Start and RunMember when another
// process holds the data directory. Not retryable until that process
// stops.
type DataDirInUseError struct {
	Dir string
	// PID is the holder's process id, as its lock file names it; 0 if
	// unknown (the holder has not written it yet, or only Pebble's lock
	// was found).
	PID int
}

func (e *DataDirInUseError) Error() string {
	return "node: data dir " + e.Dir + " is in use by " + e.Holder()
}

// Holder names the process that holds the directory, for messages.
func (e *DataDirInUseError) Holder() string {
	if e.PID > 0 {
		return fmt.Sprintf("another dingd (pid %d)", e.PID)
	}
	return "another dingd"
}

// lockDataDir takes dir's lock and writes this process's id into it. The
// lock is held until the returned file is closed (or the process ends).
// It fails with a *DataDirInUseError if another holds it.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("node: lock the data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &DataDirInUseError{Dir: dir, PID: readPID(path)}
		}
		return nil, fmt.Errorf("node: lock %s: %w", path, err)
	}
	// Written over the old id, then cut to length: a reader sees one id
	// on the first line, never an empty file left by a truncation.
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if _, err := f.WriteAt(pid, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("node: write %s: %w", path, err)
	}
	if err := f.Truncate(int64(len(pid))); err != nil {
		f.Close()
		return nil, fmt.Errorf("node: write %s: %w", path, err)
	}
	return f, nil
}

// readPID is the process id on the first line of a lock file; 0 if none.
func readPID(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
