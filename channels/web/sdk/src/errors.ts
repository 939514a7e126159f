import * as pb from "./gen/ding_pb.js";

/** The protocol's error code names (PROTOCOL.md §10), e.g. "BAD_TOKEN". */
export type CodeName = Exclude<keyof typeof pb.Code, number>;

/**
 * DingError is an ERROR from the server (or a WebSocket close code
 * 4000+code, when the ERROR frame itself was not read). `code` is the
 * protocol's name for it; `retry` says sending the same request again is
 * safe; `fatal` says the server closed the connection. `detail` never holds
 * message content.
 */
export class DingError extends Error {
  override name = "DingError";
  readonly code: CodeName | `UNKNOWN_${number}`;
  readonly codeNumber: number;
  readonly detail: string;
  readonly fatal: boolean;
  readonly retry: boolean;
  /** RATE_LIMITED: wait at least this long (ms) before retrying; 0 when not given. */
  readonly retryAfterMs: number;
  /** NOT_OWNER: the socket address (host:port) of the node serving the user; empty when none is known. */
  readonly redirect: string;

  constructor(e: { code: number; detail?: string; fatal?: boolean; retry?: boolean; retryAfterMs?: number; redirect?: string }) {
    const name = pb.Code[e.code] as CodeName | undefined;
    const code = name ?? (`UNKNOWN_${e.code}` as const);
    super(e.detail ? `ding: ${code}: ${e.detail}` : `ding: ${code}`);
    this.code = code;
    this.codeNumber = e.code;
    this.detail = e.detail ?? "";
    this.fatal = e.fatal ?? false;
    this.retry = e.retry ?? false;
    this.retryAfterMs = e.retryAfterMs ?? 0;
    this.redirect = e.redirect ?? "";
  }

  static fromFrame(m: pb.Error): DingError {
    return new DingError({ code: m.code, detail: m.detail, fatal: m.fatal, retry: m.retry, retryAfterMs: m.retryAfterMs, redirect: m.redirect });
  }
}

/**
 * DisconnectedError rejects a request (read, confirm, receipts, createChat,
 * screenshot) whose connection was lost before its answer: it may or may
 * not have been applied, and is not resent (sending it again is harmless).
 * A send is never rejected with it: sends are resent on the next
 * connection, with their client_msg_id, until answered.
 */
export class DisconnectedError extends Error {
  override name = "DisconnectedError";
}

/** ClosedError rejects what is pending when the client is closed, by close() or a permanent error. */
export class ClosedError extends Error {
  override name = "ClosedError";
  constructor(override readonly cause?: Error) {
    super(cause ? `ding: client stopped: ${cause.message}` : "ding: client closed");
  }
}

/**
 * Codes after which the client stops for good instead of reconnecting
 * (as the Go client does): the token, the device or the version will not
 * get better by retrying, and REPLACED means another instance uses the device.
 */
export const permanentCodes: ReadonlySet<number> = new Set([
  pb.Code.BAD_TOKEN,
  pb.Code.TOKEN_EXPIRED,
  pb.Code.DEVICE_MISMATCH,
  pb.Code.BAD_VERSION,
  pb.Code.REPLACED,
  pb.Code.USER_REMOVED,
]);
