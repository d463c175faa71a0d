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
 * - `onOption(opt, R, srv)`, `onRequest(req, R, srv)`: return the actions
 *   that answer it (byte arrays to send, "close" to hang up), or undefined
 *   for the honest answer (`R.go(opt)`, `R.reply(req)` give it, to build
 *   on). An empty list sends nothing at all; "close" and "reset" hang up.
 *
 * The hooks are sent to the server as source text: they may use only their
 * arguments (no closures, no imports); `srv.vars` carries script data.
 */
import { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import {
  Chunk, Cmd, EXPORT_NAME_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, Info, NBDMAGIC, OLDSTYLE_MAGIC,
  OPTION_HEADER_SIZE, OPTION_REPLY_MAGIC, Opt, REPLY_FLAG_DONE, REQUEST_MAGIC, REQUEST_SIZE, Rep,
  SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, TFlag,
} from "../src/protocol/constants.js";
import { dv, utf8 } from "../src/protocol/handshake.js";

// ---- what a script is ------------------------------------------------------------

export interface Option { code: number; data: Uint8Array }
export interface Request {
  /** 0 for the first request of the connection. */
  index: number;
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  count: number;
  /** NBD_CMD_WRITE's payload. */
  data?: Uint8Array;
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
  vars: Record<string, unknown>;
}

export interface Script {
  greeting?: "newstyle" | "oldstyle" | "bad-magic" | "bad-second-magic" | "close" | "silent";
  handshakeFlags?: number;
  size?: bigint;
  eflags?: number;
  structuredReplies?: boolean;
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

export interface ChunkOpts { flags?: number; cookie?: bigint; length?: number; magic?: number }

/** A structured reply chunk; `length` overrides the header's length field (the payload is sent as given). */
export function chunk(cookie: bigint, type: number, payload: Uint8Array, o: ChunkOpts = {}): Uint8Array {
  const b = new Uint8Array(20);
  const v = dv(b);
  v.setUint32(0, o.magic ?? STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, o.flags ?? REPLY_FLAG_DONE);
  v.setUint16(6, type);
  v.setBigUint64(8, o.cookie ?? cookie);
  v.setUint32(16, o.length ?? payload.byteLength);
  return cat(b, payload);
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

function replies(srv: ServerState, disk: Map<bigint, Uint8Array>): Replies {
  const read = (offset: bigint, count: number): Uint8Array => {
    const out = patternAt(offset, count);
    for (let at = 0; at < count;) {
      const pos = offset + BigInt(at);
      const block = disk.get(pos / BLOCK);
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
      const block = disk.get(key) ?? read(key * BLOCK, Number(BLOCK));
      disk.set(key, block);
      const inBlock = Number(pos % BLOCK);
      const n = Math.min(data.byteLength - at, Number(BLOCK) - inBlock);
      block.set(data.subarray(at, at + n), inBlock);
      at += n;
    }
  };
  const R: Replies = {
    simple: (req, o = {}) => simpleReply(o.cookie ?? req.cookie, o.error ?? 0, o.data),
    chunk: (req, type, payload, o) => chunk(req.cookie, type, payload, o),
    data: (req, offset, data, o) => chunk(req.cookie, Chunk.OFFSET_DATA, offsetDataPayload(offset, data), o),
    hole: (req, offset, length, o) => chunk(req.cookie, Chunk.OFFSET_HOLE, offsetHolePayload(offset, length), o),
    error: (req, error, message = "", o = {}) => chunk(req.cookie,
      o.offset === undefined ? Chunk.ERROR : Chunk.ERROR_OFFSET, errorPayload(error, message, o.offset), o),
    none: (req, o) => chunk(req.cookie, Chunk.NONE, new Uint8Array(0), o),
    reply(req) {
      const end = req.offset + BigInt(req.count);
      const einval = 22;
      if (req.type === Cmd.READ) {
        if (end > srv.size) return srv.structured ? R.error(req, einval, "out of bounds") : R.simple(req, { error: einval });
        const data = read(req.offset, req.count);
        if (!srv.structured) return R.simple(req, { data });
        return req.count ? R.data(req, req.offset, data) : R.none(req);
      }
      if (req.type === Cmd.WRITE || req.type === Cmd.WRITE_ZEROES || req.type === Cmd.TRIM) {
        if (end > srv.size) return R.simple(req, { error: 28 });
        if (req.type === Cmd.WRITE) write(req.offset, req.data!);
        else write(req.offset, new Uint8Array(req.count));
      }
      return R.simple(req);
    },
    read,
    go(opt) {
      if (opt.code !== Opt.GO && opt.code !== Opt.INFO) return optionReply(opt.code, Rep.ERR_UNSUP);
      return cat(optionReply(opt.code, Rep.INFO, infoExport(srv.size, srv.eflags)), optionReply(opt.code, Rep.ACK));
    },
    optionReply,
    bytes: (n, fill = 0) => new Uint8Array(n).fill(fill),
    cat,
    u32: (n) => { const b = new Uint8Array(4); dv(b).setUint32(0, n); return b; },
  };
  return R;
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
    vars: script.vars ?? {},
  };
  const R = replies(srv, new Map());
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
      if (opt.code === Opt.STRUCTURED_REPLY && !custom) {
        srv.structured = script.structuredReplies ?? true;
        await send([optionReply(opt.code, srv.structured ? Rep.ACK : Rep.ERR_UNSUP)]);
        continue;
      }
      if (opt.code === Opt.STRUCTURED_REPLY) srv.structured = script.structuredReplies ?? true;
      if (!custom) await send([R.go(opt)]);
      if (opt.code === Opt.GO) break;
    }
  }

  // Transmission.
  for (let index = 0; ; index++) {
    const h = await input.read(REQUEST_SIZE);
    if (!h) await hangUp();
    const v = dv(h!);
    if (v.getUint32(0) !== REQUEST_MAGIC) await hangUp();
    const req: Request = {
      index, flags: v.getUint16(4), type: v.getUint16(6), cookie: v.getBigUint64(8),
      offset: v.getBigUint64(16), count: v.getUint32(24),
    };
    if (req.type === Cmd.WRITE) req.data = await need(req.count);
    if (req.type === Cmd.DISC) await hangUp();
    await send(script.onRequest?.(req, R, srv) ?? [R.reply(req)]);
  }
}

if (process.argv[1] === SELF) {
  void serve(JSON.parse(process.argv[2] ?? "{}", revive) as Script);
}
