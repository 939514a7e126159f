package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FetchProfile writes the CPU profile of the dingd serving pprof at addr
// (its --pprof address) over the next seconds to file.
func FetchProfile(addr, file string, seconds int) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, seconds))
	if err != nil {
		return fmt.Errorf("dingd profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("dingd profile: %s", resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Profiling asks for dingd's CPU profile over a scenario's main moment.
type Profiling struct {
	// Pprof, if set, makes dingd serve net/http/pprof on this address;
	// with Profile set, a CPU profile of dingd over the scenario's main
	// moment is written to the file Profile (Profile + ".against" for the
	// --against dingd).
	Pprof, Profile string
}

// dingdArgs are the dingd flags it needs.
func (p Profiling) dingdArgs() []string {
	if p.Pprof == "" {
		return nil
	}
	return []string{"--pprof", p.Pprof}
}

// node is p for the i-th of several dingd nodes (named id) in one run:
// its pprof port is p's plus i, its profile file p's plus "." + id.
func (p Profiling) node(i int, id string) (Profiling, error) {
	if p.Pprof == "" {
		return p, nil
	}
	host, port, err := net.SplitHostPort(p.Pprof)
	if err != nil {
		return p, fmt.Errorf("--server-pprof %q: %w", p.Pprof, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return p, fmt.Errorf("--server-pprof %q: the port is not a number", p.Pprof)
	}
	p.Pprof = net.JoinHostPort(host, strconv.Itoa(n+i))
	if p.Profile != "" {
		p.Profile += "." + id
	}
	return p, nil
}

// forAgainst is p for the --against dingd.
func (p Profiling) forAgainst() Profiling {
	if p.Profile != "" {
		p.Profile += ".against"
	}
	return p
}

// begin starts fetching the profile over the next seconds, if one was
// asked for, and returns a function that waits for it and returns the
// file written ("" when none was asked for).
func (p Profiling) begin(seconds int) (wait func() (string, error)) {
	if p.Pprof == "" || p.Profile == "" {
		return func() (string, error) { return "", nil }
	}
	done := make(chan error, 1)
	go func() { done <- FetchProfile(p.Pprof, p.Profile, seconds) }()
	time.Sleep(100 * time.Millisecond) // the profile starts before what it is for
	return func() (string, error) {
		if err := <-done; err != nil {
			return "", err
		}
		return p.Profile, nil
	}
}

// schedWait returns the sum over a process's threads of the time they
// were runnable but waiting for a CPU (/proc/PID/task/*/schedstat, second
// field), and how many threads it read. Threads that ended are missed.
func schedWait(pid int) (int, time.Duration) {
	paths, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total time.Duration
	n := 0
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			total += time.Duration(v)
			n++
		}
	}
	return n, total
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// cpuSeconds returns a process's user+system CPU time.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command (which may hold spaces) start after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
