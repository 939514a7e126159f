package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one dingctl command's help: the top-level usage lists every
// entry, and `dingctl NAME --help` (or `dingctl help NAME`) prints one
// with its flags, an example and the environment.
type command struct {
	name    string // "user add"
	args    string // what follows the name
	summary string
	example string
}

// commands is every command, in the order of the usage text.
var commands = []command{
	{"user add", `ID --name NAME [--phone +E164] [--email ADDRESS] [--quiet-hours "22:00-07:00 Europe/Berlin"] [--department D]`,
		"create a user (an existing one: USER_EXISTS; use user set)",
		`dingctl user add ana --name "Ana" --phone +14155550100`},
	{"user set", "ID [--name N] [--phone P] [--email E] [--quiet-hours Q] [--department D]",
		`change only the fields given ("" clears one)`,
		`dingctl user set ana --quiet-hours "22:00-07:00 Europe/Berlin"`},
	{"user get", "ID", "show one user as JSON", "dingctl user get ana"},
	{"user list", "[--status active|removed|all]", "list users as JSON", "dingctl user list --status removed"},
	{"user remove", "ID", "offboard: mark removed, out of every group and department, tokens revoked, devices disconnected",
		"dingctl user remove bo"},
	{"dept add", "ID --name NAME [--parent P]", "create, rename or move a department", `dingctl dept add sre --name "SRE" --parent eng`},
	{"dept get", "ID", "show one department as JSON", "dingctl dept get sre"},
	{"dept list", "", "list departments as JSON", "dingctl dept list"},
	{"dept remove", "ID", "remove an empty department", "dingctl dept remove sre"},
	{"group add", "ID --name NAME --members a,b", "create an ad-hoc group or replace its members",
		`dingctl group add oncall --name "On call" --members ana,bo`},
	{"group members", "ID [--add a,b] [--remove c]", "change a group's members", "dingctl group members oncall --add cy --remove bo"},
	{"group get", "ID", "show a group as JSON (also all and dept:ID)", "dingctl group get dept:sre"},
	{"group list", "", "list groups as JSON", "dingctl group list"},
	{"group remove", "ID", "remove a group", "dingctl group remove oncall"},
	{"directory import", "FILE [--csv|--json] [--remove-missing] [--apply] [--force]",
		"apply an HR export: a dry run that prints the changes as JSON unless --apply (format from the extension unless given)",
		"dingctl directory import org.csv --apply"},
	{"audit", "[--after N] [--limit N]", "the directory's audit log as JSON: who (admin, role, source address) changed what, each entry chained to the one before by its hash", "dingctl audit --limit 20"},
	{"audit verify", "[--expect HEAD_HASH] [--head]",
		"walk the audit log's hash chain and print the result as JSON; exit 1 naming the first entry missing or changed (broken_at). Keep the head_hash somewhere dingd cannot write and pass it back with --expect: only that finds entries cut off the end",
		`dingctl audit verify --expect "$(cat audit.head)" --head > audit.head.new && mv audit.head.new audit.head`},
	{"cluster status", "", "cluster mode: members, the owner, its standby, epoch and replication, as JSON (with --partitions: each partition's role on that node)", "dingctl --server http://10.0.0.2:7080 cluster status"},
	{"cluster handover", "[--partition N]", "cluster mode: the owner drains, its standby takes over, the owner becomes the standby (with --partitions: partition N, owned by the node --server names)", "dingctl cluster handover --partition 2"},
	{"cluster drain", "", "cluster mode: the member --server names gives up its role for maintenance, takes none again", "dingctl --server http://10.0.0.3:7080 cluster drain"},
	{"cluster forget", "ID", "cluster mode: the member --server names stops waiting for ID, a member removed for good (drained and stopped, or dead), when it recovers a partition whose Redis state was lost (run it on every member)",
		"dingctl --server http://10.0.0.2:7080 cluster forget c"},
	{"admin add", "NAME --role ROLE [--dept DEPT] [--expires 90d]",
		"add a named admin with a role (" + adminRoles + "; dept-admin with --dept) and print its token, shown this once",
		"dingctl admin add hr-sync --role directory --expires 90d"},
	{"admin list", "", "list the admins as JSON: name, role, department, status, expiry (never a token)", "dingctl admin list"},
	{"admin revoke", "NAME", "revoke an admin's token at once (not the last owner's: add another owner first)", "dingctl admin revoke hr-sync"},
	{"admin whoami", "", "the admin the token is, its role and permissions, as JSON", `dingctl --token "$HR_TOKEN" admin whoami`},
	{"webhook add", "URL --events TYPE[,TYPE...] [--description D]",
		"subscribe URL to events (types, family.* or *) and print its signing secret, shown this once",
		"dingctl webhook add https://crm.example.com/ding --events ding.confirmed,ding.unanswered"},
	{"webhook list", "", "list the subscriptions as JSON (cursor, backlog; never a secret) and every event type", "dingctl webhook list"},
	{"webhook get", "ID", "show one subscription as JSON", "dingctl webhook get wh_0123456789abcdef"},
	{"webhook remove", "ID", "remove a subscription, its undelivered events and dead letters", "dingctl webhook remove wh_0123456789abcdef"},
	{"webhook pause", "ID", "stop delivering; events wait in the outbox until resume", "dingctl webhook pause wh_0123456789abcdef"},
	{"webhook resume", "ID", "deliver again, from where it paused", "dingctl webhook resume wh_0123456789abcdef"},
	{"webhook deliveries", "ID [--after SEQ] [--limit N]", "the dead letters: events given up on after the horizon, with attempts and last error, as JSON",
		"dingctl webhook deliveries wh_0123456789abcdef"},
	{"webhook replay", "ID [--ids evt_0_12,evt_0_13]", "deliver dead letters again (all by default), with their original ids",
		"dingctl webhook replay wh_0123456789abcdef"},
	{"token", "--user ID --device DEV [--ttl D]", "print a client token for the socket", "dingctl token --user ana --device laptop --ttl 720h"},
	{"token revoke", "--user ID [--device DEV]", "revoke the user's client tokens issued until now (or one device's), for good",
		"dingctl token revoke --user bo --device phone"},
	{"send", "--from ID (--to ID[,ID...] | --chat CHATID) [--client-id X] [--forward-of ID] [--quote-of ID] [TEXT | -]",
		"send a message; prints its id after the durable ack. --to takes user ids, group:ID and dept:ID. The body is TEXT, or stdin with - or when stdin is not a terminal",
		`dingctl send --from ana --to bo "lunch?"`},
	{"secret create", "--from ID --to ID --level 1|2|3 [--burn-after 10s] [--json]",
		"open a secret chat; prints its id (--json: members, pseudonyms, level, burn delay)",
		"dingctl secret create --from ana --to bo --level 2"},
	{"secret list", "--user ID", "a user's secret chats with their live message counts", "dingctl secret list --user ana"},
	{"secret show", "CHATID", "a secret chat's metadata (never message content)", "dingctl secret show 01J..."},
	{"listen", "--user ID --device DEV [--read] [--confirm N] [--messages] [--count N] [--until TYPE] [--timeout D] [--cursor N]",
		"connect as a device and print its stream as JSON lines: messages (DINGs with their choices), receipts, DING events; --confirm answers every DING (0: no choice)",
		"dingctl listen --user bo --device laptop --read --messages --count 1"},
	{"receipts", "ID", "print each recipient's state of a message as JSON", "dingctl receipts 01J..."},
	{"backup", "--out NAME", "write a consistent copy of the store under the server's backup dir (dingd --backup-dir)",
		"dingctl backup --out nightly-2026-12-04"},
	{"backup verify", "NAME", "check that a backup opens and reads whole (restore: dingd --restore-from DIR)",
		"dingctl backup verify nightly-2026-12-04"},
	{"retention sweep", "", "delete now what is past retention (dingd --retention-max-age, --retention-max-entries, --dedupe-window, --stats-retention) and print what went as JSON; \"held\" counts what is kept until a DING or must-confirm message settles",
		"dingctl retention sweep"},
	{"ding", `--from ID --to ID[,+E164...] [--policy NAME|SPEC] [--choices "attend,decline"] [--critical] TEXT`,
		"send a DING; prints its id. Each recipient escalates until they confirm (or read, with until=read). A policy is steps CHANNEL[@DELAY][*TIMES/EVERY] (channels inapp, push, sms, voice, email; a delay in whole seconds, e.g. 30s, 5m) and an optional until=read|confirmed; the default is \"inapp,sms@5m,voice@15m until=confirmed\" (\"inapp,push,sms@5m,voice@15m until=confirmed\" when dingd has push configured)",
		`dingctl ding --from ana --to bo --policy "inapp,sms@5m,voice@15m" "prod is down"`},
	{"ding status", "ID [--wait D]", "a DING's per-recipient ledger as JSON (--wait: once every recipient is stopped or exhausted)", "dingctl ding status 01J... --wait 2m"},
	{"ding list", "[--from ID] [--after ID] [--limit N]", "list DINGs as JSON", "dingctl ding list --from ana --limit 10"},
	{"ding cancel", "ID", "stop every recipient's escalation", "dingctl ding cancel 01J..."},
	{"policy set", "NAME SPEC", "store an escalation policy: steps CHANNEL[@DELAY][*TIMES/EVERY] (inapp, push, sms, voice, email; e.g. sms@1m*3/10m) and until=read|confirmed", `dingctl policy set oncall "inapp,sms@5m,voice@15m until=confirmed"`},
	{"policy list", "", "list the stored policies as JSON", "dingctl policy list"},
	{"announce", "[--from ID] --to all|dept:ID|group:ID [--confirm] TEXT", "publish an announcement; prints its id",
		`dingctl announce --to all --confirm "Office closed Friday"`},
	{"announce stats", "ID [--unread] [--unconfirmed] [--csv]", "an announcement's counts, read ratio over time, who has not read/confirmed",
		"dingctl announce stats 01J... --unread"},
	{"announce reding", "ID [--from ID] [--policy NAME|SPEC] [--unread]", "DING those who have not confirmed (or read) an announcement",
		"dingctl announce reding 01J... --policy oncall"},
	{"stats", "[--from YYYY-MM-DD] [--to YYYY-MM-DD] [--dept A,B] [--top N]",
		"per department: messages, DINGs and how they ended, time to read/confirm, SMS and calls vs budget, announcements' read ratios, who leaves DINGs unanswered",
		"dingctl stats --from 2026-11-01 --dept sre"},
}

const globalHelp = `global flags (before or after the command):
  --token T        admin token (env DING_TOKEN)
  --data DIR       data dir whose admin.token to use (default ./ding-data)
  --server URL     admin API (env DING_SERVER, default http://127.0.0.1:7080)
  --socket ADDR    client socket, for listen; in a cluster HOST:PORT,HOST:PORT (env DING_SOCKET, default 127.0.0.1:7070)
  --ca FILE        CA of the server's certificate, for HTTPS and --socket-tls (env DING_CA; default: the system's roots)
  --socket-tls     the socket speaks TLS (dingd --tls-listen)
  --insecure       allow the admin token over plain http:// to a host that is not loopback
  --cert FILE      client certificate (mTLS, dingd --tls-client-ca) for HTTPS and --socket-tls (env DING_CERT);
                   one naming an admin (URI SAN ding:admin/NAME) replaces the admin token
  --key FILE       its private key (env DING_KEY)
  --pin-sha256 P   accept the server only if its certificate's key has pin P (base64 SHA-256 of
                   the SubjectPublicKeyInfo; several: P1,P2), on top of --ca (env DING_PIN_SHA256)
  --retry-for D    while dingd answers UNAVAILABLE with retry (a cluster failover), ask again for up
                   to D what is safe to: reads, and sends (their client message id: --client-id, or
                   one made for the command) (env DING_RETRY_FOR, default 15s; 0: never)

The admin token comes from --token, else --data DIR's admin.token, else
DING_TOKEN, else ./ding-data/admin.token (dingd's default data dir): a flag
beats the environment. DATA/admin.token is the first owner's; other admins
have tokens of their own, with a role (dingctl admin --help). With --cert
and none of these given, no token is sent: the certificate names the admin.

Output: JSON for anything with structure, a bare id or line for what a
script captures (send, ding, announce, secret create); times are RFC 3339.
Exit status: 0 done, 1 an error (one line on stderr), 2 a usage error,
3 a wait that timed out (listen --count/--until, ding status --wait).
`

// usageText is the top-level help.
func usageText() string {
	var b strings.Builder
	b.WriteString("usage: dingctl [global flags] COMMAND [ARGS] [flags]\n       dingctl help COMMAND | dingctl COMMAND --help\n       dingctl --version\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %s %s\n      %s\n", c.name, c.args, c.summary)
	}
	b.WriteString("\n" + globalHelp)
	return b.String()
}

// errHelpShown: a command printed its help; dingctl exits 0.
var errHelpShown = errors.New("help shown")

func findCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help" || arg == "help"
}

// groupHelp prints the commands under group ("user": user add, user set…)
// and reports whether there are any.
func groupHelp(out io.Writer, group string) bool {
	var b strings.Builder
	for _, c := range commands {
		if strings.HasPrefix(c.name, group+" ") {
			fmt.Fprintf(&b, "  dingctl %s %s\n      %s\n", c.name, c.args, c.summary)
		}
	}
	if b.Len() == 0 {
		return false
	}
	fmt.Fprintf(out, "commands of dingctl %s (each has --help):\n%s\n%s%s", group, b.String(), groupNotes[group], globalHelp)
	return true
}

// groupNotes follow a group's commands in its help, before the global
// flags.
var groupNotes = map[string]string{"admin": adminNotes + "\n", "webhook": webhookNotes + "\n"}

// suggest names the command closest to a mistyped one, if one is close
// (at most two edits): "did you mean send?".
func suggest(cmd string) string {
	best, bestD := "", 3
	for _, c := range commands {
		name, _, _ := strings.Cut(c.name, " ")
		if d := editDistance(cmd, name); d < bestD {
			best, bestD = name, d
		}
	}
	if best == "" || best == cmd {
		return ""
	}
	return "; did you mean " + best + "?"
}

// editDistance is Levenshtein's distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// subcommands names group's commands: "add, get, list or remove".
func subcommands(group string) string {
	var subs []string
	for _, c := range commands {
		if rest, ok := strings.CutPrefix(c.name, group+" "); ok {
			subs = append(subs, rest)
		}
	}
	if len(subs) < 2 {
		return strings.Join(subs, "")
	}
	return strings.Join(subs[:len(subs)-1], ", ") + " or " + subs[len(subs)-1]
}

// commandHelp prints fs's command: its usage line, what it does, its own
// flags (the global ones are summarised), an example and the environment.
func commandHelp(out io.Writer, fs *flag.FlagSet) {
	c, ok := findCommand(fs.Name())
	if !ok {
		c = command{name: fs.Name()}
	}
	fmt.Fprintf(out, "usage: dingctl %s %s\n\n", c.name, c.args)
	if c.summary != "" {
		fmt.Fprintf(out, "%s.\n\n", c.summary)
	}
	var flags strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if globalFlag[f.Name] {
			return
		}
		kind, usage := flag.UnquoteUsage(f)
		left := "--" + f.Name
		if kind != "" {
			left += " " + kind
		}
		def := ""
		switch f.DefValue {
		case "", "false", "0", "-1", "0s": // zero values: the usage says what they mean
		default:
			if strings.Contains(usage, "default") {
				break // the usage says it
			}
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(&flags, "  %-20s %s%s\n", left, usage, def)
	})
	if flags.Len() > 0 {
		fmt.Fprintf(out, "flags:\n%s\n", flags.String())
	}
	var sub strings.Builder
	for _, o := range commands {
		if strings.HasPrefix(o.name, c.name+" ") {
			fmt.Fprintf(&sub, "  dingctl %s %s\n", o.name, o.args)
		}
	}
	if sub.Len() > 0 {
		fmt.Fprintf(out, "see also:\n%s\n", sub.String())
	}
	if c.example != "" {
		fmt.Fprintf(out, "example:\n  %s\n\n", c.example)
	}
	fmt.Fprint(out, globalHelp)
}

// globalFlag names the flags every command accepts (globals.register).
var globalFlag = map[string]bool{"token": true, "data": true, "server": true, "socket": true, "ca": true, "socket-tls": true, "insecure": true,
	"cert": true, "key": true, "pin-sha256": true}

// flagError turns the flag package's error into one line that names the
// command's help: "send: unknown flag --frm; see dingctl send --help".
func flagError(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	for _, r := range []struct{ from, to string }{
		{"flag provided but not defined: -", "unknown flag --"},
		{"flag needs an argument: -", "a value is needed after --"},
	} {
		if strings.HasPrefix(msg, r.from) {
			msg = r.to + strings.TrimPrefix(msg, r.from)
		}
	}
	msg = strings.Replace(msg, " for flag -", " for flag --", 1)
	if fs.Name() == "dingctl" {
		return exitError{2, msg + "; see dingctl --help"}
	}
	return exitError{2, fmt.Sprintf("%s: %s; see dingctl %s --help", fs.Name(), msg, fs.Name())}
}
