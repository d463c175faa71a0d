/**
 * A seeded fuzz test of the reply decoder (src/client/replies.ts): valid
 * replies (simple, structured and extended, chunks of several commands interleaved)
 * and mutated ones, split at random points into push() calls, against a
 * fake ReplyHost. Whatever the bytes:
 * - no throw escapes push(); a failure reaches host.fatal() or a command's error;
 * - no byte lands outside a command's buffer (each is a view into one larger
 *   buffer between guard bytes), and callbacks see only their command's bytes;
 * - retire() is called once at most per command, and only while it is in flight.
 * Valid streams must also give each command exactly its data and error.
 *
 * FUZZ_CASES (default 10000) sets the number of cases, FUZZ_SEED the seed;
 * a failure prints both and the case, which FUZZ_ONLY=<case> replays alone.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { errno } from "../src/errno.js";
import { Chunk, Cmd, REPLY_FLAG_DONE } from "../src/protocol/constants.js";
import { errnoOfNbdError } from "../src/protocol/transmission.js";
import { type Command, finalError } from "../src/client/command.js";
import { NbdError } from "../src/client/error.js";
import { ReplyParser, type ReplyHost } from "../src/client/replies.js";
import {
  blockStatusPayload, cat, chunk, errorPayload, extendedChunk, offsetDataPayload, offsetHolePayload, simpleReply,
  type ChunkOpts,
} from "./fake-server.js";

const CASES = Number(process.env.FUZZ_CASES) || 10000;
const SEED = Number(process.env.FUZZ_SEED) || 0x5eed;
const ONLY = process.env.FUZZ_ONLY === undefined ? undefined : Number(process.env.FUZZ_ONLY);

// ---- a small seeded PRNG (mulberry32) ------------------------------------------------

type Rand = { (n: number): number; chance(p: number): boolean; pick<T>(xs: readonly T[]): T };

function prng(seed: number): Rand {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const r = ((n: number) => Math.floor(next() * n)) as Rand;
  r.chance = (p) => next() < p;
  r.pick = (xs) => xs[r(xs.length)]!;
  return r;
}

// ---- commands whose buffers sit between guard bytes -----------------------------------

const GUARD = 0xa5;
const GUARD_LEN = 32;
const NBD_ERRORS = [1, 5, 12, 22, 28, 75, 95, 108, 9999]; // 9999: unknown, read as EINVAL

interface Fuzzed extends Command {
  /** Where its buffer starts in the arena. */
  at: number;
  /** What a valid reply leaves in the buffer, and the errno the command must end with. */
  want?: Uint8Array;
  wantError: number;
}

function arenaFor(counts: number[]): { arena: Uint8Array; starts: number[] } {
  const starts: number[] = [];
  let size = GUARD_LEN;
  for (const n of counts) {
    starts.push(size);
    size += n + GUARD_LEN;
  }
  return { arena: new Uint8Array(size).fill(GUARD), starts };
}

function guardsIntact(arena: Uint8Array, cmds: Fuzzed[]): string | undefined {
  let from = 0;
  for (const c of [...cmds].sort((a, b) => a.at - b.at)) {
    for (let i = from; i < c.at; i++) if (arena[i] !== GUARD) return `guard byte ${i} overwritten`;
    from = c.at + (c.buf?.byteLength ?? 0);
  }
  for (let i = from; i < arena.byteLength; i++) if (arena[i] !== GUARD) return `guard byte ${i} overwritten`;
  return undefined;
}

// ---- valid replies -----------------------------------------------------------------------

const big = (n: number): bigint => BigInt(n);

/** The chunks (in order) that answer `c` correctly; sets c.want and c.wantError. `ext`: extended headers (implies sr). */
function replyFor(c: Fuzzed, sr: boolean, r: Rand, ext = false): Uint8Array[] {
  const cookie = big(c.cookie);
  const count = Number(c.count);
  const ck = (_cookie: bigint, type: number, payload: Uint8Array, o?: ChunkOpts): Uint8Array =>
    (ext ? extendedChunk(cookie, c.offset, type, payload, o) : chunk(cookie, type, payload, o));
  const failWith = r.chance(0.2) ? r.pick(NBD_ERRORS) : 0;
  if (!sr) {
    c.wantError = failWith ? errnoOfNbdError(failWith) : 0;
    if (c.type === Cmd.READ && !failWith) {
      const data = randomBytes(r, count);
      c.want = data;
      return [simpleReply(cookie, 0, data)];
    }
    return [simpleReply(cookie, failWith)];
  }
  if (c.type !== Cmd.READ && c.type !== Cmd.BLOCK_STATUS) {
    c.wantError = failWith ? errnoOfNbdError(failWith) : 0;
    if (failWith) return [ck(cookie, Chunk.ERROR, errorPayload(failWith, "no"))];
    return [r.chance(0.5) && !ext ? simpleReply(cookie) : ck(cookie, Chunk.NONE, new Uint8Array(0))];
  }
  const parts: Uint8Array[] = [];
  if (c.type === Cmd.BLOCK_STATUS) {
    for (const id of r.chance(0.3) ? [2, 1] : [1]) {
      const n = 1 + r(4);
      // With extended headers, lengths beyond 32 bits too (block_status clamps them, without error).
      const extents = Array.from({ length: n }, (): [bigint, number] =>
        [ext && r.chance(0.2) ? big(1 + r(1000)) << 32n : big(1 + r(100000)), r(4)]);
      parts.push(ck(cookie, ext ? Chunk.BLOCK_STATUS_EXT : Chunk.BLOCK_STATUS, blockStatusPayload(id, extents, ext), { flags: 0 }));
    }
  } else {
    // Data and holes that tile [0, count), in any order.
    const want = new Uint8Array(count);
    const pieces: [number, number][] = [];
    for (let at = 0; at < count;) {
      const len = Math.min(count - at, 1 + r(r.chance(0.5) ? 64 : 2048));
      pieces.push([at, len]);
      at += len;
    }
    for (let i = pieces.length - 1; i > 0; i--) {
      const j = r(i + 1);
      [pieces[i], pieces[j]] = [pieces[j]!, pieces[i]!];
    }
    for (const [at, len] of pieces) {
      const offset = c.offset + big(at);
      if (r.chance(0.3)) {
        parts.push(ck(cookie, Chunk.OFFSET_HOLE, offsetHolePayload(offset, len), { flags: 0 }));
      } else {
        const data = randomBytes(r, len);
        want.set(data, at);
        parts.push(ck(cookie, Chunk.OFFSET_DATA, offsetDataPayload(offset, data), { flags: 0 }));
      }
    }
    c.want = want;
  }
  c.wantError = 0;
  if (failWith) {
    // An error chunk anywhere among the others; ERROR_OFFSET needs an offset inside the range.
    const withOffset = count > 0 && r.chance(0.5);
    const payload = errorPayload(failWith, "x".repeat(r(20)), withOffset ? c.offset + big(r(count)) : undefined);
    parts.splice(r(parts.length + 1), 0, ck(cookie, withOffset ? Chunk.ERROR_OFFSET : Chunk.ERROR, payload, { flags: 0 }));
    c.wantError = errnoOfNbdError(failWith);
  }
  // DONE on the last chunk, or a NONE after it.
  const last = parts.length - 1;
  if (last < 0 || r.chance(0.4)) parts.push(ck(cookie, Chunk.NONE, new Uint8Array(0)));
  else parts[last]![5]! |= REPLY_FLAG_DONE;
  return parts;
}

function randomBytes(r: Rand, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = r(256);
  return b;
}

/** The replies of several commands, interleaved chunk by chunk (each command's own order kept). */
function interleave(queues: Uint8Array[][], r: Rand): Uint8Array {
  const out: Uint8Array[] = [];
  const live = queues.map((q) => [...q]);
  for (;;) {
    const nonEmpty = live.filter((q) => q.length);
    if (!nonEmpty.length) break;
    out.push(r.pick(nonEmpty).shift()!);
  }
  return cat(...out);
}

// ---- mutations -----------------------------------------------------------------------------

const INTERESTING32 = [0, 1, 7, 8, 9, 11, 12, 13, 0x7fffffff, 0x80000000, 0xffffffff, 64 * 1024 * 1024 + 8, 64 * 1024 * 1024 + 9];

function mutate(stream: Uint8Array, r: Rand): Uint8Array {
  let s = stream;
  for (let n = 1 + r(4); n > 0 && s.byteLength > 0; n--) {
    const at = r(s.byteLength);
    switch (r(7)) {
      case 0: // flip a bit
        s = s.slice();
        s[at]! ^= 1 << r(8);
        break;
      case 1: // a random byte
        s = s.slice();
        s[at] = r(256);
        break;
      case 2: { // an interesting 32-bit value (lengths, magics, types, cookies)
        s = s.slice();
        const v = new DataView(s.buffer, s.byteOffset, s.byteLength);
        if (at + 4 <= s.byteLength) v.setUint32(at, r.pick(INTERESTING32));
        break;
      }
      case 3: // delete a range
        s = cat(...[s.subarray(0, at), s.subarray(Math.min(s.byteLength, at + 1 + r(40)))]);
        break;
      case 4: // insert random bytes
        s = cat(...[s.subarray(0, at), randomBytes(r, 1 + r(24)), s.subarray(at)]);
        break;
      case 5: // repeat a range (a duplicated chunk, a replayed reply)
        s = cat(...[s.subarray(0, at), s.subarray(at, at + 1 + r(200)), s.subarray(at)]);
        break;
      case 6: // truncate
        s = s.subarray(0, at);
        break;
    }
  }
  return s;
}

/** Splits `s` into pieces: sometimes byte by byte, usually a few random cuts. */
function split(s: Uint8Array, r: Rand): Uint8Array[] {
  if (r.chance(0.05)) return Array.from(s, (_, i) => s.subarray(i, i + 1));
  const cuts = new Set<number>();
  for (let n = r(8); n > 0; n--) cuts.add(r(s.byteLength + 1));
  const sorted = [0, ...[...cuts].sort((a, b) => a - b), s.byteLength];
  const out: Uint8Array[] = [];
  for (let i = 1; i < sorted.length; i++) out.push(s.subarray(sorted[i - 1], sorted[i]));
  return out;
}

// ---- one case -------------------------------------------------------------------------------

function runCase(seed: number): void {
  const r = prng(seed);
  const sr = r.chance(0.8);
  const ext = sr && r.chance(0.4);
  const mutated = r.chance(0.7);
  const types = sr ? [Cmd.READ, Cmd.READ, Cmd.READ, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM, Cmd.BLOCK_STATUS] : [Cmd.READ, Cmd.READ, Cmd.WRITE, Cmd.FLUSH];
  const n = 1 + r(4);
  const kinds = Array.from({ length: n }, () => r.pick(types));
  const counts = kinds.map((t) => (t === Cmd.READ ? (r.chance(0.05) ? 0 : 1 + r(r.chance(0.2) ? 70000 : 3000)) : 0));
  const { arena, starts } = arenaFor(counts);
  const problems: string[] = [];
  const cookies = new Set<number>();
  const cmds: Fuzzed[] = kinds.map((type, i) => {
    let cookie: number;
    do cookie = r.chance(0.5) ? 1 + r(8) : r(2 ** 30) * 1024 + r(1024); while (cookies.has(cookie));
    cookies.add(cookie);
    const count = type === Cmd.READ ? counts[i]! : 1 + r(1 << 20);
    const offset = r.chance(0.1) ? 2n ** 63n - 1n - big(count) - big(r(1000)) : big(r(1 << 30));
    const c: Fuzzed = {
      cookie, type, flags: 0, offset, count: big(count), error: 0, seen: 0, wantError: 0, at: starts[i]!,
      buf: type === Cmd.READ ? arena.subarray(starts[i]!, starts[i]! + count) : undefined,
      settle: () => problems.push("settle() called by the parser"),
    };
    if (type === Cmd.READ && r.chance(0.3)) {
      const fails = r.chance(0.1);
      const calls = { n: 0 };
      c.chunk = ((sub: Uint8Array, off: bigint, _status: number, box: { value: number }) => {
        const within = sub.buffer === arena.buffer && sub.byteOffset >= c.buf!.byteOffset
          && sub.byteOffset + sub.byteLength <= c.buf!.byteOffset + c.buf!.byteLength;
        if (!within) problems.push(`chunk callback of cookie ${c.cookie} got bytes outside its buffer`);
        else if (off !== c.offset + big(sub.byteOffset - c.buf!.byteOffset)) {
          problems.push(`chunk callback of cookie ${c.cookie}: offset ${off} does not match its subbuf`);
        }
        calls.n++;
        if (!fails) return 0;
        box.value = errno.EIO;
        if (r.chance(0.5)) throw new Error("callback throws");
        return -1;
      }) as never;
      (c as { failingCallback?: { n: number } }).failingCallback = fails ? calls : undefined;
    }
    if (type === Cmd.BLOCK_STATUS) {
      c.extent = {
        wide: r.chance(0.5),
        fn: ((name: string, off: bigint, entries: Uint32Array | BigUint64Array) => {
          if (name !== "base:allocation") problems.push(`extent callback for context ${name}`);
          if (off !== c.offset) problems.push(`extent callback offset ${off}`);
          if (entries.length === 0 || entries.length % 2) problems.push(`extent callback with ${entries.length} entries`);
          return 0;
        }) as never,
      };
    }
    return c;
  });
  const stream = interleave(cmds.map((c) => replyFor(c, sr, r, ext)), r);
  const bytes = mutated ? mutate(stream, r) : stream;

  const inflight = new Map(cmds.map((c) => [c.cookie, c]));
  const retired = new Set<number>();
  let fatal: NbdError | undefined;
  const host: ReplyHost = {
    structuredReplies: () => sr,
    extendedHeaders: () => ext,
    exportSize: () => 2n ** 64n - 1n,
    stats: { bytesSent: 0, chunksSent: 0, bytesReceived: 0, chunksReceived: 0 },
    awaiting: () => inflight.size > 0,
    contextName: (id) => (id === 1 ? "base:allocation" : undefined),
    find: (cookie) => inflight.get(cookie),
    retire: (cmd) => {
      if (retired.has(cmd.cookie)) problems.push(`cookie ${cmd.cookie} retired twice`);
      if (!inflight.has(cmd.cookie)) problems.push(`cookie ${cmd.cookie} retired while not in flight`);
      if (fatal) problems.push(`cookie ${cmd.cookie} retired after fatal()`);
      retired.add(cmd.cookie);
      inflight.delete(cmd.cookie);
      if (!Number.isInteger(cmd.error) || cmd.error < 0) problems.push(`cookie ${cmd.cookie} retired with error ${cmd.error}`);
      if (cmd.type === Cmd.READ && finalError(cmd) === 0 && cmd.seen !== Number(cmd.count)) {
        problems.push(`read ${cmd.cookie} retired as a success with ${cmd.seen} of ${cmd.count} bytes`);
      }
    },
    fatal: (err) => {
      if (fatal) problems.push(`fatal() twice: ${fatal.message}, then ${err.message}`);
      if (!(err instanceof NbdError) || typeof err.errno !== "number" || !err.message) {
        problems.push(`fatal() with ${String(err)}`);
      }
      fatal = err;
    },
  };
  const parser = new ReplyParser(host);
  for (const piece of split(bytes, r)) {
    if (fatal) break; // the connection is destroyed: nothing more is read
    try {
      parser.push(piece);
    } catch (e) {
      problems.push(`push() threw: ${(e as Error).stack ?? String(e)}`);
      break;
    }
  }
  const guard = guardsIntact(arena, cmds);
  if (guard) problems.push(guard);

  if (!mutated) {
    if (fatal) problems.push(`a valid stream was fatal: ${fatal.message}`);
    if (!parser.idle) problems.push("the parser is not idle after a valid stream");
    for (const c of cmds) {
      // A failing chunk callback fails the command, if it was called at all.
      const failing = ((c as { failingCallback?: { n: number } }).failingCallback?.n ?? 0) > 0;
      if (!retired.has(c.cookie)) problems.push(`cookie ${c.cookie} (type ${c.type}) never retired`);
      else if (!failing && c.error !== c.wantError) problems.push(`cookie ${c.cookie}: error ${c.error}, want ${c.wantError}`);
      else if (failing && c.error === 0) problems.push(`cookie ${c.cookie}: a failing callback left no error`);
      if (c.want && !Buffer.from(c.buf!).equals(Buffer.from(c.want))) problems.push(`read ${c.cookie}: wrong data`);
    }
  }
  if (problems.length) {
    throw new Error(`FUZZ_SEED=${SEED} case seed ${seed} (${mutated ? "mutated" : "valid"}, ${ext ? "extended" : sr ? "structured" : "simple"}, ` +
      `${cmds.map((c) => `${c.type}:${c.cookie}:${c.count}`).join(" ")}):\n  ${problems.join("\n  ")}`);
  }
}

// ---- the tests ----------------------------------------------------------------------------------

const caseSeed = (i: number): number => (Math.imul(SEED ^ 0x9e3779b9, 0x85ebca6b) + Math.imul(i + 1, 0xc2b2ae35)) >>> 0;

test(`reply parser: ${ONLY === undefined ? CASES : 1} seeded cases (FUZZ_SEED=${SEED}), no throw, no stray write, one retire each`, () => {
  const start = Date.now();
  const cases = ONLY === undefined ? Array.from({ length: CASES }, (_, i) => i) : [ONLY];
  for (const i of cases) {
    try {
      runCase(caseSeed(i));
    } catch (e) {
      console.error(`fuzz: case ${i} failed; replay with FUZZ_SEED=${SEED} FUZZ_ONLY=${i}`);
      throw e;
    }
  }
  if (ONLY === undefined && !process.env.FUZZ_CASES) {
    const ms = Date.now() - start;
    assert.ok(ms < 5000, `${CASES} cases took ${ms} ms`);
  }
});

test("the fuzzer itself: valid streams parse cleanly, mutated ones reach fatal() or a command's error", () => {
  // Guard against a fuzzer that checks nothing: count what the cases did.
  let fatals = 0;
  let failedCommands = 0;
  for (let i = 0; i < 300; i++) {
    const r = prng(caseSeed(i) ^ 0xabcdef);
    const sr = true;
    const c: Fuzzed = {
      cookie: 7, type: Cmd.READ, flags: 0, offset: 4096n, count: 100n, error: 0, seen: 0, wantError: 0, at: GUARD_LEN,
      buf: new Uint8Array(100), settle: () => {},
    };
    const bytes = mutate(cat(...replyFor(c, sr, r)), r);
    let fatal = false;
    let done = false;
    const parser = new ReplyParser({
      structuredReplies: () => sr,
      extendedHeaders: () => false,
      exportSize: () => 1n << 20n,
      stats: { bytesSent: 0, chunksSent: 0, bytesReceived: 0, chunksReceived: 0 },
      awaiting: () => !done,
      contextName: () => undefined,
      find: (cookie) => (cookie === 7 && !done ? c : undefined),
      retire: () => { done = true; },
      fatal: () => { fatal = true; },
    });
    parser.push(bytes);
    if (fatal) fatals++;
    else if (done && c.error) failedCommands++;
  }
  assert.ok(fatals > 50, `${fatals} of 300 mutated replies were fatal`);
  assert.ok(failedCommands > 5, `${failedCommands} of 300 mutated replies failed their command`);
});

test("a known stream: two reads interleaved, split byte by byte, fill their buffers exactly", () => {
  const arena = new Uint8Array(64 + 16 + 64 + 8 + 64).fill(GUARD);
  const a = arena.subarray(64, 80);
  const b = arena.subarray(144, 152);
  const mk = (cookie: number, offset: bigint, buf: Uint8Array): Command => ({
    cookie, type: Cmd.READ, flags: 0, offset, count: big(buf.byteLength), buf, error: 0, seen: 0, settle: () => {},
  });
  const cmds = new Map([[1, mk(1, 100n, a)], [2, mk(2, 0n, b)]]);
  const order: number[] = [];
  const parser = new ReplyParser({
    structuredReplies: () => true,
    extendedHeaders: () => false,
    exportSize: () => 1n << 20n,
    stats: { bytesSent: 0, chunksSent: 0, bytesReceived: 0, chunksReceived: 0 },
    awaiting: () => cmds.size > 0,
    contextName: () => undefined,
    find: (cookie) => cmds.get(cookie),
    retire: (cmd) => { order.push(cmd.cookie); cmds.delete(cmd.cookie); },
    fatal: (err) => assert.unreachable(err.message),
  });
  const stream = cat(...[
    chunk(1n, Chunk.OFFSET_DATA, offsetDataPayload(108n, new Uint8Array(8).fill(1)), { flags: 0 }),
    chunk(2n, Chunk.OFFSET_HOLE, offsetHolePayload(0n, 8)),
    chunk(1n, Chunk.OFFSET_DATA, offsetDataPayload(100n, new Uint8Array(8).fill(2))),
  ]);
  for (let i = 0; i < stream.byteLength; i++) parser.push(stream.subarray(i, i + 1));
  assert.equal(order, [2, 1]);
  assert.equal([...a], [2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
  assert.equal([...b], [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.ok(arena.subarray(0, 64).every((x) => x === GUARD) && arena.subarray(80, 144).every((x) => x === GUARD)
    && arena.subarray(152).every((x) => x === GUARD), "guards intact");
  // Bytes after the last reply are held until a command awaits them.
  parser.push(new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
  assert.ok(parser.idle);
});

test.run();
