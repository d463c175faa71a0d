/**
 * Handle states, driven by the API table: every call with permitted states is
 * made in START (a new handle), READY, CLOSED (after shutdown) and DEAD (after
 * a failed connect), and must fail exactly as libnbd's generated wrapper does
 * when the state is wrong (ENOTCONN in START, else EINVAL, and the message
 * "nbd_<call>: invalid state: <STATE>: the handle must be ..."). After
 * close() every call returns its error value with EINVAL and never throws.
 * Also: a new handle's defaults and setters (libnbd.md §3.2 T01, T02),
 * handle names, versions, connectionState, close() and [Symbol.dispose].
 */
import { readFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { create, getErrno, getError, Handle, HANDSHAKE_FLAG_MASK, STRICT_MASK } from "nbd-ts";
import { errno } from "../src/errno.js";
import type { CallName } from "../src/api/table.js";
import type { Call } from "../src/api/types.js";
import { alive, scratchPath } from "./helpers.js";
import {
  allArgs, assertFailed, assertNoStateError, callByName, calls, cName, plausibleArgs, show, stateError,
} from "./table-args.js";

const NBDKIT = ["nbdkit", "-s", "--exit-with-parent", "null", "size=1M"];

/** A handle connected to a fresh nbdkit null server (READY). */
function connected(): Handle {
  const h = create()!;
  assert.is(h.connectCommand(NBDKIT), 0, `connectCommand: ${getError()}`);
  return h;
}

/** A handle whose connect failed (DEAD): nothing listens on this path. */
function dead(): Handle {
  const h = create()!;
  assert.is(h.connectUnix(scratchPath("nobody-listens.sock")), -1);
  assert.is(getErrno(), errno.ENOENT, String(getError()));
  return h;
}

/** Calls that would start a connection if their state check passed. */
const connects = (name: string) => /^(aioC|c)onnect[A-Z]/.test(name);

const aioIs = [
  "aioIsCreated", "aioIsConnecting", "aioIsNegotiating", "aioIsReady", "aioIsProcessing", "aioIsDead", "aioIsClosed",
] as const;

/** connectionState() starts with "<STATE>: " and exactly one aio_is_* query is true. */
function assertState(h: Handle, stateName: string, trueQuery: (typeof aioIs)[number]): void {
  const s = h.connectionState();
  assert.type(s, "string", "connectionState() is a string");
  assert.ok(s!.startsWith(`${stateName}: `), `connectionState() "${s}" starts with ${stateName}`);
  for (const q of aioIs) assert.is(h[q](), q === trueQuery ? 1 : 0, `${q}() in ${stateName}`);
}

/**
 * Every call whose permitted states exclude `state` fails with `errnum` and
 * libnbd's message naming `stateName`; every call permitted there (except
 * those in `skip`) does not fail on its state.
 */
function sweep(h: Handle, state: NonNullable<Call["states"]>[number], stateName: string, errnum: number,
  skip: (name: CallName) => boolean = () => false): number {
  let checked = 0;
  for (const [name, call] of calls) {
    if (!call.states) continue;
    if (call.states.includes(state)) {
      if (skip(name)) continue;
      assertNoStateError(name, callByName(h, name, plausibleArgs(call)), `${name} in ${stateName}`);
      continue;
    }
    const ret = callByName(h, name, plausibleArgs(call));
    assertFailed(name, ret, errnum, stateError(name, stateName, errnum), `${name} in ${stateName}`);
    checked++;
  }
  return checked;
}

// ---- a new handle ----------------------------------------------------------------

test("create() returns a Handle in START", () => {
  const h = create();
  assert.ok(h instanceof Handle, "create() gives a Handle");
  assertState(h!, "START", "aioIsCreated");
  assert.is(h!.connectionState(), "START: Handle after being initially created");
  h!.close();
});

test("a new handle has libnbd's defaults (T01)", () => {
  const h = create()!;
  assert.is(h.getExportName(), "");
  assert.is(h.getFullInfo(), 0);
  assert.is(h.getRequestStructuredReplies(), 1);
  assert.is(h.getHandshakeFlags(), HANDSHAKE_FLAG_MASK);
  assert.is(h.getHandshakeFlags(), 3);
  assert.is(h.getPreadInitialize(), 1);
  assert.is(h.getStrictMode(), STRICT_MASK);
  assert.is(h.getStrictMode(), 0x7f);
  assert.is(h.getSocketActivationName(), "");
  assert.match(h.getHandleName()!, /^nbd\d+$/);
  assert.is(h.getSubprocessPid(), -1n, "no subprocess yet");
  h.close();
});

test("setters round-trip on a new handle (T02, T03)", () => {
  const h = create()!;
  for (const name of ["name", "/", "123", "", "a b/c?d", "é€𝄞", "x".repeat(4096)]) {
    assert.is(h.setExportName(name), 0, `setExportName(${show(name)})`);
    assert.is(h.getExportName(), name);
  }
  assert.is(h.setFullInfo(true), 0);
  assert.is(h.getFullInfo(), 1);
  assert.is(h.setFullInfo(false), 0);
  assert.is(h.getFullInfo(), 0);
  assert.is(h.setRequestStructuredReplies(false), 0);
  assert.is(h.getRequestStructuredReplies(), 0);
  assert.is(h.setRequestStructuredReplies(true), 0);
  assert.is(h.getRequestStructuredReplies(), 1);
  for (const flags of [0, 1, 2, 3]) {
    assert.is(h.setHandshakeFlags(flags), 0, `setHandshakeFlags(${flags})`);
    assert.is(h.getHandshakeFlags(), flags);
  }
  assert.is(h.setPreadInitialize(false), 0);
  assert.is(h.getPreadInitialize(), 0);
  assert.is(h.setPreadInitialize(true), 0);
  assert.is(h.getPreadInitialize(), 1);
  for (const flags of [0, 1, 0x40, 0x3f, STRICT_MASK]) {
    assert.is(h.setStrictMode(flags), 0, `setStrictMode(${flags})`);
    assert.is(h.getStrictMode(), flags);
  }
  for (const name of ["hello", "", "A1", "x".repeat(32)]) {
    assert.is(h.setSocketActivationName(name), 0, `setSocketActivationName(${show(name)})`);
    assert.is(h.getSocketActivationName(), name);
  }
  // The settings are the handle's own: a new handle still has the defaults.
  const other = create()!;
  assert.is(other.getExportName(), "");
  assert.is(other.getStrictMode(), STRICT_MASK);
  other.close();
  h.close();
});

test("handle names are nbd<N> from one counter, and setHandleName round-trips", () => {
  const a = create()!;
  const b = create()!;
  const na = Number(/^nbd(\d+)$/.exec(a.getHandleName()!)?.[1]);
  const nb = Number(/^nbd(\d+)$/.exec(b.getHandleName()!)?.[1]);
  assert.ok(na >= 1, `first name ${a.getHandleName()}`);
  assert.is(nb, na + 1, "consecutive handles get consecutive numbers");
  for (const name of ["mine", "", "nbd42", "é€𝄞"]) {
    assert.is(a.setHandleName(name), 0);
    assert.is(a.getHandleName(), name);
  }
  assert.is(b.getHandleName(), `nbd${nb}`, "renaming one handle leaves the other alone");
  a.close();
  b.close();
});

test("getVersion() is package.json's version, getPackageName() is nbd-ts", () => {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
  const h = create()!;
  assert.is(h.getVersion(), pkg.version);
  assert.is(h.getPackageName(), "nbd-ts");
  // They never fail, so they leave the last error alone.
  h.setHandshakeFlags(4);
  const [msg, num] = [getError(), getErrno()];
  h.getVersion();
  h.getPackageName();
  assert.is(getError(), msg);
  assert.is(getErrno(), num);
  h.close();
});

// ---- START ---------------------------------------------------------------------------

test("START: every call that needs a connection fails with ENOTCONN and libnbd's message", () => {
  let checked = 0;
  for (const [name, call] of calls) {
    if (!call.states || call.states.includes("created")) continue;
    const h = create()!;
    const ret = callByName(h, name, plausibleArgs(call));
    assertFailed(name, ret, errno.ENOTCONN, stateError(name, "START", errno.ENOTCONN));
    assert.is(h.aioIsCreated(), 1, `${name} left the handle in START`);
    h.close();
    checked++;
  }
  assert.ok(checked >= 20, `${checked} calls checked`);
});

test("START: libnbd's exact texts for pread and get_size (T05)", () => {
  const h = create()!;
  assert.is(h.pread(new Uint8Array(512), 0), -1);
  assert.is(getErrno(), 107);
  assert.is(getError(),
    "nbd_pread: invalid state: START: the handle must be connected with the server: Transport endpoint is not connected");
  assert.is(h.getSize(), -1n);
  assert.is(getErrno(), 107);
  assert.is(getError(), "nbd_get_size: invalid state: START: the handle must be negotiating, or connected with the " +
    "server, or shut down: Transport endpoint is not connected");
  h.close();
});

test("START: the state is checked before the arguments (and the flags)", () => {
  const garbage = [{ a: 1 }, -1.5, null, undefined, "\0", [null], 2n ** 64n];
  for (const [name, call] of calls) {
    if (!call.states || call.states.includes("created")) continue;
    const h = create()!;
    for (const bad of garbage) {
      const args = allArgs(call).map(() => bad);
      const ret = callByName(h, name, args);
      assertFailed(name, ret, errno.ENOTCONN, stateError(name, "START", errno.ENOTCONN), `${name}(${show(bad)}…)`);
    }
    h.close();
  }
});

test("START: calls permitted when created pass the state check", () => {
  let setters = 0;
  for (const [name, call] of calls) {
    if (connects(name)) continue;
    if (call.states && !call.states.includes("created")) continue;
    const h = create()!;
    const ret = callByName(h, name, plausibleArgs(call));
    assertNoStateError(name, ret, `${name} in START`);
    if (call.states && call.ret === "err") {
      assert.is(ret, 0, `${name}(${plausibleArgs(call).map(show).join(", ")}) succeeds: ${getError()}`);
      setters++;
    }
    h.close();
  }
  assert.ok(setters >= 5, `${setters} created-only setters succeeded`);
});

// ---- READY, CLOSED ----------------------------------------------------------------

test("READY: calls that need a new (or negotiating) handle fail with EINVAL 'invalid state: READY'", () => {
  const h = connected();
  assertState(h, "READY", "aioIsReady");
  // shutdown and aio_disconnect would leave READY: that is the next test's business.
  const checked = sweep(h, "connected", "READY", errno.EINVAL, (name) => name === "shutdown" || name === "aioDisconnect");
  while (h.aioInFlight() > 0) h.poll(1000); // the sweep's aio commands may still be in flight
  assert.ok(checked >= 8, `${checked} calls checked`);
  assert.is(h.connectCommand(NBDKIT), -1);
  assert.is(getError(), "nbd_connect_command: invalid state: READY: the handle must be newly created: Invalid argument");
  assert.is(h.setExportName("a"), -1);
  assert.is(getError(),
    "nbd_set_export_name: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument");
  assert.is(h.getExportName(), "", "the failed setter changed nothing");
  assertState(h, "READY", "aioIsReady");
  h.close();
});

test("CLOSED (after shutdown): calls not permitted when shut down fail with EINVAL 'invalid state: CLOSED'", () => {
  const h = connected();
  assert.is(h.shutdown(), 0, String(getError()));
  assertState(h, "CLOSED", "aioIsClosed");
  const checked = sweep(h, "closed", "CLOSED", errno.EINVAL);
  assert.ok(checked >= 10, `${checked} calls checked`);
  assert.is(h.shutdown(), -1, "a second shutdown fails");
  assert.is(getErrno(), errno.EINVAL);
  assert.is(h.pread(new Uint8Array(1), 0), -1);
  assert.is(getError(), "nbd_pread: invalid state: CLOSED: the handle must be connected with the server: Invalid argument");
  // What the server said is still known.
  assert.is(h.getSize(), 1048576n);
  assertState(h, "CLOSED", "aioIsClosed");
  h.close();
});

// ---- DEAD ------------------------------------------------------------------------------

test("DEAD (after a failed connect): calls not permitted when dead fail with EINVAL 'invalid state: DEAD'", () => {
  const h = dead();
  assertState(h, "DEAD", "aioIsDead");
  const checked = sweep(h, "dead", "DEAD", errno.EINVAL);
  assert.ok(checked >= 20, `${checked} calls checked`);
  // Nothing can be retried: a new handle is needed (T15).
  assert.is(h.connectUnix(scratchPath("nobody-listens.sock")), -1);
  assert.is(getError(), "nbd_connect_unix: invalid state: DEAD: the handle must be newly created: Invalid argument");
  assert.is(h.connectCommand(NBDKIT), -1);
  assert.is(getErrno(), errno.EINVAL);
  // Calls without a state check still work.
  assert.is(h.setHandleName("corpse"), 0);
  assert.is(h.getHandleName(), "corpse");
  assert.is(h.setStrictMode(0), 0);
  assert.is(h.getStrictMode(), 0);
  assertState(h, "DEAD", "aioIsDead");
  h.close();
});

test("DEAD after connect_command of a server that exits at once", () => {
  const h = create()!;
  assert.is(h.connectCommand(["false"]), -1);
  assertState(h, "DEAD", "aioIsDead");
  assert.is(h.getSize(), -1n);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(getError(), stateError("getSize", "DEAD", errno.EINVAL));
  h.close();
});

// ---- after close() ---------------------------------------------------------------------

/** Every call on a closed handle: its error value, EINVAL, a message naming the call; never a throw. */
function assertAllFailClosed(h: Handle, what: string): void {
  const variants: [string, (call: Call) => unknown[]][] = [
    ["plausible arguments", plausibleArgs],
    ["no arguments", () => []],
    ["garbage", (call) => allArgs(call).map(() => Symbol("garbage"))],
  ];
  for (const [variant, argsOf] of variants) {
    for (const [name, call] of calls) {
      const ret = callByName(h, name, argsOf(call));
      assertFailed(name, ret, errno.EINVAL, new RegExp(`^${cName(name, call)}: .*closed`), `${what}: ${name}, ${variant}`);
    }
  }
}

test("closed handle (fresh, then close()): every call returns its error value with EINVAL", () => {
  const h = create()!;
  h.close();
  assertAllFailClosed(h, "fresh then closed");
  // The error values, spelled out for a few return kinds.
  assert.is(h.getSize(), -1n);
  assert.is(h.getHandleName(), null);
  assert.is(h.connectionState(), null);
  assert.is(h.aioIsCreated(), -1);
  assert.is(h.pread(new Uint8Array(8), 0), -1);
});

test("closed handle (connected, then close()): error values, and the server is gone", () => {
  const h = connected();
  const pid = h.getSubprocessPid();
  assert.ok(pid > 0n, `subprocess pid ${pid}`);
  h.close();
  assert.not.ok(alive(Number(pid)), "close() waited for the connect_command server");
  assertAllFailClosed(h, "connected then closed");
  assert.is(h.getSubprocessPid(), -1n);
  assert.is(getErrno(), errno.EINVAL);
});

test("closed handle (dead, then close())", () => {
  const h = dead();
  h.close();
  assertAllFailClosed(h, "dead then closed");
});

test("close() twice, and [Symbol.dispose] after close(), are harmless", () => {
  const h = connected();
  h.close();
  h.close();
  h[Symbol.dispose]();
  assert.is(h.getSize(), -1n);
  assert.is(getErrno(), errno.EINVAL);
  const g = create()!;
  g[Symbol.dispose]();
  g[Symbol.dispose]();
  g.close();
  assert.is(g.getExportName(), null);
  assert.is(getErrno(), errno.EINVAL);
});

test("closing one handle leaves the others working", () => {
  const a = create()!;
  const b = create()!;
  a.setExportName("a");
  b.setExportName("b");
  a.close();
  assert.is(a.getExportName(), null);
  assert.is(b.getExportName(), "b");
  b.close();
});

test("`using h = create()` closes the handle at the end of the block", () => {
  let outside: Handle | undefined;
  let pid = -1n;
  {
    using h = create()!;
    outside = h;
    assert.is(h.connectCommand(NBDKIT), 0, String(getError()));
    pid = h.getSubprocessPid();
    assert.is(h.getSize(), 1048576n);
  }
  assert.is(outside.getSize(), -1n, "the handle is closed after the block");
  assert.is(getErrno(), errno.EINVAL);
  assert.not.ok(alive(Number(pid)), "and its server is gone");
});

test("`using` also closes the handle when the block throws", () => {
  let outside: Handle | undefined;
  try {
    using h = create()!;
    outside = h;
    throw new Error("boom");
  } catch (e) {
    assert.is((e as Error).message, "boom");
  }
  assert.is(outside!.getHandleName(), null);
  assert.is(getErrno(), errno.EINVAL);
});

test.run();
