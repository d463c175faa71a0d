/**
 * Transmission codec: requests, simple replies, structured reply chunks, and
 * their extended forms (NBD_OPT_EXTENDED_HEADERS: 32-byte headers with 64-bit
 * lengths, 64-bit block status). Pure functions; the hot-path ones write into
 * or read from a caller's DataView so that a request or reply header
 * allocates nothing. Cookies are numbers (a counter far below 2^53) carried
 * as 64 bits.
 */
import { errno } from "../errno.js";
import {
  Chunk, EXTENDED_REPLY_MAGIC, EXTENDED_REPLY_SIZE, EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_SIZE, MAX_STRING, NbdErr,
  REQUEST_MAGIC, REQUEST_SIZE, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_MAGIC, STRUCTURED_REPLY_SIZE,
  type Cmd,
} from "./constants.js";
import { ProtocolError, dv, text } from "./handshake.js";

const TWO32 = 0x1_0000_0000;

function setU64(v: DataView, at: number, n: number | bigint): void {
  if (typeof n === "bigint") return v.setBigUint64(at, n);
  v.setUint32(at, Math.floor(n / TWO32));
  v.setUint32(at + 4, n >>> 0);
}
const getU64 = (v: DataView, at: number): number => v.getUint32(at) * TWO32 + v.getUint32(at + 4);

/** Writes a 28-byte compact request at the start of `v`. */
export function encodeRequest(
  v: DataView, flags: number, type: Cmd, cookie: number, offset: number | bigint, count: number,
): void {
  v.setUint32(0, REQUEST_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, type);
  setU64(v, 8, cookie);
  setU64(v, 16, offset);
  v.setUint32(24, count);
}

export const requestBuffer = (): Uint8Array => new Uint8Array(REQUEST_SIZE);

/**
 * Writes a 32-byte extended request at the start of `v`. `length` is 64 bits:
 * the payload's length with CmdFlag.PAYLOAD_LEN, else the command's extent.
 */
export function encodeExtendedRequest(
  v: DataView, flags: number, type: Cmd, cookie: number, offset: number | bigint, length: number | bigint,
): void {
  v.setUint32(0, EXTENDED_REQUEST_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, type);
  setU64(v, 8, cookie);
  setU64(v, 16, offset);
  setU64(v, 24, length);
}

/** Header size that follows from a request's first four bytes (what a server reads), or 0 for an unknown magic. */
export function requestHeaderSize(magic: number): number {
  if (magic === REQUEST_MAGIC) return REQUEST_SIZE;
  if (magic === EXTENDED_REQUEST_MAGIC) return EXTENDED_REQUEST_SIZE;
  return 0;
}

export interface Request { extended: boolean; flags: number; type: number; cookie: bigint; offset: bigint; length: bigint }

/** A whole request header of either form, as requestHeaderSize measured it. */
export function decodeRequest(v: DataView): Request {
  const extended = v.getUint32(0) === EXTENDED_REQUEST_MAGIC;
  return {
    extended, flags: v.getUint16(4), type: v.getUint16(6), cookie: v.getBigUint64(8), offset: v.getBigUint64(16),
    length: extended ? v.getBigUint64(24) : BigInt(v.getUint32(24)),
  };
}

/** Header size that follows from a reply's first four bytes, or 0 for an unknown magic. */
export function replyHeaderSize(magic: number): number {
  if (magic === SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_SIZE;
  if (magic === STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_SIZE;
  if (magic === EXTENDED_REPLY_MAGIC) return EXTENDED_REPLY_SIZE;
  return 0;
}

export interface SimpleReply { error: number; cookie: number }
/** `offset` only in an extended header (where it echoes the request's). */
export interface ChunkHeader { flags: number; type: number; cookie: number; length: number; offset?: bigint }

export function decodeSimpleReply(v: DataView): SimpleReply {
  return { error: v.getUint32(4), cookie: getU64(v, 8) };
}

export function decodeChunkHeader(v: DataView): ChunkHeader {
  return { flags: v.getUint16(4), type: v.getUint16(6), cookie: getU64(v, 8), length: v.getUint32(16) };
}

/**
 * The 32-byte extended reply header. Its 64-bit length comes as a number:
 * exact up to 2^53, far beyond any length a client accepts.
 */
export function decodeExtendedChunkHeader(v: DataView): ChunkHeader {
  return { flags: v.getUint16(4), type: v.getUint16(6), cookie: getU64(v, 8), offset: v.getBigUint64(16), length: getU64(v, 24) };
}

/** OFFSET_DATA starts with the 64-bit offset of its data. */
export const OFFSET_DATA_HEADER = 8;
export const decodeOffset = (b: Uint8Array): bigint => dv(b).getBigUint64(0);

/** OFFSET_HOLE: offset and a nonzero hole length; the payload is exactly 12 bytes. */
export function decodeOffsetHole(b: Uint8Array): { offset: bigint; length: number } {
  if (b.byteLength !== 12) throw new ProtocolError("invalid length in NBD_REPLY_TYPE_OFFSET_HOLE");
  const v = dv(b);
  const length = v.getUint32(8);
  if (length === 0) throw new ProtocolError("invalid length of zero in NBD_REPLY_TYPE_OFFSET_HOLE");
  return { offset: v.getBigUint64(0), length };
}

export interface ErrorChunk { error: number; message: string; offset?: bigint }

/** ERROR and ERROR_OFFSET (and unknown error types): error, message, maybe an offset. */
export function decodeErrorChunk(b: Uint8Array, type: number): ErrorChunk {
  if (b.byteLength < 6) throw new ProtocolError("too short length in structured reply error");
  const v = dv(b);
  const error = v.getUint32(0);
  const len = v.getUint16(4);
  const rest = type === Chunk.ERROR_OFFSET ? 8 : 0;
  if (len > MAX_STRING || len > b.byteLength - 6 - rest) {
    throw new ProtocolError("error message length too large");
  }
  const message = text(b.subarray(6, 6 + len));
  if (type !== Chunk.ERROR_OFFSET) return { error, message };
  if (b.byteLength !== 6 + len + 8) throw new ProtocolError("invalid length in NBD_REPLY_TYPE_ERROR_OFFSET");
  return { error, message, offset: v.getBigUint64(6 + len) };
}

/** NBD_REPLY_TYPE_BLOCK_STATUS: context id, then (length, flags) pairs. */
export function decodeBlockStatus(b: Uint8Array): { id: number; entries: Uint32Array } {
  if (b.byteLength < 12 || (b.byteLength - 4) % 8 !== 0) {
    throw new ProtocolError("invalid length in NBD_REPLY_TYPE_BLOCK_STATUS");
  }
  const v = dv(b);
  const entries = new Uint32Array((b.byteLength - 4) / 4);
  for (let i = 0; i < entries.length; i++) entries[i] = v.getUint32(4 + 4 * i);
  return { id: v.getUint32(0), entries };
}

/**
 * NBD_REPLY_TYPE_BLOCK_STATUS_EXT: context id, descriptor count, then
 * (64-bit length, 64-bit status) pairs. The count is returned as sent: one
 * that disagrees with the payload's length is the client's to judge.
 */
export function decodeBlockStatusExt(b: Uint8Array): { id: number; count: number; entries: BigUint64Array } {
  if (b.byteLength < 24 || (b.byteLength - 8) % 16 !== 0) {
    throw new ProtocolError("invalid length in NBD_REPLY_TYPE_BLOCK_STATUS_EXT");
  }
  const v = dv(b);
  const entries = new BigUint64Array((b.byteLength - 8) / 8);
  for (let i = 0; i < entries.length; i++) entries[i] = v.getBigUint64(8 + 8 * i);
  return { id: v.getUint32(0), count: v.getUint32(4), entries };
}

/** NBD_CMD_BLOCK_STATUS's payload (with PAYLOAD_LEN): the 64-bit extent to report on, then the context ids wanted. */
export function encodeBlockStatusPayload(length: bigint, ids: readonly number[]): Uint8Array {
  const b = new Uint8Array(8 + 4 * ids.length);
  const v = dv(b);
  v.setBigUint64(0, length);
  ids.forEach((id, i) => v.setUint32(8 + 4 * i, id));
  return b;
}

/** The same payload as a server reads it. */
export function decodeBlockStatusPayload(b: Uint8Array): { length: bigint; ids: number[] } {
  if (b.byteLength < 8 || b.byteLength % 4 !== 0) throw new ProtocolError("invalid block status payload length");
  const v = dv(b);
  const ids: number[] = [];
  for (let at = 8; at < b.byteLength; at += 4) ids.push(v.getUint32(at));
  return { length: v.getBigUint64(0), ids };
}

const errnoOfNbd: Record<number, number> = {
  0: 0,
  [NbdErr.EPERM]: errno.EPERM,
  [NbdErr.EIO]: errno.EIO,
  [NbdErr.ENOMEM]: errno.ENOMEM,
  [NbdErr.EINVAL]: errno.EINVAL,
  [NbdErr.ENOSPC]: errno.ENOSPC,
  [NbdErr.EOVERFLOW]: errno.EOVERFLOW,
  [NbdErr.ENOTSUP]: errno.ENOTSUP,
  [NbdErr.ESHUTDOWN]: errno.ESHUTDOWN,
};

/** The errno for an NBD error value; unknown values are EINVAL, as the spec advises. */
export const errnoOfNbdError = (e: number): number => errnoOfNbd[e] ?? errno.EINVAL;
