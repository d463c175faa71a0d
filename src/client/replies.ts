/**
 * The transmission-phase receiver: a push parser (after ws's Receiver) fed
 * with whatever the socket delivers. Reply headers are gathered into a small
 * fixed buffer; read data is copied once, straight from the socket's buffer
 * into the command's destination; other chunk payloads are small and
 * gathered whole. Anything that breaks framing is fatal to the connection.
 */
import { errno } from "../errno.js";
import { CHUNK_ERR_BIT, Chunk, Cmd, REPLY_FLAG_DONE, SIMPLE_REPLY_MAGIC } from "../protocol/constants.js";
import { ProtocolError, dv } from "../protocol/handshake.js";
import {
  OFFSET_DATA_HEADER, decodeChunkHeader, decodeErrorChunk, decodeOffset, decodeOffsetHole, decodeSimpleReply,
  errnoOfNbdError, replyHeaderSize,
} from "../protocol/transmission.js";
import { MAX_REQUEST_SIZE } from "../constants.js";
import type { Command } from "./command.js";
import { NbdError } from "./error.js";

export interface ReplyHost {
  structuredReplies(): boolean;
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
}

/** A chunk longer than this cannot be valid: the largest read plus its offset. */
const MAX_CHUNK = MAX_REQUEST_SIZE + OFFSET_DATA_HEADER;

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
  #payload = new Uint8Array(0);

  constructor(private readonly host: ReplyHost) {}

  /** Between replies: an EOF here is a clean close, not a truncated reply. */
  get idle(): boolean {
    return this.#state === S.HEADER && this.#have === 0;
  }

  push(chunk: Uint8Array): void {
    try {
      let p = 0;
      while (p < chunk.byteLength) p = this.#step(chunk, p);
    } catch (err) {
      this.host.fatal(err instanceof NbdError ? err : new NbdError(0, (err as Error).message));
    }
  }

  #step(chunk: Uint8Array, p: number): number {
    const avail = chunk.byteLength - p;
    switch (this.#state) {
      case S.HEADER:
      case S.DATA_OFFSET: {
        const take = Math.min(this.#need - this.#have, avail);
        this.#header.set(chunk.subarray(p, p + take), this.#have);
        this.#have += take;
        if (this.#have === this.#need) this.#gathered();
        return p + take;
      }
      case S.DATA: {
        const take = Math.min(this.#left, avail);
        this.#target?.set(chunk.subarray(p, p + take), this.#at);
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
    }
  }

  /** The header buffer holds what #need asked for. */
  #gathered(): void {
    if (this.#state === S.DATA_OFFSET) return this.#startData(decodeOffset(this.#header));
    if (this.#need === 4) {
      const size = replyHeaderSize(this.#view.getUint32(0));
      if (size === 0) throw new NbdError(errno.EPROTO, `invalid reply magic 0x${this.#view.getUint32(0).toString(16)}`);
      this.#need = size;
      return;
    }
    this.#simple = this.#view.getUint32(0) === SIMPLE_REPLY_MAGIC;
    if (this.#simple) this.#simpleReply();
    else this.#chunkHeader();
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
      cmd.seen = cmd.count;
      return this.#expectData(cmd.buf, 0, cmd.count);
    }
    this.#finish();
  }

  #chunkHeader(): void {
    const h = decodeChunkHeader(this.#view);
    const cmd = this.#lookup(h.cookie);
    this.#flags = h.flags;
    this.#type = h.type;
    this.#length = h.length;
    if (h.length > MAX_CHUNK) throw new ProtocolError(`structured reply chunk too large (${h.length} bytes)`);
    if (h.type === Chunk.OFFSET_DATA) {
      if (cmd.type !== Cmd.READ) throw new ProtocolError("invalid command for receiving offset-data chunk");
      if (h.length <= OFFSET_DATA_HEADER) throw new ProtocolError("too short length in NBD_REPLY_TYPE_OFFSET_DATA");
      this.#state = S.DATA_OFFSET;
      this.#have = 0;
      this.#need = OFFSET_DATA_HEADER;
      return;
    }
    this.#payload = new Uint8Array(h.length);
    this.#left = h.length;
    this.#state = S.PAYLOAD;
    if (h.length === 0) this.#chunkPayload(this.#payload);
  }

  /** Checks that [offset, offset+length) lies inside the command's range; returns the index into its buffer. */
  #within(offset: bigint, length: number): number {
    const cmd = this.#cmd!;
    if (offset < cmd.offset || offset + BigInt(length) > cmd.offset + BigInt(cmd.count)) {
      throw new NbdError(0, `range of structured reply is out of bounds, offset=${cmd.offset}, cmd->count=${cmd.count}, data->offset=${offset}, length=${length}: this is likely to be a bug in the NBD server`);
    }
    return Number(offset - cmd.offset);
  }

  #startData(offset: bigint): void {
    const length = this.#length - OFFSET_DATA_HEADER;
    const cmd = this.#cmd!;
    cmd.seen += length;
    this.#expectData(cmd.buf, this.#within(offset, length), length);
  }

  #expectData(target: Uint8Array | undefined, at: number, length: number): void {
    this.#target = target;
    this.#at = at;
    this.#left = length;
    this.#state = S.DATA;
    if (length === 0) this.#endOfData();
  }

  #endOfData(): void {
    this.#target = undefined;
    if (this.#simple || this.#flags & REPLY_FLAG_DONE) this.#finish();
    else this.#next();
  }

  #chunkPayload(payload: Uint8Array): void {
    const cmd = this.#cmd!;
    const type = this.#type;
    switch (type) {
      case Chunk.NONE:
        if (payload.byteLength !== 0 || !(this.#flags & REPLY_FLAG_DONE)) {
          throw new ProtocolError("NBD_REPLY_TYPE_NONE must have length 0 and the done flag");
        }
        break;
      case Chunk.OFFSET_HOLE: {
        if (cmd.type !== Cmd.READ) throw new ProtocolError("invalid command for receiving offset-hole chunk");
        const hole = decodeOffsetHole(payload);
        const at = this.#within(hole.offset, hole.length);
        cmd.buf?.fill(0, at, at + hole.length);
        cmd.seen += hole.length;
        break;
      }
      default:
        if (type & CHUNK_ERR_BIT) {
          const e = decodeErrorChunk(payload, type);
          if (e.offset !== undefined) this.#within(e.offset, 0);
          cmd.error ||= e.error ? errnoOfNbdError(e.error) : errno.EPROTO;
          cmd.serverMessage ??= e.message;
          break;
        }
        throw new ProtocolError(`unknown structured reply type (${type})`);
    }
    if (this.#flags & REPLY_FLAG_DONE) this.#finish();
    else this.#next();
  }

  #finish(): void {
    const cmd = this.#cmd!;
    // A read succeeds only if its data and holes covered the whole range.
    if (cmd.type === Cmd.READ && cmd.error === 0 && cmd.seen !== cmd.count) cmd.error = errno.EPROTO;
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
