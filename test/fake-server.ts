/**
 * A small scriptable NBD server for fault tests, built on the project's
 * codec constants. It runs as its own node process on a socket handed to it
 * as stdin (libnbd's connect_command), so the same fake serves nbd-ts and
 * python3-libnbd alike:
 *
 *   h.connectCommand(fakeServer({ onRequest: (req, R) => [R.simple(req, { cookie: req.cookie + 1n })] }))
 *
 * Honest by default: fixed newstyle, structured replies, NBD_OPT_GO, and a
 * sparse in-memory disk whose unwritten bytes read as nbdkit's pattern
 * (each 8-byte word holds its own offset). A script bends one step:
 *
 * - `greeting`: "newstyle" (default), "oldstyle", "bad-magic" (first word
 *   wrong), "bad-second-magic" (neither IHAVEOPT nor oldstyle), "close"
 *   (EOF before any byte), "silent" (never a byte; exits when the client hangs up).
 * - `handshakeFlags`: the 16-bit flags of the greeting (default
 *   FIXED_NEWSTYLE | NO_ZEROES); without FIXED_NEWSTYLE the fake is strict
 *   and closes on any option but NBD_OPT_EXPORT_NAME.
 * - `size`, `eflags`, `structuredReplies` (ACK NBD_OPT_STRUCTURED_REPLY?).
 * - `extendedHeaders`: ACK NBD_OPT_EXTENDED_HEADERS (default: refuse it with
 *   ERR_UNSUP, as nbdkit 1.32 and qemu-nbd 7.2 do). Once agreed, requests are
 *   read in the 32-byte extended form (a compact one hangs up), and every
 *   reply the R helpers build is an extended chunk; NBD_OPT_STRUCTURED_REPLY
 *   is then answered ERR_EXT_HEADER_REQD.
 * - `metaContexts`: name → id of the contexts NBD_OPT_SET_META_CONTEXT
 *   selects when asked for (default: the option is refused). Block status is
 *   then answered honestly: one extent of status 0 per selected context (or
 *   per id in a PAYLOAD_LEN request's payload), to the end of the request.
 * - NBD_OPT_GO / NBD_OPT_INFO answer NBD_INFO_DESCRIPTION (set_full_info)
 *   with the option codes received so far ("11,8,7"): a test's view of the
 *   handshake.
 * - `onOption(opt, R, srv)`, `onRequest(req, R, srv)`: return the actions
 *   that answer it (byte arrays to send, "close" to hang up), or undefined
 *   for the honest answer (`R.go(opt)`, `R.reply(req)` give it, to build
 *   on). An empty list sends nothing at all; "close" and "reset" hang up.
 *
 * The hooks are sent to the server as source text: they may use only their
 * arguments (no closures, no imports); `srv.vars` carries script data. A hook
 * that answers NBD_OPT_EXTENDED_HEADERS itself sets `srv.extended` itself.
 */
import { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import {
  Chunk, Cmd, CmdFlag, EXPORT_NAME_ZEROES, EXTENDED_REPLY_MAGIC, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, Info,
  NBDMAGIC, OLDSTYLE_MAGIC, OPTION_HEADER_SIZE, OPTION_REPLY_MAGIC, Opt, REPLY_FLAG_DONE, Rep, SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC, TFlag,
} from "../src/protocol/constants.js";
import { dv, text, utf8 } from "../src/protocol/handshake.js";
import { decodeBlockStatusPayload, decodeRequest, requestHeaderSize } from "../src/protocol/transmission.js";

// ---- what a script is ------------------------------------------------------------

export interface Option { code: number; data: Uint8Array }
export interface Request {
  /** 0 for the first request of the connection. */
  index: number;
  /** It came in the 32-byte extended form. */
  extended: boolean;
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  /** The length field, whole (64 bits in the extended form)... */
  length: bigint;
  /** ...and as a number (inexact beyond 2^53). */
  count: number;
  /** NBD_CMD_WRITE's payload. */
  data?: Uint8Array;
  /** Any other command's payload (extended form, PAYLOAD_LEN). */
  payload?: Uint8Array;
}
/**
 * Bytes to send; "close": hang up (EOF); "reset": stop reading, then exit
 * 200 ms later with whatever the client sent meanwhile unread, so that the
 * client sees ECONNRESET.
 */
export type Action = Uint8Array | "close" | "reset";
export interface ServerState {
  size: bigint;
  eflags: number;
  structured: boolean;
  /** Extended headers were agreed: requests and replies are in the extended form. */
  extended: boolean;
  /** Option codes received so far. */
  options: number[];
  /** The contexts the last NBD_OPT_SET_META_CONTEXT selected, by id. */
  contexts: Map<number, string>;
  vars: Record<string, unknown>;
}

export interface Script {
  greeting?: "newstyle" | "oldstyle" | "bad-magic" | "bad-second-magic" | "close" | "silent";
  handshakeFlags?: number;
  size?: bigint;
  eflags?: number;
  structuredReplies?: boolean;
  extendedHeaders?: boolean;
  metaContexts?: Record<string, number>;
  vars?: Record<string, unknown>;
  onOption?: (opt: Option, R: Replies, srv: ServerState) => Action[] | undefined;
  onRequest?: (req: Request, R: Replies, srv: ServerState) => Action[] | undefined;
}

export const DEFAULT_SIZE = 1n << 20n;
export const DEFAULT_EFLAGS = TFlag.HAS_FLAGS | TFlag.SEND_FLUSH | TFlag.SEND_FUA | TFlag.SEND_TRIM
  | TFlag.SEND_WRITE_ZEROES | TFlag.SEND_CACHE;

const SELF = fileURLToPath(import.meta.url);

/** The argv that runs `script` as a connect_command server. */
export function fakeServer(script: Script = {}): string[] {
  const wire = JSON.stringify(script, (_k, v: unknown) =>
    typeof v === "function" ? { fn: v.toString() } : typeof v === "bigint" ? { big: v.toString() } : v);
  return [process.execPath, SELF, wire];
}

// ---- encoders for the server's side of the wire ------------------------------------

export function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** The bytes nbdkit's pattern plugin serves at `offset` (any offset below 2^64). */
export function patternAt(offset: bigint, length: number): Uint8Array {
  const out = new Uint8Array(length);
  const v = dv(out);
  const first = offset - (offset % 8n);
  const word = new Uint8Array(8);
  for (let w = first; w < offset + BigInt(length); w += 8n) {
    dv(word).setBigUint64(0, w);
    for (let i = 0; i < 8; i++) {
      const at = w + BigInt(i) - offset;
      if (at >= 0n && at < BigInt(length)) v.setUint8(Number(at), word[i]!);
    }
  }
  return out;
}

export function optionReply(option: number, type: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(20 + payload.byteLength);
  const v = dv(b);
  v.setBigUint64(0, OPTION_REPLY_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, payload.byteLength);
  b.set(payload, 20);
  return b;
}

export function infoExport(size: bigint, eflags: number): Uint8Array {
  const b = new Uint8Array(12);
  dv(b).setUint16(0, Info.EXPORT);
  dv(b).setBigUint64(2, size);
  dv(b).setUint16(10, eflags);
  return b;
}

export interface SimpleOpts { error?: number; cookie?: bigint; data?: Uint8Array }

export function simpleReply(cookie: bigint, error = 0, data?: Uint8Array): Uint8Array {
  const b = new Uint8Array(16);
  const v = dv(b);
  v.setUint32(0, SIMPLE_REPLY_MAGIC);
  v.setUint32(4, error);
  v.setBigUint64(8, cookie);
  return data ? cat(b, data) : b;
}

export interface ChunkOpts {
  flags?: number;
  cookie?: bigint;
  /** Overrides the header's length field (the payload is sent as given). */
  length?: number | bigint;
  magic?: number;
  /** The R helpers' header form: by default extended once extended headers were agreed, else structured. */
  form?: "structured" | "extended";
  /** An extended header's offset field (default: the request's). */
  replyOffset?: bigint;
}

/** A structured reply chunk (20-byte header). */
export function chunk(cookie: bigint, type: number, payload: Uint8Array, o: ChunkOpts = {}): Uint8Array {
  const b = new Uint8Array(20);
  const v = dv(b);
  v.setUint32(0, o.magic ?? STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, o.flags ?? REPLY_FLAG_DONE);
  v.setUint16(6, type);
  v.setBigUint64(8, o.cookie ?? cookie);
  v.setUint32(16, Number(o.length ?? payload.byteLength));
  return cat(b, payload);
}

/** An extended reply chunk (32-byte header with the request's offset and a 64-bit length). */
export function extendedChunk(cookie: bigint, offset: bigint, type: number, payload: Uint8Array, o: ChunkOpts = {}): Uint8Array {
  const b = new Uint8Array(32);
  const v = dv(b);
  v.setUint32(0, o.magic ?? EXTENDED_REPLY_MAGIC);
  v.setUint16(4, o.flags ?? REPLY_FLAG_DONE);
  v.setUint16(6, type);
  v.setBigUint64(8, o.cookie ?? cookie);
  v.setBigUint64(16, o.replyOffset ?? offset);
  v.setBigUint64(24, BigInt(o.length ?? payload.byteLength));
  return cat(b, payload);
}

/** A block status payload: (length, status) pairs, 32-bit (BLOCK_STATUS) or 64-bit (BLOCK_STATUS_EXT, with its count). */
export function blockStatusPayload(id: number, extents: [bigint | number, bigint | number][], wide: boolean, count = extents.length): Uint8Array {
  const head = wide ? 8 : 4;
  const b = new Uint8Array(head + extents.length * (wide ? 16 : 8));
  const v = dv(b);
  v.setUint32(0, id);
  if (wide) v.setUint32(4, count);
  extents.forEach(([len, flags], i) => {
    if (wide) {
      v.setBigUint64(head + 16 * i, BigInt(len));
      v.setBigUint64(head + 16 * i + 8, BigInt(flags));
    } else {
      v.setUint32(head + 8 * i, Number(len));
      v.setUint32(head + 8 * i + 4, Number(flags));
    }
  });
  return b;
}

export function offsetDataPayload(offset: bigint, data: Uint8Array): Uint8Array {
  const b = new Uint8Array(8);
  dv(b).setBigUint64(0, offset);
  return cat(b, data);
}

export function offsetHolePayload(offset: bigint, length: number): Uint8Array {
  const b = new Uint8Array(12);
  dv(b).setBigUint64(0, offset);
  dv(b).setUint32(8, length);
  return b;
}

export function errorPayload(error: number, message: string, offset?: bigint): Uint8Array {
  const m = utf8(message);
  const b = new Uint8Array(6 + m.byteLength + (offset === undefined ? 0 : 8));
  dv(b).setUint32(0, error);
  dv(b).setUint16(4, m.byteLength);
  b.set(m, 6);
  if (offset !== undefined) dv(b).setBigUint64(6 + m.byteLength, offset);
  return b;
}

// ---- what hooks build their answers from ---------------------------------------------

export interface Replies {
  simple(req: Request, o?: SimpleOpts): Uint8Array;
  chunk(req: Request, type: number, payload: Uint8Array, o?: ChunkOpts): Uint8Array;
  data(req: Request, offset: bigint, data: Uint8Array, o?: ChunkOpts): Uint8Array;
  hole(req: Request, offset: bigint, length: number, o?: ChunkOpts): Uint8Array;
  error(req: Request, error: number, message?: string, o?: ChunkOpts & { offset?: bigint }): Uint8Array;
  none(req: Request, o?: ChunkOpts): Uint8Array;
  /**
   * One status chunk for context `id`: BLOCK_STATUS_EXT once extended
   * headers were agreed, else BLOCK_STATUS; `type` forces one, `count`
   * overrides BLOCK_STATUS_EXT's descriptor count.
   */
  blockStatus(req: Request, id: number, extents: [bigint | number, bigint | number][],
    o?: ChunkOpts & { type?: number; count?: number }): Uint8Array;
  /** The honest answer to any request (reads from the disk, writes to it). */
  reply(req: Request): Uint8Array;
  /** The disk's bytes. */
  read(offset: bigint, count: number): Uint8Array;
  /** The honest answer to an option (for GO: INFO_EXPORT then ACK). */
  go(opt: Option): Uint8Array;
  optionReply(option: number, type: number, payload?: Uint8Array): Uint8Array;
  bytes(n: number, fill?: number): Uint8Array;
  cat(...parts: Uint8Array[]): Uint8Array;
  u32(n: number): Uint8Array;
}

const BLOCK = 4096n;

/**
 * The disk: nbdkit's pattern, under ranges zeroed by WRITE_ZEROES and TRIM
 * (kept as ranges, so that zeroing gigabytes costs nothing), under 4 KiB
 * blocks that writes touched.
 */
interface Disk { blocks: Map<bigint, Uint8Array>; zeroed: [bigint, bigint][] }

function replies(srv: ServerState, disk: Disk): Replies {
  const read = (offset: bigint, count: number): Uint8Array => {
    const out = patternAt(offset, count);
    const end = offset + BigInt(count);
    for (const [from, to] of disk.zeroed) {
      if (to <= offset || from >= end) continue;
      const a = from > offset ? Number(from - offset) : 0;
      out.fill(0, a, to < end ? Number(to - offset) : count);
    }
    for (let at = 0; at < count;) {
      const pos = offset + BigInt(at);
      const block = disk.blocks.get(pos / BLOCK);
      const inBlock = Number(pos % BLOCK);
      const n = Math.min(count - at, Number(BLOCK) - inBlock);
      if (block) out.set(block.subarray(inBlock, inBlock + n), at);
      at += n;
    }
    return out;
  };
  const write = (offset: bigint, data: Uint8Array): void => {
    for (let at = 0; at < data.byteLength;) {
      const pos = offset + BigInt(at);
      const key = pos / BLOCK;
      const block = disk.blocks.get(key) ?? read(key * BLOCK, Number(BLOCK));
      disk.blocks.set(key, block);
      const inBlock = Number(pos % BLOCK);
      const n = Math.min(data.byteLength - at, Number(BLOCK) - inBlock);
      block.set(data.subarray(at, at + n), inBlock);
      at += n;
    }
  };
  const zero = (offset: bigint, length: bigint): void => {
    const end = offset + length;
    for (const [key, block] of disk.blocks) {
      const from = key * BLOCK;
      if (from + BLOCK <= offset || from >= end) continue;
      block.fill(0, from < offset ? Number(offset - from) : 0, end < from + BLOCK ? Number(end - from) : Number(BLOCK));
    }
    disk.zeroed.push([offset, end]);
  };
  const extended = (o?: ChunkOpts): boolean => (o?.form ? o.form === "extended" : srv.extended);
  const R: Replies = {
    simple: (req, o = {}) => simpleReply(o.cookie ?? req.cookie, o.error ?? 0, o.data),
    chunk: (req, type, payload, o) =>
      extended(o) ? extendedChunk(req.cookie, req.offset, type, payload, o) : chunk(req.cookie, type, payload, o),
    data: (req, offset, data, o) => R.chunk(req, Chunk.OFFSET_DATA, offsetDataPayload(offset, data), o),
    hole: (req, offset, length, o) => R.chunk(req, Chunk.OFFSET_HOLE, offsetHolePayload(offset, length), o),
    error: (req, error, message = "", o = {}) => R.chunk(req,
      o.offset === undefined ? Chunk.ERROR : Chunk.ERROR_OFFSET, errorPayload(error, message, o.offset), o),
    none: (req, o) => R.chunk(req, Chunk.NONE, new Uint8Array(0), o),
    blockStatus: (req, id, extents, o = {}) => {
      const type = o.type ?? (extended(o) ? Chunk.BLOCK_STATUS_EXT : Chunk.BLOCK_STATUS);
      return R.chunk(req, type, blockStatusPayload(id, extents, type === Chunk.BLOCK_STATUS_EXT, o.count), o);
    },
    reply(req) {
      const einval = 22;
      // With extended headers every reply is a chunk; with structured replies only reads need one.
      const status = (error = 0): Uint8Array =>
        srv.extended ? (error ? R.error(req, error) : R.none(req)) : R.simple(req, { error });
      if (req.type === Cmd.BLOCK_STATUS && srv.contexts.size) {
        const filter = req.flags & CmdFlag.PAYLOAD_LEN && req.payload ? decodeBlockStatusPayload(req.payload) : undefined;
        const length = filter?.length ?? req.length;
        if (req.offset >= srv.size) return R.error(req, einval, "out of bounds");
        const ids = filter?.ids ?? [...srv.contexts.keys()];
        if (ids.some((id) => !srv.contexts.has(id))) return R.error(req, einval, "unknown context id");
        const end = req.offset + length < srv.size ? req.offset + length : srv.size;
        const chunks = ids.map((id) => R.blockStatus(req, id, [[end - req.offset, 0]], { flags: 0 }));
        return cat(...chunks, R.none(req));
      }
      if (req.flags & CmdFlag.PAYLOAD_LEN && req.type !== Cmd.WRITE) return status(einval); // no payload form here
      const end = req.offset + req.length;
      if (req.type === Cmd.READ) {
        if (end > srv.size) return srv.structured ? R.error(req, einval, "out of bounds") : R.simple(req, { error: einval });
        const data = read(req.offset, req.count);
        if (!srv.structured) return R.simple(req, { data });
        return req.count ? R.data(req, req.offset, data) : R.none(req);
      }
      if (req.type === Cmd.WRITE || req.type === Cmd.WRITE_ZEROES || req.type === Cmd.TRIM) {
        if (end > srv.size) return status(28);
        if (req.type === Cmd.WRITE) write(req.offset, req.data!);
        else zero(req.offset, req.length);
      }
      return status();
    },
    read,
    go(opt) {
      if (opt.code !== Opt.GO && opt.code !== Opt.INFO) return optionReply(opt.code, Rep.ERR_UNSUP);
      const parts = [optionReply(opt.code, Rep.INFO, infoExport(srv.size, srv.eflags))];
      if (infoRequests(opt.data).includes(Info.DESCRIPTION)) {
        parts.push(optionReply(opt.code, Rep.INFO, cat(u16(Info.DESCRIPTION), utf8(srv.options.join(",")))));
      }
      return cat(...parts, optionReply(opt.code, Rep.ACK));
    },
    optionReply,
    bytes: (n, fill = 0) => new Uint8Array(n).fill(fill),
    cat,
    u32: (n) => { const b = new Uint8Array(4); dv(b).setUint32(0, n); return b; },
  };
  return R;
}

const u16 = (n: number): Uint8Array => { const b = new Uint8Array(2); dv(b).setUint16(0, n); return b; };

/** The info types an NBD_OPT_GO / NBD_OPT_INFO request asks for (after its export name). */
function infoRequests(data: Uint8Array): number[] {
  if (data.byteLength < 6) return [];
  const v = dv(data);
  const at = 4 + v.getUint32(0);
  const n = at + 2 <= data.byteLength ? v.getUint16(at) : 0;
  return Array.from({ length: n }, (_, i) => (at + 4 + 2 * i <= data.byteLength ? v.getUint16(at + 2 + 2 * i) : -1));
}

/** The queries of an NBD_OPT_{LIST,SET}_META_CONTEXT request (after its export name). */
function metaQueries(data: Uint8Array): string[] {
  const v = dv(data);
  let at = 4 + v.getUint32(0);
  const n = v.getUint32(at);
  at += 4;
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = v.getUint32(at);
    out.push(text(data.subarray(at + 4, at + 4 + len)));
    at += 4 + len;
  }
  return out;
}

// ---- the server ----------------------------------------------------------------------

/** Bytes from the socket, n at a time; null at EOF. */
class Input {
  #buf: Uint8Array = new Uint8Array(0);
  #eof = false;
  #wake: (() => void) | undefined;

  constructor(socket: Socket) {
    socket.on("data", (d: Buffer) => { this.#buf = cat(this.#buf, d); this.#wake?.(); });
    socket.on("end", () => { this.#eof = true; this.#wake?.(); });
    socket.on("error", () => { this.#eof = true; this.#wake?.(); });
  }

  async read(n: number): Promise<Uint8Array | null> {
    while (this.#buf.byteLength < n) {
      if (this.#eof) return null;
      await new Promise<void>((resolve) => { this.#wake = resolve; });
      this.#wake = undefined;
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }
}

const revive = (_k: string, v: unknown): unknown => {
  if (v && typeof v === "object" && "fn" in v) return new Function(`return (${(v as { fn: string }).fn})`)();
  if (v && typeof v === "object" && "big" in v) return BigInt((v as { big: string }).big);
  return v;
};

async function serve(script: Script): Promise<void> {
  const socket = new Socket({ fd: 0, readable: true, writable: true });
  const input = new Input(socket);
  const hangUp = (): Promise<never> => new Promise(() => {
    // Half-close: the peer sees EOF although fd 1 still refers to the socket.
    socket.end(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
  const reset = (): Promise<never> => new Promise(() => {
    (socket as unknown as { _handle: { readStop(): void } })._handle.readStop();
    setTimeout(() => process.exit(0), 200);
  });
  const send = async (actions: Action[]): Promise<void> => {
    for (const a of actions) {
      if (a === "close") await hangUp();
      else if (a === "reset") await reset();
      else socket.write(a);
    }
  };
  const srv: ServerState = {
    size: script.size ?? DEFAULT_SIZE,
    eflags: script.eflags ?? DEFAULT_EFLAGS,
    structured: false,
    extended: false,
    options: [],
    contexts: new Map(),
    vars: script.vars ?? {},
  };
  const R = replies(srv, { blocks: new Map(), zeroed: [] });
  const need = async (n: number): Promise<Uint8Array> => (await input.read(n)) ?? hangUp();

  // Greeting.
  const greeting = script.greeting ?? "newstyle";
  if (greeting === "close") await hangUp();
  if (greeting === "silent") {
    await input.read(Infinity); // returns at EOF only
    await hangUp();
  }
  const magic = new Uint8Array(16);
  dv(magic).setBigUint64(0, greeting === "bad-magic" ? 0x4e42444d41474944n : NBDMAGIC);
  dv(magic).setBigUint64(8, greeting === "oldstyle" ? OLDSTYLE_MAGIC : greeting === "bad-second-magic" ? 0x1234n : IHAVEOPT);
  if (greeting === "oldstyle") {
    const rest = new Uint8Array(8 + 4 + 124);
    dv(rest).setBigUint64(0, srv.size);
    dv(rest).setUint16(10, srv.eflags);
    await send([cat(magic, rest)]);
  } else {
    const flags = script.handshakeFlags ?? FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;
    const f = new Uint8Array(2);
    dv(f).setUint16(0, flags);
    await send([cat(magic, f)]);
    const clientFlags = dv(await need(4)).getUint32(0);
    const fixed = (flags & FLAG_FIXED_NEWSTYLE) !== 0;
    // Options until GO or EXPORT_NAME.
    for (;;) {
      const h = await need(OPTION_HEADER_SIZE);
      if (dv(h).getBigUint64(0) !== IHAVEOPT) await hangUp();
      const opt: Option = { code: dv(h).getUint32(8), data: await need(dv(h).getUint32(12)) };
      if (!fixed && opt.code !== Opt.EXPORT_NAME) await hangUp(); // plain newstyle knows nothing else
      srv.options.push(opt.code);
      const custom = script.onOption?.(opt, R, srv);
      if (custom) await send(custom);
      if (opt.code === Opt.EXPORT_NAME) {
        if (!custom) {
          const b = new Uint8Array(10 + (clientFlags & FLAG_NO_ZEROES ? 0 : EXPORT_NAME_ZEROES));
          dv(b).setBigUint64(0, srv.size);
          dv(b).setUint16(8, srv.eflags);
          await send([b]);
        }
        break;
      }
      if (opt.code === Opt.ABORT) {
        if (!custom) await send([optionReply(opt.code, Rep.ACK)]);
        await hangUp();
      }
      if (opt.code === Opt.STRUCTURED_REPLY && !custom && srv.extended) {
        await send([optionReply(opt.code, Rep.ERR_EXT_HEADER_REQD)]); // extended headers take precedence
        continue;
      }
      if (opt.code === Opt.STRUCTURED_REPLY && !custom) {
        srv.structured = script.structuredReplies ?? true;
        await send([optionReply(opt.code, srv.structured ? Rep.ACK : Rep.ERR_UNSUP)]);
        continue;
      }
      if (opt.code === Opt.EXTENDED_HEADERS && !custom) {
        const ok = script.extendedHeaders === true;
        if (ok) srv.extended = srv.structured = true;
        await send([optionReply(opt.code, ok ? Rep.ACK : Rep.ERR_UNSUP)]);
        continue;
      }
      if (opt.code === Opt.SET_META_CONTEXT && !custom && script.metaContexts) {
        srv.contexts.clear();
        const selected: Uint8Array[] = [];
        for (const name of metaQueries(opt.data)) {
          const id = script.metaContexts[name];
          if (id === undefined || srv.contexts.has(id)) continue;
          srv.contexts.set(id, name);
          selected.push(optionReply(opt.code, Rep.META_CONTEXT, cat(R.u32(id), utf8(name))));
        }
        await send([...selected, optionReply(opt.code, Rep.ACK)]);
        continue;
      }
      if (opt.code === Opt.STRUCTURED_REPLY) srv.structured = script.structuredReplies ?? true;
      if (!custom) await send([R.go(opt)]);
      if (opt.code === Opt.GO) break;
    }
  }

  // Transmission: requests in the form that was agreed; any other hangs up.
  for (let index = 0; ; index++) {
    const magic = await input.read(4);
    if (!magic) await hangUp();
    const size = requestHeaderSize(dv(magic!).getUint32(0));
    if (size === 0) await hangUp();
    const h = decodeRequest(dv(cat(magic!, await need(size - 4))));
    if (h.extended !== srv.extended) await hangUp();
    const req: Request = { index, ...h, count: Number(h.length) };
    if (req.type === Cmd.WRITE) req.data = await need(req.count);
    else if (req.extended && req.flags & CmdFlag.PAYLOAD_LEN) req.payload = await need(req.count);
    if (req.type === Cmd.DISC) await hangUp();
    await send(script.onRequest?.(req, R, srv) ?? [R.reply(req)]);
  }
}

if (process.argv[1] === SELF) {
  void serve(JSON.parse(process.argv[2] ?? "{}", revive) as Script);
}
