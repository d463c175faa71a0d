/**
 * The data path against real servers: pread / pwrite / flush / trim / zero /
 * cache with and without their flags, libnbd's client-side checks (strict
 * mode), the server's own errors, pread_initialize, and the state after
 * shutdown. Where libnbd 1.14 (python3-libnbd) can answer the same question,
 * its answer is the expected one.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomFillSync } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import {
  getErrno, getError, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, MAX_REQUEST_SIZE,
  SIZE_MINIMUM, STRICT_ALIGN, STRICT_MASK, STRICT_PAYLOAD, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { pattern, scratchFile, scratchPath } from "./helpers.js";
import { fails, nbdkit, NBDKIT, newHandle } from "./handles.js";
import { call, python as oracle, specScript, runSpec, type Op, type Result, type Run, type Spec as AnySpec } from "./libnbd.js";

const KiB = 1024;
const MiB = 1024 * 1024;

/** A handle connected to a server started by socket activation. */
function activated(argv: string[]): Handle {
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(argv), 0, `connect ${argv.join(" ")}: ${getError()}`);
  return h;
}

const random = (n: number): Uint8Array => randomFillSync(new Uint8Array(n));
const filled = (n: number, byte: number): Uint8Array => new Uint8Array(n).fill(byte);
const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");

/** Reads `count` bytes at `offset`, asserting success. */
function read(h: Handle, count: number, offset: number | bigint): Uint8Array {
  const buf = new Uint8Array(count);
  assert.is(h.pread(buf, offset), 0, `pread ${count}@${offset}: ${getError()}`);
  return buf;
}

// ---- python3-libnbd (libnbd 1.14) as the oracle ----------------------------------

/** A spec's ops: [python name, ...args]; a pwrite buffer is {hex}. */
interface Spec extends AnySpec { argv: string[] }

const PY = specScript(String.raw`
def arg(a):
    return bytes.fromhex(a["hex"]) if isinstance(a, dict) else a
def call(h, op):
    try: return {"ok": norm(getattr(h, op[0])(*[arg(a) for a in op[1:]]))}
    except nbd.Error as e: return {"err": e.string, "errno": e.errnum}
`);

const python = (specs: Spec[]): Run[] => oracle<Run[]>(PY, specs);

/** One op on nbd-ts: pread reads `count` bytes and answers in hex, as python does; a {hex} argument is a buffer. */
function tsCall(h: Handle, [name, ...args]: Op): Result {
  if (name === "pread") {
    const [count, offset, flags] = args as [number, number | bigint, number?];
    const data = new Uint8Array(count);
    const ret: unknown = h.pread(data, offset, flags);
    if (ret === -1 || ret === -1n || ret === null) return { err: getError(), errno: getErrno() };
    return { ok: hex(data) };
  }
  const values = args.map((a) => (a && typeof a === "object" && "hex" in a ? Buffer.from((a as { hex: string }).hex, "hex") : a));
  return call(h, [name, ...values]);
}

/** Runs `spec` on nbd-ts, then on python3-libnbd against a fresh server of the same command, and compares. */
function sameAsLibnbd(spec: Spec, py: Run = python([spec])[0]!): Result[] {
  const h = newHandle();
  const run = runSpec(h, spec, tsCall);
  h.close();
  assert.equal(run, py, `nbd-ts vs libnbd 1.14 for ${spec.argv.join(" ")}`);
  return run.ops;
}

// ---- memory: the commands and their flags ------------------------------------------

test("memory: pwrite then pread back, with and without FUA", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.canFua(), 1);
  const a = random(4096);
  const b = random(5000);
  assert.is(h.pwrite(a, 0), 0);
  assert.is(h.pwrite(b, 8192 + 7, CMD_FLAG_FUA), 0);
  assert.equal(read(h, 4096, 0), a);
  assert.equal(read(h, 5000, 8192 + 7), b);
  // The bytes between the two writes are still zero, and a read that spans both sees all three.
  const span = read(h, 8192 + 7 + 5000, 0);
  assert.equal(span.subarray(0, 4096), a);
  assert.equal(span.subarray(4096, 8192 + 7), new Uint8Array(4096 + 7));
  assert.equal(span.subarray(8192 + 7), b);
  // Overwriting part of a block with FUA leaves the rest of it alone.
  assert.is(h.pwrite(filled(3, 0xee), 1, CMD_FLAG_FUA), 0);
  const again = read(h, 8, 0);
  assert.equal(again, Uint8Array.of(a[0]!, 0xee, 0xee, 0xee, a[4]!, a[5]!, a[6]!, a[7]!));
  // A view into the middle of a larger buffer sends just the view.
  const backing = random(1000);
  assert.is(h.pwrite(backing.subarray(100, 300), 70000), 0);
  assert.equal(read(h, 202, 69999), Uint8Array.of(0, ...backing.subarray(100, 300), 0));
  // The last byte of the export can be written and read.
  assert.is(h.pwrite(Uint8Array.of(0x5a), MiB - 1, CMD_FLAG_FUA), 0);
  assert.equal(read(h, 1, MiB - 1), Uint8Array.of(0x5a));
});

test("memory: zero with no flag, FUA, NO_HOLE, FAST_ZERO and all three reads back zeroes", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.canZero(), 1);
  assert.is(h.canFastZero(), 1);
  const ones = filled(64 * KiB, 0xff);
  assert.is(h.pwrite(ones, 0), 0);
  const cases: [number, number, number][] = [
    [0, 100, 0],
    [1000, 513, CMD_FLAG_FUA],
    [4096, 4096, CMD_FLAG_NO_HOLE],
    [10000, 1, CMD_FLAG_FAST_ZERO],
    [20000, 7000, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO],
  ];
  const expect = ones.slice();
  for (const [offset, count, flags] of cases) {
    assert.is(h.zero(count, offset, flags), 0, `zero ${count}@${offset} flags ${flags}: ${getError()}`);
    expect.fill(0, offset, offset + count);
  }
  assert.equal(read(h, 64 * KiB, 0), expect);
  // bigint count and offset are the same call.
  assert.is(h.zero(10n, 60000n), 0);
  expect.fill(0, 60000, 60010);
  assert.equal(read(h, 64 * KiB, 0), expect);
});

test("memory: trim with and without FUA reads back zeroes, the rest is kept", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.canTrim(), 1);
  const data = random(256 * KiB);
  assert.is(h.pwrite(data, 0), 0);
  assert.is(h.trim(64 * KiB, 0), 0);
  assert.is(h.trim(64 * KiB, 128 * KiB, CMD_FLAG_FUA), 0);
  const back = read(h, 256 * KiB, 0);
  assert.equal(back.subarray(0, 64 * KiB), new Uint8Array(64 * KiB));
  assert.equal(back.subarray(64 * KiB, 128 * KiB), data.subarray(64 * KiB, 128 * KiB));
  assert.equal(back.subarray(128 * KiB, 192 * KiB), new Uint8Array(64 * KiB));
  assert.equal(back.subarray(192 * KiB), data.subarray(192 * KiB));
});

test("flush and cache work; flags a command does not take are refused as libnbd refuses them", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.canFlush(), 1);
  assert.is(h.canCache(), 1);
  assert.is(h.flush(), 0);
  assert.is(h.flush(0), 0);
  assert.is(h.cache(4096, 0), 0);
  assert.is(h.cache(MiB, 0, 0), 0);
  h.close();

  const ops = sameAsLibnbd({
    argv: [...NBDKIT, "memory", "size=1M"],
    ops: [
      ["flush", CMD_FLAG_FUA],
      ["cache", 512, 0, CMD_FLAG_FUA],
      ["pwrite", { hex: "00".repeat(512) }, 0, CMD_FLAG_NO_HOLE],
      ["trim", 512, 0, CMD_FLAG_NO_HOLE],
      ["trim", 512, 0, CMD_FLAG_FAST_ZERO],
      ["zero", 512, 0, 0x4],
      ["flush", 0],
      ["cache", 512, 0, 0],
    ],
  });
  assert.equal(ops[0], { err: "nbd_flush: flags: invalid value for flag: 0x1: Invalid argument", errno: errno.EINVAL });
  assert.equal(ops[2], { err: "nbd_pwrite: flags: invalid value for flag: 0x2: Invalid argument", errno: errno.EINVAL });
  assert.equal(ops.slice(6), [{ ok: 0 }, { ok: 0 }]);
});

// ---- file: the bytes reach the file --------------------------------------------------

test("file: pwrite with FUA, zero with FUA and pwrite+flush reach the file on disk", () => {
  const original = random(64 * KiB);
  const file = scratchFile("fua.img", original.length, original);
  const h = nbdkit(["file", file]);
  assert.is(h.getSize(), BigInt(original.length));
  assert.equal(read(h, original.length, 0), original);

  const expect = original.slice();
  const a = random(512);
  a[10] = 1; a[510] = 0x55; a[511] = 0xaa;
  assert.is(h.pwrite(a, 0, CMD_FLAG_FUA), 0);
  expect.set(a, 0);
  assert.equal(new Uint8Array(readFileSync(file)), expect, "FUA write is in the file");
  assert.equal(read(h, 512, 0), a);

  const b = random(3001);
  assert.is(h.pwrite(b, 12345), 0);
  assert.is(h.flush(), 0);
  expect.set(b, 12345);
  assert.equal(new Uint8Array(readFileSync(file)), expect, "written and flushed");

  assert.is(h.zero(4096, 32768, CMD_FLAG_FUA), 0);
  expect.fill(0, 32768, 32768 + 4096);
  assert.equal(new Uint8Array(readFileSync(file)), expect, "FUA zero is in the file");

  // The file plugin cannot zero fast: libnbd refuses the flag before sending anything.
  assert.is(h.canFastZero(), 0);
  fails(h.zero(4096, 0, CMD_FLAG_FAST_ZERO), errno.EINVAL,
    "nbd_zero: server does not support the fast zero flag: Invalid argument");
  assert.is(h.cache(4096, 0), 0);
  assert.equal(new Uint8Array(readFileSync(file)), expect, "a refused zero and a cache change nothing");
  assert.equal(read(h, original.length, 0), expect);
  h.close();
  sameAsLibnbd({ argv: [...NBDKIT, "file", file], ops: [["can_fast_zero"], ["zero", 4096, 0, CMD_FLAG_FAST_ZERO], ["pread", 64, 32768 - 32]] });
  assert.equal(new Uint8Array(readFileSync(file)), expect);
});

// ---- pattern: reads at any offset --------------------------------------------------

test("pattern: reads at aligned and odd offsets equal the pattern", () => {
  const size = MiB + 13;
  const h = nbdkit(["pattern", `size=${size}`]);
  assert.is(h.getSize(), BigInt(size));
  const reads: [number, number][] = [
    [512, 0], [4096, 4096], [1, 1], [7, 1], [9, 7], [12345, 777], [65536, 65535],
    [13, size - 13], [1, size - 1], [100, size - 100], [size, 0],
  ];
  for (const [count, offset] of reads) assert.equal(read(h, count, offset), pattern(offset, count), `${count}@${offset}`);
  // Into views that do not start at 0 of their buffer, and over shared memory: only the view is written.
  const backing = filled(1000, 0x77);
  assert.is(h.pread(backing.subarray(100, 300), 1001), 0);
  assert.equal(backing.subarray(100, 300), pattern(1001, 200));
  assert.equal(backing.subarray(0, 100), filled(100, 0x77));
  assert.equal(backing.subarray(300), filled(700, 0x77));
  const shared = new Uint8Array(new SharedArrayBuffer(64), 8, 40);
  assert.is(h.pread(shared, 333), 0);
  assert.equal(new Uint8Array(shared), pattern(333, 40));
  h.close();
  // libnbd reads the same bytes.
  const ops = sameAsLibnbd({ argv: [...NBDKIT, "pattern", `size=${size}`], ops: [["pread", 64, 12347], ["pread", 13, size - 13]] });
  assert.equal(ops, [{ ok: hex(pattern(12347, 64)) }, { ok: hex(pattern(size - 13, 13)) }]);
});

// ---- read-only servers -----------------------------------------------------------

test("nbdkit -r: writes EPERM, trim and zero EINVAL (not advertised), data unchanged", () => {
  const original = random(64 * KiB);
  const file = scratchFile("ro.img", original.length, original);
  const h = nbdkit(["-r", "file", file]);
  assert.is(h.isReadOnly(), 1);
  assert.is(h.canTrim(), 0);
  assert.is(h.canZero(), 0);
  fails(h.pwrite(filled(512, 1), 0), errno.EPERM, "nbd_pwrite: server does not support write operations: Operation not permitted");
  fails(h.pwrite(filled(512, 1), 0, CMD_FLAG_FUA), errno.EPERM, "nbd_pwrite: server does not support write operations: Operation not permitted");
  fails(h.trim(512, 0), errno.EINVAL, "nbd_trim: server does not support trim operations: Invalid argument");
  fails(h.zero(512, 0), errno.EINVAL, "nbd_zero: server does not support zero operations: Invalid argument");
  fails(h.zero(512, 0, CMD_FLAG_FUA), errno.EINVAL, "nbd_zero: server does not support zero operations: Invalid argument");
  assert.is(h.aioIsReady(), 1);
  assert.equal(read(h, original.length, 0), original);
  assert.equal(new Uint8Array(readFileSync(file)), original);
  h.close();

  sameAsLibnbd({
    argv: [...NBDKIT, "-r", "file", file],
    ops: [["pwrite", { hex: "01".repeat(512) }, 0], ["trim", 512, 0], ["zero", 512, 0], ["pread", 32, 100]],
  });
  assert.equal(new Uint8Array(readFileSync(file)), original);
});

test("qemu-nbd -r: writes EPERM, trim and zero EINVAL, data unchanged (same as libnbd)", () => {
  const original = random(MiB);
  const file = scratchFile("qemu-ro.img", original.length, original);
  const argv = ["qemu-nbd", "-r", "-f", "raw", "-x", "", file];
  const h = activated(argv);
  assert.is(h.isReadOnly(), 1);
  fails(h.pwrite(filled(512, 1), 0), errno.EPERM, "nbd_pwrite: server does not support write operations: Operation not permitted");
  fails(h.trim(512, 0), errno.EINVAL, "nbd_trim: server does not support trim operations: Invalid argument");
  fails(h.zero(512, 0), errno.EINVAL, "nbd_zero: server does not support zero operations: Invalid argument");
  assert.equal(read(h, original.length, 0), original);
  assert.is(h.flush(), 0);
  h.close();
  assert.equal(new Uint8Array(readFileSync(file)), original);

  sameAsLibnbd({
    argv, sa: true,
    ops: [["pwrite", { hex: "01".repeat(512) }, 0, CMD_FLAG_FUA], ["trim", 512, 0], ["zero", 512, 0], ["pread", 16, 4096], ["flush"]],
  });
  assert.equal(new Uint8Array(readFileSync(file)), original);
});

// ---- libnbd's client-side checks ----------------------------------------------------

test("out of bounds: reads and cache EINVAL, writes, trim and zero ENOSPC (as libnbd)", () => {
  const h = nbdkit(["memory", "size=1M"]);
  const oob = "request out of bounds";
  fails(h.pread(new Uint8Array(512), MiB), errno.EINVAL, `nbd_pread: ${oob}: Invalid argument`);
  fails(h.pread(new Uint8Array(512), MiB - 511), errno.EINVAL, `nbd_pread: ${oob}: Invalid argument`);
  fails(h.pread(new Uint8Array(1), (1n << 64n) - 1n), errno.EINVAL, `nbd_pread: ${oob}: Invalid argument`);
  fails(h.pwrite(new Uint8Array(512), MiB), errno.ENOSPC, `nbd_pwrite: ${oob}: No space left on device`);
  fails(h.trim(512, MiB - 256), errno.ENOSPC, `nbd_trim: ${oob}: No space left on device`);
  fails(h.zero(512, MiB - 256), errno.ENOSPC, `nbd_zero: ${oob}: No space left on device`);
  fails(h.cache(512, MiB), errno.EINVAL, `nbd_cache: ${oob}: Invalid argument`);
  // Exactly up to the end is fine.
  assert.is(h.pwrite(filled(512, 9), MiB - 512), 0);
  assert.equal(read(h, 512, MiB - 512), filled(512, 9));
  assert.is(h.aioIsReady(), 1);
  h.close();

  sameAsLibnbd({
    argv: [...NBDKIT, "memory", "size=1M"],
    ops: [
      ["pread", 512, MiB], ["pread", 512, MiB - 511], ["pwrite", { hex: "00".repeat(512) }, MiB],
      ["trim", 512, MiB - 256], ["zero", 512, MiB - 256], ["cache", 512, MiB], ["cache", 2 * MiB, 0],
      ["trim", 1, MiB], ["zero", MiB + 1, 0], ["pread", 512, MiB - 512],
    ],
  });
});

test("zero-length requests: count cannot be 0 (before the bounds check)", () => {
  const h = nbdkit(["memory", "size=1M"]);
  const zero = (call: string) => `nbd_${call}: count cannot be 0: Invalid argument`;
  fails(h.pread(new Uint8Array(0), 0), errno.EINVAL, zero("pread"));
  fails(h.pwrite(new Uint8Array(0), 0), errno.EINVAL, zero("pwrite"));
  fails(h.trim(0, 0), errno.EINVAL, zero("trim"));
  fails(h.zero(0, 0), errno.EINVAL, zero("zero"));
  fails(h.cache(0, 0), errno.EINVAL, zero("cache"));
  fails(h.pread(new Uint8Array(0), 2 * MiB), errno.EINVAL, zero("pread"));
  h.close();
  sameAsLibnbd({
    argv: [...NBDKIT, "memory", "size=1M"],
    ops: [["pread", 0, 0], ["pwrite", { hex: "" }, 0], ["trim", 0, 0], ["zero", 0, 0], ["cache", 0, 0], ["pread", 0, 2 * MiB], ["pwrite", { hex: "" }, 2 * MiB]],
  });
});

test("command flags: pread takes none; above 16 bits always EINVAL, even with strict mode 0", () => {
  const h = nbdkit(["memory", "size=1M"]);
  fails(h.pread(new Uint8Array(512), 0, CMD_FLAG_FUA), errno.EINVAL, "nbd_pread: flags: invalid value for flag: 0x1: Invalid argument");
  fails(h.pwrite(new Uint8Array(512), 0, 0x10000), errno.EINVAL, "nbd_pwrite: flags: invalid value for flag: 0x10000: Invalid argument");
  assert.is(h.setStrictMode(0), 0);
  assert.is(h.getStrictMode(), 0);
  fails(h.pread(new Uint8Array(512), 0, 0x10000), errno.EINVAL, "nbd_pread: flags: invalid value for flag: 0x10000: Invalid argument");
  fails(h.zero(512, 0, 0x10000), errno.EINVAL, "nbd_zero: flags: invalid value for flag: 0x10000: Invalid argument");
  // Without STRICT_FLAGS a flag pread does not take goes to the server: nbdkit ignores FUA on a
  // read, and refuses a flag it does not know.
  assert.is(h.pread(new Uint8Array(512), 0, CMD_FLAG_FUA), 0);
  fails(h.pread(new Uint8Array(512), 0, 0x80), errno.EINVAL, "nbd_pread: read: command failed: Invalid argument");
  fails(h.pwrite(new Uint8Array(512), 0, 0x80), errno.EINVAL, "nbd_pwrite: write: command failed: Invalid argument");
  assert.is(h.aioIsReady(), 1);
  h.close();
  sameAsLibnbd({
    argv: [...NBDKIT, "memory", "size=1M"],
    ops: [
      ["pread", 512, 0, CMD_FLAG_FUA], ["pread", 512, 0, 0x80], ["pwrite", { hex: "00" }, 0, 0x10000],
      ["set_strict_mode", 0], ["pread", 512, 0, 0x10000], ["zero", 512, 0, 0x10000], ["pread", 512, 0, CMD_FLAG_FUA],
      ["pread", 512, 0, 0x80], ["pwrite", { hex: "00" }, 0, 0x80], ["trim", 512, 0, CMD_FLAG_NO_HOLE], ["aio_is_ready"],
    ],
  });
});

test("size limits: a read over 64 MiB is ERANGE; 64 MiB exactly and 32 MiB round trips work", () => {
  const h = nbdkit(["memory", "size=128M"]);
  const over = new Uint8Array(MAX_REQUEST_SIZE + 1).fill(0x33);
  fails(h.pread(over, 0), errno.ERANGE, "nbd_pread: request too large: maximum request size is 67108864: Numerical result out of range");
  // The same with strict mode off: this limit is always checked.
  assert.is(h.setStrictMode(0), 0);
  fails(h.pread(over, 0), errno.ERANGE, "nbd_pread: request too large: maximum request size is 67108864: Numerical result out of range");
  fails(h.pwrite(over, 0), errno.ERANGE, "nbd_pwrite: request too large: maximum request size is 67108864: Numerical result out of range");
  assert.is(h.setStrictMode(STRICT_MASK), 0);

  // A large write and read, byte for byte, at an odd offset.
  const big = random(32 * MiB);
  assert.is(h.pwrite(big, 12345), 0, String(getError()));
  const back = new Uint8Array(32 * MiB);
  assert.is(h.pread(back, 12345), 0);
  assert.ok(Buffer.from(back).equals(Buffer.from(big)), "32 MiB read back equals what was written");

  // 64 MiB in one read.
  const max = new Uint8Array(MAX_REQUEST_SIZE).fill(0x44);
  assert.is(h.pread(max, 0), 0);
  assert.equal(max.subarray(0, 12345), new Uint8Array(12345));
  assert.ok(Buffer.from(max.subarray(12345, 12345 + 32 * MiB)).equals(Buffer.from(big)));
  assert.equal(max.subarray(12345 + 32 * MiB), new Uint8Array(MAX_REQUEST_SIZE - 12345 - 32 * MiB));

  // libnbd 1.18's STRICT_PAYLOAD: the server advertised no maximum, so a write over 32 MiB is refused...
  const payload = random(32 * MiB + 1);
  fails(h.pwrite(payload, 0), errno.ERANGE, "nbd_pwrite: request too large: maximum payload size is 33554432: Numerical result out of range");
  // ...and without that bit it is sent, and arrives.
  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_PAYLOAD), 0);
  assert.is(h.pwrite(payload, 64 * MiB), 0, String(getError()));
  const back2 = new Uint8Array(payload.length);
  assert.is(h.pread(back2, 64 * MiB), 0);
  assert.ok(Buffer.from(back2).equals(Buffer.from(payload)), "33 MiB + 1 round trip");
  h.close();

  // libnbd 1.14 gives the same for the over-64 MiB read.
  sameAsLibnbd({ argv: [...NBDKIT, "memory", "size=128M"], ops: [["pread", MAX_REQUEST_SIZE + 1, 0]] });
});

test("counts over 32 bits: trim, zero and cache are ERANGE without extended headers (as libnbd)", () => {
  const ops = sameAsLibnbd({
    argv: [...NBDKIT, "memory", "size=5G"],
    ops: [
      ["zero", 2 ** 32, 0], ["trim", 2 ** 32, 0], ["cache", 2 ** 32, 0], ["zero", 2 ** 32, 2 ** 33],
      ["zero", 2 ** 32 - 1, 0, CMD_FLAG_FAST_ZERO], ["pread", 8, 2 ** 32 - 4],
    ],
  });
  const erange = (call: string) => ({
    err: `nbd_${call}: request too large: maximum request size is 4294967295: Numerical result out of range`, errno: errno.ERANGE,
  });
  assert.equal(ops.slice(0, 3), [erange("zero"), erange("trim"), erange("cache")]);
  assert.equal(ops[3], { err: "nbd_zero: request out of bounds: No space left on device", errno: errno.ENOSPC });
  assert.equal(ops.slice(4), [{ ok: 0 }, { ok: "00".repeat(8) }]);
});

test("alignment: blocksize-policy minimum 512 makes unaligned requests EINVAL", () => {
  const args = ["--filter=blocksize-policy", "memory", "size=1M", "blocksize-minimum=512"];
  const h = nbdkit(args);
  assert.is(h.getBlockSize(SIZE_MINIMUM), 512n);
  fails(h.pread(new Uint8Array(1), 1), errno.EINVAL, "nbd_pread: request is unaligned: Invalid argument");
  fails(h.pread(new Uint8Array(512), 1), errno.EINVAL, "nbd_pread: request is unaligned: Invalid argument");
  fails(h.pwrite(new Uint8Array(511), 512), errno.EINVAL, "nbd_pwrite: request is unaligned: Invalid argument");
  fails(h.zero(512, 100), errno.EINVAL, "nbd_zero: request is unaligned: Invalid argument");
  fails(h.trim(100, 0), errno.EINVAL, "nbd_trim: request is unaligned: Invalid argument");
  // Bounds come before alignment.
  fails(h.pwrite(new Uint8Array(1), MiB), errno.ENOSPC, "nbd_pwrite: request out of bounds: No space left on device");
  const data = random(1024);
  assert.is(h.pwrite(data, 512), 0);
  assert.equal(read(h, 1024, 512), data);
  // Without STRICT_ALIGN the request reaches the server, whose default policy allows it.
  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_ALIGN), 0);
  assert.equal(read(h, 3, 513), data.subarray(1, 4));
  h.close();

  sameAsLibnbd({
    argv: [...NBDKIT, ...args],
    ops: [["get_block_size", SIZE_MINIMUM], ["pread", 1, 1], ["zero", 512, 100], ["set_strict_mode", 0x1f & ~STRICT_ALIGN], ["pread", 1, 1]],
  });
  // With blocksize-error-policy=error the server itself refuses, as libnbd sees it.
  const strictServer = [...NBDKIT, ...args, "blocksize-error-policy=error"];
  const ops = sameAsLibnbd({ argv: strictServer, ops: [["set_strict_mode", 0], ["pread", 1, 1], ["aio_is_ready"]] });
  assert.equal(ops[1], { err: "nbd_pread: read: command failed: Invalid argument", errno: errno.EINVAL });
});

test("strict mode 0: the server's own errors come back", () => {
  const spec = (argv: string[], ops: Op[]): Spec => ({ argv: [...NBDKIT, ...argv], settings: [["set_strict_mode", 0]], ops });
  const specs = [
    spec(["memory", "size=1M"], [
      ["pread", 512, MiB], ["pwrite", { hex: "00".repeat(512) }, MiB], ["trim", 512, MiB], ["zero", 512, MiB],
      ["cache", 512, MiB], ["pread", 0, 0], ["pread", 512, 0], ["aio_is_ready"],
    ]),
    spec(["-r", "memory", "size=1M"], [["pwrite", { hex: "00".repeat(512) }, 0], ["trim", 512, 0], ["zero", 512, 0], ["aio_is_ready"]]),
  ];
  const py = python(specs);
  const mem = sameAsLibnbd(specs[0]!, py[0]);
  assert.equal(mem[0], { err: "nbd_pread: read: command failed: Invalid argument", errno: errno.EINVAL });
  assert.equal(mem[1], { err: "nbd_pwrite: write: command failed: No space left on device", errno: errno.ENOSPC });
  assert.equal(mem[6], { ok: hex(new Uint8Array(512)) });
  const ro = sameAsLibnbd(specs[1]!, py[1]);
  assert.equal(ro[0], { err: "nbd_pwrite: write: command failed: Operation not permitted", errno: errno.EPERM });
  assert.equal(ro[3], { ok: 1 });
});

// ---- server errors --------------------------------------------------------------

test("server errors: each NBD error comes back as libnbd's errno, the handle stays ready", () => {
  const names = ["EIO", "EPERM", "ENOMEM", "EINVAL", "ENOSPC", "ESHUTDOWN"] as const;
  const specs = names.map((e): Spec => ({
    argv: [...NBDKIT, "--filter=error", "memory", "size=1M", "error-rate=1", `error=${e}`],
    ops: [["pread", 512, 0], ["aio_is_ready"]],
  }));
  const py = python(specs);
  names.forEach((e, i) => {
    const h = nbdkit(specs[i]!.argv.slice(NBDKIT.length));
    const buf = filled(512, 0xab);
    const strerr = { EIO: "Input/output error", EPERM: "Operation not permitted", ENOMEM: "Cannot allocate memory",
      EINVAL: "Invalid argument", ENOSPC: "No space left on device", ESHUTDOWN: "Cannot send after transport endpoint shutdown" }[e];
    fails(h.pread(buf, 0), errno[e], `nbd_pread: read: command failed: ${strerr}`);
    assert.equal(buf, new Uint8Array(512), "pread_initialize zeroed the buffer of the failed read");
    assert.is(h.aioIsReady(), 1);
    assert.is(h.getSize(), BigInt(MiB));
    h.close();
    sameAsLibnbd(specs[i]!, py[i]);
  });
});

test("server errors on every command carry the command's name (same as libnbd)", () => {
  const ops = sameAsLibnbd({
    argv: [...NBDKIT, "--filter=error", "memory", "size=1M", "error-rate=1", "error=EIO"],
    ops: [
      ["pread", 512, 0], ["pwrite", { hex: "00".repeat(512) }, 0], ["pwrite", { hex: "00".repeat(512) }, 0, CMD_FLAG_FUA],
      ["flush"], ["trim", 512, 0], ["zero", 512, 0], ["zero", 512, 0, CMD_FLAG_NO_HOLE], ["cache", 512, 0], ["aio_is_ready"],
    ],
  });
  const eio = (cmd: string, name: string) => ({ err: `nbd_${cmd}: ${name}: command failed: Input/output error`, errno: errno.EIO });
  // nbdkit 1.32's error filter injects no error into flush.
  assert.equal(ops, [
    eio("pread", "read"), eio("pwrite", "write"), eio("pwrite", "write"), { ok: 0 },
    eio("trim", "trim"), eio("zero", "write-zeroes"), eio("zero", "write-zeroes"), eio("cache", "cache"), { ok: 1 },
  ]);
});

test("after a server error the same handle reads and writes again", () => {
  const inject = scratchPath("inject");
  writeFileSync(inject, "");
  const h = nbdkit(["--filter=error", "memory", "size=1M", "error-rate=1", "error=ENOSPC", `error-file=${inject}`]);
  const data = random(4096);
  fails(h.pwrite(data, 0), errno.ENOSPC, "nbd_pwrite: write: command failed: No space left on device");
  fails(h.pread(new Uint8Array(16), 0), errno.ENOSPC, "nbd_pread: read: command failed: No space left on device");
  assert.is(h.aioIsReady(), 1);
  rmSync(inject);
  assert.is(h.pwrite(data, 0), 0, String(getError()));
  assert.equal(read(h, 4096, 0), data);
});

test("simple replies (structured replies off, oldstyle, plain newstyle): data and server errors", () => {
  const variants: [string, string[], ((h: Handle) => void)?][] = [
    ["no structured replies", ["memory", "size=8M"], (h) => assert.is(h.setRequestStructuredReplies(false), 0)],
    ["oldstyle", ["-o", "memory", "size=8M"]],
    ["plain newstyle", ["--mask-handshake", "0", "memory", "size=8M"]],
  ];
  for (const [what, args, before] of variants) {
    const h = nbdkit(args, before);
    assert.is(h.getStructuredRepliesNegotiated(), 0, what);
    const data = random(4 * MiB);
    assert.is(h.pwrite(data, 1), 0, `${what}: ${getError()}`);
    const back = new Uint8Array(4 * MiB);
    assert.is(h.pread(back, 1), 0, what);
    assert.ok(Buffer.from(back).equals(Buffer.from(data)), `${what}: 4 MiB round trip`);
    // A read the server refuses gets a simple error reply with no data after it; the next read is in step.
    assert.is(h.setStrictMode(0), 0);
    fails(h.pread(new Uint8Array(512), 8 * MiB), errno.EINVAL, "nbd_pread: read: command failed: Invalid argument");
    fails(h.pread(new Uint8Array(512), 0, 0x80), errno.EINVAL, "nbd_pread: read: command failed: Invalid argument");
    assert.equal(read(h, 100, 1), data.subarray(0, 100), what);
    assert.is(h.aioIsReady(), 1, what);
    assert.is(h.shutdown(), 0);
    h.close();
  }
  const specs: Spec[] = [
    {
      argv: [...NBDKIT, "--filter=error", "memory", "size=1M", "error-rate=1", "error=ENOMEM"],
      settings: [["set_request_structured_replies", false]],
      ops: [["pread", 512, 0], ["pwrite", { hex: "00".repeat(512) }, 0], ["get_structured_replies_negotiated"], ["aio_is_ready"]],
    },
    // nbdkit 1.32 advertises FUA to oldstyle clients and then refuses it; libnbd passes that on, so does nbd-ts.
    {
      argv: [...NBDKIT, "-o", "memory", "size=1M"],
      ops: [["can_fua"], ["pwrite", { hex: "ab".repeat(512) }, 0, CMD_FLAG_FUA], ["pwrite", { hex: "cd".repeat(512) }, 0], ["pread", 4, 510]],
    },
  ];
  const py = python(specs);
  sameAsLibnbd(specs[0]!, py[0]);
  const old = sameAsLibnbd(specs[1]!, py[1]);
  assert.equal(old[1], { err: "nbd_pwrite: write: command failed: Invalid argument", errno: errno.EINVAL });
  assert.equal(old[3], { ok: "cdcd0000" });
});

// ---- pread_initialize -------------------------------------------------------------

test("pread_initialize: default zeroes the buffer of a failed pread; off leaves it untouched", () => {
  const inject = scratchPath("inject-init");
  writeFileSync(inject, "");
  const args = ["--filter=error", "memory", "size=1M", "error-pread-rate=1", "error-pread=EIO", `error-pread-file=${inject}`];

  const on = nbdkit(args);
  assert.is(on.getPreadInitialize(), 1);
  let buf = filled(512, 0x11);
  fails(on.pread(buf, MiB), errno.EINVAL, "nbd_pread: request out of bounds: Invalid argument");
  assert.equal(buf, new Uint8Array(512), "client-side failure zeroes");
  buf = filled(512, 0x11);
  fails(on.pread(buf, 0), errno.EIO, "nbd_pread: read: command failed: Input/output error");
  assert.equal(buf, new Uint8Array(512), "server-side failure zeroes");
  buf = filled(512, 0x11);
  fails(on.pread(buf, 0, 0x10000), errno.EINVAL, "nbd_pread: flags: invalid value for flag: 0x10000: Invalid argument");
  assert.equal(buf, new Uint8Array(512), "argument failure zeroes");

  const off = nbdkit(args, (h) => assert.is(h.setPreadInitialize(false), 0));
  assert.is(off.getPreadInitialize(), 0);
  buf = filled(512, 0x22);
  fails(off.pread(buf, MiB), errno.EINVAL, "nbd_pread: request out of bounds: Invalid argument");
  assert.equal(buf, filled(512, 0x22), "client-side failure leaves the buffer");
  fails(off.pread(buf, 0), errno.EIO, "nbd_pread: read: command failed: Input/output error");
  assert.equal(buf, filled(512, 0x22), "server-side failure leaves the buffer");
  // A buffer too large to cross to the worker at all is left alone too.
  const over = new Uint8Array(MAX_REQUEST_SIZE + 1).fill(0x22);
  fails(off.pread(over, 0), errno.EINVAL, "nbd_pread: request out of bounds: Invalid argument");
  assert.is(over[0], 0x22);
  assert.is(over[MAX_REQUEST_SIZE], 0x22);

  // Once the errors stop, both handles read for real, and can switch the setting while connected.
  rmSync(inject);
  assert.is(off.pwrite(filled(512, 0x5c), 0), 0);
  assert.is(off.pread(buf, 0), 0);
  assert.equal(buf, filled(512, 0x5c));
  assert.is(off.setPreadInitialize(true), 0);
  buf = filled(512, 0x22);
  fails(off.pread(buf, MiB), errno.EINVAL, "nbd_pread: request out of bounds: Invalid argument");
  assert.equal(buf, new Uint8Array(512));
});

// ---- after shutdown ------------------------------------------------------------------

test("shutdown: then pread EINVAL (CLOSED), aioIsClosed, getSize still answers", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.pwrite(filled(512, 7), 0), 0);
  assert.is(h.shutdown(), 0);
  assert.is(h.aioIsClosed(), 1);
  assert.is(h.aioIsReady(), 0);
  assert.is(h.getSize(), BigInt(MiB));
  assert.is(h.canFua(), 1);
  const buf = filled(512, 3);
  const closed = "invalid state: CLOSED: the handle must be connected with the server: Invalid argument";
  fails(h.pread(buf, 0), errno.EINVAL, `nbd_pread: ${closed}`);
  assert.equal(buf, new Uint8Array(512), "pread_initialize zeroes even on a state error");
  fails(h.pwrite(buf, 0), errno.EINVAL, `nbd_pwrite: ${closed}`);
  fails(h.flush(), errno.EINVAL, `nbd_flush: ${closed}`);
  fails(h.zero(512, 0), errno.EINVAL, `nbd_zero: ${closed}`);
  // libnbd 1.18 also permits shutdown while negotiating, so its message names both states (1.14: only "connected").
  fails(h.shutdown(), errno.EINVAL,
    "nbd_shutdown: invalid state: CLOSED: the handle must be negotiating, or connected with the server: Invalid argument");
  assert.is(h.aioIsClosed(), 1);
  h.close();

  sameAsLibnbd({
    argv: [...NBDKIT, "memory", "size=1M"],
    ops: [
      ["shutdown"], ["aio_is_closed"], ["get_size"], ["pread", 512, 0], ["pwrite", { hex: "00" }, 0],
      ["trim", 512, 0], ["cache", 512, 0], ["can_flush"], ["is_read_only"],
    ],
  });
});

test.run();
