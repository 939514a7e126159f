// The app's state: what the stream has said so far, folded into
// conversations. The stream is the source of truth: on each page load the
// app replays the user's stream from the start (cursor 0) and rebuilds this
// from it, so nothing here is stored in the browser (no message body ever
// reaches localStorage or IndexedDB). Messages this user sent are not in
// their stream (PROTOCOL.md §5): they live here for the page's lifetime.

import { Kind, State, type Burn, type Message, type Receipt, type SecretEvent } from "../../sdk/src/index.js";

export type Tick = "sending" | "failed" | "sent" | "delivered" | "read" | "confirmed";

export interface ChatInfo {
  id: string;
  you: string;
  peer: string;
  level: number;
  burnAfterMs: number;
}

export interface Msg {
  /** The server's id; "local:N" until the send is acknowledged. */
  id: string;
  conv: string;
  seq: bigint;
  from: string;
  to: string[];
  text: string;
  createdMs: number;
  mine: boolean;
  kind: "text" | "ding" | "announcement";
  choices: string[];
  mustConfirm: boolean;
  /** DING or must-confirm announcement: the answer given (0: none). */
  confirmed?: number;
  /** Incoming: read by this user (on any of their devices), and when. */
  readAtMs?: number;
  /** Outgoing: each recipient's state, by user id (a pseudonym in a secret chat). */
  rcpt: Map<string, { state: State; atMs: number }>;
  failed?: string;
  chat?: string;
  watermark: string;
  noCopy: boolean;
  burnAfterMs: number;
}

export interface Conv {
  key: string;
  title: string;
  chat?: ChatInfo;
  msgs: Msg[];
  unread: number;
  lastMs: number;
}

export const ANNOUNCEMENTS = "announcements";

const dec = new TextDecoder();

export class Model {
  readonly user: string;
  private readonly msgs = new Map<string, Msg>();
  private readonly chats = new Map<string, ChatInfo>();
  private readonly opened = new Set<string>();
  // Receipts for ids not known yet (an ack still on its way), applied when they are.
  private readonly early = new Map<string, Receipt[]>();
  private localSeq = 0;
  private listeners = new Set<() => void>();
  /** Bumped on every change (the view re-renders on it). */
  version = 0;

  constructor(user: string) {
    this.user = user;
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => void this.listeners.delete(fn);
  }

  private changed(): void {
    this.version++;
    for (const fn of [...this.listeners]) fn();
  }

  /** Opens (lists) a conversation that has no messages yet. */
  open(key: string): void {
    this.opened.add(key);
    this.changed();
  }

  chat(id: string): ChatInfo | undefined {
    return this.chats.get(id);
  }

  message(id: string): Msg | undefined {
    return this.msgs.get(id);
  }

  onMessage(m: Message): void {
    if (this.msgs.has(m.id)) return; // the SDK drops repeats by seq; ids are a second guard
    const kind = m.kind === Kind.DING ? "ding" : m.kind === Kind.ANNOUNCEMENT ? "announcement" : "text";
    const mine = m.from === this.user || (m.chat !== "" && this.chats.get(m.chat)?.you === m.from);
    const msg: Msg = {
      id: m.id,
      conv: this.convOf(m.chat, kind, m.from, m.to, mine),
      seq: m.seq,
      from: m.from,
      to: m.to,
      text: dec.decode(m.body),
      createdMs: m.createdMs,
      mine,
      kind,
      choices: m.choices,
      mustConfirm: kind === "ding" || m.confirm,
      rcpt: new Map(),
      chat: m.chat || undefined,
      watermark: m.watermark,
      noCopy: m.noCopy,
      burnAfterMs: m.burnAfterMs,
    };
    this.msgs.set(msg.id, msg);
    this.applyEarly(msg);
    this.changed();
  }

  onReceipt(r: Receipt): void {
    for (const id of r.ids) {
      const m = this.msgs.get(id);
      if (!m) {
        const l = this.early.get(id) ?? [];
        l.push(r);
        this.early.set(id, l);
        continue;
      }
      this.applyReceipt(m, r);
    }
    this.changed();
  }

  private applyEarly(m: Msg): void {
    const l = this.early.get(m.id);
    if (!l) return;
    this.early.delete(m.id);
    for (const r of l) this.applyReceipt(m, r);
  }

  private applyReceipt(m: Msg, r: Receipt): void {
    if (!m.mine) {
      // This user's own read or confirmation (on this device or another).
      if (r.state >= State.READ_STATE && m.readAtMs === undefined) m.readAtMs = r.atMs;
      if (r.state === State.CONFIRMED && m.confirmed === undefined) m.confirmed = 0;
      return;
    }
    const cur = m.rcpt.get(r.user);
    if (!cur || cur.state < r.state) m.rcpt.set(r.user, { state: r.state, atMs: r.atMs });
  }

  onBurn(b: Burn): void {
    if (this.msgs.delete(b.id)) this.changed();
  }

  onSecret(e: SecretEvent): void {
    if (e.event !== "created") return;
    this.chats.set(e.chat, { id: e.chat, you: e.you, peer: e.peer, level: e.level, burnAfterMs: e.burnAfterMs });
    this.changed();
  }

  /** A send begins: shown at once with a "sending" tick. Returns its local id. */
  addOutgoing(conv: string, to: string[], text: string, chat?: string): string {
    const id = `local:${++this.localSeq}`;
    const info = chat ? this.chats.get(chat) : undefined;
    this.msgs.set(id, {
      id,
      conv,
      seq: 0n,
      from: info ? info.you : this.user,
      to: info ? [info.peer] : to,
      text,
      createdMs: Date.now(),
      mine: true,
      kind: "text",
      choices: [],
      mustConfirm: false,
      rcpt: new Map(),
      chat,
      watermark: "",
      noCopy: info !== undefined,
      burnAfterMs: info?.burnAfterMs ?? 0,
    });
    this.changed();
    return id;
  }

  /** The send was acknowledged (durable): the message takes its id. */
  acked(local: string, id: string, createdMs: number): void {
    const m = this.msgs.get(local);
    if (!m) return;
    this.msgs.delete(local);
    m.id = id;
    m.createdMs = createdMs;
    this.msgs.set(id, m);
    this.applyEarly(m);
    this.changed();
  }

  failed(local: string, why: string): void {
    const m = this.msgs.get(local);
    if (!m) return;
    m.failed = why;
    this.changed();
  }

  /** This page confirmed a DING or an announcement (the receipt will say so too). */
  confirmedHere(id: string, answer: number): void {
    const m = this.msgs.get(id);
    if (!m) return;
    m.confirmed = answer;
    if (m.readAtMs === undefined) m.readAtMs = Date.now();
    this.changed();
  }

  /** This page read these (the receipt will say so too, with the server's time). */
  readHere(ids: string[], atMs: number): void {
    for (const id of ids) {
      const m = this.msgs.get(id);
      if (m && m.readAtMs === undefined) m.readAtMs = atMs;
    }
    this.changed();
  }

  tick(m: Msg): Tick {
    if (m.failed) return "failed";
    if (m.id.startsWith("local:")) return "sending";
    const who = m.to.filter((t) => !t.includes(":"));
    if (who.length === 0 || who.length < m.to.length) {
      // A group or department: the best state anyone reached.
      let best = State.SENT;
      for (const r of m.rcpt.values()) if (r.state > best) best = r.state;
      return stateTick(best);
    }
    let worst = State.CONFIRMED;
    for (const u of who) {
      const s = m.rcpt.get(u)?.state ?? State.SENT;
      if (s < worst) worst = s;
    }
    return stateTick(worst);
  }

  /** When a secret message burns, once it has been read; undefined before. */
  burnAt(m: Msg): number | undefined {
    if (!m.chat || m.burnAfterMs <= 0) return undefined;
    let readMs = m.readAtMs;
    if (m.mine) for (const r of m.rcpt.values()) if (r.state >= State.READ_STATE) readMs = r.atMs;
    return readMs === undefined ? undefined : readMs + m.burnAfterMs;
  }

  conversations(): Conv[] {
    const convs = new Map<string, Conv>();
    const get = (key: string): Conv => {
      let c = convs.get(key);
      if (!c) {
        const chat = key.startsWith("secret:") ? this.chats.get(key.slice(7)) : undefined;
        c = { key, title: this.title(key, chat), chat, msgs: [], unread: 0, lastMs: 0 };
        convs.set(key, c);
      }
      return c;
    };
    for (const key of this.opened) get(key);
    for (const chat of this.chats.values()) get(`secret:${chat.id}`);
    for (const m of this.msgs.values()) {
      const c = get(m.conv);
      c.msgs.push(m);
      if (!m.mine && m.readAtMs === undefined) c.unread++;
      if (m.createdMs > c.lastMs) c.lastMs = m.createdMs;
    }
    for (const c of convs.values()) c.msgs.sort((a, b) => a.createdMs - b.createdMs || (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
    return [...convs.values()].sort((a, b) => b.lastMs - a.lastMs || a.key.localeCompare(b.key));
  }

  private convOf(chat: string, kind: Msg["kind"], from: string, to: string[], mine: boolean): string {
    if (chat) return `secret:${chat}`;
    if (kind === "announcement") return ANNOUNCEMENTS;
    const others = new Set([from, ...to]);
    others.delete(this.user);
    if (mine && others.size === 0) return this.user; // to oneself
    return [...others].sort().join(",");
  }

  private title(key: string, chat?: ChatInfo): string {
    if (chat) return `Secret chat with ${chat.peer}`;
    if (key.startsWith("secret:")) return "Secret chat";
    if (key === ANNOUNCEMENTS) return "Announcements";
    return key.split(",").join(", ");
  }
}

function stateTick(s: State): Tick {
  switch (s) {
    case State.CONFIRMED:
      return "confirmed";
    case State.READ_STATE:
      return "read";
    case State.DELIVERED:
      return "delivered";
    default:
      return "sent";
  }
}

/** The user and device a client token names (its payload, not verified: the server does that). */
export function tokenIdentity(token: string): { user: string; device: string } {
  const parts = token.trim().split(".");
  if (parts.length !== 3) throw new Error("This is not a Ding token: a token has three parts separated by dots.");
  let claims: { knd?: string; sub?: string; dev?: string };
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
  } catch {
    throw new Error("This is not a Ding token: its middle part does not decode.");
  }
  if (claims.knd === "admin") throw new Error("This is an admin token: the app needs a user's client token (POST /v1/tokens).");
  if (claims.knd !== "client" || !claims.sub || !claims.dev) throw new Error("This is not a Ding client token: it names no user and device.");
  return { user: claims.sub, device: claims.dev };
}
