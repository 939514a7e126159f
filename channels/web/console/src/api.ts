// The admin HTTP API of the console's own origin, with the admin token
// pasted at sign-in (kept in this tab's sessionStorage only). Every error
// becomes an ApiError carrying the API's code and detail
// ({"error":{"code","detail"}}); the token is never logged.

const tokenKey = "ding.console.token";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

export function savedToken(): string {
  return sessionStorage.getItem(tokenKey) ?? "";
}
export function saveToken(tok: string): void {
  sessionStorage.setItem(tokenKey, tok);
}
export function forgetToken(): void {
  sessionStorage.removeItem(tokenKey);
}

let unauthenticated: ((err: ApiError) => void) | null = null;

/** Sets what happens when a call with the saved token gets 401 (the console signs out). */
export function onUnauthenticated(f: ((err: ApiError) => void) | null): void {
  unauthenticated = f;
}

export interface CallOptions {
  body?: unknown; // JSON-encoded unless raw
  raw?: string; // a body sent as is (CSV, or JSON text from a file)
  contentType?: string;
  text?: boolean; // the answer is text (CSV, /metrics), not JSON
  token?: string; // instead of the saved one (sign-in)
  noAuth?: boolean;
}

/** Calls the API; resolves with the decoded answer, rejects with an ApiError. */
export async function call<T>(method: string, path: string, o: CallOptions = {}): Promise<T> {
  const headers: Record<string, string> = {};
  const tok = o.token ?? savedToken();
  if (!o.noAuth && tok) headers.Authorization = "Bearer " + tok;
  let body: string | undefined;
  if (o.raw !== undefined) {
    body = o.raw;
    headers["Content-Type"] = o.contentType ?? "application/json";
  } else if (o.body !== undefined) {
    body = JSON.stringify(o.body);
    headers["Content-Type"] = "application/json";
  }
  let resp: Response;
  try {
    resp = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch {
    throw new ApiError(0, "UNREACHABLE", "the server did not answer; is dingd running?");
  }
  if (!resp.ok) {
    const err = await errorOf(resp);
    if (resp.status === 401 && o.token === undefined && !o.noAuth) unauthenticated?.(err);
    throw err;
  }
  if (o.text) return (await resp.text()) as T;
  if (resp.status === 204) return undefined as T;
  return (await resp.json()) as T;
}

async function errorOf(resp: Response): Promise<ApiError> {
  const text = await resp.text().catch(() => "");
  try {
    const e = JSON.parse(text).error;
    if (e && typeof e.code === "string") {
      let detail = String(e.detail ?? "");
      if (e.permission) detail += ` (needs the ${e.permission} permission)`;
      if (e.reason) detail += ` (${e.reason})`;
      return new ApiError(resp.status, e.code, detail);
    }
  } catch {
    // not the API's JSON error: say what the status says
  }
  return new ApiError(resp.status, `HTTP_${resp.status}`, resp.statusText || "request failed");
}

/** The message to show for anything a call threw. */
export function describe(err: unknown): string {
  if (err instanceof ApiError) {
    if (err.status === 401) return `${err.code}: ${err.detail}. Sign in again with a valid admin token.`;
    return `${err.code}: ${err.detail}`;
  }
  return err instanceof Error ? err.message : String(err);
}

// The API's shapes that the console reads (channels/httpapi/openapi.json).

export interface Admin {
  name: string;
  role?: string;
  permissions?: string[];
}
export interface User {
  id: string;
  name: string;
  phone?: string;
  email?: string;
  quiet_hours?: string;
  department?: string;
  status: string;
}
export interface Department {
  id: string;
  name: string;
  parent: string;
}
export interface Group {
  id: string;
  name: string;
  members: string[];
  derived: boolean;
}
export interface ImportResult {
  departments_added: string[];
  departments_updated: string[];
  users_added: string[];
  users_updated: string[];
  users_unchanged: number;
  groups_added: string[];
  groups_updated: string[];
  missing: string[];
  dry_run: boolean;
  offboarded: string[];
}
export interface LedgerEvent {
  at: string;
  event: string;
  channel?: string;
  device?: string;
  detail?: string;
}
export interface RecipientStatus {
  recipient: string;
  status: string;
  answer?: number;
  choice?: string;
  reached_by?: string;
  ended?: string;
  next_step?: string;
  events: LedgerEvent[];
}
export interface DingStatus {
  id: string;
  from: string;
  created: string;
  policy: string;
  choices?: string[];
  critical?: boolean;
  cancelled?: boolean;
  recipients: RecipientStatus[];
}
export interface DingSummary {
  id: string;
  from: string;
  created: string;
  recipients: number;
}
export interface Refusal {
  recipient: string;
  reason: string;
  retry_after?: number;
}
export interface MessageStats {
  id: string;
  from: string;
  to: string[];
  created: string;
  confirm?: boolean;
  total: number;
  pending: number;
  sent: number;
  delivered: number;
  read: number;
  confirmed: number;
  read_ratio: number;
  read_over_time: { at: string; read: number; ratio: number }[];
  unread?: string[];
  unconfirmed?: string[];
}
export interface Timing {
  count: number;
  median_seconds: number;
  p90_seconds: number;
}
export interface DepartmentStats {
  department: string;
  counts: {
    messages_sent?: number;
    messages_delivered?: number;
    messages_read?: number;
    dings_sent?: number;
    ding_recipients?: number;
    sms?: number;
    calls?: number;
    announcements?: number;
  };
  time_to_read: Timing;
  time_to_confirm: Timing;
  dings_pending: number;
}
export interface AdminStats {
  from: string;
  to: string;
  departments: DepartmentStats[];
  total: DepartmentStats;
  announcements: {
    id: string;
    from: string;
    to: string[];
    created: string;
    confirm?: boolean;
    total: number;
    read: number;
    confirmed: number;
    read_ratio: number;
  }[];
  sms_budget: number;
  calls_budget: number;
  top_unanswered: { user: string; count: number }[];
}

/** The path of id under prefix, escaped. */
export function path(prefix: string, id: string, suffix = ""): string {
  return prefix + encodeURIComponent(id) + suffix;
}
