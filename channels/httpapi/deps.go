package httpapi

import (
	"context"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// The admin API's view of the rest of the server: interfaces it owns,
// grouped by what the routes do. *engine.Engine implements Engine and
// *fanout.Directory implements Directory; internal/node wires them. Every
// method is safe for concurrent use; writes return once durable (or with
// ctx's error, the outcome then unknown); reads answer from committed
// state.

// Messages is what the message and receipt routes use.
type Messages interface {
	MaxBody() int
	Submit(ctx context.Context, s engine.Submission) (engine.SubmitResult, error)
	Message(id engine.ID) (*engine.Message, error)
	Receipts(id engine.ID) ([]engine.Receipt, error)
	Head(user string) (uint64, error)
	Devices(user string) ([]engine.DeviceCursor, error)
	// Sweep deletes what is past retention now (POST /v1/retention/sweep).
	Sweep(ctx context.Context) (engine.SweepReport, error)
}

// Dings is what the DING and policy routes use.
type Dings interface {
	Ding(ctx context.Context, r engine.DingRequest) (engine.DingResult, error)
	DingStatus(id engine.ID) (*engine.DingStatus, error)
	Dings(sender string, after engine.ID, limit int) ([]engine.DingSummary, error)
	CancelDing(ctx context.Context, id engine.ID) (stopped int, err error)
	SetPolicy(ctx context.Context, name string, p engine.Policy) error
	Policies() (map[string]engine.Policy, error)
}

// Announcements is what the announcement and statistics routes use.
type Announcements interface {
	Announce(ctx context.Context, a engine.Announcement) (engine.SubmitResult, error)
	Stats(id engine.ID, lists bool) (*engine.MessageStats, error)
	AdminStats(q engine.StatsQuery) (*engine.AdminStats, error)
}

// SecretChats is what the secret chat routes use (metadata only).
type SecretChats interface {
	CreateChat(ctx context.Context, req engine.ChatRequest) (engine.Chat, error)
	Chat(id engine.ID) (engine.Chat, error)
	Chats(user string) ([]engine.ChatInfo, error)
}

// Engine is everything the API asks of the engine.
type Engine interface {
	Messages
	Dings
	Announcements
	SecretChats
}

// Users is what the user routes use of the directory.
type Users interface {
	User(id string) (fanout.User, bool)
	Active(id string) bool
	UsersByStatus(status string) ([]fanout.User, error)
	PutUserAs(u fanout.User, actor fanout.Actor) (created bool, err error)
	PutUsersAs(us []fanout.User, actor fanout.Actor) (created int, err error)
	RemoveUser(id string, actor fanout.Actor) (fanout.User, error)
}

// Org is what the department and group routes use of the directory.
type Org interface {
	Department(id string) (fanout.Department, bool)
	Departments() []fanout.Department
	SubDepartments(id string) []fanout.Department
	DepartmentUsers(id string) []string
	// Expand resolves a target ("all", "dept:ID", "group:ID", a user id)
	// to sorted active user ids.
	Expand(target string) ([]string, error)
	PutDepartment(dep fanout.Department, actor fanout.Actor) (created bool, err error)
	RemoveDepartment(id string, actor fanout.Actor) error
	Group(id string) (fanout.Group, bool)
	Groups() []fanout.Group
	PutGroup(g fanout.Group, actor fanout.Actor) (created bool, err error)
	UpdateMembers(id string, add, remove []string, actor fanout.Actor) (fanout.Group, error)
	RemoveGroup(id string, actor fanout.Actor) error
}

// Admins is what access control and the admin routes use of the
// directory (access.go, admins.go). Admin, Within and UserWithin read
// memory only: they run on every request.
type Admins interface {
	Admin(name string) (fanout.Admin, bool)
	Admins() []fanout.Admin
	AddAdmin(a fanout.Admin, actor fanout.Actor) (fanout.Admin, error)
	RevokeAdmin(name string, actor fanout.Actor) (a fanout.Admin, already bool, err error)
	// Within reports whether department dept is root or under it;
	// UserWithin, whether user is active and of such a department.
	Within(dept, root string) bool
	UserWithin(user, root string) bool
}

// Directory is everything the API asks of the directory: users, the org,
// imports, the audit log and the admins.
type Directory interface {
	AddUserAs(u fanout.User, actor fanout.Actor) (created bool, err error)
	UpdateUserAs(id string, p fanout.UserPatch, actor fanout.Actor) (fanout.User, error)
	Users
	Org
	Import(org fanout.Org, opts fanout.ImportOptions, actor fanout.Actor) (fanout.Diff, error)
	Audit(after uint64, limit int) ([]fanout.AuditEntry, error)
	// VerifyAudit reads the whole audit log; expect, when not empty, is a
	// head hash that must be in it (fanout.ErrBadExpect if malformed).
	VerifyAudit(expect string) (fanout.AuditCheck, error)
	Admins
}

var (
	_ Engine    = (*engine.Engine)(nil)
	_ Directory = (*fanout.Directory)(nil)
)
