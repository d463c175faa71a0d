/**
 * Handshake codec: greetings, option requests and option replies.
 * Pure functions over byte arrays; no I/O. Decoders throw ProtocolError on
 * anything the spec forbids, with a message fit for getError().
 */
import {
  EXPORT_NAME_REPLY_SIZE, IHAVEOPT, Info, MAX_STRING, NBDMAGIC, OLDSTYLE_MAGIC,
  OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE, OPTION_REPLY_MAGIC, type Opt,
} from "./constants.js";

export class ProtocolError extends Error {
  override name = "ProtocolError";
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: false });

export const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);
export const utf8 = (s: string): Uint8Array => encoder.encode(s);
export const text = (b: Uint8Array): string => decoder.decode(b);

function need(b: Uint8Array, n: number, what: string): void {
  if (b.byteLength < n) throw new ProtocolError(`${what}: short message (${b.byteLength} < ${n} bytes)`);
}

// ---- greeting -------------------------------------------------------------

export type Greeting = { style: "newstyle" } | { style: "oldstyle" };

/** The first 16 bytes from the server: NBDMAGIC then IHAVEOPT or the oldstyle magic. */
export function decodeGreeting(b: Uint8Array): Greeting {
  need(b, 16, "greeting");
  const v = dv(b);
  if (v.getBigUint64(0) !== NBDMAGIC) throw new ProtocolError("handshake: server did not send expected NBD magic");
  const second = v.getBigUint64(8);
  if (second === IHAVEOPT) return { style: "newstyle" };
  if (second === OLDSTYLE_MAGIC) return { style: "oldstyle" };
  throw new ProtocolError("handshake: server is not either an oldstyle or fixed newstyle NBD server");
}

/** The newstyle greeting's 16-bit handshake flags. */
export function decodeHandshakeFlags(b: Uint8Array): number {
  need(b, 2, "handshake flags");
  return dv(b).getUint16(0);
}

export interface ExportInfo { size: bigint; eflags: number }

/** The rest of an oldstyle greeting: size, 16-bit gflags, 16-bit eflags, 124 zeroes. */
export function decodeOldstyle(b: Uint8Array): ExportInfo & { gflags: number } {
  need(b, 12, "oldstyle greeting");
  const v = dv(b);
  return { size: v.getBigUint64(0), gflags: v.getUint16(8), eflags: v.getUint16(10) };
}

export function encodeClientFlags(flags: number): Uint8Array {
  const b = new Uint8Array(4);
  dv(b).setUint32(0, flags);
  return b;
}

// ---- option requests ------------------------------------------------------

/** `IHAVEOPT, option, length, data`. */
export function encodeOption(opt: Opt, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_HEADER_SIZE + data.byteLength);
  const v = dv(b);
  v.setBigUint64(0, IHAVEOPT);
  v.setUint32(8, opt);
  v.setUint32(12, data.byteLength);
  b.set(data, OPTION_HEADER_SIZE);
  return b;
}

/** NBD_OPT_INFO / NBD_OPT_GO data: name, then the list of info types wanted. */
export function encodeInfoRequest(name: string, infos: readonly Info[]): Uint8Array {
  const n = utf8(name);
  const b = new Uint8Array(4 + n.byteLength + 2 + 2 * infos.length);
  const v = dv(b);
  v.setUint32(0, n.byteLength);
  b.set(n, 4);
  let p = 4 + n.byteLength;
  v.setUint16(p, infos.length);
  for (const info of infos) v.setUint16((p += 2), info);
  return b;
}

/** NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT data: export name, then queries. */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Uint8Array {
  const n = utf8(name);
  const qs = queries.map(utf8);
  const b = new Uint8Array(4 + n.byteLength + 4 + qs.reduce((sum, q) => sum + 4 + q.byteLength, 0));
  const v = dv(b);
  v.setUint32(0, n.byteLength);
  b.set(n, 4);
  let p = 4 + n.byteLength;
  v.setUint32(p, qs.length);
  p += 4;
  for (const q of qs) {
    v.setUint32(p, q.byteLength);
    b.set(q, p + 4);
    p += 4 + q.byteLength;
  }
  return b;
}

// ---- option replies -------------------------------------------------------

export interface OptionReplyHeader { option: number; type: number; length: number }

export function decodeOptionReplyHeader(b: Uint8Array): OptionReplyHeader {
  need(b, OPTION_REPLY_HEADER_SIZE, "option reply");
  const v = dv(b);
  if (v.getBigUint64(0) !== OPTION_REPLY_MAGIC) throw new ProtocolError("handshake: invalid option reply magic");
  return { option: v.getUint32(8), type: v.getUint32(12), length: v.getUint32(16) };
}

export type InfoReply =
  | { type: Info.EXPORT; size: bigint; eflags: number }
  | { type: Info.NAME | Info.DESCRIPTION; text: string }
  | { type: Info.BLOCK_SIZE; minimum: number; preferred: number; maximum: number }
  | { type: "unknown"; code: number };

/** The payload of NBD_REP_INFO; each known type has a fixed or minimum length. */
export function decodeInfo(b: Uint8Array): InfoReply {
  need(b, 2, "NBD_REP_INFO");
  const v = dv(b);
  const type = v.getUint16(0);
  switch (type) {
    case Info.EXPORT:
      if (b.byteLength !== 12) throw new ProtocolError("handshake: incorrect NBD_INFO_EXPORT option reply length");
      return { type, size: v.getBigUint64(2), eflags: v.getUint16(10) };
    case Info.NAME:
    case Info.DESCRIPTION:
      if (b.byteLength > 2 + MAX_STRING) throw new ProtocolError("handshake: NBD_INFO_NAME or DESCRIPTION too long");
      return { type, text: text(b.subarray(2)) };
    case Info.BLOCK_SIZE:
      if (b.byteLength !== 14) throw new ProtocolError("handshake: incorrect NBD_INFO_BLOCK_SIZE option reply length");
      return { type, minimum: v.getUint32(2), preferred: v.getUint32(6), maximum: v.getUint32(10) };
    default:
      return { type: "unknown", code: type };
  }
}

/** The payload of NBD_REP_SERVER: name length, name, description. */
export function decodeServer(b: Uint8Array): { name: string; description: string } {
  need(b, 4, "NBD_REP_SERVER");
  const len = dv(b).getUint32(0);
  if (len > b.byteLength - 4) throw new ProtocolError("handshake: invalid NBD_REP_SERVER name length");
  return { name: text(b.subarray(4, 4 + len)), description: text(b.subarray(4 + len)) };
}

/** The payload of NBD_REP_META_CONTEXT: context id, name. */
export function decodeMetaContext(b: Uint8Array): { id: number; name: string } {
  need(b, 4, "NBD_REP_META_CONTEXT");
  if (b.byteLength > 4 + MAX_STRING) throw new ProtocolError("handshake: NBD_REP_META_CONTEXT name too long");
  return { id: dv(b).getUint32(0), name: text(b.subarray(4)) };
}

/** The reply to NBD_OPT_EXPORT_NAME (no option reply header): size, eflags. */
export function decodeExportNameReply(b: Uint8Array): ExportInfo {
  need(b, EXPORT_NAME_REPLY_SIZE, "NBD_OPT_EXPORT_NAME reply");
  const v = dv(b);
  return { size: v.getBigUint64(0), eflags: v.getUint16(8) };
}
