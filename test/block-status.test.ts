/**
 * block_status and block_status_64: the exact extents of a scripted nbdkit
 * (libnbd's meta-base-allocation test, T30), REQ_ONE, the client-side refusal
 * without a negotiated context, qemu-nbd's base:allocation,
 * qemu:allocation-depth and qemu:dirty-bitmap contexts on qcow2 images made
 * here, an extent callback's failures, extents for a context that was
 * never negotiated (skipped), and block_status_filter (libnbd 1.18),
 * which without extended headers fails before anything is sent. Where
 * libnbd 1.14 (python3-libnbd, no block_status_64) can answer the same
 * question, its answer is the expected one.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import {
  create, getErrno, getError, CMD_FLAG_FUA, CMD_FLAG_PAYLOAD_LEN, CMD_FLAG_REQ_ONE, CONTEXT_BASE_ALLOCATION, STATE_DIRTY,
  STATE_HOLE, STATE_ZERO, STRICT_AUTO_FLAG, STRICT_COMMANDS, STRICT_MASK, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { TFlag } from "../src/protocol/constants.js";
import { DEFAULT_EFLAGS, DEFAULT_SIZE, fakeServer } from "./fake-server.js";
import { run, scratchPath } from "./helpers.js";

const KiB = 1024;
const MiB = 1024 * 1024;
const NBDKIT = ["nbdkit", "-s", "--exit-with-parent"];
const DEPTH = "qemu:allocation-depth";
const BITMAP = "qemu:dirty-bitmap:bitmap0";

// ---- handles: every one made here is closed after each test --------------------

const handles: Handle[] = [];
test.after.each(() => {
  for (const h of handles.splice(0)) h.close();
});

function connected(argv: string[], sa: boolean, contexts: string[], before?: (h: Handle) => void): Handle {
  const h = create();
  assert.ok(h, `create: ${getError()}`);
  handles.push(h!);
  for (const c of contexts) assert.is(h!.addMetaContext(c), 0);
  before?.(h!);
  const r = sa ? h!.connectSystemdSocketActivation(argv) : h!.connectCommand(argv);
  assert.is(r, 0, `connect ${argv.join(" ")}: ${getError()}`);
  return h!;
}

function fails(ret: number, err: number, message: string): void {
  assert.is(ret, -1, "expected failure");
  assert.is(getError(), message);
  assert.is(getErrno(), err);
}

/** One extent callback call: [metacontext, offset, entries, error]. */
type Call = [string, number, number[], number];
type Result = { calls: Call[] } | { err: string; errno: number; calls: Call[] };

interface Op { count: number; offset: number; flags?: number; failAt?: number; setErr?: number }

/**
 * block_status (or block_status_64) recording each callback call; the callback
 * returns -1 (after setting the box to `setErr`, if given) on call number `failAt`.
 */
function status(h: Handle, op: Op, wide = false): Result {
  const calls: Call[] = [];
  const types: string[] = [];
  const cb = (ctx: string, off: bigint, entries: Uint32Array | BigUint64Array, error: { value: number }): number => {
    types.push(entries.constructor.name);
    calls.push([ctx, Number(off), Array.from(entries as ArrayLike<number | bigint>, Number), error.value]);
    if (calls.length - 1 === op.failAt) {
      if (op.setErr) error.value = op.setErr;
      return -1;
    }
    return 0;
  };
  const ret = wide ? h.blockStatus64(op.count, op.offset, cb, op.flags) : h.blockStatus(op.count, op.offset, cb, op.flags);
  assert.ok(types.every((t) => t === (wide ? "BigUint64Array" : "Uint32Array")), `entries are ${types.join(", ")}`);
  return ret === 0 ? { calls } : { err: getError()!, errno: getErrno(), calls };
}

// ---- python3-libnbd (libnbd 1.14) as the oracle ----------------------------------

interface Spec { argv: string[]; sa?: boolean; contexts: string[]; ops: Op[] }

const PY = String.raw`
import json, sys, nbd
out = []
for spec in json.load(sys.stdin):
    h = nbd.NBD()
    for c in spec["contexts"]: h.add_meta_context(c)
    if spec.get("sa"): h.connect_systemd_socket_activation(spec["argv"])
    else: h.connect_command(spec["argv"])
    res = []
    for op in spec["ops"]:
        calls = []
        def cb(ctx, off, entries, err, op=op, calls=calls):
            calls.append([ctx, off, list(entries), err.value])
            if len(calls) - 1 == op.get("failAt", -1):
                if op.get("setErr"): err.value = op["setErr"]
                return -1
            return 0
        try:
            h.block_status(op["count"], op["offset"], cb, op.get("flags", 0))
            res.append({"calls": calls})
        except nbd.Error as e:
            res.append({"err": e.string, "errno": e.errnum, "calls": calls})
    del h
    out.append(res)
json.dump(out, sys.stdout)
`;

function python(specs: Spec[]): Result[][] {
  const r = spawnSync("/usr/bin/python3", ["-c", PY], { input: JSON.stringify(specs), encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) throw new Error(`python3-libnbd failed: ${r.stderr || r.error}`);
  return JSON.parse(r.stdout) as Result[][];
}

/** The spec's ops through nbd-ts, 32-bit and 64-bit: both must give the same. */
function ours(spec: Spec): Result[] {
  const h = connected(spec.argv, spec.sa ?? false, spec.contexts);
  const narrow = spec.ops.map((op) => status(h, op));
  const wide = spec.ops.map((op) => status(h, op, true)).map((r) => ("err" in r ? { ...r, err: r.err.replace("nbd_block_status_64:", "nbd_block_status:") } : r));
  assert.equal(wide, narrow, "block_status_64 gives the same pairs as block_status");
  h.close();
  return narrow;
}

// ---- libnbd's meta-base-allocation.sh, rewritten ----------------------------------------

const SCRIPT = scratchPath("base-allocation.sh");
writeFileSync(SCRIPT, `#!/bin/sh
# A 64 KiB export of zeroes whose extents say: data, hole, hole+zero, zero, data.
case "$1" in
  thread_model) echo parallel ;;
  get_size) echo 65536 ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  can_extents) exit 0 ;;
  extents)
    echo 0 8192
    echo 8192 8192 hole
    echo 16384 16384 hole,zero
    echo 32768 16384 zero
    echo 49152 16384
    ;;
  *) exit 2 ;;
esac
`);
chmodSync(SCRIPT, 0o755);
const SH = [...NBDKIT, "sh", SCRIPT];

test("nbdkit sh: the exact extents, 32-bit and 64-bit, with REQ_ONE (T30)", () => {
  const h = connected(SH, false, [CONTEXT_BASE_ALLOCATION]);
  assert.is(h.canMetaContext(CONTEXT_BASE_ALLOCATION), 1);
  const cases: [Op, number[]][] = [
    [{ count: 65536, offset: 0 }, [8192, 0, 8192, STATE_HOLE, 16384, STATE_HOLE | STATE_ZERO, 16384, STATE_ZERO, 16384, 0]],
    [{ count: 1024, offset: 32256 }, [512, 3, 16384, 2]],
    [{ count: 1024, offset: 32256, flags: CMD_FLAG_REQ_ONE }, [512, 3]],
    [{ count: 1, offset: 65535 }, [1, 0]],
  ];
  for (const [op, entries] of cases) {
    for (const wide of [false, true]) {
      const calls: [string, bigint, Uint32Array | BigUint64Array, number][] = [];
      const cb = (ctx: string, off: bigint, e: Uint32Array | BigUint64Array, err: { value: number }) => (calls.push([ctx, off, e.slice(), err.value]), 0);
      const ret = wide ? h.blockStatus64(op.count, op.offset, cb, op.flags) : h.blockStatus(op.count, op.offset, cb, op.flags);
      assert.is(ret, 0, String(getError()));
      assert.is(calls.length, 1, "called once: one context");
      const [ctx, off, e, err] = calls[0]!;
      assert.is(ctx, CONTEXT_BASE_ALLOCATION);
      assert.is(off, BigInt(op.offset), "offset is the request's, as a bigint");
      assert.is(err, 0);
      if (wide) assert.equal(e, BigUint64Array.from(entries, BigInt));
      else assert.equal(e, Uint32Array.from(entries));
    }
  }
  // Only REQ_ONE is a block status flag.
  fails(h.blockStatus(512, 0, () => 0, CMD_FLAG_FUA), errno.EINVAL, "nbd_block_status: flags: invalid value for flag: 0x1: Invalid argument");
  fails(h.blockStatus64(512, 0, () => 0, CMD_FLAG_FUA), errno.EINVAL, "nbd_block_status_64: flags: invalid value for flag: 0x1: Invalid argument");
  // Past the end, and zero length.
  fails(h.blockStatus(512, 65536, () => 0), errno.EINVAL, "nbd_block_status: request out of bounds: Invalid argument");
  fails(h.blockStatus64(0, 0, () => 0), errno.EINVAL, "nbd_block_status_64: count cannot be 0: Invalid argument");
  assert.is(h.aioIsReady(), 1);
  h.close();

  const spec: Spec = { argv: SH, contexts: [CONTEXT_BASE_ALLOCATION], ops: cases.map(([op]) => op).concat([{ count: 512, offset: 65536 }]) };
  const py = python([spec])[0]!;
  assert.equal(py.slice(0, cases.length).map((r) => r.calls.map((c) => c[2])), cases.map(([, e]) => [e]));
  assert.equal(ours(spec), py);
});

test("without a negotiated context: ENOTSUP before anything is sent (same as libnbd)", () => {
  const cases: [string, string[], (h: Handle) => void][] = [
    ["no add_meta_context", SH, () => {}],
    ["a context the server lacks", SH, (h) => assert.is(h.addMetaContext("x-nosuch:context"), 0)],
    ["request_meta_context off", SH, (h) => { h.addMetaContext(CONTEXT_BASE_ALLOCATION); assert.is(h.setRequestMetaContext(false), 0); }],
  ];
  const message = "did not negotiate any metadata contexts, either you did not call nbd_add_meta_context before connecting or the server does not support it: Operation not supported";
  for (const [what, argv, before] of cases) {
    const h = connected(argv, false, [], before);
    assert.ok(h.canMetaContext(CONTEXT_BASE_ALLOCATION) !== 1, what);
    let called = 0;
    fails(h.blockStatus(512, 0, () => ++called), errno.ENOTSUP, `nbd_block_status: ${message}`);
    fails(h.blockStatus64(512, 0, () => ++called), errno.ENOTSUP, `nbd_block_status_64: ${message}`);
    assert.is(called, 0, what);
    assert.is(h.aioIsReady(), 1, what);
    h.close();
  }
  // Without structured replies libnbd names that first.
  const h = connected(SH, false, [CONTEXT_BASE_ALLOCATION], (h) => assert.is(h.setRequestStructuredReplies(false), 0));
  fails(h.blockStatus(512, 0, () => 0), errno.ENOTSUP, "nbd_block_status: server does not support structured replies: Operation not supported");
  h.close();

  const py = python([
    { argv: SH, contexts: [], ops: [{ count: 512, offset: 0 }] },
    { argv: SH, contexts: ["x-nosuch:context"], ops: [{ count: 512, offset: 0 }] },
  ]);
  for (const r of py) assert.equal(r, [{ err: `nbd_block_status: ${message}`, errno: errno.ENOTSUP, calls: [] }]);
});

test("an extent callback's -1 fails the call with EPROTO or the errno in its box; a throw fails it too", () => {
  const spec: Spec = {
    argv: SH, contexts: [CONTEXT_BASE_ALLOCATION],
    ops: [{ count: 65536, offset: 0, failAt: 0 }, { count: 65536, offset: 0, failAt: 0, setErr: errno.EIO }, { count: 1024, offset: 32256 }],
  };
  const res = ours(spec);
  assert.equal(res[0], {
    err: "nbd_block_status: block-status: command failed: Protocol error", errno: errno.EPROTO,
    calls: [[CONTEXT_BASE_ALLOCATION, 0, [8192, 0, 8192, 1, 16384, 3, 16384, 2, 16384, 0], 0]],
  });
  assert.is((res[1] as { errno: number }).errno, errno.EIO);
  assert.equal(res[2], { calls: [[CONTEXT_BASE_ALLOCATION, 32256, [512, 3, 16384, 2], 0]] }, "the handle works on");
  assert.equal(res, python([spec])[0]);

  const h = connected(SH, false, [CONTEXT_BASE_ALLOCATION]);
  for (const wide of [false, true]) {
    let ret: number | undefined;
    const name = wide ? "nbd_block_status_64" : "nbd_block_status";
    assert.not.throws(() => {
      ret = wide ? h.blockStatus64(65536, 0, () => { throw new Error("extent callback exploded"); })
        : h.blockStatus(65536, 0, () => { throw new Error("extent callback exploded"); });
    });
    fails(ret!, errno.EPROTO, `${name}: extent callback exploded`);
  }
  assert.is(h.aioIsReady(), 1);
});

// ---- qemu-nbd on qcow2: base:allocation, allocation depth, a dirty bitmap ---------------

const BASE = scratchPath("base.qcow2");
const TOP = scratchPath("top.qcow2");
/** [offset, length, byte]: what qemu-io writes into each layer (byte -1: write -z). */
const BASE_WRITES: [number, number, number][] = [[0, 128 * KiB, 1], [512 * KiB, 64 * KiB, 2]];
const TOP_WRITES: [number, number, number][] = [[64 * KiB, 64 * KiB, 3], [300 * KiB, 4 * KiB, 4], [800 * KiB, 64 * KiB, -1]];
const qemuIo = (file: string, writes: [number, number, number][]) => run("qemu-io", ["-f", "qcow2",
  ...writes.flatMap(([o, n, b]) => ["-c", b < 0 ? `write -z ${o} ${n}` : `write -P ${b} ${o} ${n}`]), file]);
run("qemu-img", ["create", "-q", "-f", "qcow2", BASE, "1M"]);
qemuIo(BASE, BASE_WRITES);
run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", BASE, "-F", "qcow2", TOP]);
run("qemu-img", ["bitmap", "--add", TOP, "bitmap0"]);
qemuIo(TOP, TOP_WRITES); // after the bitmap: these writes are what it records
const info = JSON.parse(run("qemu-img", ["info", "--output=json", TOP])) as {
  "cluster-size": number; "format-specific": { data: { bitmaps: { name: string; granularity: number }[] } };
};
const CLUSTER = info["cluster-size"];
const GRANULARITY = info["format-specific"].data.bitmaps.find((b) => b.name === "bitmap0")!.granularity;
const QEMU = ["qemu-nbd", "-r", "-f", "qcow2", "-x", "", "-A", "-B", "bitmap0", TOP];

/** Per `unit`-sized block of the 1 MiB image, a value; as merged [length, value] extent entries over [offset, offset+count). */
function runs(values: (block: number) => number, unit: number, offset: number, count: number): number[] {
  const out: number[] = [];
  for (let at = offset; at < offset + count;) {
    const end = Math.min(offset + count, (Math.floor(at / unit) + 1) * unit);
    const v = values(Math.floor(at / unit));
    if (out.length && out[out.length - 1] === v) out[out.length - 2]! += end - at;
    else out.push(end - at, v);
    at = end;
  }
  return out;
}

const touches = (writes: [number, number, number][], unit: number) => (block: number) =>
  writes.some(([o, n]) => o < (block + 1) * unit && o + n > block * unit);

test("qemu-nbd qcow2: allocation depth and the dirty bitmap follow what qemu-io wrote; one call per context", () => {
  const contexts = [CONTEXT_BASE_ALLOCATION, DEPTH, BITMAP];
  const h = connected(QEMU, true, contexts);
  for (const c of contexts) assert.is(h.canMetaContext(c), 1, c);
  const inTop = touches(TOP_WRITES, CLUSTER);
  const inBase = touches(BASE_WRITES, CLUSTER);
  const depth = (b: number) => (inTop(b) ? 1 : inBase(b) ? 2 : 0);
  const dirty = (b: number) => (touches(TOP_WRITES, GRANULARITY)(b) ? STATE_DIRTY : 0);
  const image = new Uint8Array(MiB);
  assert.is(h.pread(image, 0), 0);
  for (const [count, offset] of [[MiB, 0], [100000, 70000], [MiB - 300 * KiB - 1, 300 * KiB + 1]] as const) {
    for (const wide of [false, true]) {
      const r = status(h, { count, offset }, wide);
      assert.ok(!("err" in r), `${count}@${offset}: ${getError()}`);
      assert.equal(r.calls.map((c) => c[0]).sort(), [...contexts].sort(), "one call per negotiated context");
      const of = (name: string) => r.calls.find((c) => c[0] === name)!;
      for (const c of r.calls) assert.is(c[1], offset);
      assert.equal(of(DEPTH)[2], runs(depth, CLUSTER, offset, count), `${count}@${offset}: allocation depth`);
      assert.equal(of(BITMAP)[2], runs(dirty, GRANULARITY, offset, count), `${count}@${offset}: dirty bitmap`);
      // base:allocation: tiles the request, and whatever it calls zero reads as zeroes.
      const e = of(CONTEXT_BASE_ALLOCATION)[2];
      let at = offset;
      for (let i = 0; i < e.length; i += 2) {
        const [len, flags] = [e[i]!, e[i + 1]!];
        if (flags & STATE_ZERO) assert.ok(image.subarray(at, at + len).every((b) => b === 0), `zero extent at ${at} reads as zeroes`);
        if (image.subarray(at, at + len).some((b) => b !== 0)) assert.is(flags, 0, `extent at ${at} holds data`);
        at += len;
      }
      assert.is(at, offset + count, "base:allocation covers the request");
    }
  }
  // REQ_ONE: one extent per context.
  const one = status(h, { count: 100000, offset: 70000, flags: CMD_FLAG_REQ_ONE });
  assert.ok(!("err" in one));
  assert.is(one.calls.length, 3);
  for (const c of one.calls) assert.is(c[2].length, 2, `${c[0]}: one extent`);
  h.close();

  // libnbd reports the same extents, context by context.
  const spec: Spec = {
    argv: QEMU, sa: true, contexts,
    ops: [{ count: MiB, offset: 0 }, { count: 100000, offset: 70000 }, { count: 100000, offset: 70000, flags: CMD_FLAG_REQ_ONE }, { count: 4 * KiB, offset: 300 * KiB }],
  };
  assert.equal(ours(spec), python([spec])[0]);
});

test("qemu-nbd qcow2: only the requested contexts are delivered; a second callback sees the first one's error", () => {
  const specs: Spec[] = [
    { argv: QEMU, sa: true, contexts: [BITMAP], ops: [{ count: MiB, offset: 0 }, { count: 512, offset: 300 * KiB }] },
    { argv: QEMU, sa: true, contexts: [DEPTH, "x-nosuch:context"], ops: [{ count: MiB, offset: 0 }] },
    { argv: QEMU, sa: true, contexts: [CONTEXT_BASE_ALLOCATION, BITMAP], ops: [{ count: MiB, offset: 0, failAt: 0, setErr: errno.ENOMEM }, { count: MiB, offset: 0, failAt: 1 }] },
  ];
  const py = python(specs);
  const res = specs.map((s) => ours(s));
  assert.equal(res, py);
  assert.ok(res[0]!.every((r) => r.calls.length === 1 && r.calls[0]![0] === BITMAP), "only the dirty bitmap");
  assert.equal(res[0]![1]!.calls[0]![2], [512, STATE_DIRTY]);
  assert.ok(res[1]![0]!.calls.length === 1 && res[1]![0]!.calls[0]![0] === DEPTH, "only the allocation depth");
  const failed = res[2]![0]! as { errno: number; calls: Call[] };
  assert.is(failed.errno, errno.ENOMEM);
  assert.equal(failed.calls.map((c) => c[3]), [0, errno.ENOMEM], "the second context's callback sees the first one's error");
  assert.is((res[2]![1] as { errno: number }).errno, errno.EPROTO);
});

test("extents for a context the server never negotiated are skipped (same as libnbd)", () => {
  // A server that grants base:allocation as id 1, then answers block status with a chunk for id 7 first.
  const argv = fakeServer({
    onOption: (opt, R) => {
      if (opt.code !== 10) return undefined; // NBD_OPT_SET_META_CONTEXT
      const name = new TextEncoder().encode("base:allocation");
      return [R.optionReply(10, 4, R.cat(R.u32(1), name)), R.optionReply(10, 1)]; // META_CONTEXT, ACK
    },
    onRequest: (req, R) => {
      if (req.type !== 7) return undefined; // NBD_CMD_BLOCK_STATUS
      const len = Math.min(req.count, 4096);
      return [
        R.chunk(req, 5, R.cat(R.u32(7), R.u32(len), R.u32(3)), { flags: 0 }),
        R.chunk(req, 5, R.cat(R.u32(1), R.u32(len), R.u32(0))),
      ];
    },
  });
  const spec: Spec = { argv, contexts: [CONTEXT_BASE_ALLOCATION], ops: [{ count: 8192, offset: 4096 }, { count: 100, offset: 0 }] };
  const res = ours(spec);
  assert.equal(res, [
    { calls: [[CONTEXT_BASE_ALLOCATION, 4096, [4096, 0], 0]] },
    { calls: [[CONTEXT_BASE_ALLOCATION, 0, [100, 0], 0]] },
  ]);
  assert.equal(res, python([spec])[0]);
});

// ---- block_status_filter (libnbd 1.18) --------------------------------------------

/** Each call of block_status_filter, blocking and aio, with what its callback saw. */
function filtered(h: Handle, count: number, offset: number, contexts: string[], flags?: number) {
  const seen: [string, bigint, bigint[]][] = [];
  const cb = (ctx: string, off: bigint, e: BigUint64Array) => (seen.push([ctx, off, Array.from(e)]), 0);
  const sync = h.blockStatusFilter(count, offset, contexts, cb, flags);
  const syncErr = [getError(), getErrno()] as const;
  const cookie = h.aioBlockStatusFilter(count, offset, contexts, cb, undefined, flags);
  const aioErr = [getError(), getErrno()] as const;
  return { sync, syncErr, cookie, aioErr, seen };
}

const NO_EXT = "server does not support extended headers: Operation not supported";

test("block_status_filter: without extended headers it fails with ENOTSUP before sending anything; the handle works on", () => {
  const servers: [string, () => Handle, string[], number][] = [
    ["nbdkit", () => connected(SH, false, [CONTEXT_BASE_ALLOCATION]), [CONTEXT_BASE_ALLOCATION], 65536],
    ["qemu-nbd", () => connected(QEMU, true, [CONTEXT_BASE_ALLOCATION, DEPTH, BITMAP]), [DEPTH, BITMAP], MiB],
  ];
  for (const [what, connect, contexts, size] of servers) {
    const h = connect();
    const before = [h.statsBytesSent(), h.statsChunksSent()];
    // Whatever the contexts and flags: libnbd 1.18 asks about extended headers first (STRICT_AUTO_FLAG).
    for (const [list, flags] of [[contexts, 0], [contexts.slice(0, 1), CMD_FLAG_REQ_ONE], [["x-nosuch:context"], 0], [[], CMD_FLAG_PAYLOAD_LEN]] as const) {
      const r = filtered(h, size, 0, [...list], flags);
      assert.is(r.sync, -1, `${what} ${list.join(",")}`);
      assert.equal(r.syncErr, [`nbd_block_status_filter: ${NO_EXT}`, errno.ENOTSUP]);
      assert.is(r.cookie, -1n);
      assert.equal(r.aioErr, [`nbd_aio_block_status_filter: ${NO_EXT}`, errno.ENOTSUP]);
      assert.equal(r.seen, [], "the callback is never called");
    }
    assert.equal([h.statsBytesSent(), h.statsChunksSent()], before, `${what}: nothing was sent`);
    assert.is(h.aioInFlight(), 0);
    // The generic checks come first, as in every call: flags, then NULL arguments.
    fails(h.blockStatusFilter(512, 0, contexts, () => 0, CMD_FLAG_FUA), errno.EINVAL, "nbd_block_status_filter: flags: invalid value for flag: 0x1: Invalid argument");
    fails(h.blockStatusFilter(512, 0, null as unknown as string[], () => 0), errno.EFAULT, "nbd_block_status_filter: contexts cannot be NULL: Bad address");
    // The handle is as good as before.
    assert.is(h.aioIsReady(), 1, what);
    const calls: string[] = [];
    assert.is(h.blockStatus64(512, 0, (ctx) => (calls.push(ctx), 0)), 0, `${what}: ${getError()}`);
    assert.ok(calls.includes(contexts[0]!), `${what}: block_status_64 still answers`);
    assert.is(h.pread(new Uint8Array(512), 0), 0, `${what}: ${getError()}`);
    h.close();
  }
});

test("block_status_filter: libnbd's earlier refusals (no structured replies, no contexts) come first", () => {
  const noSr = connected(SH, false, [CONTEXT_BASE_ALLOCATION], (h) => assert.is(h.setRequestStructuredReplies(false), 0));
  const r1 = filtered(noSr, 512, 0, [CONTEXT_BASE_ALLOCATION]);
  assert.equal([r1.sync, ...r1.syncErr], [-1, "nbd_block_status_filter: server does not support structured replies: Operation not supported", errno.ENOTSUP]);
  const none = connected(SH, false, []);
  const r2 = filtered(none, 512, 0, [CONTEXT_BASE_ALLOCATION]);
  assert.equal([r2.cookie, ...r2.aioErr], [-1n, "nbd_aio_block_status_filter: did not negotiate any metadata contexts, either you did not call " +
    "nbd_add_meta_context before connecting or the server does not support it: Operation not supported", errno.ENOTSUP]);
  for (const h of [noSr, none]) assert.is(h.aioIsReady(), 1);
});

test("block_status_filter with STRICT_AUTO_FLAG (and STRICT_COMMANDS) cleared goes as far as libnbd 1.18 does", () => {
  // A server that claims BLOCK_STATUS_PAYLOAD (libnbd ignores that without extended headers) and answers
  // block status with one extent that reports the request's own length and flags.
  const argv = fakeServer({
    eflags: DEFAULT_EFLAGS | TFlag.BLOCK_STATUS_PAYLOAD,
    onOption: (opt, R) => {
      if (opt.code !== 10) return undefined; // NBD_OPT_SET_META_CONTEXT: base:allocation is id 1
      return [R.optionReply(10, 4, R.cat(R.u32(1), new TextEncoder().encode("base:allocation"))), R.optionReply(10, 1)];
    },
    onRequest: (req, R) => {
      if (req.type !== 7) return undefined;
      return [R.chunk(req, 5, R.cat(R.u32(1), R.u32(req.count), R.u32(req.flags)), { flags: 1 })];
    },
  });
  const h = connected(argv, false, [CONTEXT_BASE_ALLOCATION]);
  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_AUTO_FLAG), 0);
  let r = filtered(h, 4096, 0, [CONTEXT_BASE_ALLOCATION]);
  assert.equal(r.syncErr, ["nbd_block_status_filter: server does not support the block status payload flag: Invalid argument", errno.EINVAL]);
  assert.equal(r.aioErr, ["nbd_aio_block_status_filter: server does not support the block status payload flag: Invalid argument", errno.EINVAL]);

  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_AUTO_FLAG & ~STRICT_COMMANDS), 0);
  const sent = h.statsBytesSent();
  r = filtered(h, 4096, 0, [CONTEXT_BASE_ALLOCATION, "x-nosuch:context"]);
  assert.equal(r.syncErr, ["nbd_block_status_filter: context x-nosuch:context not negotiated: Invalid argument", errno.EINVAL]);
  assert.equal(r.aioErr, ["nbd_aio_block_status_filter: context x-nosuch:context not negotiated: Invalid argument", errno.EINVAL]);
  assert.is(h.statsBytesSent(), sent, "refused before sending");
  // The bounds are those of the request's own count and offset.
  fails(h.blockStatusFilter(4096, Number(DEFAULT_SIZE), [CONTEXT_BASE_ALLOCATION], () => 0), errno.EINVAL, "nbd_block_status_filter: request out of bounds: Invalid argument");
  fails(h.blockStatusFilter(0, 0, [CONTEXT_BASE_ALLOCATION], () => 0), errno.EINVAL, "nbd_block_status_filter: count cannot be 0: Invalid argument");

  // Then a compact request goes out whose length is the payload's (8 bytes + 4 per context), flags as given.
  for (const [contexts, flags] of [[[CONTEXT_BASE_ALLOCATION], 0], [[], CMD_FLAG_REQ_ONE], [[CONTEXT_BASE_ALLOCATION, CONTEXT_BASE_ALLOCATION], CMD_FLAG_PAYLOAD_LEN]] as const) {
    r = filtered(h, 4096, 1024, [...contexts], flags);
    assert.is(r.sync, 0, String(r.syncErr[0]));
    assert.ok(r.cookie > 0n, String(r.aioErr[0]));
    while (h.aioInFlight() > 0) h.poll(-1);
    assert.is(h.aioCommandCompleted(r.cookie), 1);
    const wire = [BigInt(8 + 4 * contexts.length), BigInt(flags)];
    assert.equal(r.seen, [[CONTEXT_BASE_ALLOCATION, 1024n, wire], [CONTEXT_BASE_ALLOCATION, 1024n, wire]], `${contexts.length} contexts`);
  }
  assert.is(h.aioIsReady(), 1);
});

test.run();
