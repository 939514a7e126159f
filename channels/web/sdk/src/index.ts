/**
 * @dingmq/sdk: a TypeScript client for Ding's socket protocol over
 * WebSocket (channels/socket/PROTOCOL.md), for browsers and Node.
 *
 *   const c = await connect({ url: "ws://localhost:7443/ws", token, device: "web",
 *                             store: new IndexedDBCursorStore() });
 *   c.on("message", (m) => show(m));
 *   const { id } = await c.send(["kim"], "hello"); // durable
 */
export { connect, DingClient } from "./client.js";
export type {
  Burn,
  ConnectOptions,
  DingEvent,
  Events,
  Message,
  Receipt,
  SecretEvent,
  SendOptions,
  SendResult,
  WebSocketCtor,
  WebSocketLike,
  Welcome,
} from "./client.js";
export { ClosedError, DingError, DisconnectedError, type CodeName } from "./errors.js";
export { IndexedDBCursorStore, MemoryCursorStore, type CursorRecord, type CursorStore } from "./store.js";
export { Backoff } from "./backoff.js";
export { StreamPosition } from "./dedupe.js";
export { decodeFrame, decodeFrames, encodeFrame, FrameError, type ServerFrame } from "./frame.js";
export { Code, FrameType, Kind, State } from "./gen/ding_pb.js";
