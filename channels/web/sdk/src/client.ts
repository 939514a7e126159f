// The client: one WebSocket at a time, a HELLO with the token, the stream
// handed to the application in order without repeats, sends resolved on
// the durable ack and resent across reconnects.
//
// Lifecycle of one session:
//
//   open socket -> HELLO{token, device, cursor: last} -> WELCOME
//     -> ACK{last}, resend unanswered SUBMITs in ref order
//     -> stream entries: drop seq <= last; emit; last = seq;
//        then (coalesced) store.set(last) and ACK{last}
//   socket lost or fatal ERROR -> requests other than sends fail with
//     DisconnectedError -> wait backoff -> open again
//   permanent ERROR (BAD_TOKEN, REPLACED, ...) or close() -> stop
//
// The SDK never logs: tokens and bodies stay out of consoles.

import { Backoff } from "./backoff.js";
import { StreamPosition } from "./dedupe.js";
import { ClosedError, DingError, DisconnectedError, permanentCodes } from "./errors.js";
import { decodeFrames, encodeFrame, FrameError, type ServerFrame } from "./frame.js";
import * as pb from "./gen/ding_pb.js";
import type { CursorStore } from "./store.js";

/** The part of the WebSocket API the client uses (the browser's, or the `ws` package's). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** ws:// or wss:// URL of the gateway: `dingd --ws` or /ws on the HTTP port. */
  url: string;
  /** The device's client token (admin API POST /v1/tokens). Never logged. */
  token: string;
  /** The device name in the token. */
  device: string;
  /** The last seq the app processed in an earlier run; beats the store. */
  cursor?: bigint;
  /** Where the cursor is kept between runs; default: memory only. */
  store?: CursorStore;
  /** The store's key; default: the device name. Use one per (user, device) when a browser holds several users. */
  storeKey?: string;
  /** The WebSocket implementation; default: globalThis.WebSocket. */
  WebSocket?: WebSocketCtor;
  /** Reconnect delay bounds in ms; default 50 and 5000. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * Maps a NOT_OWNER redirect (a cluster member's socket address,
   * host:port) to the WebSocket URL to use instead. Without it, or when it
   * returns undefined, the client reconnects to `url` with backoff.
   */
  redirectURL?: (addr: string) => string | undefined;
  /** Bounds one attempt, open and handshake; default 5000 ms. */
  connectTimeoutMs?: number;
  /**
   * How long after each PING the client waits for the server to send
   * anything before it takes the server for gone and reconnects; default a
   * third of the server's ping interval (10 s). It pings every interval,
   * and also when a request it sent meets a quarter of this in silence. A
   * node that froze (paused, hung, a network dropping packets) sends no
   * close: a client with something to send leaves it within 1.25 of this
   * (12.5 s), an idle one within an interval more; without it, after
   * three silent ping intervals (90 s).
   */
  pongTimeoutMs?: number;
  /** Listeners subscribed before the first byte is read (the same as on() right after connect resolves). */
  on?: { [K in keyof Events]?: (ev: Events[K]) => void };
}

/** A message of the stream (DELIVER). */
export interface Message {
  seq: bigint;
  id: string;
  from: string;
  to: string[];
  kind: pb.Kind;
  body: Uint8Array;
  createdMs: number;
  /** DING: the menu; confirm(id, n) answers choice n (1-based). */
  choices: string[];
  /** Must-confirm announcement: answer with confirm(id, 0). */
  confirm: boolean;
  forwardOf: string;
  quoteOf: string;
  /** Secret chat: set, and from/to are pseudonyms. */
  chat: string;
  level: number;
  burnAfterMs: number;
  /** Honour these: no clipboard, no forward or quote. */
  noCopy: boolean;
  noForward: boolean;
  watermark: string;
}

export interface Receipt {
  seq: bigint;
  ids: string[];
  user: string;
  state: pb.State;
  atMs: number;
}

export interface DingEvent {
  seq: bigint;
  id: string;
  index: number;
  recipient: string;
  event: string;
  channel: string;
  device: string;
  detail: string;
  atMs: number;
}

/** A secret message burned: delete it, and all derived from it, at once. */
export interface Burn {
  seq: bigint;
  id: string;
}

export interface SecretEvent {
  seq: bigint;
  chat: string;
  event: string;
  id: string;
  by: string;
  level: number;
  burnAfterMs: number;
  you: string;
  peer: string;
  atMs: number;
}

export interface SendResult {
  id: string;
  createdMs: number;
  /** The client_msg_id was seen before: id is the original's. */
  duplicate: boolean;
}

export interface SendOptions {
  kind?: pb.Kind.TEXT | pb.Kind.DATA;
  /** Retries with the same id are stored once; default: a random one. */
  clientMsgId?: string;
  /** Send in this secret chat (to must then be empty). */
  chat?: string;
  forwardOf?: string;
  quoteOf?: string;
}

export interface Welcome {
  user: string;
  device: string;
  head: bigint;
  resumeFrom: bigint;
  maxBody: number;
  maxInflight: number;
  pingIntervalMs: number;
}

export interface Events {
  message: Message;
  receipt: Receipt;
  ding: DingEvent;
  burn: Burn;
  secret: SecretEvent;
  /** Each session that starts. */
  open: Welcome;
  /** Each session that ends; error says why (undefined: close()). */
  disconnect: { error?: Error };
  /** A server ERROR not tied to a pending request, or a fatal one. */
  error: DingError;
  /** The client stopped for good: close(), or a permanent error. */
  closed: { error?: Error };
}

type Listener<T> = (ev: T) => void;

interface PendingSubmit {
  ref: bigint;
  frame: Uint8Array;
  sent: boolean;
  resolve: (r: SendResult) => void;
  reject: (e: Error) => void;
}

interface PendingRequest {
  resolve: (f: ServerFrame) => void;
  reject: (e: Error) => void;
}

const enc = new TextEncoder();

/** Connects and resolves once the first session is open; rejects with a DingError on a permanent error (e.g. BAD_TOKEN). */
export async function connect(opts: ConnectOptions): Promise<DingClient> {
  const c = new DingClient(opts);
  await c.start();
  return c;
}

export class DingClient {
  private readonly opts: ConnectOptions;
  private readonly WS: WebSocketCtor;
  private readonly backoff: Backoff;
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();
  private readonly pos = new StreamPosition();
  private readonly storeKey: string;

  private ws: WebSocketLike | undefined;
  private session: Welcome | undefined; // set while a session is open
  private welcomeSeen: Welcome | undefined;
  private stopped: Error | null | undefined; // undefined: running; null: close(); Error: permanent
  private nextRef = 0n;
  private readonly submits = new Map<bigint, PendingSubmit>();
  private readonly requests = new Map<bigint, PendingRequest>();
  private openWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private acked = 0n;
  private ackScheduled = false;
  private stored: bigint | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private probeTimer: ReturnType<typeof setTimeout> | undefined;
  private pongWait = 10000;
  /** Messages heard from the server; counted, not timed (a clock's ms can hold a request and its answer). */
  private heard = 0;
  private pingHeard = -1; // heard when the last PING went out (-1: none)
  private askedHeard = 0; // heard when the last request went out
  private lastAsked = 0;
  private lastHeard = 0;
  private url: string;
  private idPrefix = randomHex(12); // 96 bits, as §6 asks
  private idSeq = 0;
  private closedPromise: Promise<void> | undefined;
  // Stream entries that arrive before connect() has resolved wait here,
  // unacked, until a task after it: an app that subscribes right after
  // `await connect()` misses none (a WebSocket can hand several messages
  // over in one task).
  private holding = true;
  // The user the stored cursor belongs to, until the first WELCOME checks it.
  private storedUser: string | undefined;
  private held: Array<() => void> = [];
  private resolveClosed: (() => void) | undefined;

  constructor(opts: ConnectOptions) {
    this.opts = opts;
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (!WS) throw new Error("ding: no WebSocket implementation: pass connect({WebSocket})");
    this.WS = WS;
    this.backoff = new Backoff(opts.minBackoffMs ?? 50, opts.maxBackoffMs ?? 5000);
    this.storeKey = opts.storeKey ?? opts.device;
    this.url = opts.url;
    for (const [k, fn] of Object.entries(opts.on ?? {})) if (fn) this.on(k as "open", fn as Listener<Welcome>);
  }

  /**
   * Subscribes to an event; returns the unsubscribe function. Listeners
   * run synchronously, in stream order; an entry is acked once its
   * listeners have returned. A listener that throws does not stop the
   * others or the client: its error is reported as uncaught (reportError
   * in browsers), and the entry still counts as received.
   */
  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => void set.delete(fn as Listener<never>);
  }

  /** The last seq handed to the application (the cursor to resume from). */
  get cursor(): bigint | undefined {
    return this.pos.last;
  }

  /** The current session's WELCOME, or undefined while disconnected. */
  get welcome(): Welcome | undefined {
    return this.session;
  }

  /** @internal Starts the first session; see connect(). */
  async start(): Promise<void> {
    let cursor = this.opts.cursor;
    if (cursor === undefined && this.opts.store) {
      const rec = await this.opts.store.get(this.storeKey);
      cursor = rec?.seq;
      this.storedUser = rec?.user;
    }
    this.pos.last = cursor;
    this.stored = cursor;
    const opened = this.waitOpen();
    this.dial();
    try {
      await opened;
    } finally {
      setTimeout(() => {
        this.holding = false;
        const held = this.held;
        this.held = [];
        for (const h of held) h();
      }, 0);
    }
  }

  /**
   * Sends a message to `to` (user ids, group:ID, dept:ID), or in a secret
   * chat with opts.chat and `to` empty. Resolves once the server has it on
   * disk (SUBMIT_ACK); rejects with a DingError for the server's refusal
   * (MESSAGE_TOO_LARGE, UNKNOWN_RECIPIENT, RATE_LIMITED with retryAfterMs,
   * ...), or a ClosedError if the client stops first. Across reconnects it
   * is resent with its client_msg_id, so it is stored once.
   */
  send(to: string[], body: string | Uint8Array, opts: SendOptions = {}): Promise<SendResult> {
    if (this.stopped !== undefined) return Promise.reject(new ClosedError(this.stopped ?? undefined));
    const bytes = typeof body === "string" ? enc.encode(body) : body;
    const w = this.welcomeSeen;
    if (w && w.maxBody > 0 && bytes.length > w.maxBody) {
      return Promise.reject(new DingError({ code: pb.Code.MESSAGE_TOO_LARGE, detail: `body of ${bytes.length} bytes, above max_body ${w.maxBody}` }));
    }
    const ref = ++this.nextRef;
    const frame = encodeFrame(pb.FrameType.SUBMIT, pb.SubmitSchema, {
      ref,
      to,
      kind: opts.kind ?? pb.Kind.TEXT,
      body: bytes,
      clientMsgId: opts.clientMsgId ?? `${this.idPrefix}${(++this.idSeq).toString(36)}`,
      chat: opts.chat ?? "",
      forwardOf: opts.forwardOf ?? "",
      quoteOf: opts.quoteOf ?? "",
    });
    return new Promise<SendResult>((resolve, reject) => {
      this.submits.set(ref, { ref, frame, sent: false, resolve, reject });
      this.pumpSubmits();
    });
  }

  /** Marks messages read (for all the user's devices); resolves once durable. */
  async read(ids: string[]): Promise<void> {
    await this.request((ref) => encodeFrame(pb.FrameType.READ, pb.ReadSchema, { ref, ids }));
  }

  /**
   * Confirms a DING (answer: 1-based choice, 0 for none; a must-confirm
   * announcement takes 0). Resolves once durable, with the confirmation
   * that already stood if it was confirmed before (this answer then ignored).
   */
  async confirm(id: string, answer = 0): Promise<{ alreadyConfirmed?: { answer: number; choice: string; channel: string; atMs: number } }> {
    const f = await this.request((ref) => encodeFrame(pb.FrameType.CONFIRM, pb.ConfirmSchema, { ref, id, answer }));
    const a = f.type === pb.FrameType.OK ? f.msg.alreadyConfirmed : undefined;
    return a ? { alreadyConfirmed: { answer: a.answer, choice: a.choice, channel: a.channel, atMs: Number(a.atMs) } } : {};
  }

  /** Every recipient's state of a message you sent. */
  async receipts(id: string): Promise<Array<{ user: string; state: pb.State; deliveredMs: number; readMs: number; confirmedMs: number }>> {
    const f = await this.request((ref) => encodeFrame(pb.FrameType.RECEIPTS_QUERY, pb.ReceiptsQuerySchema, { ref, id }));
    if (f.type !== pb.FrameType.RECEIPTS) return [];
    return f.msg.recipients.map((r) => ({
      user: r.user,
      state: r.state,
      deliveredMs: Number(r.deliveredMs),
      readMs: Number(r.readMs),
      confirmedMs: Number(r.confirmedMs),
    }));
  }

  /** Creates a secret chat with `to` (level 1 to 3); resolves to its id. */
  async createChat(to: string, level: 1 | 2 | 3, burnAfterMs = 0): Promise<string> {
    const f = await this.request((ref) =>
      encodeFrame(pb.FrameType.SECRET_CREATE, pb.SecretCreateSchema, { ref, to, level, burnAfterMs: BigInt(burnAfterMs) }),
    );
    return f.type === pb.FrameType.OK ? f.msg.id : "";
  }

  /** Reports a screenshot in a level-3 secret chat. */
  async screenshot(chat: string, id = ""): Promise<void> {
    await this.request((ref) => encodeFrame(pb.FrameType.SCREENSHOT, pb.ScreenshotSchema, { ref, chat, id }));
  }

  /**
   * Stops the client: closes the socket (code 1000), rejects what is
   * pending with a ClosedError, and resolves once the socket has closed
   * and the cursor is stored. Idempotent.
   */
  async close(): Promise<void> {
    if (this.stopped === undefined) this.stop(null);
    await this.closedPromise;
  }

  // ---- internals ----

  private emit<K extends keyof Events>(event: K, ev: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<Events[K]>)(ev);
      } catch (e) {
        // As an EventTarget does: the other listeners and the client go
        // on, and the error surfaces as an uncaught one. The entry still
        // counts as handed to the app (a throwing listener would
        // otherwise stall the stream at that seq for ever).
        const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
        if (report) report(e);
        else
          queueMicrotask(() => {
            throw e;
          });
      }
    }
  }

  private waitOpen(): Promise<void> {
    if (this.session) return Promise.resolve();
    if (this.stopped !== undefined) return Promise.reject(new ClosedError(this.stopped ?? undefined));
    return new Promise((resolve, reject) => this.openWaiters.push({ resolve, reject }));
  }

  private async request(build: (ref: bigint) => Uint8Array): Promise<ServerFrame> {
    await this.waitOpen();
    const ref = ++this.nextRef;
    return new Promise<ServerFrame>((resolve, reject) => {
      this.requests.set(ref, { resolve, reject });
      this.write(build(ref));
      this.asked();
    });
  }

  private write(frame: Uint8Array): void {
    if (this.ws && this.ws.readyState === 1) this.ws.send(frame);
  }

  /** Writes the unsent submits, in ref order, within the server's inflight limit. */
  private pumpSubmits(): void {
    const s = this.session;
    if (!s) return;
    let inflight = 0;
    for (const p of this.submits.values()) if (p.sent) inflight++;
    const limit = s.maxInflight > 0 ? s.maxInflight : 256;
    for (const p of this.submits.values()) {
      if (inflight >= limit) break;
      if (p.sent) continue;
      p.sent = true;
      inflight++;
      this.write(p.frame);
      this.asked();
    }
  }

  private dial(): void {
    if (this.stopped !== undefined) return;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url, "ding.v1");
    } catch (e) {
      this.lost(e as Error);
      return;
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    let fatal: DingError | undefined;
    let ended = false;
    const timeout = setTimeout(() => {
      if (this.ws === ws && !this.session) ws.close(4000, "handshake timeout");
    }, this.opts.connectTimeoutMs ?? 5000);
    const end = (err: Error | undefined) => {
      if (ended) return;
      ended = true;
      clearTimeout(timeout);
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.lost(err);
    };
    ws.onopen = () => {
      const hello: { version: number; token: string; device: string; cursor?: bigint } = {
        version: 1,
        token: this.opts.token,
        device: this.opts.device,
      };
      if (this.pos.last !== undefined) hello.cursor = this.pos.last;
      ws.send(encodeFrame(pb.FrameType.HELLO, pb.HelloSchema, hello));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      this.heard++;
      let frames: ServerFrame[];
      try {
        frames = decodeFrames(toBytes(ev.data));
      } catch (e) {
        // Not a frame we understand: drop the connection, as the Go client does.
        ws.close(4000, "bad frame");
        end(e instanceof FrameError ? e : new FrameError(String(e)));
        return;
      }
      for (const f of frames) {
        if (this.ws !== ws) return;
        if (f.type === pb.FrameType.ERROR && f.msg.fatal) fatal = DingError.fromFrame(f.msg);
        if (f.type === pb.FrameType.WELCOME) clearTimeout(timeout);
        this.onFrame(ws, f);
      }
    };
    ws.onerror = () => {
      // The close event follows and says more.
    };
    ws.onclose = (ev) => {
      // A fatal ERROR frame is the reason; else a close code 4000+code
      // says the same when the frame itself was not read.
      let err: Error | undefined = fatal;
      if (!err && ev.code >= 4001 && ev.code < 5000) err = new DingError({ code: ev.code - 4000, detail: ev.reason, fatal: true });
      if (!err && this.stopped === undefined) err = new DisconnectedError(`ding: connection closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`);
      end(err);
    };
  }

  private onFrame(ws: WebSocketLike, f: ServerFrame): void {
    switch (f.type) {
      case pb.FrameType.WELCOME: {
        const m = f.msg;
        if (this.storedUser !== undefined && this.storedUser !== m.user) {
          // The stored cursor is another user's stream (one device name,
          // two accounts): resume from the server's cursor instead.
          this.storedUser = undefined;
          this.pos.last = undefined;
          this.stored = undefined;
          ws.close(4000, "cursor of another user");
          return;
        }
        this.storedUser = undefined;
        const w: Welcome = {
          user: m.user,
          device: m.device,
          head: m.head,
          resumeFrom: m.resumeFrom,
          maxBody: m.maxBody,
          maxInflight: m.maxInflight,
          pingIntervalMs: m.pingIntervalMs,
        };
        // Without a cursor, resume_from - 1 is only the server's start
        // point (maybe a --new-device-window): not acked, as it was not received.
        const hadCursor = this.pos.last !== undefined;
        this.pos.welcome(m.resumeFrom);
        this.session = w;
        this.welcomeSeen = w;
        this.backoff.reset();
        this.startPing(ws, w.pingIntervalMs || 30000);
        // The ack once after each handshake (§5), then the resends.
        if (hadCursor && this.pos.last !== undefined && this.pos.last > 0n) {
          this.acked = 0n;
          this.scheduleAck();
        }
        this.pumpSubmits();
        const waiters = this.openWaiters;
        this.openWaiters = [];
        for (const wt of waiters) wt.resolve();
        this.emit("open", w);
        return;
      }
      case pb.FrameType.DELIVER: {
        const m = f.msg;
        this.entry(m.seq, () =>
          this.emit("message", {
            seq: m.seq,
            id: m.id,
            from: m.from,
            to: m.to,
            kind: m.kind,
            body: m.body,
            createdMs: Number(m.createdMs),
            choices: m.choices,
            confirm: m.confirm,
            forwardOf: m.forwardOf,
            quoteOf: m.quoteOf,
            chat: m.chat,
            level: m.level,
            burnAfterMs: Number(m.burnAfterMs),
            noCopy: m.noCopy,
            noForward: m.noForward,
            watermark: m.watermark,
          }),
        );
        return;
      }
      case pb.FrameType.RECEIPT: {
        const m = f.msg;
        this.entry(m.seq, () => this.emit("receipt", { seq: m.seq, ids: m.ids, user: m.user, state: m.state, atMs: Number(m.atMs) }));
        return;
      }
      case pb.FrameType.DING_EVENT: {
        const m = f.msg;
        this.entry(m.seq, () =>
          this.emit("ding", {
            seq: m.seq,
            id: m.id,
            index: m.index,
            recipient: m.recipient,
            event: m.event,
            channel: m.channel,
            device: m.device,
            detail: m.detail,
            atMs: Number(m.atMs),
          }),
        );
        return;
      }
      case pb.FrameType.BURN: {
        const m = f.msg;
        this.entry(m.seq, () => this.emit("burn", { seq: m.seq, id: m.id }));
        return;
      }
      case pb.FrameType.SECRET_EVENT: {
        const m = f.msg;
        this.entry(m.seq, () =>
          this.emit("secret", {
            seq: m.seq,
            chat: m.chat,
            event: m.event,
            id: m.id,
            by: m.by,
            level: m.level,
            burnAfterMs: Number(m.burnAfterMs),
            you: m.you,
            peer: m.peer,
            atMs: Number(m.atMs),
          }),
        );
        return;
      }
      case pb.FrameType.SUBMIT_ACK: {
        const p = this.submits.get(f.msg.ref);
        if (!p) return;
        this.submits.delete(f.msg.ref);
        p.resolve({ id: f.msg.id, createdMs: Number(f.msg.createdMs), duplicate: f.msg.duplicate });
        this.pumpSubmits();
        return;
      }
      case pb.FrameType.OK:
      case pb.FrameType.RECEIPTS: {
        const r = this.requests.get(f.msg.ref);
        if (!r) return;
        this.requests.delete(f.msg.ref);
        r.resolve(f);
        return;
      }
      case pb.FrameType.ERROR: {
        const err = DingError.fromFrame(f.msg);
        const ref = f.msg.ref;
        const p = ref ? this.submits.get(ref) : undefined;
        if (p && !f.msg.fatal) {
          this.submits.delete(ref);
          p.reject(err);
          this.pumpSubmits();
          return;
        }
        const r = ref ? this.requests.get(ref) : undefined;
        if (r) {
          this.requests.delete(ref);
          r.reject(err);
          if (!f.msg.fatal) return;
        }
        // Fatal ones end the session in onclose, which reports them.
        if (!f.msg.fatal) this.emit("error", err);
        return;
      }
      case pb.FrameType.PING:
        this.write(encodeFrame(pb.FrameType.PONG, pb.PongSchema, { nonce: f.msg.nonce }));
        return;
      case pb.FrameType.PONG:
        return;
    }
  }

  /** Hands a stream entry to the application unless it is a repeat, then acks it (coalesced). */
  private entry(seq: bigint, handOut: () => void): void {
    if (this.holding) {
      this.held.push(() => this.entry(seq, handOut));
      return;
    }
    if (this.stopped !== undefined) return; // after close(): not handed out, not acked
    if (!this.pos.accept(seq)) return;
    try {
      handOut();
    } finally {
      this.scheduleAck();
    }
  }

  private scheduleAck(): void {
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    queueMicrotask(() => void this.flushAck());
  }

  /** Stores the cursor, then acks it: the server's cursor never passes the stored one. */
  private async flushAck(): Promise<void> {
    this.ackScheduled = false;
    const last = this.pos.last;
    if (last === undefined) return;
    const user = this.welcomeSeen?.user ?? "";
    if (this.opts.store && this.stored !== last) {
      try {
        await this.opts.store.set(this.storeKey, { user, seq: last });
        this.stored = last;
      } catch {
        // Not stored: the server's cursor (the ACK below) still moves on;
        // the next run resumes from it, with repeats dropped by seq only
        // within a run. The next entry retries the store.
      }
    }
    if (last > this.acked && this.session) {
      this.acked = last;
      this.write(encodeFrame(pb.FrameType.ACK, pb.AckSchema, { seq: last }));
    }
  }

  /** Stops the session's pings and the timers that wait on them. */
  private stopPinging(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    clearTimeout(this.pongTimer);
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  private startPing(ws: WebSocketLike, interval: number): void {
    this.stopPinging();
    this.pingHeard = -1;
    this.lastAsked = 0;
    this.lastHeard = Date.now();
    this.pongWait = this.opts.pongTimeoutMs ?? interval / 3;
    this.pingTimer = setInterval(() => {
      if (this.ws !== ws) return;
      // Silence for three intervals, not even a PONG: the server is gone.
      if (Date.now() - this.lastHeard > 3 * interval) {
        ws.close(4000, "server silent");
        return;
      }
      this.ping(ws);
    }, interval);
  }

  /** Sends a PING; nothing at all from the server within pongWait, not even its PONG: a frozen node. */
  private ping(ws: WebSocketLike): void {
    const heard = this.heard;
    this.pingHeard = heard;
    this.write(encodeFrame(pb.FrameType.PING, pb.PingSchema, { nonce: BigInt(Date.now()) }));
    clearTimeout(this.pongTimer);
    this.pongTimer = setTimeout(() => {
      if (this.ws === ws && this.heard === heard) ws.close(4000, "server silent after a PING");
    }, this.pongWait);
  }

  /**
   * A request went out (a SUBMIT, or one awaiting an answer): a quarter
   * of pongWait after the last one, if the server said nothing since,
   * ping at once rather than at the next interval, as the Go client does.
   */
  private asked(): void {
    const ws = this.ws;
    if (!ws || !this.session) return;
    this.lastAsked = Date.now();
    this.askedHeard = this.heard;
    if (this.probeTimer !== undefined) return;
    const look = (wait: number) => {
      this.probeTimer = setTimeout(() => {
        this.probeTimer = undefined;
        if (this.ws !== ws || this.heard > this.askedHeard) return; // heard since the last request
        const due = this.lastAsked + this.pongWait / 4 - Date.now();
        if (due > 0) return look(due); // requests went out since
        if (this.pingHeard !== this.heard) this.ping(ws); // (else a PING is unanswered: its timer runs)
      }, wait);
    };
    look(this.pongWait / 4);
  }

  /** A session ended (or an attempt failed): fail its requests, then reconnect or stop. */
  private lost(err: Error | undefined): void {
    this.stopPinging();
    const hadSession = this.session !== undefined;
    this.session = undefined;
    for (const p of this.submits.values()) p.sent = false;
    const reqs = [...this.requests.values()];
    this.requests.clear();
    for (const r of reqs) r.reject(new DisconnectedError(`ding: connection lost before the answer${err ? `: ${err.message}` : ""}`));
    if (this.stopped !== undefined) {
      this.finish();
      return;
    }
    if (hadSession) this.emit("disconnect", { error: err });
    if (err instanceof DingError) {
      if (permanentCodes.has(err.codeNumber)) {
        this.emit("error", err);
        this.stop(err);
        return;
      }
      this.emit("error", err);
    }
    let delay = this.backoff.next();
    if (err instanceof DingError && err.retryAfterMs > delay) delay = err.retryAfterMs;
    if (err instanceof DingError && err.code === "NOT_OWNER") {
      const to = err.redirect && this.opts.redirectURL?.(err.redirect);
      this.url = to || this.opts.url;
      if (to) delay = 0;
    } else {
      this.url = this.opts.url;
    }
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.dial();
    }, delay);
  }

  private stop(err: Error | null): void {
    if (this.stopped !== undefined) return;
    this.stopped = err;
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    clearTimeout(this.retryTimer);
    this.stopPinging();
    const closed = new ClosedError(err ?? undefined);
    const subs = [...this.submits.values()];
    this.submits.clear();
    for (const p of subs) p.reject(err ?? closed);
    const waiters = this.openWaiters;
    this.openWaiters = [];
    for (const w of waiters) w.reject(err ?? closed);
    const ws = this.ws;
    if (ws && ws.readyState < 2) {
      ws.close(1000);
      // finish() runs from onclose (via lost).
    } else {
      this.ws = undefined;
      this.finish();
    }
  }

  private finish(): void {
    const resolve = this.resolveClosed;
    if (!resolve) return;
    this.resolveClosed = undefined;
    this.session = undefined;
    const err = this.stopped ?? undefined;
    void this.flushAck().finally(() => {
      this.emit("closed", { error: err });
      resolve();
    });
  }
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) {
    // ws delivers fragmented messages as Buffer[] with binaryType "nodebuffer".
    const parts = data as Uint8Array[];
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
  throw new FrameError(`not a binary message (${typeof data})`);
}

function randomHex(bytes: number): string {
  const b = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
