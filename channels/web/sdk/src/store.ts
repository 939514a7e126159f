/**
 * A cursor store keeps, per key (by default the device name), the last seq
 * the application processed, so that a later run resumes after it.
 * Implementations must make set() durable before its promise resolves;
 * get() of a key never set resolves to undefined.
 */
export interface CursorStore {
  get(key: string): Promise<CursorRecord | undefined>;
  set(key: string, rec: CursorRecord): Promise<void>;
}

/** CursorRecord: the stream's user (from WELCOME) and the last processed seq. */
export interface CursorRecord {
  user: string;
  seq: bigint;
}

/** MemoryCursorStore keeps cursors for the life of the page or process. */
export class MemoryCursorStore implements CursorStore {
  private readonly m = new Map<string, CursorRecord>();
  async get(key: string): Promise<CursorRecord | undefined> {
    const r = this.m.get(key);
    return r && { ...r };
  }
  async set(key: string, rec: CursorRecord): Promise<void> {
    this.m.set(key, { ...rec });
  }
}

/**
 * IndexedDBCursorStore keeps cursors in a browser's IndexedDB (database
 * `dbName`, object store "cursors"), so a reload resumes where the page
 * left off. `factory` defaults to globalThis.indexedDB (fake-indexeddb in tests).
 */
export class IndexedDBCursorStore implements CursorStore {
  private db: Promise<IDBDatabase> | undefined;

  constructor(
    private readonly dbName = "ding-sdk",
    private readonly factory: IDBFactory = globalThis.indexedDB,
  ) {
    if (!factory) throw new Error("ding: IndexedDBCursorStore: no indexedDB in this environment");
  }

  private open(): Promise<IDBDatabase> {
    this.db ??= new Promise((resolve, reject) => {
      const req = this.factory.open(this.dbName, 1);
      req.onupgradeneeded = () => req.result.createObjectStore("cursors");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return this.db;
  }

  async get(key: string): Promise<CursorRecord | undefined> {
    const db = await this.open();
    const v = await new Promise<unknown>((resolve, reject) => {
      const req = db.transaction("cursors", "readonly").objectStore("cursors").get(key);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    if (!v || typeof v !== "object") return undefined;
    const r = v as { user?: unknown; seq?: unknown };
    if (typeof r.user !== "string" || typeof r.seq !== "string") return undefined;
    return { user: r.user, seq: BigInt(r.seq) };
  }

  async set(key: string, rec: CursorRecord): Promise<void> {
    const db = await this.open();
    await new Promise<void>((resolve, reject) => {
      // Durable once the transaction completes, not when put succeeds.
      const tx = db.transaction("cursors", "readwrite", { durability: "strict" });
      tx.objectStore("cursors").put({ user: rec.user, seq: rec.seq.toString() }, key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  /** Closes the database connection (tests; a page need not call it). */
  async close(): Promise<void> {
    if (this.db) (await this.db).close();
    this.db = undefined;
  }
}
