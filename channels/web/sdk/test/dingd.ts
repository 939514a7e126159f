// Starts a real dingd on loopback for the integration tests: a temp data
// dir, ports chosen by the kernel (kept across a restart), the admin token
// from the data dir, users and client tokens through the admin HTTP API.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";

const repoRoot = resolve(import.meta.dirname, "../../../..");

let built: Promise<string> | undefined;

/** Builds cmd/dingd once per test process (or takes $DINGD). */
export function dingdBinary(): Promise<string> {
  if (process.env.DINGD) return Promise.resolve(process.env.DINGD);
  built ??= (async () => {
    // Under node_modules: ignored by git, replaced by every npm ci.
    const bin = resolve(import.meta.dirname, "../node_modules/.cache/ding-sdk/dingd");
    await promisify(execFile)("go", ["build", "-o", bin, "./cmd/dingd"], { cwd: repoRoot });
    return bin;
  })();
  return built;
}

export class Dingd {
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  socketAddr = "";
  httpAddr = "";
  wsAddr = "";
  adminToken = "";

  private constructor(
    readonly bin: string,
    readonly data: string,
  ) {}

  static async start(): Promise<Dingd> {
    const d = new Dingd(await dingdBinary(), await mkdtemp(join(tmpdir(), "ding-sdk-data-")));
    await d.run();
    d.adminToken = (await readFile(join(d.data, "admin.token"), "utf8")).trim();
    return d;
  }

  get wsURL(): string {
    return `ws://${this.wsAddr}/ws`;
  }

  /** Starts dingd; after stop(), on the same addresses. Resolves once it is listening. */
  async run(): Promise<void> {
    const args = [
      "--data", this.data,
      "--listen", this.socketAddr || "127.0.0.1:0",
      "--http", this.httpAddr || "127.0.0.1:0",
      "--ws", this.wsAddr || "127.0.0.1:0",
      "--log-level", "error",
    ];
    const p = spawn(this.bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.proc = p;
    // If this process dies first (a test timeout), take dingd with it.
    const reap = () => p.kill("SIGKILL");
    process.once("exit", reap);
    p.once("exit", () => process.off("exit", reap));
    this.exited = new Promise((r) => p.once("exit", () => r()));
    let stderr = "";
    await new Promise<void>((resolve, reject) => {
      const onData = (b: Buffer) => {
        stderr += b.toString();
        const m = /dingd: socket (\S+), http (\S+),/.exec(stderr);
        const w = /WebSocket ws:\/\/(\S+)\/ws/.exec(stderr);
        if (m && w) {
          [this.socketAddr, this.httpAddr, this.wsAddr] = [m[1]!, m[2]!, w[1]!];
          p.stderr!.off("data", onData);
          p.stderr!.resume(); // keep draining
          resolve();
        }
      };
      p.stderr!.on("data", onData);
      p.once("exit", (code) => reject(new Error(`dingd exited (${code}) before listening: ${stderr}`)));
    });
  }

  /** SIGTERM (dingd drains: clients get SHUTTING_DOWN), wait for exit, start again on the same ports. */
  async restart(): Promise<void> {
    await this.stop();
    await this.run();
  }

  async stop(): Promise<void> {
    this.proc?.kill("SIGTERM");
    await this.exited;
    this.proc = undefined;
  }

  async cleanup(): Promise<void> {
    await this.stop();
    await rm(this.data, { recursive: true, force: true });
  }

  async api(method: string, path: string, body?: unknown): Promise<any> {
    const res = await fetch(`http://${this.httpAddr}${path}`, {
      method,
      headers: { Authorization: `Bearer ${this.adminToken}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  }

  async addUser(id: string): Promise<void> {
    await this.api("PUT", `/v1/users/${id}`, { name: id, phone: "", quiet_hours: "", department: "" });
  }

  async token(user: string, device: string): Promise<string> {
    return (await this.api("POST", "/v1/tokens", { user, device, ttl_seconds: 3600 })).token;
  }
}
