/**
 * Extended headers (NBD_OPT_EXTENDED_HEADERS, libnbd 1.18): negotiation and
 * its fallbacks, the 32-byte requests and replies, counts over 4 GiB, 64-bit
 * block status (whole for block_status_64, clamped for block_status as
 * libnbd clamps it), block_status_filter's payload, PAYLOAD_LEN under the
 * strict bits, and the protocol errors a server can make. No Debian server
 * speaks extended headers (nbdkit 1.32 and qemu-nbd 7.2 refuse the option),
 * so the fake server (test/fake-server.ts) plays one; the last tests check
 * that nbdkit and qemu-nbd, which refuse it, work as before and as libnbd
 * 1.14 (python3-libnbd) sees them.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import {
  getErrno, getError, CMD_FLAG_PAYLOAD_LEN, CMD_FLAG_REQ_ONE, CONTEXT_BASE_ALLOCATION, STRICT_AUTO_FLAG, STRICT_COMMANDS,
  STRICT_MASK, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { TFlag } from "../src/protocol/constants.js";
import type { Command } from "../src/client/command.js";
import { cookExtents } from "../src/client/replies.js";
import { DEFAULT_EFLAGS, fakeServer, patternAt, type Script } from "./fake-server.js";
import { scratchFile, timed } from "./helpers.js";
import { connected, fails, NBDKIT, newHandle } from "./handles.js";
import { python } from "./libnbd.js";

const KiB = 1024;
const GiB = 2n ** 30n;
const DEPTH = "qemu:allocation-depth";
/** What a wrong reply must take at most to fail. */
const PROMPT_MS = 2000;

const EXT: Script = { extendedHeaders: true };

/** A handle on the fake server; set_full_info makes GO's description list the options the server received. */
function fake(script: Script, before?: (h: Handle) => void): Handle {
  return connected(fakeServer(script), false, (h) => {
    assert.is(h.setFullInfo(true), 0);
    before?.(h);
  });
}

/** The option codes the fake server received, in order (11 EXTENDED_HEADERS, 8 STRUCTURED_REPLY, 10 SET_META_CONTEXT, 7 GO). */
const optionsSeen = (h: Handle): string | null => h.getExportDescription();

type Stats = [bigint, bigint, bigint, bigint];
const stats = (h: Handle): Stats => [h.statsBytesSent(), h.statsChunksSent(), h.statsBytesReceived(), h.statsChunksReceived()];
const delta = (a: Stats, b: Stats): number[] => a.map((x, i) => Number(x - b[i]!));

function read(h: Handle, count: number, offset: number | bigint): Uint8Array {
  const buf = new Uint8Array(count);
  assert.is(h.pread(buf, offset), 0, `pread ${count}@${offset}: ${getError()}`);
  return buf;
}

/** Block status calls, recording each callback: [context, offset, entries as plain numbers or bigints]. */
type Seen = [string, bigint, (number | bigint)[], number][];
function extents(run: (cb: (ctx: string, off: bigint, e: Uint32Array | BigUint64Array, err: { value: number }) => number) => number): { ret: number; seen: Seen } {
  const seen: Seen = [];
  const ret = run((ctx, off, e, err) => (seen.push([ctx, off, Array.from(e as ArrayLike<number | bigint>), err.value]), 0));
  return { ret, seen };
}

// ---- settings and negotiation --------------------------------------------------------

test("request_extended_headers: on by default (libnbd 1.18), settable only before connecting", () => {
  const h = newHandle();
  assert.is(h.getRequestExtendedHeaders(), 1);
  assert.is(h.setRequestExtendedHeaders(false), 0);
  assert.is(h.getRequestExtendedHeaders(), 0);
  assert.is(h.setRequestExtendedHeaders(true), 0);
  assert.is(h.getRequestExtendedHeaders(), 1);
  fails(h.getExtendedHeadersNegotiated(), errno.ENOTCONN, "nbd_get_extended_headers_negotiated: invalid state: START: " +
    "the handle must be negotiating, or connected with the server, or shut down: Transport endpoint is not connected");
  fails(h.optExtendedHeaders(), errno.ENOTCONN, "nbd_opt_extended_headers: invalid state: START: " +
    "the handle must be negotiating: Transport endpoint is not connected");

  const c = fake(EXT);
  fails(c.setRequestExtendedHeaders(false), errno.EINVAL, "nbd_set_request_extended_headers: invalid state: READY: " +
    "the handle must be newly created: Invalid argument");
  assert.is(c.getRequestExtendedHeaders(), 1, "never fails, in any state");
  fails(c.optExtendedHeaders(), errno.EINVAL, "nbd_opt_extended_headers: invalid state: READY: the handle must be negotiating: Invalid argument");
  assert.is(c.getExtendedHeadersNegotiated(), 1);
  assert.is(c.shutdown(), 0, String(getError()));
  assert.is(c.getExtendedHeadersNegotiated(), 1, "still answers once shut down");
  assert.is(c.getRequestExtendedHeaders(), 1);
});

test("a server that agrees: NBD_OPT_EXTENDED_HEADERS first, structured replies implied, 32-byte requests and replies", () => {
  // A write must come with PAYLOAD_LEN; a compact request would make the fake hang up.
  const h = fake({
    ...EXT,
    onRequest: (req, R) => (req.type === 1 && !(req.flags & 32) ? [R.error(req, 1, "write without PAYLOAD_LEN")] : undefined),
  });
  assert.is(optionsSeen(h), "11,7", "no NBD_OPT_STRUCTURED_REPLY after extended headers");
  assert.is(h.getExtendedHeadersNegotiated(), 1);
  assert.is(h.getStructuredRepliesNegotiated(), 1);
  assert.is(h.getProtocol(), "newstyle-fixed");

  // Every request is 32 bytes, every reply a 32-byte header (plus payload).
  let s = stats(h);
  assert.is(h.flush(), 0, String(getError()));
  assert.equal(delta(stats(h), s), [32, 1, 32, 1], "flush: a 32-byte request, a 32-byte NONE chunk");
  s = stats(h);
  assert.equal(read(h, 512, 4096), patternAt(4096n, 512));
  assert.equal(delta(stats(h), s), [32, 1, 32 + 8 + 512, 1], "pread: one OFFSET_DATA chunk");
  const data = new Uint8Array(3000).fill(0x5a);
  s = stats(h);
  assert.is(h.pwrite(data, 5000), 0, String(getError()));
  assert.equal(delta(stats(h), s), [32 + 3000, 1, 32, 1], "pwrite: header and payload");
  assert.equal(read(h, 3002, 4999), Uint8Array.of(patternAt(4999n, 1)[0]!, ...data, patternAt(8000n, 1)[0]!));

  // The aio forms go the same way.
  const buf = new Uint8Array(new SharedArrayBuffer(100));
  const cookies = [h.aioPwrite(new Uint8Array(100).fill(7), 0), h.aioPread(buf, 8192), h.aioFlush()];
  for (const c of cookies) assert.ok(c > 0n, String(getError()));
  while (h.aioInFlight() > 0) assert.ok(h.poll(-1) >= 0, String(getError()));
  for (const c of cookies) assert.is(h.aioCommandCompleted(c), 1, String(getError()));
  assert.equal(buf, patternAt(8192n, 100));
  assert.equal(read(h, 100, 0), new Uint8Array(100).fill(7));
  assert.is(h.shutdown(), 0, String(getError()));
  assert.is(h.aioIsClosed(), 1);
});

test("set_request_extended_headers(false) keeps compact headers with a willing server; without structured replies neither is asked", () => {
  const compact = fake(EXT, (h) => assert.is(h.setRequestExtendedHeaders(false), 0));
  assert.is(optionsSeen(compact), "8,7");
  assert.is(compact.getExtendedHeadersNegotiated(), 0);
  assert.is(compact.getStructuredRepliesNegotiated(), 1);
  const s = stats(compact);
  assert.is(compact.flush(), 0, String(getError()));
  assert.equal(delta(stats(compact), s), [28, 1, 16, 1], "a 28-byte request, a 16-byte simple reply");
  assert.equal(read(compact, 64, 1000), patternAt(1000n, 64));

  // Extended headers imply structured replies: libnbd ignores the request when those are off.
  const plain = fake(EXT, (h) => assert.is(h.setRequestStructuredReplies(false), 0));
  assert.is(plain.getRequestExtendedHeaders(), 1);
  assert.is(optionsSeen(plain), "7");
  assert.equal([plain.getExtendedHeadersNegotiated(), plain.getStructuredRepliesNegotiated()], [0, 0]);
  assert.equal(read(plain, 64, 1000), patternAt(1000n, 64));
});

test("a server that refuses: compact headers after structured replies, as libnbd falls back", () => {
  const refusals: [string, Script][] = [
    ["ERR_UNSUP", {}],
    ["ERR_INVALID with a message", { onOption: (opt, R) => (opt.code === 11 ? [R.optionReply(11, 0x80000003, new TextEncoder().encode("no"))] : undefined) }],
    ["ERR_EXT_HEADER_REQD", { onOption: (opt, R) => (opt.code === 11 ? [R.optionReply(11, 0x8000000a)] : undefined) }],
  ];
  for (const [what, script] of refusals) {
    const h = fake(script);
    assert.is(optionsSeen(h), "11,8,7", what);
    assert.equal([h.getExtendedHeadersNegotiated(), h.getStructuredRepliesNegotiated()], [0, 1], what);
    const s = stats(h);
    assert.equal(read(h, 64, 64), patternAt(64n, 64), what);
    assert.equal(delta(stats(h), s), [28, 1, 20 + 8 + 64, 1], `${what}: compact request, structured reply`);
  }
});

test("a broken answer to NBD_OPT_EXTENDED_HEADERS fails the connect and the handle is dead", () => {
  const cases: [string, Script, string][] = [
    ["a reply type that is neither ACK nor an error", { onOption: (opt, R) => (opt.code === 11 ? [R.optionReply(11, 2)] : undefined) },
      "nbd_connect_command: handshake: unexpected option reply type 2"],
    ["EOF", { onOption: (opt) => (opt.code === 11 ? ["close"] : undefined) }, "nbd_connect_command: recv: server disconnected unexpectedly"],
  ];
  for (const [what, script, message] of cases) {
    const h = newHandle();
    const { value, ms } = timed(() => h.connectCommand(fakeServer(script)));
    assert.is(value, -1, what);
    assert.is(getError(), message, what);
    assert.is(getErrno(), 0, what);
    assert.ok(ms < PROMPT_MS, `${what}: took ${ms} ms`);
    assert.is(h.aioIsDead(), 1, what);
  }
});

test("opt mode: extended headers come before NEGOTIATING; opt_extended_headers asks again, and the answer sticks", () => {
  // A server that refuses a second request, as the spec allows.
  const dupRefused: Script = {
    ...EXT,
    onOption: (opt, R, srv) => (opt.code === 11 && srv.extended ? [R.optionReply(11, 0x80000003)] : undefined),
  };
  const h = fake(dupRefused, (h) => assert.is(h.setOptMode(true), 0));
  assert.is(h.aioIsNegotiating(), 1);
  assert.equal([h.getExtendedHeadersNegotiated(), h.getStructuredRepliesNegotiated()], [1, 1]);
  assert.is(h.optExtendedHeaders(), 0, "a refused repeat is false...");
  assert.is(h.getExtendedHeadersNegotiated(), 1, "...and extended headers stay negotiated");
  assert.is(h.optStructuredReply(), 0, "the fake answers ERR_EXT_HEADER_REQD");
  assert.is(h.getStructuredRepliesNegotiated(), 1);
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(optionsSeen(h), "11,11,8,7");
  assert.equal(read(h, 32, 0), patternAt(0n, 32));

  // Without the automatic request, opt_extended_headers turns them on (and structured replies with them).
  const late = fake(EXT, (h) => {
    assert.is(h.setOptMode(true), 0);
    assert.is(h.setRequestExtendedHeaders(false), 0);
  });
  assert.equal([late.getExtendedHeadersNegotiated(), late.getStructuredRepliesNegotiated()], [0, 1]);
  assert.is(late.optExtendedHeaders(), 1, String(getError()));
  assert.equal([late.getExtendedHeadersNegotiated(), late.getStructuredRepliesNegotiated()], [1, 1]);
  assert.is(late.optGo(), 0, String(getError()));
  assert.is(optionsSeen(late), "8,11,7");
  const s = stats(late);
  assert.equal(read(late, 32, 0), patternAt(0n, 32));
  assert.equal(delta(stats(late), s), [32, 1, 32 + 8 + 32, 1]);

  // A server that says no: false, and the handle negotiates on.
  const no = fake({}, (h) => {
    assert.is(h.setOptMode(true), 0);
    assert.is(h.setRequestStructuredReplies(false), 0);
  });
  assert.is(no.optExtendedHeaders(), 0);
  assert.equal([no.getExtendedHeadersNegotiated(), no.getStructuredRepliesNegotiated()], [0, 0]);
  assert.is(no.aioIsNegotiating(), 1);
  assert.is(no.optGo(), 0, String(getError()));
  assert.is(optionsSeen(no), "11,7");

  // A server that hangs up instead of answering: -1 and DEAD.
  const gone = fake({ onOption: (opt) => (opt.code === 11 ? ["close"] : undefined) }, (h) => {
    assert.is(h.setOptMode(true), 0);
    assert.is(h.setRequestExtendedHeaders(false), 0);
  });
  fails(gone.optExtendedHeaders(), 0, "nbd_opt_extended_headers: recv: server disconnected unexpectedly");
  assert.is(gone.aioIsDead(), 1);
});

// ---- 64-bit counts ------------------------------------------------------------------------

test("counts over 4 GiB: zero, trim, cache and block status go out whole; without extended headers they are ERANGE", () => {
  const size = 16n * GiB;
  // Cache and block status answer with the length they saw (an error if it is not the one asked for).
  const script: Script = {
    ...EXT, size, eflags: DEFAULT_EFLAGS | TFlag.SEND_CACHE, metaContexts: { [CONTEXT_BASE_ALLOCATION]: 1 },
    onRequest: (req, R) => {
      if (req.type === 5 && req.length !== 2n ** 33n) return [R.error(req, 22, `cache length ${req.length}`)];
      if (req.type === 7) return [R.blockStatus(req, 1, [[req.length, 0]])];
      return undefined;
    },
  };
  const h = fake(script, (h) => assert.is(h.addMetaContext(CONTEXT_BASE_ALLOCATION), 0));
  // Zeroes from 1 GiB to 6 GiB: a length cut to 32 bits would have zeroed up to 2 GiB only.
  assert.is(h.zero(5n * GiB, GiB), 0, String(getError()));
  assert.equal(read(h, 16, GiB - 8n), Uint8Array.of(...patternAt(GiB - 8n, 8), ...new Uint8Array(8)));
  assert.equal(read(h, 16, 6n * GiB - 8n), Uint8Array.of(...new Uint8Array(8), ...patternAt(6n * GiB, 8)));
  assert.equal(read(h, 8, 3n * GiB), new Uint8Array(8));
  assert.is(h.trim(4n * GiB + 4096n, 8n * GiB), 0, String(getError()));
  assert.equal(read(h, 16, 12n * GiB + 4088n), Uint8Array.of(...new Uint8Array(8), ...patternAt(12n * GiB + 4096n, 8)));
  assert.is(h.cache(2n ** 33n, 0), 0, String(getError()));
  const bs = extents((cb) => h.blockStatus64(9n * GiB, 0, cb));
  assert.equal(bs, { ret: 0, seen: [[CONTEXT_BASE_ALLOCATION, 0n, [9n * GiB, 0n], 0]] });
  // The aio form, and the largest count the export allows.
  const cookie = h.aioZero(size - 4096n, 4096n);
  assert.ok(cookie > 0n, String(getError()));
  while (h.aioInFlight() > 0) h.poll(-1);
  assert.is(h.aioCommandCompleted(cookie), 1, String(getError()));
  assert.equal(read(h, 8, size - 8n), new Uint8Array(8));
  // The client's own limits still hold.
  fails(h.zero(size, 4096), errno.ENOSPC, "nbd_zero: request out of bounds: No space left on device");
  fails(h.pread(new Uint8Array(64 * KiB * KiB + 1), 0), errno.ERANGE,
    "nbd_pread: request too large: maximum request size is 67108864: Numerical result out of range");

  const compact = fake(script, (h) => {
    assert.is(h.setRequestExtendedHeaders(false), 0);
    assert.is(h.addMetaContext(CONTEXT_BASE_ALLOCATION), 0);
  });
  const erange = (call: string) => `nbd_${call}: request too large: maximum request size is 4294967295: Numerical result out of range`;
  fails(compact.zero(2n ** 32n, 0), errno.ERANGE, erange("zero"));
  fails(compact.trim(2n ** 32n, 0), errno.ERANGE, erange("trim"));
  fails(compact.cache(2n ** 33n, 0), errno.ERANGE, erange("cache"));
  fails(compact.blockStatus64(2n ** 32n, 0, () => 0), errno.ERANGE, erange("block_status_64"));
  assert.is(compact.zero(2n ** 32n - 4096n, 0), 0, String(getError()));
});

// ---- 64-bit block status ------------------------------------------------------------------

/** Extent lists the fake answers with, chosen by the request's offset (bigints cross as {big}). */
const SIZE = 32n * GiB;
const LISTS: Record<string, [bigint, bigint][]> = {
  0: [[5n * GiB, 0n], [3n * GiB, 3n], [8n * GiB, 0n]],
  4096: [[4096n, 1n], [5n * GiB, 0n], [4096n, 2n]],
  8192: [[4096n, 2n ** 32n + 1n], [4096n, 0n]],
  12288: [[4096n, 1n], [4096n, 2n ** 33n], [4096n, 3n]],
  16384: [[4096n, 1n], [SIZE, 0n]],
  20480: [[0n, 1n], [4096n, 0n]],
  24576: [[4096n, 1n], [0n, 2n], [4096n, 3n]],
};

const bsServer = (): string[] => fakeServer({
  ...EXT, size: SIZE, metaContexts: { [CONTEXT_BASE_ALLOCATION]: 1 }, vars: { lists: LISTS },
  onRequest: (req, R, srv) => {
    if (req.type !== 7) return undefined;
    const lists = srv.vars.lists as Record<string, [bigint, bigint][]>;
    const at = String(req.offset);
    if (at === "28672") return [R.blockStatus(req, 1, [[4096n, 1n]], { count: 3 })]; // a count that disagrees
    if (at === "32768") return [R.blockStatus(req, 1, [[4096n, 1n]], { type: 5 })]; // the compact chunk type
    if (at === "36864") return [R.blockStatus(req, 9, [[4096n, 1n]], { flags: 0 }), R.none(req)]; // an id never negotiated
    return [R.blockStatus(req, 1, lists[at]!)];
  },
});

test("block_status_64 gets 64-bit extents whole; block_status gets them as libnbd 1.18 clamps them", () => {
  const h = connected(bsServer(), false, (h) => assert.is(h.addMetaContext(CONTEXT_BASE_ALLOCATION), 0));
  assert.is(h.getExtendedHeadersNegotiated(), 1);
  const both = (offset: number) => ({
    wide: extents((cb) => h.blockStatus64(16n * GiB, offset, cb)),
    narrow: extents((cb) => h.blockStatus(16n * GiB, offset, cb)),
  });
  const ok = (entries: (number | bigint)[]) => ({ ret: 0, seen: [[CONTEXT_BASE_ALLOCATION, 0n, entries, 0]] });
  const ctx = CONTEXT_BASE_ALLOCATION;
  const CLAMP = 2 ** 32 - 2 ** 26; // 4 GiB - 64 MiB: where libnbd cuts a length a 32-bit callback cannot hold

  // Lengths over 32 bits: the 32-bit callback sees the first clamped, and nothing after it.
  let r = both(0);
  assert.equal(r.wide, ok([5n * GiB, 0n, 3n * GiB, 3n, 8n * GiB, 0n]));
  assert.equal(r.narrow, ok([CLAMP, 0]));
  r = both(4096);
  assert.equal(r.wide.seen[0]![2], [4096n, 1n, 5n * GiB, 0n, 4096n, 2n]);
  assert.equal(r.narrow.seen, [[ctx, 4096n, [4096, 1, CLAMP, 0], 0]]);
  assert.equal([r.wide.ret, r.narrow.ret], [0, 0]);

  // A status over 32 bits: on the first extent it fails the 32-bit call with EOVERFLOW (the
  // callback sees it truncated, and the error); later, it just ends the list.
  r = both(8192);
  assert.equal(r.wide, { ret: 0, seen: [[ctx, 8192n, [4096n, 2n ** 32n + 1n, 4096n, 0n], 0]] });
  assert.is(r.narrow.ret, -1);
  assert.equal(r.narrow.seen, [[ctx, 8192n, [4096, 1], errno.EOVERFLOW]]);
  fails(h.blockStatus(4096, 8192, () => 0), errno.EOVERFLOW, "nbd_block_status: block-status: command failed: Value too large for defined data type");
  r = both(12288);
  assert.equal(r.wide.seen[0]![2], [4096n, 1n, 4096n, 2n ** 33n, 4096n, 3n]);
  assert.equal(r.narrow, { ret: 0, seen: [[ctx, 12288n, [4096, 1], 0]] });

  // Past the end of the export: cut at the end, and EPROTO for both.
  r = both(16384);
  assert.equal(r.wide.seen, [[ctx, 16384n, [4096n, 1n, SIZE - 16384n - 4096n, 0n], errno.EPROTO]]);
  assert.equal(r.narrow.seen, [[ctx, 16384n, [4096, 1, CLAMP, 0], 0]], "the clamp comes first for the 32-bit callback");
  assert.equal([r.wide.ret, r.narrow.ret], [-1, 0]);
  fails(h.blockStatus64(4096, 16384, () => 0), errno.EPROTO, "nbd_block_status_64: block-status: command failed: Protocol error");

  // A zero length: EPROTO if it is the first extent, else the list ends before it.
  r = both(20480);
  assert.equal(r.wide.seen, [[ctx, 20480n, [0n, 1n], errno.EPROTO]]);
  assert.equal(r.narrow.seen, [[ctx, 20480n, [0, 1], errno.EPROTO]]);
  assert.equal([r.wide.ret, r.narrow.ret], [-1, -1]);
  r = both(24576);
  assert.equal(r.wide, { ret: 0, seen: [[ctx, 24576n, [4096n, 1n], 0]] });

  // A descriptor count that disagrees with the payload: EPROTO, no callback, the connection lives.
  r = both(28672);
  assert.equal(r.wide, { ret: -1, seen: [] });
  assert.is(getErrno(), errno.EPROTO);
  // The compact chunk type after extended headers: EPROTO, but the extents are still reported.
  r = both(32768);
  assert.equal(r.wide, { ret: -1, seen: [[ctx, 32768n, [4096n, 1n], errno.EPROTO]] });
  assert.equal(r.narrow, { ret: -1, seen: [[ctx, 32768n, [4096, 1], errno.EPROTO]] });
  // A context id never negotiated: skipped.
  r = both(36864);
  assert.equal(r.wide, { ret: 0, seen: [] });
  assert.is(h.aioIsReady(), 1, "every fault above was the command's, not the connection's");

  // The aio forms answer the same.
  const seen: Seen = [];
  const cookie = h.aioBlockStatus64(16n * GiB, 0, (c, o, e, err) => (seen.push([c, o, Array.from(e as BigUint64Array), err.value]), 0), undefined, CMD_FLAG_REQ_ONE);
  assert.ok(cookie > 0n, String(getError()));
  while (h.aioInFlight() > 0) h.poll(-1);
  assert.is(h.aioCommandCompleted(cookie), 1);
  assert.equal(seen, [[ctx, 0n, [5n * GiB, 0n, 3n * GiB, 3n, 8n * GiB, 0n], 0]]);
});

test("cookExtents: libnbd's cut-offs for lengths beyond 63 bits and empty lists of progress", () => {
  const cmd = (): Command => ({ cookie: 1, type: 7, flags: 0, offset: 0n, count: 1n, buf: undefined, error: 0, seen: 0, settle: () => {} });
  const huge = 2n ** 64n - 1n;
  const list = (a: Uint32Array | BigUint64Array): (number | bigint)[] => Array.from(a as ArrayLike<number | bigint>);
  let c = cmd();
  assert.equal(list(cookExtents(c, BigUint64Array.of(huge, 0n, 512n, 0n), true, huge)), [2n ** 63n - 2n ** 26n, 0n]);
  assert.is(c.error, 0);
  c = cmd();
  assert.equal(list(cookExtents(c, BigUint64Array.of(huge, 0n), false, huge)), [2 ** 32 - 2 ** 26, 0]);
  c = cmd();
  assert.equal(list(cookExtents(c, BigUint64Array.of(512n, 1n, 512n, 2n), true, 0n)), [0n, 1n]);
  assert.is(c.error, errno.EPROTO, "no room at all: the first extent is cut to nothing");
  c = cmd();
  const narrow = cookExtents(c, BigUint64Array.of(512n, 1n, 512n, 2n), false, 2048n);
  assert.instance(narrow, Uint32Array);
  assert.equal(list(narrow), [512, 1, 512, 2]);
  assert.is(c.error, 0);
});

// ---- block_status_filter ------------------------------------------------------------------

test("block_status_filter: the payload names the contexts wanted, and only they answer", () => {
  const contexts = { [CONTEXT_BASE_ALLOCATION]: 1, [DEPTH]: 2 };
  // The fake answers from the payload: the ids it names, an extent as long as the payload's count.
  const h = fake({ ...EXT, size: 16n * GiB, eflags: DEFAULT_EFLAGS | TFlag.BLOCK_STATUS_PAYLOAD, metaContexts: contexts }, (h) => {
    assert.is(h.addMetaContext(CONTEXT_BASE_ALLOCATION), 0);
    assert.is(h.addMetaContext(DEPTH), 0);
  });
  assert.is(h.canBlockStatusPayload(), 1);
  let r = extents((cb) => h.blockStatusFilter(4096, 0, [DEPTH], cb));
  assert.equal(r, { ret: 0, seen: [[DEPTH, 0n, [4096n, 0n], 0]] });
  const s = stats(h);
  r = extents((cb) => h.blockStatusFilter(5n * GiB, 4096, [CONTEXT_BASE_ALLOCATION, DEPTH], cb, CMD_FLAG_REQ_ONE));
  assert.equal(r, { ret: 0, seen: [[CONTEXT_BASE_ALLOCATION, 4096n, [5n * GiB, 0n], 0], [DEPTH, 4096n, [5n * GiB, 0n], 0]] });
  assert.equal(delta(stats(h), s), [32 + 8 + 4 * 2, 1, 3 * 32 + 2 * (8 + 16), 3], "header, count and two ids; two status chunks and NONE");
  // Unfiltered, both answer.
  r = extents((cb) => h.blockStatus64(4096, 0, cb));
  assert.equal(r.seen.map(([c]) => c), [CONTEXT_BASE_ALLOCATION, DEPTH]);

  // The aio form.
  const seen: string[] = [];
  const cookie = h.aioBlockStatusFilter(4096, 0, [CONTEXT_BASE_ALLOCATION], (c) => (seen.push(c), 0));
  assert.ok(cookie > 0n, String(getError()));
  while (h.aioInFlight() > 0) h.poll(-1);
  assert.is(h.aioCommandCompleted(cookie), 1);
  assert.equal(seen, [CONTEXT_BASE_ALLOCATION]);

  // Refused before sending: a context not negotiated.
  const before = stats(h);
  fails(h.blockStatusFilter(4096, 0, ["x-nosuch:ctx"], () => 0), errno.EINVAL, "nbd_block_status_filter: context x-nosuch:ctx not negotiated: Invalid argument");
  fails(h.aioBlockStatusFilter(4096, 0, [DEPTH, "x-nosuch:ctx"], () => 0), errno.EINVAL, "nbd_aio_block_status_filter: context x-nosuch:ctx not negotiated: Invalid argument");
  assert.equal(stats(h), before);
  assert.is(h.aioIsReady(), 1);
});

test("block_status_filter: refused without BLOCK_STATUS_PAYLOAD, and as far as libnbd goes with the strict bits cleared", () => {
  const contexts = { [CONTEXT_BASE_ALLOCATION]: 1, [DEPTH]: 2 };
  const add = (h: Handle) => {
    assert.is(h.addMetaContext(CONTEXT_BASE_ALLOCATION), 0);
    assert.is(h.addMetaContext(DEPTH), 0);
  };
  const noFlag = fake({ ...EXT, metaContexts: contexts }, add);
  assert.is(noFlag.canBlockStatusPayload(), 0);
  fails(noFlag.blockStatusFilter(4096, 0, [DEPTH], () => 0), errno.EINVAL,
    "nbd_block_status_filter: server does not support the block status payload flag: Invalid argument");

  // Without extended headers the server's claim is ignored, as libnbd ignores it.
  const claims = { ...EXT, metaContexts: contexts, eflags: DEFAULT_EFLAGS | TFlag.BLOCK_STATUS_PAYLOAD };
  const compact = fake(claims, (h) => {
    add(h);
    assert.is(h.setRequestExtendedHeaders(false), 0);
  });
  assert.is(compact.canBlockStatusPayload(), 0);
  fails(compact.blockStatusFilter(4096, 0, [DEPTH], () => 0), errno.ENOTSUP,
    "nbd_block_status_filter: server does not support extended headers: Operation not supported");

  // STRICT_AUTO_FLAG cleared: the caller owns PAYLOAD_LEN, and STRICT_COMMANDS checks it.
  const h = fake(claims, add);
  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_AUTO_FLAG), 0);
  fails(h.blockStatusFilter(4096, 0, [DEPTH], () => 0), errno.EINVAL, "nbd_block_status_filter: incorrect setting for PAYLOAD_LEN flag: Invalid argument");
  let r = extents((cb) => h.blockStatusFilter(4096, 0, [DEPTH], cb, CMD_FLAG_PAYLOAD_LEN));
  assert.equal(r, { ret: 0, seen: [[DEPTH, 0n, [4096n, 0n], 0]] });
  // Both cleared: without the flag the request goes out with the payload's length and no payload, so
  // the server reads a 12-byte effect length and answers for every context.
  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_AUTO_FLAG & ~STRICT_COMMANDS), 0);
  r = extents((cb) => h.blockStatusFilter(4096, 0, [DEPTH], cb));
  assert.equal(r, { ret: 0, seen: [[CONTEXT_BASE_ALLOCATION, 0n, [12n, 0n], 0], [DEPTH, 0n, [12n, 0n], 0]] });
  assert.is(h.aioIsReady(), 1);
});

test("pwrite's PAYLOAD_LEN follows what was negotiated unless STRICT_AUTO_FLAG is cleared (libnbd 1.18)", () => {
  // The fake fails (EPERM) a write whose PAYLOAD_LEN does not match the headers in use.
  const script: Script = {
    ...EXT,
    onRequest: (req, R, srv) => (req.type === 1 && !!(req.flags & 32) !== srv.extended
      ? [srv.extended ? R.error(req, 1) : R.simple(req, { error: 1 })] : undefined),
  };
  const data = new Uint8Array(512).fill(1);
  const wrong = "nbd_pwrite: incorrect setting for PAYLOAD_LEN flag: Invalid argument";
  const eperm = "nbd_pwrite: write: command failed: Operation not permitted";
  for (const ext of [true, false]) {
    const h = fake(script, (h) => assert.is(h.setRequestExtendedHeaders(ext), 0));
    assert.is(h.getExtendedHeadersNegotiated(), ext ? 1 : 0);
    const right = ext ? CMD_FLAG_PAYLOAD_LEN : 0;
    const other = ext ? 0 : CMD_FLAG_PAYLOAD_LEN;
    // By default the flag is managed: whatever the caller passes, the right one goes out.
    assert.is(h.pwrite(data, 0, right), 0, String(getError()));
    assert.is(h.pwrite(data, 0, other), 0, String(getError()));
    assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_AUTO_FLAG), 0);
    assert.is(h.pwrite(data, 0, right), 0, String(getError()));
    fails(h.pwrite(data, 0, other), errno.EINVAL, wrong);
    fails(h.aioPwrite(data, 0, undefined, other), errno.EINVAL, wrong.replace("nbd_pwrite", "nbd_aio_pwrite"));
    // Both bits cleared: the flag goes out as given, and the server is the judge.
    assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_AUTO_FLAG & ~STRICT_COMMANDS), 0);
    fails(h.pwrite(data, 0, other), errno.EPERM, eperm);
    assert.is(h.pwrite(data, 0, right), 0, String(getError()));
    assert.is(h.aioIsReady(), 1);
  }
});

// ---- protocol errors --------------------------------------------------------------------

test("protocol errors: a reply in the wrong form kills the handle at once; a wrong reply offset fails only its command", () => {
  const cases: [string, Script, string][] = [
    ["a simple reply after extended headers", { ...EXT, onRequest: (req, R) => [R.simple(req, { data: R.read(req.offset, req.count) })] },
      "nbd_pread: invalid or unexpected reply magic 0x67446698"],
    ["a 20-byte structured chunk after extended headers", { ...EXT, onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count), { form: "structured" })] },
      "nbd_pread: invalid or unexpected reply magic 0x668e33ef"],
    ["an extended chunk without extended headers", { onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count), { form: "extended" })] },
      "nbd_pread: invalid reply magic 0x6e8a278c"],
    ["an extended reply length beyond any reply", { ...EXT, onRequest: (req, R) => [R.chunk(req, 1, R.bytes(8), { length: 2n ** 40n })] },
      "nbd_pread: invalid server reply length 1099511627776"],
  ];
  for (const [what, script, message] of cases) {
    const h = fake(script);
    // The fake sends the wrong reply and nothing more: the client must not wait for the rest of a 32-byte header.
    const { value, ms } = timed(() => h.pread(new Uint8Array(64), 4096));
    assert.is(value, -1, what);
    assert.is(getError(), message, what);
    assert.is(getErrno(), 0, what);
    assert.ok(ms < PROMPT_MS, `${what}: took ${ms} ms`);
    assert.is(h.aioIsDead(), 1, what);
  }

  // An extended reply must echo the request's offset: libnbd skips the chunk and fails the command.
  const h = fake({
    ...EXT,
    onRequest: (req, R) => (req.index === 0 ? [R.data(req, req.offset, R.read(req.offset, req.count), { replyOffset: req.offset + 512n })] : undefined),
  });
  fails(h.pread(new Uint8Array(64), 4096), errno.EPROTO, "nbd_pread: read: command failed: Protocol error");
  assert.is(h.aioIsReady(), 1);
  assert.equal(read(h, 64, 4096), patternAt(4096n, 64), "the next reply is read as if nothing happened");
});

// ---- real servers refuse the option ----------------------------------------------------------

/** What python3-libnbd 1.14 (which never asks for extended headers) and nbd-ts both see. */
const PY = String.raw`
import json, sys, nbd
out = []
for spec in json.load(sys.stdin):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    if spec["sa"]: h.connect_systemd_socket_activation(spec["argv"])
    else: h.connect_command(spec["argv"])
    seen = []
    h.block_status(spec["count"], 0, lambda ctx, off, e, err: seen.append([ctx, off, list(e)]) or 0)
    out.append({"sr": int(h.get_structured_replies_negotiated()), "df": int(h.can_df()),
                "meta": int(h.can_meta_context("base:allocation")), "size": h.get_size(),
                "data": h.pread(16, 1000).hex(), "extents": seen})
json.dump(out, sys.stdout)
`;

interface Seen114 { sr: number; df: number; meta: number; size: number; data: string; extents: [string, number, number[]][] }

function sees(h: Handle, count: number): Seen114 {
  const ext: [string, number, number[]][] = [];
  assert.is(h.blockStatus(count, 0, (ctx, off, e) => (ext.push([ctx, Number(off), Array.from(e as Uint32Array)]), 0)), 0, String(getError()));
  return {
    sr: h.getStructuredRepliesNegotiated(), df: h.canDf(), meta: h.canMetaContext(CONTEXT_BASE_ALLOCATION), size: Number(h.getSize()),
    data: Buffer.from(read(h, 16, 1000)).toString("hex"), extents: ext,
  };
}

test("nbdkit and qemu-nbd refuse NBD_OPT_EXTENDED_HEADERS: compact headers, as libnbd 1.14 sees them", () => {
  const file = scratchFile("disk.raw", 1 << 20);
  const servers = [
    { what: "nbdkit", argv: [...NBDKIT, "data", "data=@4096 1 2 3 @65536 4 5 6", "size=1M"], sa: false, count: 1 << 20 },
    { what: "qemu-nbd", argv: ["qemu-nbd", "-f", "raw", file], sa: true, count: 1 << 20 },
  ];
  const py = python<Seen114[]>(PY, servers);
  servers.forEach((srv, i) => {
    const h = connected(srv.argv, srv.sa, (h) => assert.is(h.addMetaContext(CONTEXT_BASE_ALLOCATION), 0));
    const without = connected(srv.argv, srv.sa, (h) => {
      assert.is(h.addMetaContext(CONTEXT_BASE_ALLOCATION), 0);
      assert.is(h.setRequestExtendedHeaders(false), 0);
    });
    // The only difference on the wire: one option (16 bytes) and its refusal (20 bytes and a message).
    const [sent, sentChunks, received, receivedChunks] = delta(stats(h), stats(without));
    assert.equal([sent, sentChunks, receivedChunks], [16, 1, 1], srv.what);
    assert.ok(received! >= 20, `${srv.what}: ${received} bytes more received`);
    assert.equal([h.getExtendedHeadersNegotiated(), h.canBlockStatusPayload()], [0, 0], srv.what);
    assert.equal(sees(h, srv.count), py[i], `${srv.what}: nbd-ts as libnbd 1.14 sees it`);
    assert.equal(sees(without, srv.count), py[i], srv.what);
    // The block status filter is refused as without extended headers.
    fails(h.blockStatusFilter(4096, 0, [CONTEXT_BASE_ALLOCATION], () => 0), errno.ENOTSUP,
      "nbd_block_status_filter: server does not support extended headers: Operation not supported");
    // Opt mode: opt_extended_headers is false, and the handle goes on.
    const opt = connected(srv.argv, srv.sa, (h) => assert.is(h.setOptMode(true), 0));
    assert.is(opt.getExtendedHeadersNegotiated(), 0);
    assert.is(opt.optExtendedHeaders(), 0, `${srv.what}: ${getError()}`);
    assert.equal([opt.getExtendedHeadersNegotiated(), opt.getStructuredRepliesNegotiated()], [0, 1]);
    assert.is(opt.optGo(), 0, String(getError()));
    assert.is(opt.pread(new Uint8Array(512), 0), 0, String(getError()));
    for (const x of [h, without, opt]) x.close();
  });
});

test.run();
