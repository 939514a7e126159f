// Ding's admin console (/console on dingd): the admin HTTP API of the same
// origin, behind an admin token pasted at sign-in. Screens, by hash route:
// #/directory, #/send, #/dings and #/ding/ID (a DING's live timeline),
// #/announcements and #/announcement/ID, #/stats, #/ops.
import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import {
  call,
  describe,
  forgetToken,
  onUnauthenticated,
  path,
  savedToken,
  saveToken,
  type Admin,
  type AdminStats,
  type Department,
  type DingStatus,
  type DingSummary,
  type Group,
  type ImportResult,
  type MessageStats,
  type Refusal,
  type User,
} from "./api";
import { channels, composePolicy, formatDuration, parseDuration, parsePolicy, plan, type Channel, type Policy } from "./policy";
import { has, parseMetrics, quantile, sum } from "./prom";
import { ChartView } from "./charts";

// ---- small pieces ----

function useHash(): string {
  const [hash, setHash] = useState(location.hash || "#/directory");
  useEffect(() => {
    const on = () => setHash(location.hash || "#/directory");
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return hash;
}

function Alert(props: { error: string }) {
  return props.error ? (
    <p class="error" role="alert">
      {props.error}
    </p>
  ) : null;
}

function Field(props: { id: string; label: string; children: ComponentChildren; hint?: string }) {
  return (
    <div class="field">
      <label for={props.id}>{props.label}</label>
      {props.children}
      {props.hint && <span class="hint">{props.hint}</span>}
    </div>
  );
}

/** Runs load now and every ms while mounted (and after deps change); a failure is kept, not thrown. */
function usePoll<T>(load: () => Promise<T>, ms: number, deps: unknown[]): [T | null, string, () => void] {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState("");
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let stop = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      try {
        const d = await load();
        if (stop) return;
        setData(d);
        setError("");
      } catch (e) {
        if (!stop) setError(describe(e));
      }
      if (!stop && ms > 0) timer = setTimeout(run, ms);
    };
    run();
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [...deps, tick]);
  return [data, error, () => setTick((t) => t + 1)];
}

function time(at?: string): string {
  return at ? new Date(at).toLocaleString() : "";
}

function download(name: string, text: string, type: string) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- sign-in ----

function Login(props: { onSignedIn: (me: Admin) => void }) {
  const [tok, setTok] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const t = tok.trim();
    if (!t) {
      setError("Paste the admin token (DATA/admin.token, or one from dingctl admin add).");
      return;
    }
    setBusy(true);
    try {
      const me = await call<Admin>("GET", "/v1/admins/me", { token: t });
      saveToken(t);
      props.onSignedIn(me);
    } catch (err) {
      setError("Sign-in refused. " + describe(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <h1>Ding admin console</h1>
      <form onSubmit={submit}>
        <label for="admin-token">Admin token</label>
        <input id="admin-token" type="password" autocomplete="off" value={tok} onInput={(e) => setTok(e.currentTarget.value)} />
        <p class="hint">Kept in this tab only (sessionStorage) until you sign out.</p>
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
      <Alert error={error} />
    </main>
  );
}

// ---- directory ----

function DeptTree(props: { depts: Department[]; users: User[]; selected: string; onSelect: (id: string) => void }) {
  const kids = (parent: string) => props.depts.filter((d) => (d.parent || "") === parent).sort((a, b) => a.name.localeCompare(b.name));
  const count = (id: string) => props.users.filter((u) => u.department === id).length;
  const branch = (parent: string): ComponentChildren => {
    const ds = kids(parent);
    if (ds.length === 0) return null;
    return (
      <ul>
        {ds.map((d) => (
          <li key={d.id}>
            <button type="button" class="link" aria-pressed={props.selected === d.id} data-dept={d.id} onClick={() => props.onSelect(props.selected === d.id ? "" : d.id)}>
              {d.name} <span class="hint">({d.id}, {count(d.id)})</span>
            </button>
            {branch(d.id)}
          </li>
        ))}
      </ul>
    );
  };
  return (
    <nav aria-label="Departments" class="tree">
      {props.depts.length === 0 ? <p class="empty">No departments.</p> : branch("")}
    </nav>
  );
}

function UserRow(props: { u: User; onChanged: () => void; onOffboard: (u: User) => void }) {
  const { u } = props;
  const [editing, setEditing] = useState(false);
  const [phone, setPhone] = useState(u.phone ?? "");
  const [quiet, setQuiet] = useState(u.quiet_hours ?? "");
  const [dept, setDept] = useState(u.department ?? "");
  const [error, setError] = useState("");
  const save = async (e: Event) => {
    e.preventDefault();
    try {
      await call("PATCH", path("/v1/users/", u.id), { body: { phone, quiet_hours: quiet, department: dept } });
      setEditing(false);
      setError("");
      props.onChanged();
    } catch (err) {
      setError(describe(err));
    }
  };
  return (
    <tr data-user={u.id}>
      <td>{u.id}</td>
      <td>{u.name}</td>
      {editing ? (
        <td colSpan={3}>
          <form class="inline" onSubmit={save}>
            <Field id={`phone-${u.id}`} label="Phone (E.164)">
              <input id={`phone-${u.id}`} value={phone} placeholder="+14155550100" onInput={(e) => setPhone(e.currentTarget.value)} />
            </Field>
            <Field id={`quiet-${u.id}`} label="Quiet hours">
              <input id={`quiet-${u.id}`} value={quiet} placeholder="22:00-07:00 Europe/Berlin" onInput={(e) => setQuiet(e.currentTarget.value)} />
            </Field>
            <Field id={`dept-${u.id}`} label="Department">
              <input id={`dept-${u.id}`} value={dept} onInput={(e) => setDept(e.currentTarget.value)} />
            </Field>
            <button type="submit">Save</button>{" "}
            <button type="button" class="secondary" onClick={() => setEditing(false)}>
              Cancel
            </button>
            <Alert error={error} />
          </form>
        </td>
      ) : (
        <>
          <td class="phone">{u.phone}</td>
          <td>{u.quiet_hours}</td>
          <td>{u.department}</td>
        </>
      )}
      <td class="actions">
        {!editing && (
          <button
            type="button"
            class="secondary"
            aria-label={`Edit ${u.id}`}
            onClick={() => {
              setPhone(u.phone ?? "");
              setQuiet(u.quiet_hours ?? "");
              setDept(u.department ?? "");
              setEditing(true);
            }}
          >
            Edit
          </button>
        )}{" "}
        <button type="button" class="danger" aria-label={`Offboard ${u.id}`} onClick={() => props.onOffboard(u)}>
          Offboard
        </button>
      </td>
    </tr>
  );
}

function AddUser(props: { onAdded: () => void }) {
  const [f, setF] = useState({ id: "", name: "", phone: "", department: "", quiet_hours: "" });
  const [error, setError] = useState("");
  const [done, setDone] = useState("");
  const set = (k: keyof typeof f) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  const submit = async (e: Event) => {
    e.preventDefault();
    const body: Record<string, string> = {};
    for (const [k, v] of Object.entries(f)) if (v.trim()) body[k] = v.trim();
    try {
      await call("POST", "/v1/users", { body });
      setDone(`Added ${f.id}.`);
      setError("");
      setF({ id: "", name: "", phone: "", department: "", quiet_hours: "" });
      props.onAdded();
    } catch (err) {
      setError(describe(err));
      setDone("");
    }
  };
  return (
    <form class="card grid" onSubmit={submit} aria-labelledby="add-user-h">
      <h3 id="add-user-h">Add a user</h3>
      <Field id="new-id" label="User id">
        <input id="new-id" required value={f.id} onInput={set("id")} />
      </Field>
      <Field id="new-name" label="Name">
        <input id="new-name" value={f.name} onInput={set("name")} />
      </Field>
      <Field id="new-phone" label="Phone (E.164)">
        <input id="new-phone" value={f.phone} placeholder="+14155550100" onInput={set("phone")} />
      </Field>
      <Field id="new-dept" label="Department">
        <input id="new-dept" value={f.department} onInput={set("department")} />
      </Field>
      <Field id="new-quiet" label="Quiet hours">
        <input id="new-quiet" value={f.quiet_hours} placeholder="22:00-07:00" onInput={set("quiet_hours")} />
      </Field>
      <div>
        <button type="submit">Add user</button>
      </div>
      <Alert error={error} />
      {done && (
        <p role="status" class="ok">
          {done}
        </p>
      )}
    </form>
  );
}

function DiffList(props: { title: string; items: string[]; kind: string }) {
  if (props.items.length === 0) return null;
  return (
    <div class={`diff ${props.kind}`} data-diff={props.title}>
      <h4>
        {props.title} ({props.items.length})
      </h4>
      <ul>
        {props.items.map((x) => (
          <li key={x}>{x}</li>
        ))}
      </ul>
    </div>
  );
}

function Import(props: { onApplied: () => void }) {
  const [text, setText] = useState("");
  const [format, setFormat] = useState<"csv" | "json">("csv");
  const [removeMissing, setRemoveMissing] = useState(false);
  const [preview, setPreview] = useState<ImportResult | null>(null);
  const [applied, setApplied] = useState<ImportResult | null>(null);
  const [error, setError] = useState("");
  const run = async (dry: boolean) => {
    const q = `?format=${format}&dry_run=${dry ? 1 : 0}&remove_missing=${removeMissing ? 1 : 0}`;
    try {
      const r = await call<ImportResult>("POST", "/v1/directory/import" + q, { raw: text, contentType: format === "csv" ? "text/csv" : "application/json" });
      setError("");
      if (dry) {
        setPreview(r);
        setApplied(null);
      } else {
        setApplied(r);
        setPreview(null);
        props.onApplied();
      }
    } catch (err) {
      setError(describe(err));
    }
  };
  const onFile = async (e: Event) => {
    const file = (e.currentTarget as HTMLInputElement).files?.[0];
    if (!file) return;
    setText(await file.text());
    setFormat(file.name.endsWith(".json") ? "json" : "csv");
    setPreview(null);
  };
  const result = preview ?? applied;
  return (
    <section class="card" aria-labelledby="import-h">
      <h3 id="import-h">Import an HR export</h3>
      <p class="hint">CSV: id,name,phone,department_path[,quiet_hours] with a header row; or JSON {"{departments, users, groups}"}. Preview shows what would change; nothing is written until you apply.</p>
      <Field id="import-file" label="File">
        <input id="import-file" type="file" accept=".csv,.json,text/csv,application/json" onChange={onFile} />
      </Field>
      <Field id="import-text" label="Or paste it">
        <textarea
          id="import-text"
          rows={6}
          value={text}
          onInput={(e) => {
            setText(e.currentTarget.value);
            setPreview(null);
          }}
        />
      </Field>
      <div class="row">
        <Field id="import-format" label="Format">
          <select id="import-format" value={format} onChange={(e) => setFormat(e.currentTarget.value as "csv" | "json")}>
            <option value="csv">CSV</option>
            <option value="json">JSON</option>
          </select>
        </Field>
        <label class="check">
          <input type="checkbox" checked={removeMissing} onChange={(e) => setRemoveMissing(e.currentTarget.checked)} /> Offboard users the file does not list
        </label>
      </div>
      <button type="button" id="import-preview" onClick={() => run(true)} disabled={!text.trim()}>
        Preview changes (dry run)
      </button>{" "}
      {preview && (
        <button type="button" id="import-apply" class="danger" onClick={() => run(false)}>
          Apply these changes
        </button>
      )}
      <Alert error={error} />
      {result && (
        <div class="import-result" data-testid={result.dry_run ? "import-preview" : "import-applied"} aria-live="polite">
          <h4>{result.dry_run ? "Would change (dry run)" : "Applied"}</h4>
          <DiffList title="Departments added" items={result.departments_added} kind="add" />
          <DiffList title="Departments updated" items={result.departments_updated} kind="upd" />
          <DiffList title="Users added" items={result.users_added} kind="add" />
          <DiffList title="Users updated" items={result.users_updated} kind="upd" />
          <DiffList title="Groups added" items={result.groups_added} kind="add" />
          <DiffList title="Groups updated" items={result.groups_updated} kind="upd" />
          <DiffList title={result.dry_run ? (removeMissing ? "Users to offboard" : "Users not in the file (kept)") : "Users not in the file"} items={result.missing} kind="del" />
          <DiffList title="Offboarded" items={result.offboarded} kind="del" />
          <p class="hint">{result.users_unchanged} users unchanged.</p>
        </div>
      )}
    </section>
  );
}

/** A small form of text fields whose submit calls save(values); it says what happened. */
function QuickForm(props: { id: string; title: string; fields: [string, string, string?][]; submit: string; save: (v: Record<string, string>) => Promise<string> }) {
  const empty = Object.fromEntries(props.fields.map(([k]) => [k, ""]));
  const [v, setV] = useState<Record<string, string>>(empty);
  const [error, setError] = useState("");
  const [done, setDone] = useState("");
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      setDone(await props.save(v));
      setError("");
      setV(empty);
    } catch (err) {
      setError(describe(err));
      setDone("");
    }
  };
  return (
    <form class="card" onSubmit={submit} aria-labelledby={`${props.id}-h`}>
      <h4 id={`${props.id}-h`}>{props.title}</h4>
      {props.fields.map(([k, label, hint]) => (
        <Field id={`${props.id}-${k}`} label={label} hint={hint}>
          <input id={`${props.id}-${k}`} value={v[k]} onInput={(e) => setV({ ...v, [k]: e.currentTarget.value })} />
        </Field>
      ))}
      <div>
        <button type="submit">{props.submit}</button>
      </div>
      <Alert error={error} />
      {done && (
        <p role="status" class="ok">
          {done}
        </p>
      )}
    </form>
  );
}

function Directory() {
  const [data, error, reload] = usePoll(
    async () => {
      const [u, d, g] = await Promise.all([
        call<{ users: User[] }>("GET", "/v1/users"),
        call<{ departments: Department[] }>("GET", "/v1/departments"),
        call<{ groups: Group[] }>("GET", "/v1/groups"),
      ]);
      return { users: u.users ?? [], depts: d.departments ?? [], groups: g.groups ?? [] };
    },
    0,
    [],
  );
  const [dept, setDept] = useState("");
  const [filter, setFilter] = useState("");
  const [leaving, setLeaving] = useState<User | null>(null);
  const [opError, setOpError] = useState("");
  const dialog = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    if (leaving) dialog.current?.showModal();
    else dialog.current?.close();
  }, [leaving]);
  const offboard = async () => {
    if (!leaving) return;
    try {
      await call("DELETE", path("/v1/users/", leaving.id));
      setOpError("");
      setLeaving(null);
      reload();
    } catch (err) {
      setOpError(describe(err));
      setLeaving(null);
    }
  };
  const users = (data?.users ?? []).filter((u) => (!dept || u.department === dept) && (!filter || (u.id + " " + u.name).toLowerCase().includes(filter.toLowerCase())));
  return (
    <section aria-labelledby="dir-h">
      <h2 id="dir-h">Directory</h2>
      <Alert error={error || opError} />
      <div class="split">
        <div>
          <h3>Departments</h3>
          <DeptTree depts={data?.depts ?? []} users={data?.users ?? []} selected={dept} onSelect={setDept} />
          <QuickForm
            id="dept-form"
            title="Add or move a department"
            fields={[
              ["id", "Department id"],
              ["name", "Name"],
              ["parent", "Parent id", "empty: a root"],
            ]}
            submit="Save department"
            save={async (v) => {
              await call("PUT", path("/v1/departments/", v.id.trim()), { body: { name: v.name.trim() || v.id.trim(), parent: v.parent.trim() } });
              reload();
              return `Saved department ${v.id.trim()}.`;
            }}
          />
          <h3>Groups</h3>
          <ul class="groups">
            {(data?.groups ?? []).map((g) => (
              <li key={g.id} data-group={g.id}>
                <strong>{g.name || g.id}</strong> <span class="hint">group:{g.id}</span>
                <div class="hint">{g.members.join(", ") || "no members"}</div>
              </li>
            ))}
          </ul>
          <QuickForm
            id="group-form"
            title="Create or replace a group"
            fields={[
              ["id", "Group id"],
              ["name", "Name"],
              ["members", "Members", "user ids, comma-separated"],
            ]}
            submit="Save group"
            save={async (v) => {
              const members = v.members.split(/[,\s]+/).filter(Boolean);
              await call("PUT", path("/v1/groups/", v.id.trim()), { body: { name: v.name.trim() || v.id.trim(), members } });
              reload();
              return `Saved group ${v.id.trim()} (${members.length} members).`;
            }}
          />
        </div>
        <div>
          <h3>
            Users{dept && ` in ${dept}`} <span class="hint">({users.length})</span>
          </h3>
          <Field id="user-filter" label="Filter users">
            <input id="user-filter" type="search" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} />
          </Field>
          <div class="table-wrap">
            <table class="users">
              <thead>
                <tr>
                  <th scope="col">Id</th>
                  <th scope="col">Name</th>
                  <th scope="col">Phone</th>
                  <th scope="col">Quiet hours</th>
                  <th scope="col">Department</th>
                  <th scope="col">
                    <span class="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {users.map((u) => (
                  <UserRow key={u.id} u={u} onChanged={reload} onOffboard={setLeaving} />
                ))}
              </tbody>
            </table>
          </div>
          <AddUser onAdded={reload} />
        </div>
      </div>
      <Import onApplied={reload} />
      <dialog ref={dialog} aria-labelledby="offboard-h" onClose={() => setLeaving(null)} class="confirm">
        <h3 id="offboard-h">Offboard {leaving?.id}?</h3>
        <p>
          This revokes {leaving?.name || leaving?.id}'s tokens, disconnects their devices and removes them from every group at once. They receive nothing more.
        </p>
        <button type="button" class="danger" id="offboard-confirm" onClick={offboard}>
          Offboard
        </button>{" "}
        <button type="button" class="secondary" onClick={() => setLeaving(null)}>
          Keep
        </button>
      </dialog>
    </section>
  );
}

// ---- send ----

const channelLabel: Record<Channel, string> = { inapp: "In-app", push: "Push", sms: "SMS", voice: "Call", email: "E-mail" };

function Timeline(props: { policy: Policy }) {
  const sends = plan(props.policy);
  const span = Math.max(1, ...sends.map((s) => s.at));
  return (
    <figure class="timeline" aria-label="Escalation steps">
      <ol>
        {sends.map((s, i) => (
          <li key={i} class={`step ch-${s.channel}`} style={{ "--at": String(s.at / span) } as Record<string, string>} data-step={`${s.channel}@${s.at}`}>
            <span class="dot" aria-hidden="true" />
            <span class="what">{channelLabel[s.channel]}</span> <span class="when">{s.at === 0 ? "at once" : "+" + formatDuration(s.at)}</span>
          </li>
        ))}
      </ol>
      <figcaption class="hint">Each recipient, until {props.policy.until === "read" ? "they read it" : "they confirm"}; later steps stop then.</figcaption>
    </figure>
  );
}

function PolicyBuilder(props: { text: string; onText: (t: string) => void }) {
  let p: Policy | null = null;
  let err = "";
  try {
    p = parsePolicy(props.text);
  } catch (e) {
    err = (e as Error).message;
  }
  const edit = (f: (q: Policy) => void) => {
    const q: Policy = p ? structuredClone(p) : { steps: [{ channel: "inapp", after: 0, times: 1, every: 0 }], until: "confirmed" };
    f(q);
    props.onText(composePolicy(q));
  };
  const dur = (v: string): number => {
    try {
      return Math.round(parseDuration(v.trim() || "0s"));
    } catch {
      return 0;
    }
  };
  return (
    <fieldset class="policy">
      <legend>Escalation policy</legend>
      <Field id="policy-text" label="Policy" hint="channel[@delay][*times/every], e.g. inapp,sms@5m,voice@15m until=confirmed">
        <input id="policy-text" value={props.text} onInput={(e) => props.onText(e.currentTarget.value)} aria-invalid={!!err} aria-describedby="policy-err" />
      </Field>
      <p id="policy-err" class="error" role={err ? "alert" : undefined}>
        {err}
      </p>
      {p && (
        <>
          <table class="steps">
            <thead>
              <tr>
                <th scope="col">Channel</th>
                <th scope="col">After</th>
                <th scope="col">Times</th>
                <th scope="col">Every</th>
                <th scope="col">
                  <span class="visually-hidden">Remove</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {p.steps.map((s, i) => (
                <tr key={i}>
                  <td>
                    <select aria-label={`Step ${i + 1} channel`} value={s.channel} onChange={(e) => edit((q) => (q.steps[i].channel = e.currentTarget.value as Channel))}>
                      {channels.map((c) => (
                        <option value={c}>{channelLabel[c]}</option>
                      ))}
                    </select>
                  </td>
                  <td>
                    <input aria-label={`Step ${i + 1} after`} size={6} value={formatDuration(s.after)} onChange={(e) => edit((q) => (q.steps[i].after = dur(e.currentTarget.value)))} />
                  </td>
                  <td>
                    <input aria-label={`Step ${i + 1} times`} type="number" min={1} max={32} value={s.times} onChange={(e) => edit((q) => (q.steps[i].times = Math.max(1, +e.currentTarget.value || 1)))} />
                  </td>
                  <td>
                    <input aria-label={`Step ${i + 1} every`} size={6} value={s.times > 1 ? formatDuration(s.every) : ""} onChange={(e) => edit((q) => (q.steps[i].every = dur(e.currentTarget.value)))} />
                  </td>
                  <td>
                    <button type="button" class="secondary" aria-label={`Remove step ${i + 1}`} onClick={() => edit((q) => q.steps.splice(i, 1))} disabled={p!.steps.length === 1}>
                      ✕
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <div class="row">
            <button type="button" class="secondary" onClick={() => edit((q) => q.steps.push({ channel: "voice", after: Math.max(0, ...q.steps.map((s) => s.after)) + 300, times: 1, every: 0 }))}>
              Add a step
            </button>
            <label class="check">
              Until{" "}
              <select aria-label="Until" value={p.until} onChange={(e) => edit((q) => (q.until = e.currentTarget.value as "read" | "confirmed"))}>
                <option value="confirmed">confirmed</option>
                <option value="read">read</option>
              </select>
            </label>
          </div>
          <Timeline policy={p} />
        </>
      )}
    </fieldset>
  );
}

function NamedTimeline(props: { spec: string }) {
  try {
    return <Timeline policy={parsePolicy(props.spec)} />;
  } catch (e) {
    return <p class="hint">{props.spec} ({(e as Error).message})</p>;
  }
}

function Send() {
  const [dir] = usePoll(
    async () => {
      const [u, d, g, p] = await Promise.all([
        call<{ users: User[] }>("GET", "/v1/users"),
        call<{ departments: Department[] }>("GET", "/v1/departments"),
        call<{ groups: Group[] }>("GET", "/v1/groups"),
        call<{ policies: Record<string, string>; builtin_default: string }>("GET", "/v1/policies"),
      ]);
      return { users: u.users ?? [], depts: d.departments ?? [], groups: g.groups ?? [], policies: p.policies ?? {}, def: p.builtin_default };
    },
    0,
    [],
  );
  const [kind, setKind] = useState<"ding" | "message">("ding");
  const [from, setFrom] = useState("");
  const [to, setTo] = useState<string[]>([]);
  const [pick, setPick] = useState("");
  const [text, setText] = useState("");
  const [named, setNamed] = useState("");
  const [policy, setPolicy] = useState("inapp,sms@5m,voice@15m until=confirmed");
  const [saveName, setSaveName] = useState("");
  const [choices, setChoices] = useState("");
  const [critical, setCritical] = useState(false);
  const [error, setError] = useState("");
  const [note, setNote] = useState("");
  const [refused, setRefused] = useState<Refusal[]>([]);
  const addPick = () => {
    const xs = pick.split(/[,\s]+/).map((x) => x.trim()).filter(Boolean);
    if (xs.length) setTo([...to, ...xs.filter((x) => !to.includes(x))]);
    setPick("");
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    setError("");
    setNote("");
    setRefused([]);
    const recipients = [...to, ...pick.split(/[,\s]+/).filter(Boolean)];
    if (recipients.length === 0) {
      setError("Add at least one recipient.");
      return;
    }
    try {
      if (kind === "message") {
        const r = await call<{ id: string }>("POST", "/v1/messages", { body: { from, to: recipients, text } });
        setNote(`Message ${r.id} is durable.`);
        return;
      }
      const body: Record<string, unknown> = { from, to: recipients, text, critical };
      if (named) body.policy_name = named;
      else body.policy = policy;
      const cs = choices.split(",").map((c) => c.trim()).filter(Boolean);
      if (cs.length) body.choices = cs;
      const r = await call<{ id: string; refused: Refusal[] }>("POST", "/v1/dings", { body });
      if (r.refused?.length) setRefused(r.refused);
      location.hash = "#/ding/" + r.id;
    } catch (err) {
      setError(describe(err));
    }
  };
  const savePolicy = async () => {
    try {
      const r = await call<{ name: string; policy: string }>("PUT", path("/v1/policies/", saveName), { body: { policy } });
      setNote(`Saved policy ${r.name}: ${r.policy}`);
      setError("");
    } catch (err) {
      setError(describe(err));
    }
  };
  const options = [
    ...(dir?.users ?? []).map((u) => [u.id, u.name]),
    ...(dir?.groups ?? []).map((g) => ["group:" + g.id, g.name]),
    ...(dir?.depts ?? []).map((d) => ["dept:" + d.id, d.name]),
  ];
  return (
    <section aria-labelledby="send-h">
      <h2 id="send-h">Send a message or a DING</h2>
      <form class="card send" onSubmit={submit}>
        <fieldset class="row">
          <legend>Kind</legend>
          <label class="check">
            <input type="radio" name="kind" value="ding" checked={kind === "ding"} onChange={() => setKind("ding")} /> DING (escalates)
          </label>
          <label class="check">
            <input type="radio" name="kind" value="message" checked={kind === "message"} onChange={() => setKind("message")} /> Message
          </label>
        </fieldset>
        <Field id="send-from" label="From (a user id)">
          <input id="send-from" required value={from} list="recipients" onInput={(e) => setFrom(e.currentTarget.value)} />
        </Field>
        <Field id="send-to" label="Recipients" hint="users, group:ID, dept:ID, or phone numbers (+14155550100); Enter adds">
          <div class="picker">
            <input
              id="send-to"
              list="recipients"
              value={pick}
              onInput={(e) => setPick(e.currentTarget.value)}
              onKeyDown={(e) => {
                if (e.key === "Enter") {
                  e.preventDefault();
                  addPick();
                }
              }}
            />
            <button type="button" class="secondary" onClick={addPick}>
              Add
            </button>
          </div>
        </Field>
        <datalist id="recipients">
          {options.map(([v, n]) => (
            <option value={v}>{n}</option>
          ))}
        </datalist>
        <ul class="chips" aria-label="Chosen recipients">
          {to.map((r) => (
            <li key={r} data-recipient={r}>
              {r}{" "}
              <button type="button" class="link" aria-label={`Remove ${r}`} onClick={() => setTo(to.filter((x) => x !== r))}>
                ✕
              </button>
            </li>
          ))}
        </ul>
        <Field id="send-text" label="Text">
          <textarea id="send-text" required rows={3} value={text} onInput={(e) => setText(e.currentTarget.value)} />
        </Field>
        {kind === "ding" && (
          <>
            <Field id="send-named" label="Named policy">
              <select id="send-named" value={named} onChange={(e) => setNamed(e.currentTarget.value)}>
                <option value="">Custom (below)</option>
                {Object.entries(dir?.policies ?? {}).map(([n, p]) => (
                  <option value={n}>
                    {n}: {p}
                  </option>
                ))}
              </select>
            </Field>
            {named ? (
              <NamedTimeline spec={dir?.policies[named] ?? ""} />
            ) : (
              <>
                <PolicyBuilder text={policy} onText={setPolicy} />
                <div class="row">
                  <Field id="save-policy" label="Save this policy as">
                    <input id="save-policy" value={saveName} onInput={(e) => setSaveName(e.currentTarget.value)} />
                  </Field>
                  <button type="button" class="secondary" disabled={!saveName.trim()} onClick={savePolicy}>
                    Save policy
                  </button>
                </div>
              </>
            )}
            <Field id="send-choices" label="Choices (comma-separated, optional)">
              <input id="send-choices" value={choices} placeholder="attend, decline" onInput={(e) => setChoices(e.currentTarget.value)} />
            </Field>
            <label class="check">
              <input type="checkbox" checked={critical} onChange={(e) => setCritical(e.currentTarget.checked)} /> Critical (overrides quiet hours)
            </label>
          </>
        )}
        <div>
          <button type="submit" id="send-submit">
            {kind === "ding" ? "Send DING" : "Send message"}
          </button>
        </div>
        <Alert error={error} />
        {note && (
          <p role="status" class="ok">
            {note}
          </p>
        )}
        {refused.length > 0 && (
          <ul class="error">
            {refused.map((r) => (
              <li>
                {r.recipient}: refused ({r.reason})
              </li>
            ))}
          </ul>
        )}
      </form>
    </section>
  );
}

// ---- DINGs ----

function Dings() {
  // The API lists oldest first, a page at a time: walk the pages (from
  // where the last walk ended) and keep the newest 100.
  const newest = useRef<DingSummary[]>([]);
  const [data, error] = usePoll(
    async () => {
      for (;;) {
        const last = newest.current[newest.current.length - 1]?.id;
        const page = await call<{ dings: DingSummary[] }>("GET", "/v1/dings?limit=1000" + (last ? "&after=" + encodeURIComponent(last) : ""));
        newest.current = [...newest.current, ...(page.dings ?? [])].slice(-100);
        if ((page.dings ?? []).length < 1000) return newest.current;
      }
    },
    5000,
    [],
  );
  const ds = [...(data ?? [])].reverse();
  return (
    <section aria-labelledby="dings-h">
      <h2 id="dings-h">DINGs</h2>
      <Alert error={error} />
      {ds.length === 0 ? (
        <p class="empty">No DING yet.</p>
      ) : (
        <ul class="list">
          {ds.map((d) => (
            <li key={d.id}>
              <a href={`#/ding/${d.id}`}>{d.id}</a> from {d.from} to {d.recipients} recipient{d.recipients === 1 ? "" : "s"}, {time(d.created)}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

const eventLabel: Record<string, string> = {
  sent: "In-app: sent",
  delivered: "In-app: delivered",
  read: "Read",
  confirmed: "Confirmed",
  reminder: "In-app reminder",
  sending: "Sending",
  sms_queued: "SMS queued",
  sms_sent: "SMS sent",
  sms_delivered: "SMS delivered",
  sms_failed: "SMS failed",
  call_initiated: "Call started",
  call_ringing: "Call ringing",
  call_answered: "Call answered",
  call_completed: "Call completed",
  call_busy: "Call: busy",
  call_no_answer: "Call: no answer",
  call_failed: "Call failed",
  digits: "Keys pressed",
  reply: "SMS reply",
  exhausted: "Escalation exhausted",
  cancelled: "Cancelled",
};

function eventClass(ev: string, channel?: string): string {
  if (ev.startsWith("sms") || channel === "sms") return "sms";
  if (ev.startsWith("call") || ev === "digits" || channel === "voice") return "voice";
  if (ev === "confirmed" || ev === "read") return "done";
  if (ev.endsWith("failed") || ev === "quota_refused" || ev === "not_configured" || ev === "no_phone") return "bad";
  return "inapp";
}

function DingPage(props: { id: string }) {
  const [d, error, reload] = usePoll(() => call<DingStatus>("GET", path("/v1/dings/", props.id)), 1000, [props.id]);
  const [opError, setOpError] = useState("");
  const cancel = async () => {
    try {
      await call("POST", path("/v1/dings/", props.id, "/cancel"), { body: {} });
      reload();
    } catch (err) {
      setOpError(describe(err));
    }
  };
  const t0 = d ? Date.parse(d.created) : 0;
  const live = d?.recipients.some((r) => r.status === "pending");
  return (
    <section aria-labelledby="ding-h">
      <h2 id="ding-h">DING {props.id}</h2>
      <Alert error={error || opError} />
      {d && (
        <>
          <p>
            From <strong>{d.from}</strong>, {time(d.created)}. Policy <code data-testid="ding-policy">{d.policy}</code>
            {d.choices?.length ? <> · choices: {d.choices.join(", ")}</> : null}
            {d.critical && " · critical"}
            {d.cancelled && " · cancelled"}
          </p>
          <p class="hint" aria-live="polite">
            {live ? "Live: refreshed every second." : "Every recipient has ended."}{" "}
            {live && (
              <button type="button" class="danger" onClick={cancel}>
                Cancel pending steps
              </button>
            )}
          </p>
          <div class="recipients">
            {d.recipients.map((r) => (
              <article class={`recipient st-${r.status}`} key={r.recipient} data-recipient={r.recipient} data-status={r.status} aria-labelledby={`r-${r.recipient}`}>
                <h3 id={`r-${r.recipient}`}>
                  {r.recipient} <span class={`badge ${r.status}`}>{r.status}</span>
                </h3>
                <p class="hint">
                  {r.choice && <>Answer: {r.answer} ({r.choice}). </>}
                  {r.reached_by && <>Reached by {r.reached_by}. </>}
                  {r.next_step && <>Next step {time(r.next_step)}.</>}
                </p>
                <ol class="ledger">
                  {r.events.map((e, i) => (
                    <li key={i} class={`ev ${eventClass(e.event, e.channel)}`} data-event={e.event}>
                      <span class="at">+{formatDuration(Math.max(0, Math.round((Date.parse(e.at) - t0) / 1000)))}</span>{" "}
                      <span class="what">{eventLabel[e.event] ?? e.event.replace(/_/g, " ")}</span>
                      {e.channel && <span class="hint"> · {e.channel}</span>}
                      {e.device && <span class="hint"> · device {e.device}</span>}
                      {e.detail && <span class="hint"> · {e.detail}</span>}
                    </li>
                  ))}
                </ol>
              </article>
            ))}
          </div>
        </>
      )}
    </section>
  );
}

// ---- announcements ----

function Announcements() {
  const [stats, error, reload] = usePoll(() => call<AdminStats>("GET", "/v1/stats"), 5000, []);
  const [to, setTo] = useState("all");
  const [from, setFrom] = useState("");
  const [text, setText] = useState("");
  const [confirm, setConfirm] = useState(false);
  const [opError, setOpError] = useState("");
  const publish = async (e: Event) => {
    e.preventDefault();
    try {
      const body: Record<string, unknown> = { to: to.split(/[,\s]+/).filter(Boolean), text, confirm };
      if (from.trim()) body.from = from.trim();
      const r = await call<{ id: string }>("POST", "/v1/announcements", { body });
      location.hash = "#/announcement/" + r.id;
    } catch (err) {
      setOpError(describe(err));
    }
  };
  const anns = [...(stats?.announcements ?? [])].sort((a, b) => b.created.localeCompare(a.created));
  return (
    <section aria-labelledby="ann-h">
      <h2 id="ann-h">Announcements</h2>
      <form class="card" onSubmit={publish}>
        <h3>Publish</h3>
        <Field id="ann-to" label="To" hint="all, dept:ID, group:ID (several: comma-separated)">
          <input id="ann-to" required value={to} onInput={(e) => setTo(e.currentTarget.value)} />
        </Field>
        <Field id="ann-from" label="From (a user; empty: the admins)">
          <input id="ann-from" value={from} onInput={(e) => setFrom(e.currentTarget.value)} />
        </Field>
        <Field id="ann-text" label="Text">
          <textarea id="ann-text" required rows={3} value={text} onInput={(e) => setText(e.currentTarget.value)} />
        </Field>
        <label class="check">
          <input id="ann-confirm" type="checkbox" checked={confirm} onChange={(e) => setConfirm(e.currentTarget.checked)} /> Must confirm (escalates like a DING when re-DINGed)
        </label>
        <div>
          <button type="submit">Publish</button>
        </div>
        <Alert error={opError} />
      </form>
      <h3>
        Recent <button type="button" class="link" onClick={reload}>refresh</button>
      </h3>
      <Alert error={error} />
      {anns.length === 0 ? (
        <p class="empty">No announcement in the last 30 days.</p>
      ) : (
        <ul class="list">
          {anns.map((a) => (
            <li key={a.id}>
              <a href={`#/announcement/${a.id}`}>{time(a.created)}</a> to {a.to.join(", ")}: {a.read}/{a.total} read
              {a.confirm && `, ${a.confirmed} confirmed`}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function AnnouncementPage(props: { id: string }) {
  const [s, error] = usePoll(() => call<MessageStats>("GET", path("/v1/announcements/", props.id, "/stats?lists=1")), 1000, [props.id]);
  const [opError, setOpError] = useState("");
  const [note, setNote] = useState("");
  const [policy, setPolicy] = useState("inapp,sms@5m,voice@15m");
  const exportCSV = async (only: "unread" | "unconfirmed") => {
    try {
      const csv = await call<string>("GET", path("/v1/announcements/", props.id, `/stats?format=csv&only=${only}`), { text: true });
      download(`announcement-${props.id}-${only}.csv`, csv, "text/csv");
    } catch (err) {
      setOpError(describe(err));
    }
  };
  const reding = async () => {
    try {
      const r = await call<{ recipients: number; dings: string[]; refused?: Refusal[] }>("POST", path("/v1/announcements/", props.id, "/reding"), {
        body: { policy, unread: !s?.confirm },
      });
      const refused = r.refused?.length ? ` ${r.refused.length} refused (${r.refused.map((x) => `${x.recipient}: ${x.reason}`).join(", ")}).` : "";
      setNote(`Re-DINGed ${r.recipients} recipient${r.recipients === 1 ? "" : "s"}.${refused}`);
      setOpError("");
    } catch (err) {
      setOpError(describe(err));
    }
  };
  const pct = (n: number) => (s && s.total ? Math.round((100 * n) / s.total) : 0);
  return (
    <section aria-labelledby="a-h">
      <h2 id="a-h">Announcement</h2>
      <Alert error={error || opError} />
      {s && (
        <>
          <p>
            To {s.to.join(", ")}, {time(s.created)}
            {s.confirm && " · must confirm"}
          </p>
          <dl class="counts" data-testid="ann-counts">
            <div>
              <dt>Recipients</dt>
              <dd data-count="total">{s.total}</dd>
            </div>
            <div>
              <dt>Delivered</dt>
              <dd data-count="delivered">{s.delivered}</dd>
            </div>
            <div>
              <dt>Read</dt>
              <dd data-count="read">{s.read}</dd>
            </div>
            {s.confirm && (
              <div>
                <dt>Confirmed</dt>
                <dd data-count="confirmed">{s.confirmed}</dd>
              </div>
            )}
          </dl>
          <div class="charts">
            <ChartView
              testid="ann-ratio"
              label="Read ratio over time"
              summary={`Read ratio ${pct(s.read)}% (${s.read} of ${s.total}).`}
              config={{
                type: "line",
                data: {
                  labels: s.read_over_time.map((p) => new Date(p.at).toLocaleTimeString()),
                  datasets: [{ label: "read ratio", data: s.read_over_time.map((p) => p.ratio), fill: true, borderColor: "#0b5cd5", backgroundColor: "rgba(11,92,213,0.15)" }],
                },
                options: { scales: { y: { min: 0, max: 1 } } },
              }}
            />
            <ChartView
              testid="ann-funnel"
              label="Delivered, read and confirmed"
              summary={`${s.delivered} delivered, ${s.read} read${s.confirm ? `, ${s.confirmed} confirmed` : ""} of ${s.total}.`}
              config={{
                type: "bar",
                data: {
                  labels: s.confirm ? ["delivered", "read", "confirmed"] : ["delivered", "read"],
                  datasets: [{ label: "recipients", data: s.confirm ? [s.delivered, s.read, s.confirmed] : [s.delivered, s.read], backgroundColor: ["#7aa7e8", "#0b5cd5", "#17803d"] }],
                },
                options: { scales: { y: { min: 0, suggestedMax: s.total } }, plugins: { legend: { display: false } } },
              }}
            />
          </div>
          <div class="split">
            <div>
              <h3>
                Unread <span class="hint">({s.unread?.length ?? 0})</span>
              </h3>
              <ul class="people" data-testid="unread">
                {(s.unread ?? []).map((u) => (
                  <li key={u}>{u}</li>
                ))}
              </ul>
              <button type="button" class="secondary export-unread" onClick={() => exportCSV("unread")}>
                Export unread (CSV)
              </button>
            </div>
            {s.confirm && (
              <div>
                <h3>
                  Unconfirmed <span class="hint">({s.unconfirmed?.length ?? 0})</span>
                </h3>
                <ul class="people" data-testid="unconfirmed">
                  {(s.unconfirmed ?? []).map((u) => (
                    <li key={u}>{u}</li>
                  ))}
                </ul>
                <button type="button" class="secondary" onClick={() => exportCSV("unconfirmed")}>
                  Export unconfirmed (CSV)
                </button>
              </div>
            )}
          </div>
          <div class="card row">
            <Field id="reding-policy" label={`Re-DING everyone who has not ${s.confirm ? "confirmed" : "read"}, with the policy`}>
              <input id="reding-policy" value={policy} onInput={(e) => setPolicy(e.currentTarget.value)} />
            </Field>
            <button type="button" class="danger reding" onClick={reding}>
              Re-DING
            </button>
          </div>
          {note && (
            <p role="status" class="ok">
              {note}
            </p>
          )}
        </>
      )}
    </section>
  );
}

// ---- statistics ----

/** used as a percentage of budget (0 when there is no budget), to two decimals. */
function pctOf(used: number, budget: number): number {
  return budget > 0 ? Math.round((10000 * used) / budget) / 100 : 0;
}

function Stats() {
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const [depts, setDepts] = useState("");
  const q = new URLSearchParams();
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  if (depts.trim()) q.set("dept", depts.replace(/\s+/g, ""));
  const [s, error] = usePoll(() => call<AdminStats>("GET", "/v1/stats" + (q.size ? "?" + q : "")), 10000, [q.toString()]);
  const deps = s?.departments ?? [];
  const labels = deps.map((d) => d.department || "(none)");
  const spendMax = (b: number, used: number) => (b > 0 ? `${used} of ${b}` : `${used} (no budget)`);
  return (
    <section aria-labelledby="stats-h">
      <h2 id="stats-h">Statistics</h2>
      <div class="row">
        <Field id="stats-from" label="From (UTC day)">
          <input id="stats-from" type="date" value={from} onChange={(e) => setFrom(e.currentTarget.value)} />
        </Field>
        <Field id="stats-to" label="To (UTC day, included)">
          <input id="stats-to" type="date" value={to} onChange={(e) => setTo(e.currentTarget.value)} />
        </Field>
        <Field id="stats-dept" label="Departments" hint="ids, comma-separated; empty: all">
          <input id="stats-dept" value={depts} onChange={(e) => setDepts(e.currentTarget.value)} />
        </Field>
      </div>
      <Alert error={error} />
      {s && (
        <>
          <p class="hint">
            {time(s.from)} to {time(s.to)}. SMS {spendMax(s.sms_budget, s.total.counts.sms ?? 0)}; calls {spendMax(s.calls_budget, s.total.counts.calls ?? 0)}.
          </p>
          <div class="charts">
            <ChartView
              testid="stats-volume"
              label="DINGs, SMS and calls per department"
              summary={`${s.total.counts.dings_sent ?? 0} DINGs, ${s.total.counts.sms ?? 0} SMS, ${s.total.counts.calls ?? 0} calls in all.`}
              config={{
                type: "bar",
                data: {
                  labels,
                  datasets: [
                    { label: "DINGs", data: deps.map((d) => d.counts.dings_sent ?? 0), backgroundColor: "#0b5cd5" },
                    { label: "SMS", data: deps.map((d) => d.counts.sms ?? 0), backgroundColor: "#e39b22" },
                    { label: "calls", data: deps.map((d) => d.counts.calls ?? 0), backgroundColor: "#b3261e" },
                  ],
                },
              }}
            />
            <ChartView
              testid="stats-spend"
              label="SMS and calls spent against their budgets"
              summary={`SMS ${spendMax(s.sms_budget, s.total.counts.sms ?? 0)}; calls ${spendMax(s.calls_budget, s.total.counts.calls ?? 0)}.`}
              config={{
                type: "bar",
                data: {
                  labels: [s.sms_budget > 0 ? "SMS" : "SMS (no budget)", s.calls_budget > 0 ? "calls" : "calls (no budget)"],
                  datasets: [
                    {
                      label: "% of the budget spent",
                      data: [pctOf(s.total.counts.sms ?? 0, s.sms_budget), pctOf(s.total.counts.calls ?? 0, s.calls_budget)],
                      backgroundColor: "#e39b22",
                    },
                  ],
                },
                options: { scales: { y: { min: 0, suggestedMax: 100 } } },
              }}
            />
            <ChartView
              testid="stats-times"
              label="Median time to read and to confirm per department, seconds"
              summary={`Median time to read ${Math.round(s.total.time_to_read.median_seconds)} s, to confirm ${Math.round(s.total.time_to_confirm.median_seconds)} s.`}
              config={{
                type: "bar",
                data: {
                  labels,
                  datasets: [
                    { label: "read (median s)", data: deps.map((d) => d.time_to_read.median_seconds), backgroundColor: "#7aa7e8" },
                    { label: "confirm (median s)", data: deps.map((d) => d.time_to_confirm.median_seconds), backgroundColor: "#17803d" },
                  ],
                },
              }}
            />
          </div>
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Department</th>
                  <th scope="col">Messages</th>
                  <th scope="col">DINGs</th>
                  <th scope="col">Pending</th>
                  <th scope="col">SMS</th>
                  <th scope="col">Calls</th>
                  <th scope="col">Read p90 (s)</th>
                  <th scope="col">Confirm p90 (s)</th>
                </tr>
              </thead>
              <tbody>
                {[...deps, { ...s.total, department: "Total" }].map((d) => (
                  <tr key={d.department} data-dept={d.department}>
                    <th scope="row">{d.department || "(none)"}</th>
                    <td>{d.counts.messages_sent ?? 0}</td>
                    <td>{d.counts.dings_sent ?? 0}</td>
                    <td>{d.dings_pending}</td>
                    <td>{d.counts.sms ?? 0}</td>
                    <td>{d.counts.calls ?? 0}</td>
                    <td>{Math.round(d.time_to_read.p90_seconds)}</td>
                    <td>{Math.round(d.time_to_confirm.p90_seconds)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <h3>Top unanswered</h3>
          {s.top_unanswered.length === 0 ? (
            <p class="empty">Nobody left a DING unanswered.</p>
          ) : (
            <ol class="people">
              {s.top_unanswered.map((u) => (
                <li key={u.user}>
                  {u.user}: {u.count}
                </li>
              ))}
            </ol>
          )}
        </>
      )}
    </section>
  );
}

// ---- operations ----

interface OpsSample {
  at: number;
  health: string;
  ready: string;
  connections: number;
  devices: number;
  p50: number;
  p99: number;
}

async function probe(p: string): Promise<string> {
  try {
    const r = await fetch(p, { cache: "no-store" });
    return r.ok ? "ok" : `HTTP ${r.status}`;
  } catch {
    return "unreachable";
  }
}

const grafanaKey = "ding.console.grafana";

function Ops() {
  const history = useRef<OpsSample[]>([]);
  const [metricsError, setMetricsError] = useState("");
  const [grafana, setGrafana] = useState(localStorage.getItem(grafanaKey) ?? "");
  const [s] = usePoll(
    async () => {
      const [health, ready] = await Promise.all([probe("/healthz"), probe("/readyz")]);
      let connections = NaN,
        devices = NaN,
        p50 = NaN,
        p99 = NaN;
      try {
        const m = parseMetrics(await call<string>("GET", "/metrics", { text: true }));
        connections = has(m, "ding_socket_connections") ? sum(m, "ding_socket_connections") : NaN;
        devices = sum(m, "ding_fanout_devices");
        p50 = quantile(m, "ding_engine_commit_duration_seconds", 0.5);
        p99 = quantile(m, "ding_engine_commit_duration_seconds", 0.99);
        setMetricsError("");
      } catch (err) {
        setMetricsError("/metrics: " + describe(err));
      }
      const sample = { at: Date.now(), health, ready, connections, devices, p50, p99 };
      history.current = [...history.current.slice(-59), sample];
      return sample;
    },
    5000,
    [],
  );
  const ms = (x: number) => (Number.isNaN(x) ? "—" : (x * 1000).toFixed(2) + " ms");
  const hs = history.current;
  return (
    <section aria-labelledby="ops-h">
      <h2 id="ops-h">Operations</h2>
      <Alert error={metricsError} />
      {s && (
        <>
          <dl class="counts">
            <div>
              <dt>Health (/healthz)</dt>
              <dd data-health={s.health} class={s.health === "ok" ? "good" : "bad"}>
                {s.health}
              </dd>
            </div>
            <div>
              <dt>Ready (/readyz)</dt>
              <dd data-ready={s.ready} class={s.ready === "ok" ? "good" : "bad"}>
                {s.ready}
              </dd>
            </div>
            <div>
              <dt>Socket connections</dt>
              <dd data-testid="connections">{Number.isNaN(s.connections) ? "—" : s.connections}</dd>
            </div>
            <div>
              <dt>Devices attached</dt>
              <dd data-testid="devices">{s.devices}</dd>
            </div>
            <div>
              <dt>Commit p50 / p99</dt>
              <dd data-testid="commit-latency">
                {ms(s.p50)} / {ms(s.p99)}
              </dd>
            </div>
          </dl>
          <ChartView
            testid="ops-latency"
            label="Group commit latency, milliseconds, since this page opened"
            summary="Quantiles of ding_engine_commit_duration_seconds since dingd started, sampled every 5 s while this page is open."
            config={{
              type: "line",
              data: {
                labels: hs.map((x) => new Date(x.at).toLocaleTimeString()),
                datasets: [
                  { label: "p50 ms", data: hs.map((x) => x.p50 * 1000), borderColor: "#0b5cd5" },
                  { label: "p99 ms", data: hs.map((x) => x.p99 * 1000), borderColor: "#b3261e" },
                ],
              },
            }}
          />
        </>
      )}
      <div class="card row">
        <Field id="grafana-url" label="Grafana dashboard URL" hint="import deploy/grafana/ding.json into Grafana, then paste its URL here (kept in this browser)">
          <input
            id="grafana-url"
            type="url"
            value={grafana}
            onInput={(e) => {
              setGrafana(e.currentTarget.value);
              localStorage.setItem(grafanaKey, e.currentTarget.value);
            }}
          />
        </Field>
        {/^https?:\/\//.test(grafana) && (
          <a href={grafana} target="_blank" rel="noopener noreferrer">
            Open the Grafana dashboard
          </a>
        )}
      </div>
    </section>
  );
}

// ---- the shell ----

const tabs: [string, string][] = [
  ["#/directory", "Directory"],
  ["#/send", "Send"],
  ["#/dings", "DINGs"],
  ["#/announcements", "Announcements"],
  ["#/stats", "Statistics"],
  ["#/ops", "Operations"],
];

function Console(props: { me: Admin; onSignOut: () => void }) {
  const hash = useHash();
  const [, route, id] = hash.split("/");
  let page;
  switch (route) {
    case "send":
      page = <Send />;
      break;
    case "dings":
      page = <Dings />;
      break;
    case "ding":
      page = <DingPage id={decodeURIComponent(id ?? "")} />;
      break;
    case "announcements":
      page = <Announcements />;
      break;
    case "announcement":
      page = <AnnouncementPage id={decodeURIComponent(id ?? "")} />;
      break;
    case "stats":
      page = <Stats />;
      break;
    case "ops":
      page = <Ops />;
      break;
    default:
      page = <Directory />;
  }
  const active = "#/" + (route === "ding" ? "dings" : route === "announcement" ? "announcements" : route || "directory");
  return (
    <div class="console">
      <header class="top">
        <h1>Ding console</h1>
        <span class="me" data-testid="me">
          {props.me.name}
        </span>
        <button type="button" class="secondary" onClick={props.onSignOut}>
          Sign out
        </button>
      </header>
      <nav class="tabs" aria-label="Sections">
        {tabs.map(([href, label]) => (
          <a href={href} aria-current={active === href ? "page" : undefined}>
            {label}
          </a>
        ))}
      </nav>
      <main>{page}</main>
    </div>
  );
}

function Root() {
  const [me, setMe] = useState<Admin | null>(null);
  const [checking, setChecking] = useState(!!savedToken());
  const [error, setError] = useState("");
  useEffect(() => {
    // A token revoked or expired while the console is open: back to sign-in, saying why.
    onUnauthenticated((err) => {
      forgetToken();
      setMe(null);
      setError(describe(err));
    });
    return () => onUnauthenticated(null);
  }, []);
  useEffect(() => {
    if (!savedToken()) return;
    call<Admin>("GET", "/v1/admins/me")
      .then(setMe)
      .catch((err) => {
        forgetToken();
        setError(describe(err));
      })
      .finally(() => setChecking(false));
  }, []);
  if (checking) return <p class="hint">Checking the saved token…</p>;
  if (!me)
    return (
      <>
        <Alert error={error} />
        <Login onSignedIn={setMe} />
      </>
    );
  return (
    <Console
      me={me}
      onSignOut={() => {
        forgetToken();
        setMe(null);
      }}
    />
  );
}

render(<Root />, document.getElementById("console")!);
