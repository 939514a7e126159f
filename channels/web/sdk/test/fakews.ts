// A fake WebSocket and server side for the client's unit tests: each
// socket the client opens is handed to the test, which reads the client's
// frames and answers with server frames.
import { fromBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { encodeFrame, type WebSocketLike } from "../src/index.js";
import * as pb from "../src/gen/ding_pb.js";

const clientSchemas: Partial<Record<pb.FrameType, DescMessage>> = {
  [pb.FrameType.HELLO]: pb.HelloSchema,
  [pb.FrameType.SUBMIT]: pb.SubmitSchema,
  [pb.FrameType.ACK]: pb.AckSchema,
  [pb.FrameType.READ]: pb.ReadSchema,
  [pb.FrameType.PING]: pb.PingSchema,
  [pb.FrameType.PONG]: pb.PongSchema,
  [pb.FrameType.RECEIPTS_QUERY]: pb.ReceiptsQuerySchema,
  [pb.FrameType.CONFIRM]: pb.ConfirmSchema,
  [pb.FrameType.SECRET_CREATE]: pb.SecretCreateSchema,
  [pb.FrameType.SCREENSHOT]: pb.ScreenshotSchema,
};

export interface ClientFrame {
  type: pb.FrameType;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  msg: any;
}

export class FakeWS implements WebSocketLike {
  static sockets: FakeWS[] = [];
  static waiting: Array<(s: FakeWS) => void> = [];
  /** The next socket the client opens (already opened ones first). */
  static next(): Promise<FakeWS> {
    const s = FakeWS.sockets.shift();
    if (s) return Promise.resolve(s);
    return new Promise((r) => FakeWS.waiting.push(r));
  }
  static reset() {
    FakeWS.sockets = [];
    FakeWS.waiting = [];
  }

  binaryType = "blob";
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  private inbox: ClientFrame[] = [];
  private readers: Array<(f: ClientFrame) => void> = [];

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    queueMicrotask(() => {
      const w = FakeWS.waiting.shift();
      if (w) w(this);
      else FakeWS.sockets.push(this);
    });
  }

  // client side
  send(data: Uint8Array): void {
    if (this.readyState !== 1) throw new Error("send on a socket not open");
    const type = data[4] as pb.FrameType;
    const f = { type, msg: fromBinary(clientSchemas[type]!, data.subarray(5)) };
    const r = this.readers.shift();
    if (r) r(f);
    else this.inbox.push(f);
  }
  close(code = 1000, reason = ""): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  // server side
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  /** The client's next frame. */
  read(): Promise<ClientFrame> {
    const f = this.inbox.shift();
    if (f) return Promise.resolve(f);
    return new Promise((r) => this.readers.push(r));
  }
  /** The client's next frame of this type, skipping PINGs and ACKs unless asked for. */
  async expect(type: pb.FrameType): Promise<ClientFrame> {
    for (;;) {
      const f = await this.read();
      if (f.type === type) return f;
      if (f.type !== pb.FrameType.PING && f.type !== pb.FrameType.ACK) throw new Error(`got ${pb.FrameType[f.type]}, want ${pb.FrameType[type]}`);
    }
  }
  push<D extends DescMessage>(type: pb.FrameType, schema: D, init: Parameters<typeof encodeFrame<D>>[2]): void {
    const b = encodeFrame(type, schema, init);
    // As the browser hands it: an ArrayBuffer of its own.
    this.onmessage?.({ data: b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) });
  }
  welcome(init: Omit<MessageInitShape<typeof pb.WelcomeSchema>, "$typeName"> = {}): void {
    this.push(pb.FrameType.WELCOME, pb.WelcomeSchema, { user: "kim", device: "web", maxBody: 65536, maxInflight: 256, pingIntervalMs: 30000, ...init });
  }
  /** The server closes: an optional fatal ERROR, then the close code. */
  drop(code = 1006, err?: { code: pb.Code; detail?: string; redirect?: string }): void {
    if (err) this.push(pb.FrameType.ERROR, pb.ErrorSchema, { ...err, fatal: true });
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
}
