// Ding's web app: sign in with a user's client token, then chat over the
// WebSocket gateway with @dingmq/sdk. The view is Preact; the state is
// model.ts. Nothing is logged, and no message body is stored in the
// browser: the token alone is kept, in sessionStorage (this tab), until
// "Sign out".

import { render } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { DingClient, DingError, type WebSocketCtor } from "../../sdk/src/index.js";
import { ANNOUNCEMENTS, Model, tokenIdentity, type Conv, type Msg, type Tick } from "./model.js";

const TOKEN_KEY = "ding.app.token";
const SERVER_KEY = "ding.app.server";

function defaultServer(): string {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

type Status = "connecting" | "online" | "reconnecting";

interface Session {
  client: DingClient;
  model: Model;
  device: string;
}

/** Explains a refusal in words; the code name stays visible for support. */
function explain(e: unknown, server: string): string {
  if (e instanceof DingError) {
    switch (e.code) {
      case "BAD_TOKEN":
        return "The server refused this token (BAD_TOKEN): it is malformed, revoked, signed by another server, or its user no longer exists. Ask an admin for a new one.";
      case "TOKEN_EXPIRED":
        return "This token has expired (TOKEN_EXPIRED). Ask an admin for a new one.";
      case "DEVICE_MISMATCH":
        return "This token is for another device (DEVICE_MISMATCH).";
      case "RATE_LIMITED":
        return "Too many failed sign-ins from this address (RATE_LIMITED). Try again later.";
      case "REPLACED":
        return "This device signed in somewhere else (REPLACED): this page stopped.";
      case "USER_REMOVED":
        return "This user was removed (USER_REMOVED).";
      default:
        return `The server refused the connection (${e.code}).`;
    }
  }
  if (e instanceof RefusedError) {
    return `Could not open a WebSocket to ${server} (closed with code ${e.closeCode}): the server is not reachable, or it refused this page's origin (a page from another site is refused unless dingd --ws-origins allows it).`;
  }
  return e instanceof Error ? e.message : String(e);
}

class RefusedError extends Error {
  constructor(readonly closeCode: number) {
    super(`websocket closed (${closeCode})`);
  }
}

/**
 * Connects; rejects with the server's DingError (BAD_TOKEN, ...) or, when
 * the very first attempt closes before the server said anything (refused
 * origin, nothing listening), with a RefusedError, rather than retrying
 * for ever behind a spinner. Later drops reconnect (the SDK's backoff).
 */
async function signIn(token: string, server: string, onStatus: (s: Status) => void): Promise<Session> {
  const { user, device } = tokenIdentity(token);
  const model = new Model(user);
  let everOpen = false;
  let refuse: ((e: Error) => void) | undefined;
  const refused = new Promise<never>((_, reject) => (refuse = reject));
  refused.catch(() => {});
  const Base = globalThis.WebSocket;
  // The browser's WebSocket, watched: a close before any frame on the first attempt is a refusal.
  class Watched extends Base {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols);
      let heard = false;
      this.addEventListener("message", () => (heard = true));
      this.addEventListener("close", (ev) => {
        if (!everOpen && !heard && ev.code < 4000) refuse?.(new RefusedError(ev.code));
      });
    }
  }
  const client = new DingClient({
    url: server,
    token: token.trim(),
    device,
    cursor: 0n, // replay the whole stream: it is the app's only store
    WebSocket: Watched as unknown as WebSocketCtor,
    on: {
      message: (m) => model.onMessage(m),
      receipt: (r) => model.onReceipt(r),
      burn: (b) => model.onBurn(b),
      secret: (e) => model.onSecret(e),
      open: () => {
        everOpen = true;
        onStatus("online");
      },
      disconnect: () => onStatus("reconnecting"),
    },
  });
  try {
    await Promise.race([client.start(), refused]);
  } catch (e) {
    await client.close();
    throw e;
  }
  return { client, model, device };
}

function App() {
  const [session, setSession] = useState<Session | undefined>();
  const [status, setStatus] = useState<Status>("connecting");
  const [error, setError] = useState<string>("");
  const [busy, setBusy] = useState(false);
  const [stopped, setStopped] = useState<string>("");

  const start = async (token: string, server: string) => {
    setBusy(true);
    setError("");
    setStopped("");
    setStatus("connecting");
    try {
      const s = await signIn(token, server, setStatus);
      sessionStorage.setItem(TOKEN_KEY, token.trim());
      sessionStorage.setItem(SERVER_KEY, server);
      s.client.on("closed", (ev) => {
        if (ev.error) setStopped(explain(ev.error, server));
      });
      setSession(s);
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      setError(explain(e, server));
    } finally {
      setBusy(false);
    }
  };

  useEffect(() => {
    const t = sessionStorage.getItem(TOKEN_KEY);
    if (t) void start(t, sessionStorage.getItem(SERVER_KEY) || defaultServer());
  }, []);

  const signOut = async () => {
    sessionStorage.removeItem(TOKEN_KEY);
    const s = session;
    setSession(undefined);
    await s?.client.close();
  };

  if (!session) return <Login onSubmit={start} error={error} busy={busy} />;
  return <Chat session={session} status={status} stopped={stopped} onSignOut={signOut} />;
}

function Login(props: { onSubmit: (token: string, server: string) => void; error: string; busy: boolean }) {
  const [token, setToken] = useState("");
  const [server, setServer] = useState(defaultServer());
  const [local, setLocal] = useState("");
  const submit = (ev: Event) => {
    ev.preventDefault();
    try {
      tokenIdentity(token);
    } catch (e) {
      setLocal((e as Error).message);
      return;
    }
    setLocal("");
    props.onSubmit(token, server);
  };
  const err = local || props.error;
  return (
    <main class="login">
      <h1>Ding</h1>
      <form onSubmit={submit} aria-describedby={err ? "login-error" : undefined}>
        <label for="token">User token</label>
        <input
          id="token"
          name="token"
          type="password"
          required
          autocomplete="off"
          spellcheck={false}
          value={token}
          onInput={(e) => setToken((e.target as HTMLInputElement).value)}
        />
        <p class="hint">
          An admin mints it: <code>POST /v1/tokens</code> with <code>{'{"user":"kim","device":"web"}'}</code>, or{" "}
          <code>dingctl token --user kim --device web</code>.
        </p>
        <details>
          <summary>Server</summary>
          <label for="server">WebSocket URL</label>
          <input id="server" name="server" type="url" value={server} onInput={(e) => setServer((e.target as HTMLInputElement).value)} />
        </details>
        <button type="submit" disabled={props.busy}>
          {props.busy ? "Signing in…" : "Sign in"}
        </button>
        {err && (
          <p id="login-error" class="error" role="alert">
            {err}
          </p>
        )}
      </form>
    </main>
  );
}

function useModel(model: Model): number {
  const [v, setV] = useState(model.version);
  useEffect(() => {
    // Changes between the render and this effect (a replayed stream
    // arrives right after sign-in) notified no one: catch up first.
    setV(model.version);
    return model.subscribe(() => setV(model.version));
  }, [model]);
  return v;
}

/** The current time, every second while `on`. */
function useNow(on: boolean): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!on) return;
    const t = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(t);
  }, [on]);
  return now;
}

const statusText: Record<Status, string> = { connecting: "Connecting…", online: "Online", reconnecting: "Offline, reconnecting…" };

function Chat(props: { session: Session; status: Status; stopped: string; onSignOut: () => void }) {
  const { client, model } = props.session;
  useModel(model);
  const convs = model.conversations();
  const [active, setActive] = useState<string | undefined>();
  const conv = convs.find((c) => c.key === active);
  const [notice, setNotice] = useState("");

  // Read what the open conversation shows, while the page is visible.
  const asked = useRef(new Set<string>());
  const [visible, setVisible] = useState(document.visibilityState === "visible");
  useEffect(() => {
    const f = () => setVisible(document.visibilityState === "visible");
    document.addEventListener("visibilitychange", f);
    return () => document.removeEventListener("visibilitychange", f);
  }, []);
  useEffect(() => {
    if (!conv || !visible || props.status !== "online") return;
    const ids = conv.msgs.filter((m) => !m.mine && m.readAtMs === undefined && !asked.current.has(m.id)).map((m) => m.id);
    if (ids.length === 0) return;
    for (const id of ids) asked.current.add(id);
    client.read(ids).then(
      () => model.readHere(ids, Date.now()),
      () => {
        for (const id of ids) asked.current.delete(id); // tried again on the next change
      },
    );
  });

  return (
    <div class={`chat ${conv ? "has-conv" : ""}`}>
      <header class="top">
        <h1>Ding</h1>
        <span class="me">
          Signed in as <strong data-testid="me">{model.user}</strong>
        </span>
        <span role="status" class={`status ${props.status}`} data-status={props.status}>
          {statusText[props.status]}
        </span>
        <button type="button" onClick={props.onSignOut}>
          Sign out
        </button>
      </header>
      {props.stopped && (
        <p class="error" role="alert">
          {props.stopped}
        </p>
      )}
      <nav class="convs" aria-label="Conversations">
        <NewChat
          onOpen={(to) => {
            const key = to.split(",").map((s) => s.trim()).filter(Boolean).sort().join(",");
            model.open(key);
            setActive(key);
          }}
          onSecret={async (to, level) => {
            setNotice("");
            try {
              const id = await client.createChat(to.trim(), level);
              model.open(`secret:${id}`);
              setActive(`secret:${id}`);
            } catch (e) {
              setNotice(e instanceof DingError ? `Could not open a secret chat with ${to} (${e.code}).` : String(e));
            }
          }}
        />
        {notice && (
          <p class="error" role="alert">
            {notice}
          </p>
        )}
        <ul>
          {convs.map((c) => (
            <li key={c.key}>
              <button
                type="button"
                class={`conv ${c.key === active ? "active" : ""} ${c.chat ? "secret" : ""}`}
                aria-current={c.key === active ? "true" : undefined}
                data-conv={c.key}
                onClick={() => setActive(c.key)}
              >
                <span class="title">{c.title}</span>
                {c.unread > 0 && (
                  <span class="badge" aria-label={`${c.unread} unread`}>
                    {c.unread}
                  </span>
                )}
              </button>
            </li>
          ))}
        </ul>
        {convs.length === 0 && <p class="empty">No conversations yet.</p>}
      </nav>
      <main class="pane">
        {conv ? (
          <Conversation key={conv.key} conv={conv} session={props.session} onBack={() => setActive(undefined)} />
        ) : (
          <p class="empty">Choose a conversation, or start one.</p>
        )}
      </main>
    </div>
  );
}

function NewChat(props: { onOpen: (to: string) => void; onSecret: (to: string, level: 1 | 2 | 3) => void }) {
  const [to, setTo] = useState("");
  const [level, setLevel] = useState<1 | 2 | 3>(1);
  return (
    <form
      class="newchat"
      onSubmit={(e) => {
        e.preventDefault();
        if (to.trim()) props.onOpen(to);
        setTo("");
      }}
    >
      <label for="newchat-to">Chat with (user id)</label>
      <input id="newchat-to" value={to} autocomplete="off" required onInput={(e) => setTo((e.target as HTMLInputElement).value)} />
      <div class="row">
        <button type="submit">Open chat</button>
        <button
          type="button"
          onClick={() => {
            if (to.trim()) props.onSecret(to, level);
            setTo("");
          }}
        >
          Secret chat
        </button>
      </div>
      <label for="secret-level">Secret chat level</label>
      <select id="secret-level" value={level} onChange={(e) => setLevel(Number((e.target as HTMLSelectElement).value) as 1 | 2 | 3)}>
        <option value="1">1: pseudonyms, burn after reading</option>
        <option value="2">2: and a watermark; unread messages expire</option>
        <option value="3">3: and screenshot reports; keys in memory only</option>
      </select>
    </form>
  );
}

function Conversation(props: { conv: Conv; session: Session; onBack: () => void }) {
  const { conv } = props;
  const { client, model } = props.session;
  const [text, setText] = useState("");
  const burning = conv.msgs.some((m) => model.burnAt(m) !== undefined);
  const now = useNow(burning);
  const list = useRef<HTMLOListElement>(null);
  useEffect(() => {
    const el = list.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [conv.msgs.length]);

  const send = (ev: Event) => {
    ev.preventDefault();
    const body = text;
    if (!body.trim()) return;
    setText("");
    const chat = conv.chat?.id;
    const to = chat ? [] : conv.key.split(",");
    const local = model.addOutgoing(conv.key, to, body, chat);
    client.send(to, body, chat ? { chat } : {}).then(
      (r) => model.acked(local, r.id, r.createdMs),
      (e) => model.failed(local, e instanceof DingError ? e.code : "not sent"),
    );
  };
  const canSend = conv.key !== ANNOUNCEMENTS && !(conv.key.startsWith("secret:") && !conv.chat);

  return (
    <section class="conversation" aria-labelledby="conv-title">
      <header>
        <button type="button" class="back" onClick={props.onBack} aria-label="Back to conversations">
          ←
        </button>
        <h2 id="conv-title">{conv.title}</h2>
        {conv.chat && (
          <p class="secret-terms">
            You are <strong>{conv.chat.you}</strong>. Messages burn {Math.round(conv.chat.burnAfterMs / 1000)} s after they are read.
          </p>
        )}
      </header>
      <ol class="messages" ref={list} aria-live="polite" aria-label="Messages">
        {conv.msgs.map((m) => (
          <MessageView key={m.id} m={m} session={props.session} now={now} />
        ))}
      </ol>
      {canSend && (
        <form class="composer" onSubmit={send}>
          <label for="composer-text" class="visually-hidden">
            Message
          </label>
          <input
            id="composer-text"
            value={text}
            autocomplete="off"
            placeholder="Message"
            onInput={(e) => setText((e.target as HTMLInputElement).value)}
          />
          <button type="submit">Send</button>
        </form>
      )}
    </section>
  );
}

const tickText: Record<Tick, string> = {
  sending: "…",
  failed: "!",
  sent: "✓",
  delivered: "✓✓",
  read: "✓✓",
  confirmed: "✓✓",
};

function MessageView(props: { m: Msg; session: Session; now: number }) {
  const { m, now } = props;
  const { model } = props.session;
  const burnAt = model.burnAt(m);
  const tick = m.mine ? model.tick(m) : undefined;
  const noCopy = m.noCopy ? (e: Event) => e.preventDefault() : undefined;
  const time = useMemo(() => new Date(m.createdMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), [m.createdMs]);
  return (
    <li
      class={`msg ${m.mine ? "mine" : "theirs"} ${m.kind} ${m.chat ? "secret" : ""}`}
      data-id={m.id}
      data-kind={m.kind}
      onCopy={noCopy}
      onCut={noCopy}
      onContextMenu={noCopy}
    >
      {m.kind === "text" ? (
        <>
          {!m.mine && <span class="from">{m.from}</span>}
          <p class="body">{m.text}</p>
        </>
      ) : (
        <Card m={m} session={props.session} />
      )}
      {m.watermark && (
        <span class="watermark" aria-hidden="true">
          {m.watermark}
        </span>
      )}
      <span class="meta">
        <time dateTime={new Date(m.createdMs).toISOString()}>{time}</time>
        {tick && (
          <span class={`tick ${tick}`} data-tick={tick} aria-label={tick === "failed" ? `Not sent: ${m.failed}` : tick[0].toUpperCase() + tick.slice(1)}>
            {tickText[tick]}
          </span>
        )}
        {burnAt !== undefined && (
          <span class="burn" role="timer" data-burn-at={burnAt}>
            {burnAt > now ? `Burns in ${Math.ceil((burnAt - now) / 1000)} s` : "Burning…"}
          </span>
        )}
      </span>
    </li>
  );
}

/** A DING (choices, confirm) or an announcement (must-confirm). */
function Card(props: { m: Msg; session: Session }) {
  const { m } = props;
  const { client, model } = props.session;
  const [choice, setChoice] = useState(0);
  const [err, setErr] = useState("");
  const [busy, setBusy] = useState(false);
  const label = m.kind === "ding" ? `DING from ${m.from}` : m.from ? `Announcement from ${m.from}` : "Announcement";
  const confirm = async (ev: Event) => {
    ev.preventDefault();
    if (m.choices.length > 0 && choice === 0) {
      setErr("Choose an answer first.");
      return;
    }
    setErr("");
    setBusy(true);
    try {
      const r = await client.confirm(m.id, choice);
      model.confirmedHere(m.id, r.alreadyConfirmed ? r.alreadyConfirmed.answer : choice);
    } catch (e) {
      setErr(e instanceof DingError ? `Not confirmed (${e.code}).` : "Not confirmed: the connection dropped; try again.");
    } finally {
      setBusy(false);
    }
  };
  const confirmed = m.confirmed !== undefined;
  return (
    <article class="card" aria-label={label}>
      <h3>{label}</h3>
      <p class="body">{m.text}</p>
      {m.mustConfirm && !m.mine && (
        <form onSubmit={confirm}>
          {m.choices.length > 0 && (
            <fieldset disabled={confirmed}>
              <legend>Your answer</legend>
              {m.choices.map((c, i) => (
                <label key={i} class="choice">
                  <input
                    type="radio"
                    name={`choice-${m.id}`}
                    value={i + 1}
                    checked={choice === i + 1 || m.confirmed === i + 1}
                    onChange={() => setChoice(i + 1)}
                  />
                  {c}
                </label>
              ))}
            </fieldset>
          )}
          {confirmed ? (
            <p class="confirmed" data-confirmed={m.confirmed}>
              Confirmed{m.confirmed ? `: ${m.choices[m.confirmed - 1] ?? m.confirmed}` : ""}
            </p>
          ) : (
            <button type="submit" disabled={busy}>
              {m.kind === "ding" ? "Confirm" : "Confirm I have read this"}
            </button>
          )}
          {err && (
            <p class="error" role="alert">
              {err}
            </p>
          )}
        </form>
      )}
    </article>
  );
}

render(<App />, document.getElementById("app")!);
