// Framing (PROTOCOL.md §2): one frame per binary WebSocket message, its
// 4-byte length prefix included.
//
//    0       1       2       3       4       5
//   +-------+-------+-------+-------+-------+---------------------------+
//   |     length (uint32, big-endian)| type  | payload (length-1 bytes) |
//   +-------+-------+-------+-------+-------+---------------------------+
//
// length counts the type byte and the payload, so it is at least 1.

import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import * as pb from "./gen/ding_pb.js";

/** Encodes one frame: the length prefix, the type byte and the payload. */
export function encodeFrame<D extends DescMessage>(type: pb.FrameType, schema: D, init: MessageInitShape<D>): Uint8Array {
  const payload = toBinary(schema, create(schema, init));
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(0, 1 + payload.length, false);
  out[4] = type;
  out.set(payload, 5);
  return out;
}

/** A decoded server frame. */
export type ServerFrame =
  | { type: pb.FrameType.WELCOME; msg: pb.Welcome }
  | { type: pb.FrameType.SUBMIT_ACK; msg: pb.SubmitAck }
  | { type: pb.FrameType.DELIVER; msg: pb.Deliver }
  | { type: pb.FrameType.RECEIPT; msg: pb.Receipt }
  | { type: pb.FrameType.OK; msg: pb.Ok }
  | { type: pb.FrameType.PING; msg: pb.Ping }
  | { type: pb.FrameType.PONG; msg: pb.Pong }
  | { type: pb.FrameType.ERROR; msg: pb.Error }
  | { type: pb.FrameType.RECEIPTS; msg: pb.Receipts }
  | { type: pb.FrameType.DING_EVENT; msg: pb.DingEvent }
  | { type: pb.FrameType.BURN; msg: pb.Burn }
  | { type: pb.FrameType.SECRET_EVENT; msg: pb.SecretEvent };

const serverSchemas: Partial<Record<pb.FrameType, DescMessage>> = {
  [pb.FrameType.WELCOME]: pb.WelcomeSchema,
  [pb.FrameType.SUBMIT_ACK]: pb.SubmitAckSchema,
  [pb.FrameType.DELIVER]: pb.DeliverSchema,
  [pb.FrameType.RECEIPT]: pb.ReceiptSchema,
  [pb.FrameType.OK]: pb.OkSchema,
  [pb.FrameType.PING]: pb.PingSchema,
  [pb.FrameType.PONG]: pb.PongSchema,
  [pb.FrameType.ERROR]: pb.ErrorSchema,
  [pb.FrameType.RECEIPTS]: pb.ReceiptsSchema,
  [pb.FrameType.DING_EVENT]: pb.DingEventSchema,
  [pb.FrameType.BURN]: pb.BurnSchema,
  [pb.FrameType.SECRET_EVENT]: pb.SecretEventSchema,
};

/** FrameError: a server message that is not one valid frame. The client drops the connection. */
export class FrameError extends Error {
  override name = "FrameError";
}

/**
 * Decodes one WebSocket message holding one server frame. Throws a
 * FrameError for a short message, a prefix that does not match the
 * message's size, a type the client does not know, or a payload that does
 * not decode.
 */
export function decodeFrame(data: Uint8Array): ServerFrame {
  if (data.length < 5) throw new FrameError(`frame of ${data.length} bytes: shorter than its header`);
  const length = new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(0, false);
  if (length !== data.length - 4) throw new FrameError(`length prefix ${length} does not match a message of ${data.length} bytes`);
  const type = data[4] as pb.FrameType;
  const schema = serverSchemas[type];
  if (!schema) throw new FrameError(`unknown frame type ${type}`);
  let msg: MessageShape<DescMessage>;
  try {
    msg = fromBinary(schema, data.subarray(5));
  } catch (e) {
    throw new FrameError(`frame type ${pb.FrameType[type]}: payload does not decode: ${(e as Error).message}`);
  }
  return { type, msg } as ServerFrame;
}

/**
 * Decodes a WebSocket message into its frames. The protocol puts one
 * frame in each message, but dingd's gateway was seen sending several
 * whole frames in one message during catch-up (reported); a client that
 * refused them would reconnect forever at the same seq, so whole frames
 * back to back are accepted. Anything else (a partial frame, a bad
 * prefix) is a FrameError.
 */
export function decodeFrames(data: Uint8Array): ServerFrame[] {
  const out: ServerFrame[] = [];
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let off = 0;
  do {
    if (data.length - off < 5) throw new FrameError(`frame of ${data.length - off} bytes: shorter than its header`);
    const length = view.getUint32(off, false);
    if (length < 1 || length > data.length - off - 4) throw new FrameError(`length prefix ${length} runs past a message of ${data.length} bytes`);
    out.push(decodeFrame(data.subarray(off, off + 4 + length)));
    off += 4 + length;
  } while (off < data.length);
  return out;
}
