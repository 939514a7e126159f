package fanout

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
)

var (
	// ErrBadPhone is returned by PutUser for a phone number not in E.164 form.
	ErrBadPhone = errors.New("fanout: phone must be E.164, like +14155550100")
	// ErrBadQuietHours is returned by PutUser for quiet hours that do not
	// parse (see engine.ParseQuietHours).
	ErrBadQuietHours = errors.New("fanout: bad quiet hours")
)

// User is a person in the directory.
type User struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Phone string `json:"phone,omitempty"` // E.164; never logged
	// QuietHours is a daily window in which non-critical DINGs are
	// refused: "22:00-07:00" (UTC) or "22:00-07:00 Europe/Berlin".
	QuietHours string    `json:"quiet_hours,omitempty"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
}

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// Directory keys: 'u' 'u' | user id -> JSON user record.
func userKey(id string) []byte { return append([]byte{engine.PrefixDirectory, 'u'}, id...) }

// Directory is the set of users. Reads are served from memory; every change
// is written (synced) to the store first. It implements engine.Recipients.
type Directory struct {
	st    store.Store
	clock engine.Clock

	mu    sync.RWMutex
	users map[string]User              // guarded by mu
	quiet map[string]engine.QuietHours // parsed User.QuietHours, for users that have them; guarded by mu
}

var (
	_ engine.Recipients = (*Directory)(nil)
	_ engine.Contacts   = (*Directory)(nil)
)

// OpenDirectory loads the directory from st.
func OpenDirectory(st store.Store, clock engine.Clock) (*Directory, error) {
	if clock == nil {
		clock = engine.SystemClock{}
	}
	d := &Directory{st: st, clock: clock, users: map[string]User{}, quiet: map[string]engine.QuietHours{}}
	p := userKey("")
	var derr error
	err := st.Scan(p, []byte{engine.PrefixDirectory, 'u' + 1}, func(k, v []byte) bool {
		var u User
		if derr = json.Unmarshal(v, &u); derr != nil {
			derr = fmt.Errorf("fanout: user %q: %w", k[len(p):], derr)
			return false
		}
		d.users[u.ID] = u
		if q, err := engine.ParseQuietHours(u.QuietHours); err == nil && u.QuietHours != "" {
			d.quiet[u.ID] = q
		}
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("fanout: load directory: %w", err)
	}
	return d, nil
}

// PutUser creates or updates a user, durably. It reports whether the user
// is new.
func (d *Directory) PutUser(u User) (created bool, err error) {
	n, err := d.PutUsers([]User{u})
	return n == 1, err
}

// PutUsers creates or updates many users in one synced write: all or none.
// It returns how many were new.
func (d *Directory) PutUsers(us []User) (created int, err error) {
	for _, u := range us {
		if err := engine.CheckName("user", u.ID); err != nil {
			return 0, err
		}
		if u.Phone != "" && !e164.MatchString(u.Phone) {
			return 0, fmt.Errorf("%w (user %s)", ErrBadPhone, u.ID)
		}
		if len(u.Name) > 200 {
			return 0, fmt.Errorf("%w: display name of %s longer than 200 bytes", engine.ErrBadName, u.ID)
		}
		if _, err := engine.ParseQuietHours(u.QuietHours); err != nil {
			return 0, fmt.Errorf("%w: user %s: %v", ErrBadQuietHours, u.ID, err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock.Now().UTC().Truncate(time.Millisecond)
	b := d.st.NewBatch()
	defer b.Close()
	out := make([]User, len(us))
	for i, u := range us {
		u.Created, u.Updated = now, now
		if old, ok := d.users[u.ID]; ok {
			u.Created = old.Created
		} else {
			created++
		}
		v, err := json.Marshal(u)
		if err != nil {
			return 0, err
		}
		b.Set(userKey(u.ID), v)
		out[i] = u
	}
	if err := b.Commit(true); err != nil {
		return 0, fmt.Errorf("fanout: put %d users: %w", len(us), err)
	}
	for _, u := range out {
		d.users[u.ID] = u
		delete(d.quiet, u.ID)
		if u.QuietHours != "" {
			d.quiet[u.ID], _ = engine.ParseQuietHours(u.QuietHours)
		}
	}
	return created, nil
}

// Contact implements engine.Contacts.
func (d *Directory) Contact(id string) (engine.Contact, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.users[id]
	if !ok {
		return engine.Contact{}, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, id)
	}
	return engine.Contact{Name: u.Name, Phone: u.Phone, Quiet: d.quiet[id]}, nil
}

// User returns a user by id.
func (d *Directory) User(id string) (User, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.users[id]
	return u, ok
}

// Users returns every user, sorted by id.
func (d *Directory) Users() []User {
	d.mu.RLock()
	out := make([]User, 0, len(d.users))
	for _, u := range d.users {
		out = append(out, u)
	}
	d.mu.RUnlock()
	slices.SortFunc(out, func(a, b User) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

// Resolve implements engine.Recipients: every recipient must be a user.
func (d *Directory) Resolve(to []string) ([]string, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, id := range to {
		if _, ok := d.users[id]; !ok {
			return nil, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, id)
		}
	}
	return to, nil
}
