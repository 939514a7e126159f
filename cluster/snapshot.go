package cluster

import (
	"archive/tar"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// How a new standby gets its copy of the owner's history over the
// network: the owner serves SnapshotHandler (on its admin listener), the
// new standby calls FetchSnapshot, opens its store from the directory,
// follows the stream from the returned state (NewFollower), and asks the
// owner to name it (AddStandby; over HTTP: POST with ?node=).
//
//	GET  /cluster/snapshot            a tar: store/ (a checkpoint of the owner's store)
//	                                  and files/ (the files the node shares, e.g. its
//	                                  signing keys); header Ding-Standby-State: the
//	                                  state to start from
//	POST /cluster/standby?node=NODE   AddStandby(NODE)
//	  &replace=OLD                    ReplaceStandbyAt(NODE, OLD): NODE, a
//	                                  learner, takes OLD's place
//	  &continue=1&owner=O             AddStandbyContinuing: NODE's own
//	                                  history (epoch, O, seq), no snapshot
//
// Both need "Authorization: Bearer SECRET", the cluster's shared secret.

const stateHeader = "Ding-Standby-State"

// SnapshotHandler serves the owner's snapshot and standby requests.
// tmpDir holds each checkpoint while it is sent (on the store's file
// system, so that the checkpoint hard-links its tables); files (paths)
// go along under files/ by their base names, read when each snapshot is
// taken (a missing one is skipped).
func SnapshotHandler(rs *ReplicatedStore, c Coord, secret, tmpDir string, files ...string) http.Handler {
	mux := http.NewServeMux()
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !Authorized(r, secret) {
				http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
				return
			}
			h(w, r)
		}
	}
	mux.Handle("GET "+ChangesPath, ChangesHandler(rs, secret))
	mux.HandleFunc("GET /cluster/snapshot", auth(func(w http.ResponseWriter, r *http.Request) {
		dir, err := os.MkdirTemp(tmpDir, "snapshot-")
		if err != nil {
			http.Error(w, "cluster: snapshot: temporary directory", http.StatusInternalServerError)
			return
		}
		defer os.RemoveAll(dir)
		cp := filepath.Join(dir, "store")
		st, err := rs.Snapshot(cp)
		if err != nil {
			http.Error(w, "cluster: snapshot failed", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/x-tar")
		w.Header().Set(stateHeader, base64.StdEncoding.EncodeToString(encodeState(st)))
		_ = writeTar(w, cp, files) // the client sees a truncated tar and fails
	}))
	mux.HandleFunc("POST /cluster/standby", auth(func(w http.ResponseWriter, r *http.Request) {
		node := r.URL.Query().Get("node")
		if node == "" {
			http.Error(w, "cluster: node is required", http.StatusBadRequest)
			return
		}
		epoch, eerr := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
		seq, serr := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
		if eerr != nil || serr != nil {
			http.Error(w, "cluster: epoch and seq (the snapshot the node follows from) are required", http.StatusBadRequest)
			return
		}
		snap := StandbyState{FenceEpoch: epoch, Seq: seq}
		if r.URL.Query().Get("continue") == "1" {
			snap.FenceOwner = r.URL.Query().Get("owner")
			st, err := rs.AddStandbyContinuing(r.Context(), c, node, snap)
			if err != nil {
				http.Error(w, err.Error(), http.StatusConflict)
				return
			}
			w.Header().Set(stateHeader, base64.StdEncoding.EncodeToString(encodeState(st)))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if replacing := r.URL.Query().Get("replace"); replacing != "" {
			// A standby place moving: the learner follows already, and the
			// answer waits for the hand-over (a while at most: asking again
			// waits again).
			ctx, cancel := context.WithTimeout(r.Context(), replaceWait)
			defer cancel()
			speaks, err := speaks(ctx, c, replacing)
			if err != nil {
				http.Error(w, "cluster: the hand-over of the standby role waits for the registry: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			switch err := rs.ReplaceStandbyAt(ctx, c, node, replacing, speaks, snap); {
			case err == nil:
				w.WriteHeader(http.StatusNoContent)
			case errors.Is(err, ErrStandbyRefused), errors.Is(err, ErrFenced):
				http.Error(w, err.Error(), http.StatusConflict)
			default:
				http.Error(w, "cluster: the hand-over of the standby role is in progress: "+err.Error(), http.StatusServiceUnavailable)
			}
			return
		}
		if err := rs.AddStandbyAt(r.Context(), c, node, snap); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("DELETE /cluster/standby", auth(func(w http.ResponseWriter, r *http.Request) {
		node := r.URL.Query().Get("node")
		if node == "" {
			http.Error(w, "cluster: node is required", http.StatusBadRequest)
			return
		}
		if err := rs.ReleaseStandby(r.Context(), c, node); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	return mux
}

// speaks returns the protocol node says it speaks (Member.Speaks), read
// from c's registry; Protocol when node publishes no status now (most
// likely a node that stopped: whatever the move, it waits until that
// one is dropped as stalled; a build from before members published a
// status, 2026-12-04, gets two halves too, and the stall) or c keeps no
// registry. A registry that cannot be read is an error: the caller
// answers 503 and the learner asks again.
func speaks(ctx context.Context, c Coord, node string) (int, error) {
	reg, ok := c.(Registry)
	if !ok {
		return Protocol, nil
	}
	ms, err := reg.Members(ctx)
	if err != nil {
		return 0, err
	}
	if m, ok := ms[node]; ok {
		return m.Speaks(), nil
	}
	return Protocol, nil
}

func writeTar(w io.Writer, dir string, files []string) error {
	tw := tar.NewWriter(w)
	add := func(name, p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: fi.Size(), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = io.CopyN(tw, f, fi.Size())
		return err
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		return add("store/"+filepath.ToSlash(rel), p)
	})
	if err != nil {
		return err
	}
	for _, p := range files {
		if err := add("files/"+filepath.Base(p), p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return tw.Close()
}

// FetchSnapshot downloads the owner's snapshot from baseURL (its admin
// listener, e.g. http://10.0.0.1:8080) into dir, which must not exist,
// and returns the state to follow from: the store to open is dir/store,
// the files that came along are in dir/files. A partial download leaves
// no dir.
func FetchSnapshot(ctx context.Context, client *http.Client, baseURL, secret, dir string) (StandbyState, error) {
	return Endpoint{Client: client, URL: baseURL, Secret: secret}.FetchSnapshot(ctx, dir)
}

// Endpoint is one partition's cluster routes on another node, as this
// node reaches them: the node's advertised base URL, the cluster secret,
// and the partition, sent as ?p= (omitted for partition 0, which is what
// a cluster of one partition, and a node that predates partitions,
// serves). A node serving several partitions routes each request to the
// partition's handlers (PartitionRoutes).
type Endpoint struct {
	Client *http.Client // nil: http.DefaultClient
	URL    string
	Secret string
	P      Partition
}

// target is the URL of path on e, with q and e's partition.
func (e Endpoint) target(path string, q url.Values) string {
	if e.P != 0 {
		if q == nil {
			q = url.Values{}
		}
		q.Set("p", strconv.FormatUint(uint64(e.P), 10))
	}
	t := strings.TrimSuffix(e.URL, "/") + path
	if len(q) > 0 {
		t += "?" + q.Encode()
	}
	return t
}

func (e Endpoint) do(req *http.Request) (*http.Response, error) {
	req.Header.Set("Authorization", "Bearer "+e.Secret)
	if e.Client == nil {
		return http.DefaultClient.Do(req)
	}
	return e.Client.Do(req)
}

// FetchSnapshot is the package's FetchSnapshot for e's partition.
func (e Endpoint) FetchSnapshot(ctx context.Context, dir string) (StandbyState, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.target("/cluster/snapshot", nil), nil)
	if err != nil {
		return StandbyState{}, err
	}
	resp, err := e.do(req)
	if err != nil {
		return StandbyState{}, fmt.Errorf("cluster: fetch snapshot: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return StandbyState{}, fmt.Errorf("cluster: fetch snapshot: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	st, err := stateFrom(resp.Header)
	if err != nil {
		return StandbyState{}, fmt.Errorf("cluster: fetch snapshot: %w", err)
	}
	if _, err := os.Stat(dir); err == nil {
		return StandbyState{}, fmt.Errorf("cluster: fetch snapshot: %s exists", dir)
	}
	tmp := dir + ".partial"
	_ = os.RemoveAll(tmp)
	if err := readTar(resp.Body, tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return StandbyState{}, fmt.Errorf("cluster: fetch snapshot: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		_ = os.RemoveAll(tmp)
		return StandbyState{}, err
	}
	return st, nil
}

var errBadTar = errors.New("bad snapshot archive")

// readTar unpacks regular files only, refusing any name that would land
// outside dir.
func readTar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if n == 0 {
				return fmt.Errorf("%w: empty", errBadTar)
			}
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(h.Name)
		if h.Typeflag != tar.TypeReg || name == "." || path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("%w: entry %q", errBadTar, h.Name)
		}
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		n++
	}
}

// ErrStandbyRefused is returned by RequestStandby when the owner does
// not name the node (409): another holds the place, or the snapshot the
// node follows from is not one the owner may count on; or when the node
// asked no longer owns the partition (421: it handed it over). The node must not
// ask again with the same snapshot.
var ErrStandbyRefused = errors.New("cluster: the owner refused the standby")

// ErrNotServing is in the ErrStandbyRefused of a node that did not
// serve the partition when asked (421): it handed it over, or it holds
// the lease and is still attaching the partition (a takeover or a
// hand-over just now). A snapshot taken from that node is no use; a
// node's own history may still be (ContinueAsStandby): ask again once
// the lease's holder serves.
var ErrNotServing = errors.New("cluster: the node asked does not serve the partition now")

// RequestStandby asks the owner at baseURL to name node its standby,
// once node follows the stream from the snapshot's state snap (the owner
// checks that it holds every batch the owner acknowledged:
// ReplicatedStore.AddStandbyAt).
func RequestStandby(ctx context.Context, client *http.Client, baseURL, secret, node string, snap StandbyState) error {
	return Endpoint{Client: client, URL: baseURL, Secret: secret}.RequestStandby(ctx, node, snap)
}

// RequestStandby is the package's RequestStandby for e's partition.
func (e Endpoint) RequestStandby(ctx context.Context, node string, snap StandbyState) error {
	return e.RequestStandbyPlace(ctx, node, "", snap)
}

// RequestStandbyPlace is RequestStandby taking the place of replacing,
// the current standby, through the history
// (ReplicatedStore.ReplaceStandbyAt): it returns once the move is
// complete (the owner names node, and the standby replaced applied the
// entry demoting it), refused (ErrStandbyRefused) when replacing is not the standby
// or the snapshot is not the owner's, and with another error when the
// hand-over is still in progress after a while (asking again waits for
// it again). replacing "": RequestStandby.
func (e Endpoint) RequestStandbyPlace(ctx context.Context, node, replacing string, snap StandbyState) error {
	q := url.Values{"node": {node}, "epoch": {strconv.FormatUint(snap.FenceEpoch, 10)}, "seq": {strconv.FormatUint(snap.Seq, 10)}}
	if replacing != "" {
		q.Set("replace", replacing)
	}
	_, err := e.standbyRequest(ctx, http.MethodPost, e.target("/cluster/standby", q))
	return err
}

// ContinueAsStandby asks the owner to name node its standby without a
// snapshot, node's own history being st (ReplicatedStore.
// AddStandbyContinuing), and returns the state node must record before
// it follows. Refused (ErrStandbyRefused) when st is not the history the
// owner took over with: node joins from a snapshot then; but with
// ErrNotServing too, the node asked did not serve the partition yet (or
// any more): ask the lease's holder again once it does.
func (e Endpoint) ContinueAsStandby(ctx context.Context, node string, st StandbyState) (StandbyState, error) {
	q := url.Values{"node": {node}, "epoch": {strconv.FormatUint(st.FenceEpoch, 10)}, "owner": {st.FenceOwner},
		"seq": {strconv.FormatUint(st.Seq, 10)}, "continue": {"1"}}
	h, err := e.standbyRequest(ctx, http.MethodPost, e.target("/cluster/standby", q))
	if err != nil {
		return StandbyState{}, err
	}
	got, err := stateFrom(h)
	if err != nil {
		return StandbyState{}, fmt.Errorf("cluster: continue as standby: %w", err)
	}
	if got.FenceEpoch <= st.FenceEpoch || got.Seq != st.Seq {
		return StandbyState{}, fmt.Errorf("cluster: continue as standby: the owner answered epoch %d through %d for a history of epoch %d through %d", got.FenceEpoch, got.Seq, st.FenceEpoch, st.Seq)
	}
	return got, nil
}

// replaceWait is how long the owner answers a standby-place request
// within (the learner then asks again).
const replaceWait = 10 * time.Second

// ReleaseStandby asks the owner at baseURL to stop counting node, its
// standby, which is being drained (ReplicatedStore.ReleaseStandby).
func ReleaseStandby(ctx context.Context, client *http.Client, baseURL, secret, node string) error {
	return Endpoint{Client: client, URL: baseURL, Secret: secret}.ReleaseStandby(ctx, node)
}

// ReleaseStandby is the package's ReleaseStandby for e's partition.
func (e Endpoint) ReleaseStandby(ctx context.Context, node string) error {
	_, err := e.standbyRequest(ctx, http.MethodDelete, e.target("/cluster/standby", url.Values{"node": {node}}))
	return err
}

func (e Endpoint) standbyRequest(ctx context.Context, method, target string) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.do(req)
	if err != nil {
		return nil, fmt.Errorf("cluster: %s standby: %w", method, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		err := fmt.Errorf("cluster: %s standby: %s: %s", method, resp.Status, strings.TrimSpace(string(msg)))
		switch resp.StatusCode {
		case http.StatusConflict:
			err = fmt.Errorf("%w: %w", ErrStandbyRefused, err)
		case http.StatusMisdirectedRequest:
			// 421: that node does not serve the partition now (a
			// hand-over since the snapshot): the snapshot is its, not
			// the new owner's, so asking again with it cannot succeed.
			err = fmt.Errorf("%w: %w: %w", ErrStandbyRefused, ErrNotServing, err)
		}
		return nil, err
	}
	return resp.Header, nil
}

// stateFrom reads the state an owner's answer carries (stateHeader).
func stateFrom(h http.Header) (StandbyState, error) {
	raw, err := base64.StdEncoding.DecodeString(h.Get(stateHeader))
	if err != nil {
		return StandbyState{}, fmt.Errorf("bad %s header: %w", stateHeader, err)
	}
	return decodeState(raw)
}

// Authorized reports whether r carries the cluster secret as its bearer
// token (every route between members checks it).
func Authorized(r *http.Request, secret string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return secret != "" && ok && subtle.ConstantTimeCompare([]byte(got), []byte(secret)) == 1
}
