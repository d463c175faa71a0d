/**
 * The transmission-phase receiver: a push parser (after ws's Receiver) fed
 * with whatever the socket delivers. Reply headers are gathered into a small
 * fixed buffer; read data is copied once, straight from the socket's buffer
 * into the command's destination; other chunk payloads are small and
 * gathered whole. Anything that breaks framing is fatal to the connection.
 * Once extended headers are negotiated every reply is a 32-byte extended
 * chunk header; any other magic is fatal.
 */
import { errno } from "../errno.js";
import { CHUNK_ERR_BIT, Chunk, Cmd, EXTENDED_REPLY_MAGIC, REPLY_FLAG_DONE, SIMPLE_REPLY_MAGIC } from "../protocol/constants.js";
import { ProtocolError, dv } from "../protocol/handshake.js";
import {
  type ChunkHeader, OFFSET_DATA_HEADER, decodeBlockStatus, decodeBlockStatusExt, decodeChunkHeader, decodeErrorChunk,
  decodeExtendedChunkHeader, decodeOffset, decodeOffsetHole, decodeSimpleReply, errnoOfNbdError, replyHeaderSize,
} from "../protocol/transmission.js";
import { MAX_REQUEST_SIZE, READ_DATA, READ_ERROR, READ_HOLE } from "../constants.js";
import type { Callback, Command } from "./command.js";
import type { Stats } from "./handshake.js";
import { NbdError } from "./error.js";
import { copy, zero } from "./bytes.js";

export interface ReplyHost {
  structuredReplies(): boolean;
  /** Replies come with extended headers (and only so). */
  extendedHeaders(): boolean;
  /** The export's size: 64-bit extents are cut off at its end. */
  exportSize(): bigint;
  readonly stats: Stats;
  /** A reply is due (a command is in flight). Bytes that come while none is are held (see resume). */
  awaiting(): boolean;
  /** The name of a negotiated meta context, by the id the server gave it. */
  contextName(id: number): string | undefined;
  find(cookie: number): Command | undefined;
  /** The reply to `cmd` is complete (its `error` says how it went). */
  retire(cmd: Command): void;
  /** The stream can no longer be parsed. */
  fatal(err: NbdError): void;
}

const enum S {
  HEADER,      // gathering a reply header
  DATA_OFFSET, // gathering the 8-byte offset of an OFFSET_DATA chunk
  DATA,        // copying read data into the command's buffer
  PAYLOAD,     // gathering a whole chunk payload
  SKIP,        // discarding a chunk's payload (libnbd's resync)
}

/** Data shorter than this is read into the socket's own buffer with what follows it, then copied: one read, not two. */
const DIRECT_READ_MIN = 16 * 1024;

/** A chunk longer than this cannot be valid: the largest read plus its offset. */
const MAX_CHUNK = MAX_REQUEST_SIZE + OFFSET_DATA_HEADER;

const wrongCommand = (chunk: string, cmd: Command): ProtocolError => new ProtocolError(
  `invalid command for receiving ${chunk} chunk, cmd->type=${cmd.type}, this is likely to be a bug in the server`);

/** What libnbd checks from a chunk's header alone (generator/states-reply-structured.c, CHECK). */
function checkChunk(h: ChunkHeader, cmd: Command): void {
  switch (h.type) {
    case Chunk.NONE:
      if (h.length !== 0) throw new ProtocolError("invalid length in NBD_REPLY_TYPE_NONE");
      if (!(h.flags & REPLY_FLAG_DONE)) throw new ProtocolError("NBD_REPLY_FLAG_DONE must be set in NBD_REPLY_TYPE_NONE");
      return;
    case Chunk.OFFSET_HOLE:
      if (cmd.type !== Cmd.READ) throw wrongCommand("offset-hole", cmd);
      if (h.length !== 12) throw new ProtocolError("invalid length in NBD_REPLY_TYPE_OFFSET_HOLE");
      return;
    case Chunk.BLOCK_STATUS:
      if (cmd.type !== Cmd.BLOCK_STATUS) throw wrongCommand("block-status", cmd);
      if (h.length < 12 || (h.length - 4) % 8 !== 0) throw new ProtocolError("invalid length in NBD_REPLY_TYPE_BLOCK_STATUS");
      return;
    case Chunk.BLOCK_STATUS_EXT:
      if (cmd.type !== Cmd.BLOCK_STATUS) throw wrongCommand("block-status", cmd);
      if (h.length < 24 || (h.length - 8) % 16 !== 0) throw new ProtocolError("invalid length in NBD_REPLY_TYPE_BLOCK_STATUS_EXT");
      return;
    default:
      if (!(h.type & CHUNK_ERR_BIT)) throw new ProtocolError(`unknown structured reply type (${h.type})`);
      if (h.length < 6) throw new ProtocolError("too short length in structured reply error");
  }
}

export class ReplyParser {
  #state = S.HEADER;
  readonly #header = new Uint8Array(32);
  readonly #view = dv(this.#header);
  #have = 0;
  #need = 4;
  // The reply being parsed.
  #cmd: Command | undefined;
  #simple = false;
  #flags = 0;
  #type = 0;
  #length = 0;
  // Where DATA goes, and what PAYLOAD gathers.
  #target: Uint8Array | undefined;
  #at = 0;
  #left = 0;
  /** Where the current data run started in the command's buffer, and its wire offset. */
  #dataAt = 0;
  #dataOffset = 0n;
  #payload = new Uint8Array(0);
  /** What arrived while no reply was awaited: libnbd leaves it unread in the socket until one is. */
  #held: Uint8Array[] = [];

  constructor(private readonly host: ReplyHost) {}

  /** Between replies: an EOF here is a clean close, not a truncated reply. */
  get idle(): boolean {
    return this.#state === S.HEADER && this.#have === 0;
  }

  /** Parses chunk[0, end): the socket's reused buffer is passed whole, so no view is made per read (nothing keeps it). */
  push(chunk: Uint8Array, end = chunk.byteLength): void {
    try {
      let p = 0;
      while (p < end) {
        if (this.#held.length || (this.idle && !this.host.awaiting())) {
          this.#held.push(chunk.slice(p, end));
          return;
        }
        p = this.#step(chunk, p, end);
      }
    } catch (err) {
      this.host.fatal(err instanceof NbdError ? err : new NbdError(0, (err as Error).message));
    }
  }

  /**
   * Where the socket should put what it reads next: while a read's data is
   * due, the rest of its place in the command's buffer, so the kernel
   * copies it there and nothing else does (and a read stops at its end,
   * never taking the next reply's header); undefined otherwise.
   */
  readTarget(): Uint8Array | undefined {
    if (this.#state !== S.DATA || !this.#target || this.#left < DIRECT_READ_MIN || this.#held.length) return undefined;
    return this.#target.subarray(this.#at, this.#at + this.#left);
  }

  /** Bytes wait for resume. */
  get holding(): boolean {
    return this.#held.length > 0;
  }

  /** A reply is now awaited: parse what was held back. */
  resume(): void {
    const held = this.#held;
    this.#held = [];
    for (const chunk of held) this.push(chunk);
  }

  #step(chunk: Uint8Array, p: number, end: number): number {
    const avail = end - p;
    switch (this.#state) {
      case S.HEADER:
      case S.DATA_OFFSET: {
        const take = Math.min(this.#need - this.#have, avail);
        // At most 32 bytes: copied by hand rather than through a view made for them.
        const header = this.#header;
        for (let i = 0, at = this.#have; i < take; i++) header[at + i] = chunk[p + i]!;
        this.#have += take;
        if (this.#have === this.#need) this.#gathered();
        return p + take;
      }
      case S.DATA: {
        const take = Math.min(this.#left, avail);
        const target = this.#target;
        // Data the socket read straight into its place (see readTarget) needs no copy.
        if (target && (chunk.buffer !== target.buffer || chunk.byteOffset + p !== target.byteOffset + this.#at)) {
          copy(target, chunk.subarray(p, p + take), this.#at);
        }
        this.#at += take;
        this.#left -= take;
        if (this.#left === 0) this.#endOfData();
        return p + take;
      }
      case S.PAYLOAD: {
        const take = Math.min(this.#left, avail);
        this.#payload.set(chunk.subarray(p, p + take), this.#payload.byteLength - this.#left);
        this.#left -= take;
        if (this.#left === 0) this.#chunkPayload(this.#payload);
        return p + take;
      }
      case S.SKIP: {
        const take = Math.min(this.#left, avail);
        this.#left -= take;
        if (this.#left === 0) this.#endOfChunk();
        return p + take;
      }
    }
  }

  /** The header buffer holds what #need asked for. */
  #gathered(): void {
    if (this.#state === S.DATA_OFFSET) return this.#startData(decodeOffset(this.#header));
    const magic = this.#view.getUint32(0);
    if (this.#need === 4) {
      // Checked as soon as it comes, so that a short reply of the wrong form cannot leave us waiting for more.
      if (this.host.extendedHeaders()) {
        if (magic !== EXTENDED_REPLY_MAGIC) throw new NbdError(0, `invalid or unexpected reply magic 0x${magic.toString(16)}`);
      } else if (magic === EXTENDED_REPLY_MAGIC || replyHeaderSize(magic) === 0) {
        throw new NbdError(0, `invalid reply magic 0x${magic.toString(16)}`);
      }
      this.#need = replyHeaderSize(magic);
      return;
    }
    this.host.stats.chunksReceived++;
    this.#simple = magic === SIMPLE_REPLY_MAGIC;
    if (this.#simple) this.#simpleReply();
    else this.#chunkHeader(magic === EXTENDED_REPLY_MAGIC ? decodeExtendedChunkHeader(this.#view) : decodeChunkHeader(this.#view));
  }

  #lookup(cookie: number): Command {
    const cmd = this.host.find(cookie);
    if (!cmd) {
      throw new NbdError(errno.EPROTO, `no matching cookie ${cookie} found for server reply, this is probably a server bug`);
    }
    return (this.#cmd = cmd);
  }

  #simpleReply(): void {
    const { error, cookie } = decodeSimpleReply(this.#view);
    const cmd = this.#lookup(cookie);
    if (error !== 0) cmd.error ||= errnoOfNbdError(error);
    if (cmd.type === Cmd.READ && error === 0) {
      // A simple reply to a read after structured replies were agreed is a
      // server bug: take the data to stay in sync, fail the command.
      if (this.host.structuredReplies()) cmd.error ||= errno.EPROTO;
      cmd.seen = Number(cmd.count);
      this.#dataOffset = cmd.offset;
      return this.#expectData(cmd.buf, 0, cmd.seen);
    }
    this.#finish();
  }

  #chunkHeader(h: ChunkHeader): void {
    const cmd = this.#lookup(h.cookie);
    if (!this.host.structuredReplies()) throw new ProtocolError("server sent unexpected structured reply");
    this.#flags = h.flags;
    this.#type = h.type;
    this.#length = h.length;
    if (h.length > MAX_CHUNK) throw new ProtocolError(`invalid server reply length ${h.length}`);
    if (h.offset !== undefined && h.offset !== cmd.offset) {
      // An extended header must echo the request's offset; libnbd skips the
      // chunk and fails the command, and the connection carries on.
      cmd.error ||= errno.EPROTO;
      this.#left = h.length;
      this.#state = S.SKIP;
      if (h.length === 0) this.#endOfChunk();
      return;
    }
    if (h.type === Chunk.OFFSET_DATA) {
      if (cmd.type !== Cmd.READ) throw wrongCommand("offset-data", cmd);
      // An empty data chunk (length 8) is accepted, as libnbd does.
      if (h.length < OFFSET_DATA_HEADER) throw new ProtocolError("too short length in NBD_REPLY_TYPE_OFFSET_DATA");
      this.#state = S.DATA_OFFSET;
      this.#have = 0;
      this.#need = OFFSET_DATA_HEADER;
      return;
    }
    checkChunk(h, cmd); // before waiting for a payload that may never come
    this.#payload = new Uint8Array(h.length);
    this.#left = h.length;
    this.#state = S.PAYLOAD;
    if (h.length === 0) this.#chunkPayload(this.#payload);
  }

  /** Checks that [offset, offset+length) lies inside the command's range; returns the index into its buffer. */
  #within(offset: bigint, length: number): number {
    const cmd = this.#cmd!;
    const end = cmd.offset + cmd.count;
    if (offset < cmd.offset || offset >= end || offset + BigInt(length) > end) {
      throw new NbdError(0, `range of structured reply is out of bounds, offset=${offset}, cmd->offset=${cmd.offset}, length=${length}, cmd->count=${cmd.count}: this is likely to be a bug in the NBD server`);
    }
    return Number(offset - cmd.offset);
  }

  #startData(offset: bigint): void {
    const length = this.#length - OFFSET_DATA_HEADER;
    const cmd = this.#cmd!;
    cmd.seen += length;
    this.#dataOffset = offset;
    this.#expectData(cmd.buf, this.#within(offset, length), length);
  }

  #expectData(target: Uint8Array | undefined, at: number, length: number): void {
    this.#target = target;
    this.#at = this.#dataAt = at;
    this.#left = length;
    this.#state = S.DATA;
    if (length === 0) this.#endOfData();
  }

  #endOfData(): void {
    const cmd = this.#cmd!;
    cmd.filled?.push(this.#dataAt, this.#at);
    if (cmd.chunk && this.#target) {
      callback(cmd, cmd.chunk, [this.#target.subarray(this.#dataAt, this.#at), this.#dataOffset, READ_DATA]);
    }
    this.#target = undefined;
    if (this.#simple) this.#finish();
    else this.#endOfChunk();
  }

  #chunkPayload(payload: Uint8Array): void {
    const cmd = this.#cmd!;
    const type = this.#type;
    switch (type) {
      case Chunk.NONE:
        if (payload.byteLength !== 0) throw new ProtocolError("invalid length in NBD_REPLY_TYPE_NONE");
        if (!(this.#flags & REPLY_FLAG_DONE)) {
          throw new ProtocolError("NBD_REPLY_FLAG_DONE must be set in NBD_REPLY_TYPE_NONE");
        }
        break;
      case Chunk.OFFSET_HOLE: {
        if (cmd.type !== Cmd.READ) throw wrongCommand("offset-hole", cmd);
        const hole = decodeOffsetHole(payload);
        const at = this.#within(hole.offset, hole.length);
        if (cmd.buf) zero(cmd.buf, at, at + hole.length);
        cmd.filled?.push(at, at + hole.length);
        cmd.seen += hole.length;
        if (cmd.chunk && cmd.buf) callback(cmd, cmd.chunk, [cmd.buf.subarray(at, at + hole.length), hole.offset, READ_HOLE]);
        break;
      }
      case Chunk.BLOCK_STATUS:
      case Chunk.BLOCK_STATUS_EXT: {
        if (cmd.type !== Cmd.BLOCK_STATUS) throw new ProtocolError("invalid command for receiving block-status chunk");
        // The wrong type for the headers in use is a server bug; libnbd still reports its extents.
        if (this.host.extendedHeaders() !== (type === Chunk.BLOCK_STATUS_EXT)) cmd.error ||= errno.EPROTO;
        let id: number;
        let list: Uint32Array | BigUint64Array;
        if (type === Chunk.BLOCK_STATUS) {
          const narrow = decodeBlockStatus(payload);
          id = narrow.id;
          list = cmd.extent?.wide ? BigUint64Array.from(narrow.entries, BigInt) : narrow.entries;
        } else {
          const wide = decodeBlockStatusExt(payload);
          if (wide.count * 2 !== wide.entries.length) { // libnbd resyncs: the command fails, the connection lives
            cmd.error ||= errno.EPROTO;
            break;
          }
          id = wide.id;
          const size = this.host.exportSize();
          list = cookExtents(cmd, wide.entries, cmd.extent?.wide ?? true, cmd.offset <= size ? size - cmd.offset : 0n);
        }
        const name = this.host.contextName(id);
        if (name === undefined || !cmd.extent) break; // a context we did not ask for: skip it, as libnbd does
        callback(cmd, cmd.extent.fn, [name, cmd.offset, list]);
        break;
      }
      default:
        if (type & CHUNK_ERR_BIT) {
          const e = decodeErrorChunk(payload, type);
          const error = e.error ? errnoOfNbdError(e.error) : errno.EPROTO;
          if (e.offset !== undefined) {
            const at = this.#within(e.offset, 0);
            if (cmd.chunk && cmd.buf) callback(cmd, cmd.chunk, [cmd.buf.subarray(at, at), e.offset, READ_ERROR], error);
          }
          cmd.error ||= error;
          cmd.serverMessage ??= e.message;
          break;
        }
        throw new ProtocolError(`unknown structured reply type (${type})`);
    }
    this.#endOfChunk();
  }

  #endOfChunk(): void {
    if (this.#flags & REPLY_FLAG_DONE) this.#finish();
    else this.#next();
  }

  #finish(): void {
    const cmd = this.#cmd!;
    this.#next();
    this.host.retire(cmd);
  }

  #next(): void {
    this.#state = S.HEADER;
    this.#have = 0;
    this.#need = 4;
    this.#cmd = undefined;
  }
}

const U32_MAX = 0xffffffffn;
const I64_MAX = 0x7fffffffffffffffn;
const BIG_MAX_REQUEST = BigInt(MAX_REQUEST_SIZE);

/**
 * 64-bit extents as libnbd 1.18 hands them to a callback
 * (states-reply-chunk.c, RECV_BS_ENTRIES, with the CVE-2023-5871 fix). It
 * stops at an extent a 32-bit callback cannot hold: a length is clamped to
 * 4 GiB - 64 MiB; a status beyond 32 bits is dropped, or, if it is the first
 * extent, truncated and the command fails with EOVERFLOW. Extents are cut at
 * the end of the export (EPROTO), and a zero length ends the list (EPROTO if
 * it is the first).
 */
export function cookExtents(cmd: Command, raw: BigUint64Array, wide: boolean, cap: bigint): Uint32Array | BigUint64Array {
  const out = new BigUint64Array(raw.length);
  let total = 0n;
  let i = 0;
  for (let stop = false; i < raw.length / 2 && !stop; i++) {
    let len = raw[2 * i]!;
    let flags = raw[2 * i + 1]!;
    if (len > I64_MAX) {
      stop = true;
      len = I64_MAX + 1n - BIG_MAX_REQUEST;
    }
    if (len > U32_MAX && !wide) {
      stop = true;
      len = U32_MAX + 1n - BIG_MAX_REQUEST;
    }
    if (flags > U32_MAX && !wide) {
      stop = true;
      if (i > 0) break; // progress was made: leave this extent out
      cmd.error ||= errno.EOVERFLOW;
      flags &= U32_MAX;
    }
    if (len > cap - total) {
      len = cap - total;
      stop = true;
      cmd.error ||= errno.EPROTO;
    }
    if (len === 0n) {
      stop = true;
      if (i > 0) break;
      cmd.error ||= errno.EPROTO;
    }
    total += len;
    out[2 * i] = len;
    out[2 * i + 1] = flags;
  }
  const used = out.subarray(0, 2 * i);
  return wide ? used.slice() : Uint32Array.from(used, Number);
}

/**
 * Calls a chunk or extent callback as libnbd does: the error box holds the
 * command's error so far (or the error a READ_ERROR chunk reports); a -1 (or
 * a throw) fails the command with the errno left in the box, else EPROTO.
 */
function callback(cmd: Command, fn: Callback, args: unknown[], error = cmd.error): void {
  const box = { value: error };
  let r: unknown;
  try {
    r = (fn as (...a: unknown[]) => unknown)(...args, box);
  } catch {
    r = -1;
  }
  if (r === -1 && cmd.error === 0) cmd.error = box.value || errno.EPROTO;
}
