/**
 * Bad input: every argument kind of the API table fed values of the wrong
 * type, out of range, missing, or NULL; each call must return its error value
 * with libnbd's errno and message (EFAULT "<arg> cannot be NULL" where libnbd
 * checks a NULL pointer, EINVAL otherwise, ENAMETOOLONG/ESRCH where libnbd
 * says so) and never throw. Also the thread's last error (getError/getErrno)
 * and pread's buffer initialization on failure (libnbd.md §2.1-2.2, §2.6,
 * §3.2 T02, T03, T05, T06).
 */
import { spawnSync } from "node:child_process";
import { test } from "uvu";
import * as assert from "uvu/assert";
import {
  CMD_FLAG_FUA, SHUTDOWN_ABANDON_PENDING, STRICT_MASK, STRICT_ZERO_SIZE, create, getErrno, getError, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { API, type CallName } from "../src/api/table.js";
import type { Arg, Call } from "../src/api/types.js";
import { alive, scratchPath } from "./helpers.js";
import {
  allArgs, assertFailed, callByName, calls, cName, errorValue, literal, plausible, plausibleArgs, show,
} from "./table-args.js";

const NBDKIT = ["nbdkit", "-s", "--exit-with-parent", "null", "size=1M"];

function connected(): Handle {
  const h = create()!;
  h.addMetaContext("base:allocation"); // so that block status gets past its own checks to the generic ones
  assert.is(h.connectCommand(NBDKIT), 0, `connectCommand: ${getError()}`);
  return h;
}

/** A handle still negotiating (opt mode). */
function negotiating(): Handle {
  const h = create()!;
  h.setOptMode(true);
  assert.is(h.connectCommand(NBDKIT), 0, `connectCommand: ${getError()}`);
  return h;
}

/**
 * A handle in which `call` passes its state check: a new one if it may be
 * made when created (or in any state), a negotiating one for opt-mode calls,
 * else a connected one. Calls that would connect are made on new handles
 * only with arguments that fail.
 */
function handleFor(call: Call): Handle {
  if (!call.states || call.states.includes("created")) return create()!;
  return call.states.includes("connected") ? connected() : negotiating();
}

/** Calls `name` with plausible arguments except `bad` at argument `i` (of all, optional ones included). */
function callWith(h: Handle, name: CallName, i: number, bad: unknown): unknown {
  const call = API[name] as Call;
  const args: unknown[] = allArgs(call).map(plausible);
  args[i] = bad;
  return callByName(h, name, args);
}

/** Entries with an argument of one of these kinds, and where it is. */
function withArg(kinds: Arg["kind"][]): [CallName, Call, number, Arg][] {
  const out: [CallName, Call, number, Arg][] = [];
  for (const [name, call] of calls) {
    allArgs(call).forEach((arg, i) => { if (kinds.includes(arg.kind)) out.push([name, call, i, arg]); });
  }
  return out;
}

// ---- the thread's last error ------------------------------------------------------

test("getError() is null and getErrno() 0 in a fresh process; create() and successes do not set them", () => {
  const index = new URL("../src/index.js", import.meta.url).href;
  const script = `
    import { create, getError, getErrno } from ${JSON.stringify(index)};
    const out = [getError(), getErrno()];
    const h = create();
    out.push(getError(), getErrno(), h.setExportName("x"), h.getExportName(), getError(), getErrno());
    out.push(h.getSize().toString(), getError(), getErrno());
    h.close();
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.is(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout), [
    null, 0,
    null, 0, 0, "x", null, 0,
    "-1", "nbd_get_size: invalid state: START: the handle must be negotiating, or connected with the server, " +
      "or shut down: Transport endpoint is not connected", 107,
  ]);
});

test("a successful call does not clear the last error; the next failure replaces it", () => {
  const h = create()!;
  assert.is(h.setHandshakeFlags(4), -1);
  const msg = "nbd_set_handshake_flags: flags: invalid value for flag: 0x4: Invalid argument";
  assert.is(getError(), msg);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(h.setExportName("ok"), 0);
  assert.is(h.getExportName(), "ok");
  assert.is(h.getStrictMode(), STRICT_MASK);
  assert.is(h.aioIsCreated(), 1);
  assert.is(h.connectionState()!.slice(0, 5), "START");
  const other = create()!;
  other.close();
  assert.is(getError(), msg, "successes leave the message");
  assert.is(getErrno(), errno.EINVAL, "and the errno");
  assert.is(h.killSubprocess(0), -1);
  assert.is(getError(), "nbd_kill_subprocess: no subprocess exists: No such process");
  assert.is(getErrno(), errno.ESRCH);
  h.close();
});

// ---- missing arguments ---------------------------------------------------------------

/**
 * The first missing argument decides: a pointer kind is a NULL pointer
 * (EFAULT "<name> cannot be NULL", as libnbd), any other kind EINVAL naming
 * the argument; a missing flags argument is 0 (API.md: flags default to 0).
 */
function assertMissing(h: Handle, name: CallName, call: Call, given: number): void {
  const args = plausibleArgs(call).slice(0, given);
  const what = `${name}(${args.map(show).join(", ")})`;
  const ret = callByName(h, name, args);
  const arg = call.args[given]!;
  const c = cName(name, call);
  if (["string", "path", "stringList", "bytesIn", "bytesOut", "bytesPersistIn", "bytesPersistOut", "port", "closure"].includes(arg.kind)) {
    assertFailed(name, ret, errno.EFAULT, `${c}: ${arg.name} cannot be NULL: Bad address`, what);
  } else if (arg.kind === "flags") {
    assert.is(ret, 0, `${what}: flags default to 0 (${getError()})`);
  } else {
    assertFailed(name, ret, errno.EINVAL, new RegExp(`^${literal(c)}: ${arg.name}: `), what);
  }
}

test("too few arguments, on a new handle: EFAULT for pointers, EINVAL otherwise, never a throw", () => {
  let checked = 0;
  for (const [name, call] of calls) {
    if (call.states && !call.states.includes("created")) continue;
    for (let given = 0; given < call.args.length; given++) {
      const h = create()!;
      assertMissing(h, name, call, given);
      assert.is(h.aioIsCreated(), 1, `${name} with ${given} arguments left the handle in START`);
      h.close();
      checked++;
    }
  }
  assert.ok(checked >= 12, `${checked} cases`);
});

test("too few arguments, on a connected handle", () => {
  const h = connected();
  let checked = 0;
  for (const [name, call] of calls) {
    if (!call.states?.includes("connected") && call.states) continue;
    for (let given = 0; given < call.args.length; given++) {
      assertMissing(h, name, call, given);
      h.setStrictMode(STRICT_MASK); // setStrictMode() set it to 0
      checked++;
    }
  }
  assert.ok(checked >= 10, `${checked} cases`);
  assert.is(h.aioIsReady(), 1, "still READY");
  h.close();
});

test("libnbd's exact NULL messages (T06 and friends)", () => {
  const h = create()!;
  assert.is(h.connectCommand(null as never), -1);
  assert.is(getError(), "nbd_connect_command: argv cannot be NULL: Bad address");
  assert.is(getErrno(), errno.EFAULT);
  assert.is(h.connectSystemdSocketActivation(undefined as never), -1);
  assert.is(getError(), "nbd_connect_systemd_socket_activation: argv cannot be NULL: Bad address");
  assert.is(h.connectUnix(null as never), -1);
  assert.is(getError(), "nbd_connect_unix: unixsocket cannot be NULL: Bad address");
  assert.is(h.setExportName(null as never), -1);
  assert.is(getError(), "nbd_set_export_name: export_name cannot be NULL: Bad address");
  assert.is(h.connectTcp("localhost", null as never), -1);
  assert.is(getError(), "nbd_connect_tcp: port cannot be NULL: Bad address");
  assert.is(getErrno(), errno.EFAULT);
  assert.is(h.aioIsCreated(), 1);
  assert.is(h.getExportName(), "");
  h.close();
});

// ---- buffers ---------------------------------------------------------------------------

test("a buffer that is not a Uint8Array: EFAULT for null/undefined, EINVAL for anything else", () => {
  const h = connected();
  const cases = withArg(["bytesIn", "bytesOut", "bytesPersistIn", "bytesPersistOut"]);
  assert.ok(cases.length >= 2, "pread and pwrite at least");
  const wrong: unknown[] = ["abc", "", 5, 0, [1, 2, 3], [], { length: 4 }, new ArrayBuffer(4), new SharedArrayBuffer(4),
    new DataView(new ArrayBuffer(4)), new Uint16Array(2), new Int8Array(4), true, 1n];
  for (const [name, call, i, arg] of cases) {
    const c = cName(name, call);
    for (const bad of [null, undefined]) {
      assertFailed(name, callWith(h, name, i, bad), errno.EFAULT, `${c}: ${arg.name} cannot be NULL: Bad address`,
        `${name}(${show(bad)})`);
    }
    for (const bad of wrong) {
      assertFailed(name, callWith(h, name, i, bad), errno.EINVAL, new RegExp(`^${literal(c)}: ${arg.name}: `),
        `${name}(${show(bad)})`);
    }
    // The buffer is checked before the offset and the flags.
    const args = allArgs(call).map((a) => (a.kind === "uint64" ? -1 : a.kind === "flags" ? 0x40 : "abc"));
    assertFailed(name, callByName(h, name, args), errno.EINVAL, new RegExp(`^${literal(c)}: ${arg.name}: `));
  }
  assert.is(h.aioIsReady(), 1);
  h.close();
});

test("buffers: a Buffer, a subarray and a view of a SharedArrayBuffer are Uint8Arrays", () => {
  const h = connected();
  assert.is(h.pwrite(Buffer.from("hello"), 0), 0, String(getError()));
  assert.is(h.pread(Buffer.alloc(16, 1), 0), 0, String(getError()));
  const big = new Uint8Array(32).fill(7);
  const view = big.subarray(8, 24);
  assert.is(h.pread(view, 4096), 0, String(getError()));
  assert.equal([...big.subarray(0, 8)], new Array(8).fill(7), "bytes before the view untouched");
  assert.equal([...view], new Array(16).fill(0), "the view got the (null) server's zeroes");
  assert.equal([...big.subarray(24)], new Array(8).fill(7), "bytes after the view untouched");
  const shared = new Uint8Array(new SharedArrayBuffer(64), 16, 32).fill(9);
  assert.is(h.pread(shared, 0), 0, String(getError()));
  assert.equal([...shared], new Array(32).fill(0));
  assert.is(h.pwrite(shared, 512), 0, String(getError()));
  h.close();
});

test("a zero-length buffer or count: EINVAL 'count cannot be 0'", () => {
  const h = connected();
  for (const [name, call, i, arg] of withArg(["bytesIn", "bytesOut", "bytesPersistIn", "bytesPersistOut", "uint64"])) {
    if (arg.kind === "uint64" && arg.name !== "count") continue;
    const zero = arg.kind === "uint64" ? 0 : new Uint8Array(0);
    if (name === "blockStatusFilter" || name === "aioBlockStatusFilter") {
      // libnbd 1.18 refuses it without extended headers before it looks at the count (block-status.test.ts).
      assertFailed(name, callWith(h, name, i, zero), errno.ENOTSUP,
        `${cName(name, call)}: server does not support extended headers: Operation not supported`);
      continue;
    }
    assertFailed(name, callWith(h, name, i, zero), errno.EINVAL, `${cName(name, call)}: count cannot be 0: Invalid argument`,
      `${name} with ${arg.name} ${show(zero)}`);
  }
  assert.is(h.pwrite(new Uint8Array(new ArrayBuffer(8), 8), 0), -1, "an empty view at the end of a buffer");
  assert.is(getError(), "nbd_pwrite: count cannot be 0: Invalid argument");
  assert.is(h.trim(0n, 0), -1);
  assert.is(getErrno(), errno.EINVAL);
  // Without STRICT_ZERO_SIZE the request goes to the server (which accepts a 0-length read).
  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_ZERO_SIZE), 0);
  const ret = h.pread(new Uint8Array(0), 0);
  assert.ok(ret === 0 || /^nbd_pread: read: command failed/.test(getError()!), `reached the server: ${getError()}`);
  h.close();
});

// ---- offsets and counts -----------------------------------------------------------------

test("offsets and counts outside 0..2^64-1, or not integers: EINVAL naming the argument", () => {
  const h = connected();
  const cases = withArg(["uint64"]);
  assert.ok(cases.length >= 7, "pread, pwrite, trim, cache, zero");
  const bad: unknown[] = [-1, -0.5, NaN, 1.5, 2 ** 64, 2 ** 70, Infinity, -Infinity, 2n ** 64n, 2n ** 64n + 1n, -1n,
    "0", "1", null, {}, [0], true];
  for (const [name, call, i, arg] of cases) {
    const c = cName(name, call);
    for (const v of bad) {
      assertFailed(name, callWith(h, name, i, v), errno.EINVAL, new RegExp(`^${literal(c)}: ${arg.name}: `),
        `${name} with ${arg.name} ${show(v)}`);
    }
    // The largest values pass the argument check (and then fail the bounds check;
    // a cookie that large is just not one of ours: aio_command_completed says 0).
    for (const v of [2n ** 64n - 1n, 2 ** 63]) {
      const ret = callWith(h, name, i, v);
      assert.is(ret, arg.name === "cookie" ? 0 : errorValue(call));
      if (arg.name !== "cookie") assert.not.match(getError()!, new RegExp(`${arg.name}: expected`), `${name} with ${arg.name} ${show(v)}: ${getError()}`);
    }
  }
  assert.is(h.pread(new Uint8Array(8), -1n), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.match(getError()!, /^nbd_pread: offset: .*Invalid argument$/);
  assert.is(h.aioIsReady(), 1);
  h.close();
});

// ---- flags ---------------------------------------------------------------------------------

test("unknown flags: EINVAL 'flags: invalid value for flag', for every flags argument", () => {
  let checked = 0;
  for (const [name, call, i, arg] of withArg(["flags"])) {
    if (arg.kind !== "flags") continue;
    const h = handleFor(call);
    const c = cName(name, call);
    const bits = [0x40, 0x80, 0x100, 0x8000, 0x10000, 0x20000, 0x80000000].filter((b) => b & ~arg.allowed);
    for (const v of [...bits, arg.allowed | bits[0]!, -1, 1.5, "1", 2 ** 32, NaN, 1n, true, {}]) {
      const ret = callWith(h, name, i, v);
      assertFailed(name, ret, errno.EINVAL, new RegExp(`^${literal(c)}: ${arg.name}: invalid value for flag: .*Invalid argument$`),
        `${name} with flags ${show(v)}`);
      checked++;
    }
    for (const b of bits.filter((b) => b <= 0xffff)) {
      callWith(h, name, i, b);
      assert.is(getError(), `${c}: ${arg.name}: invalid value for flag: 0x${b.toString(16)}: Invalid argument`);
    }
    h.close();
  }
  assert.ok(checked >= 60, `${checked} cases`);
});

test("command flags: above 16 bits always refused, else refused only with STRICT_FLAGS (libnbd.md §2.6)", () => {
  const h = connected();
  const buf = new Uint8Array(512);
  assert.is(h.pread(buf, 0, CMD_FLAG_FUA), -1, "pread takes no flags");
  assert.is(getError(), "nbd_pread: flags: invalid value for flag: 0x1: Invalid argument");
  assert.is(h.setStrictMode(0), 0);
  assert.is(h.pread(buf, 0, 0x10000), -1);
  assert.is(getError(), "nbd_pread: flags: invalid value for flag: 0x10000: Invalid argument");
  assert.is(h.pwrite(buf, 0, 0x20000), -1);
  assert.is(getErrno(), errno.EINVAL);
  // 0x40 fits the wire: it reaches the server, whatever the server makes of it.
  const ret = h.pread(buf, 0, 0x40);
  assert.ok(ret === 0 || /^nbd_pread: read: command failed/.test(getError()!), `reached the server: ${getError()}`);
  assert.is(h.aioIsReady(), 1);
  h.close();
});

test("shutdown refuses unknown flags and stays READY; SHUTDOWN_ABANDON_PENDING is known", () => {
  const h = connected();
  for (const v of [1, 0x40, 0x20000, 0x10001, -1]) {
    assert.is(h.shutdown(v), -1, `shutdown(${v})`);
    assert.match(getError()!, /^nbd_shutdown: flags: invalid value for flag/);
    assert.is(h.aioIsReady(), 1);
  }
  assert.is(h.shutdown(SHUTDOWN_ABANDON_PENDING), 0, String(getError()));
  assert.is(h.aioIsClosed(), 1);
  h.close();
});

test("setStrictMode(0x80) and setHandshakeFlags(4): EINVAL, and the old value is kept (T02)", () => {
  const h = create()!;
  assert.is(h.setStrictMode(0x80), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(getError(), "nbd_set_strict_mode: flags: invalid value for flag: 0x80: Invalid argument");
  assert.is(h.getStrictMode(), STRICT_MASK);
  assert.is(h.setStrictMode(3), 0);
  for (const v of [0x80, 0x1000, 0xff, -1, 1.5, "1"]) {
    assert.is(h.setStrictMode(v as number), -1, `setStrictMode(${show(v)})`);
    assert.is(getErrno(), errno.EINVAL);
    assert.is(h.getStrictMode(), 3, `setStrictMode(${show(v)}) kept the old value`);
  }
  assert.is(h.setHandshakeFlags(4), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(getError(), "nbd_set_handshake_flags: flags: invalid value for flag: 0x4: Invalid argument");
  assert.is(h.getHandshakeFlags(), 3);
  assert.is(h.setHandshakeFlags(1), 0);
  for (const v of [4, 7, 0x10000, -1, 2.5, "2"]) {
    assert.is(h.setHandshakeFlags(v as number), -1, `setHandshakeFlags(${show(v)})`);
    assert.is(h.getHandshakeFlags(), 1, `setHandshakeFlags(${show(v)}) kept the old value`);
  }
  h.close();
});

// ---- enums, bools, ints, ports -------------------------------------------------------------

test("getBlockSize(9): EINVAL 'size_type: invalid value for parameter: 9'", () => {
  const h = connected();
  assert.is(h.getBlockSize(9), -1n);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(getError(), "nbd_get_block_size: size_type: invalid value for parameter: 9: Invalid argument");
  for (const v of [4, -1, 1.5, "0", null, 0n]) {
    assert.is(h.getBlockSize(v as number), -1n, `getBlockSize(${show(v)})`);
    assert.match(getError()!, /^nbd_get_block_size: size_type: invalid value for parameter: /);
    assert.is(getErrno(), errno.EINVAL);
  }
  for (const v of [0, 1, 2, 3]) {
    const size = h.getBlockSize(v);
    assert.ok(typeof size === "bigint", `getBlockSize(${v}) is a bigint`);
    assert.ok(size >= 0n, `getBlockSize(${v}) = ${size}: ${getError()}`);
  }
  h.close();
});

test("bool and int arguments refuse other types with EINVAL", () => {
  const h = create()!;
  for (const [name, call, i, arg] of withArg(["bool", "int"])) {
    if (call.states && !call.states.includes("created")) continue;
    const c = cName(name, call);
    const bad = arg.kind === "bool" ? ["yes", "", null, {}, [], 1n] : ["15", 1.5, NaN, 2 ** 31, -(2 ** 31) - 1, null, 1n, true];
    for (const v of bad) {
      assertFailed(name, callWith(h, name, i, v), errno.EINVAL, new RegExp(`^${literal(c)}: ${arg.name}: `),
        `${name}(${show(v)})`);
    }
  }
  assert.is(h.getPreadInitialize(), 1, "failed setters changed nothing");
  assert.is(h.getFullInfo(), 0);
  h.close();
});

test("connectTcp: a port that is not a string or a number 0..65535 is EINVAL, and the handle stays START", () => {
  const h = create()!;
  for (const v of [-1, 65536, 1.5, NaN, {}, [80], true]) {
    assertFailed("connectTcp", h.connectTcp("localhost", v as number), errno.EINVAL, /^nbd_connect_tcp: port: /,
      `connectTcp("localhost", ${show(v)})`);
    assert.is(h.aioIsCreated(), 1);
  }
  assertFailed("connectTcp", h.connectTcp(80 as never, "80"), errno.EINVAL, /^nbd_connect_tcp: hostname: /);
  h.close();
});

test("symbols and functions as arguments fail with EINVAL, never throw", () => {
  const h = connected();
  for (const v of [Symbol("s"), () => 0]) {
    assert.is(h.pread(new Uint8Array(4), v as never), -1);
    assert.is(getErrno(), errno.EINVAL, String(getError()));
    assert.match(getError()!, /^nbd_pread: /);
    assert.is(h.setHandleName(v as never), -1);
    assert.is(getErrno(), errno.EINVAL);
    assert.is(h.getBlockSize(v as never), -1n);
    assert.is(getErrno(), errno.EINVAL);
  }
  assert.is(h.aioIsReady(), 1);
  h.close();
});

test("a method called on something that is not a live handle fails, never throws", () => {
  const h = create()!;
  for (const self of [{}, null, undefined, Object.create(Object.getPrototypeOf(h) as object)]) {
    for (const [name, call] of calls) {
      let ret: unknown;
      try {
        ret = (h as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!.apply(self, plausibleArgs(call));
      } catch (e) {
        assert.unreachable(`${name} on ${show(self)} threw ${String(e)}`);
      }
      assertFailed(name, ret, errno.EINVAL, undefined, `${name} on ${show(self)}`);
    }
  }
  assert.is(h.getHandleName()!.slice(0, 3), "nbd", "the real handle is unaffected");
  h.close();
});

// ---- strings ------------------------------------------------------------------------------

test("strings with NUL bytes: EINVAL, and nothing changes", () => {
  let checked = 0;
  for (const [name, call, i, arg] of withArg(["string", "path", "stringList", "port"])) {
    const h = handleFor(call);
    const c = cName(name, call);
    const bad = arg.kind === "stringList" ? [["nbdkit\0", "null"], ["nbdkit", "nu\0ll"], ["\0"]] : ["a\0b", "\0", "x\0"];
    for (const v of bad) {
      assertFailed(name, callWith(h, name, i, v), errno.EINVAL, new RegExp(`^${literal(c)}: ${arg.name}: `),
        `${name}(${show(v)})`);
      checked++;
    }
    if (!call.states || call.states.includes("created")) {
      assert.is(h.aioIsCreated(), 1, `${name} left the handle in START`);
      assert.is(h.getExportName(), "");
      assert.is(h.getSocketActivationName(), "");
      assert.match(h.getHandleName()!, /^nbd\d+$/);
    }
    h.close();
  }
  assert.ok(checked >= 24, `${checked} cases`);
});

test("export names: 4096 bytes are fine, 4097 are ENAMETOOLONG (T03); bytes, not characters", () => {
  const h = create()!;
  assert.is(h.setExportName("a".repeat(4096)), 0);
  assert.is(h.getExportName()!.length, 4096);
  for (const name of ["a".repeat(4097), "b".repeat(4999), "é".repeat(2049), "€".repeat(1366), "𝄞".repeat(1025)]) {
    assertFailed("setExportName", h.setExportName(name), errno.ENAMETOOLONG,
      "nbd_set_export_name: export name too long for NBD protocol: File name too long", `${Buffer.byteLength(name)} bytes`);
    assert.is(h.getExportName(), "a".repeat(4096), "the old name is kept");
  }
  assert.is(h.setExportName("é".repeat(2048)), 0, "2048 × é = 4096 bytes");
  assert.is(h.setExportName("𝄞".repeat(1024)), 0, "1024 × 𝄞 = 4096 bytes");
  assert.is(h.getExportName(), "𝄞".repeat(1024));
  h.close();
});

test("socket activation names: > 32 characters ENAMETOOLONG, not alphanumeric EINVAL (T11)", () => {
  const h = create()!;
  assertFailed("setSocketActivationName", h.setSocketActivationName("a".repeat(33)), errno.ENAMETOOLONG,
    "nbd_set_socket_activation_name: socket activation name should be <= 32 characters: File name too long");
  for (const name of ["a-b", "a b", "é", "a.b", "a/b"]) {
    assertFailed("setSocketActivationName", h.setSocketActivationName(name), errno.EINVAL,
      "nbd_set_socket_activation_name: socket activation name should contain only alphanumeric ASCII characters: " +
      "Invalid argument", show(name));
  }
  assert.is(h.getSocketActivationName(), "");
  h.close();
});

// ---- argv -------------------------------------------------------------------------------------

test("empty argv: EINVAL 'missing command name in argv list', and the handle stays created (T06)", () => {
  const h = create()!;
  assertFailed("connectCommand", h.connectCommand([]), errno.EINVAL,
    "nbd_connect_command: missing command name in argv list: Invalid argument");
  assert.is(h.aioIsCreated(), 1);
  assertFailed("connectSystemdSocketActivation", h.connectSystemdSocketActivation([]), errno.EINVAL,
    "nbd_connect_systemd_socket_activation: missing command name in argv list: Invalid argument");
  assert.is(h.aioIsCreated(), 1);
  assert.ok(h.connectionState()!.startsWith("START: "));
  // Still usable: it connects.
  assert.is(h.connectCommand(NBDKIT), 0, String(getError()));
  assert.is(h.getSize(), 1048576n);
  h.close();
});

test("argv that is not an array of strings: EFAULT for null, EINVAL otherwise; the handle stays created", () => {
  for (const name of ["connectCommand", "connectSystemdSocketActivation"] as const) {
    const h = create()!;
    const c = cName(name, API[name]);
    for (const v of [null, undefined]) {
      assertFailed(name, h[name](v as never), errno.EFAULT, `${c}: argv cannot be NULL: Bad address`, `${name}(${show(v)})`);
    }
    for (const v of ["nbdkit", 5, {}, [1], ["nbdkit", null], ["nbdkit", 5], [["nbdkit"]]]) {
      assertFailed(name, h[name](v as never), errno.EINVAL, new RegExp(`^${literal(c)}: argv: `), `${name}(${show(v)})`);
      assert.is(h.aioIsCreated(), 1);
    }
    h.close();
  }
});

// ---- Unix socket paths --------------------------------------------------------------------------

test("a socket path longer than sun_path (108 bytes): ENAMETOOLONG, the handle stays created", () => {
  const h = create()!;
  for (const path of ["/" + "a".repeat(108), "/" + "a".repeat(200), "/" + "é".repeat(54)]) {
    assertFailed("connectUnix", h.connectUnix(path), errno.ENAMETOOLONG,
      `nbd_connect_unix: socket name too long: ${path}: File name too long`, `${Buffer.byteLength(path)} bytes`);
    assert.is(h.aioIsCreated(), 1);
  }
  // 108 bytes fit (libnbd does not need the terminating NUL): the connect itself fails.
  const fits = scratchPath("x").padEnd(108, "x");
  assert.is(Buffer.byteLength(fits), 108);
  assert.is(h.connectUnix(fits), -1);
  assert.is(getErrno(), errno.ENOENT, String(getError()));
  assert.is(h.aioIsDead(), 1);
  h.close();
});

// ---- subprocesses -----------------------------------------------------------------------------

test("killSubprocess and getSubprocessPid without a subprocess: ESRCH (T05)", () => {
  const h = create()!;
  for (const sig of [0, 15, -1]) {
    assertFailed("killSubprocess", h.killSubprocess(sig), errno.ESRCH,
      "nbd_kill_subprocess: no subprocess exists: No such process", `killSubprocess(${sig})`);
  }
  const ret = h.getSubprocessPid();
  assert.is(ret, -1n);
  assertFailed("getSubprocessPid", ret, errno.ESRCH, /^nbd_get_subprocess_pid: .*No such process$/);
  // Nor after a connect that started none.
  assert.is(h.connectUnix(scratchPath("nobody.sock")), -1);
  assertFailed("getSubprocessPid", h.getSubprocessPid(), errno.ESRCH);
  assertFailed("killSubprocess", h.killSubprocess(0), errno.ESRCH);
  h.close();
});

test("with a subprocess: getSubprocessPid is its pid, a negative signal is EINVAL", () => {
  const h = connected();
  const pid = h.getSubprocessPid();
  assert.ok(typeof pid === "bigint", "the pid is a bigint");
  assert.ok(pid > 0n && alive(Number(pid)), `pid ${pid}`);
  assertFailed("killSubprocess", h.killSubprocess(-1), errno.EINVAL,
    "nbd_kill_subprocess: invalid signal number: -1: Invalid argument");
  assert.ok(alive(Number(pid)));
  assertFailed("killSubprocess", h.killSubprocess(1.5), errno.EINVAL, /^nbd_kill_subprocess: signum: /);
  // An unknown signal: kill(2) says EINVAL.
  assertFailed("killSubprocess", h.killSubprocess(1000), errno.EINVAL, "nbd_kill_subprocess: kill: Invalid argument");
  assert.ok(alive(Number(pid)));
  assert.is(h.getSize(), 1048576n, "the connection is unharmed");
  h.close();
  assert.not.ok(alive(Number(pid)));
});

// ---- pread_initialize ----------------------------------------------------------------------------

test("a failed pread zeroes the caller's buffer; with setPreadInitialize(false) it is left alone (T05)", () => {
  const fresh = create()!;
  const buf = new Uint8Array(512).fill(0x31);
  assert.is(fresh.pread(buf, 0), -1);
  assert.is(getErrno(), errno.ENOTCONN);
  assert.equal([...buf], new Array(512).fill(0), "zeroed although the state check failed");
  assert.is(fresh.setPreadInitialize(false), 0);
  buf.fill(0x31);
  assert.is(fresh.pread(buf, 0), -1);
  assert.equal([...buf], new Array(512).fill(0x31), "untouched");
  fresh.close();

  const h = connected();
  const failures: [string, () => unknown][] = [
    ["bad offset", () => h.pread(buf, -1)],
    ["bad flags", () => h.pread(buf, 0, 0x40)],
    ["out of bounds", () => h.pread(buf, 1048576)],
  ];
  for (const [what, fail] of failures) {
    buf.fill(0x31);
    assert.is(fail(), -1, what);
    assert.equal([...buf], new Array(512).fill(0), `${what}: zeroed`);
  }
  assert.is(h.setPreadInitialize(false), 0);
  for (const [what, fail] of failures) {
    buf.fill(0x31);
    assert.is(fail(), -1, what);
    assert.equal([...buf], new Array(512).fill(0x31), `${what}: untouched`);
  }
  h.close();
});

test.run();
