/**
 * The blocking, C-style Handle on the caller's thread. Its methods are made
 * from the API table: each marshals its arguments (buffers go through the
 * handle's SharedArrayBuffer, never through a cloned message), crosses the
 * bridge, and turns the reply into libnbd's return value and last error.
 */
import { rmSync } from "node:fs";
import { MAX_REQUEST_SIZE } from "./constants.js";
import { API, type CallName, type HandleMethods } from "./api/table.js";
import { errorValue } from "./api/invoke.js";
import { FAILS_ON_MINUS_ONE, cName, type Call, type Shape } from "./api/types.js";
import { type Event, isSpan } from "./client/events.js";
import { bridgeErrno, cross } from "./bridge.js";
import type { Extra, Reply } from "./dispatch.js";
import { errno } from "./errno.js";
import { NbdError } from "./client/error.js";
import { setError } from "./errors.js";

interface Slot {
  readonly id: number;
  sab: SharedArrayBuffer;
  /** The SAB has grown since the worker last saw it. */
  sabChanged: boolean;
  /** Callbacks the worker may call, by id. */
  callbacks: Map<number, Held>;
  nextCallback: number;
  closed: boolean;
}

const slots = new WeakMap<Handle, Slot>();
let nextId = 1;

// ---- what must not outlive the process ---------------------------------------

const cleanups = new Map<number, { pid?: number; dir?: string }>();
let exitHookInstalled = false;

/** A process that exits without close() still stops its servers and removes their sockets. */
function track(id: number, cleanup: Reply["cleanup"]): void {
  if (!cleanup || (cleanup.pid === undefined && !cleanup.dir)) return;
  cleanups.set(id, cleanup);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const { pid, dir } of cleanups.values()) {
      try { if (pid !== undefined) process.kill(pid, "SIGTERM"); } catch { /* already gone */ }
      if (dir) rmSync(dir, { recursive: true, force: true });
    }
  });
}

// ---- the handle ----------------------------------------------------------------

/** An NBD handle (libnbd's `struct nbd_handle *`). Make one with create(). */
export class Handle {
  /** @internal Use create(). */
  constructor(id: number) {
    slots.set(this, {
      id, sab: new SharedArrayBuffer(0), sabChanged: false, closed: false, callbacks: new Map(), nextCallback: 1,
    });
  }

  /**
   * nbd_close: kills a server started by socket activation (SIGTERM), waits
   * for a connect_command child, removes temporary sockets. Closing twice is
   * harmless, as nbd_close(NULL) is.
   */
  close(): void {
    const slot = slots.get(this);
    if (!slot || slot.closed) return;
    slot.closed = true;
    cross(slot.id, "close", [], {});
    cleanups.delete(slot.id);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export interface Handle extends HandleMethods {}

const closedError = new NbdError(errno.EINVAL, "invalid state: the handle has been closed");

function fail(call: Call, message: string, errnum: number): ReturnType<typeof errorValue> {
  setError(message, errnum);
  return errorValue(call.ret);
}

/** Room in the handle's shared buffer for `n` bytes: grown in powers of two. */
function reserve(slot: Slot, n: number): Uint8Array {
  if (n > slot.sab.byteLength) {
    let size = 64 * 1024;
    while (size < n) size *= 2;
    slot.sab = new SharedArrayBuffer(size);
    slot.sabChanged = true;
  }
  return new Uint8Array(slot.sab, 0, n);
}

/** A callback held on this thread while the worker may call it. */
interface Held {
  fn: (...args: unknown[]) => unknown;
  shape: Shape;
  /** For chunk callbacks: the caller's buffer, onto which spans of shared memory map. */
  buf?: Uint8Array;
}

/** How replaying went: a callback's failure fails the call that replayed it. */
interface Replayed {
  /** A callback threw: the call fails with its message (API.md). */
  thrown?: Error;
  /** A chunk or extent callback returned -1: the errno it left in its box, or EPROTO. */
  errno?: number;
}

/**
 * Calls the caller's callbacks with what the worker recorded, in order, with
 * byte spans mapped back onto the caller's buffer and fresh error boxes.
 */
function replay(slot: Slot, events: Event[] | undefined): Replayed {
  const result: Replayed = {};
  for (const ev of events ?? []) {
    const held = slot.callbacks.get(ev.id);
    if (!held) continue;
    let box: { value: number } | undefined;
    const args = ev.args.map((a) => {
      if (isSpan(a)) return held.buf!.subarray(a.span, a.span + a.length);
      if (typeof a === "object" && a !== null && "value" in a) return (box = { value: Number(a.value) });
      return a;
    });
    try {
      const r = held.fn(...args);
      if (r === -1 && FAILS_ON_MINUS_ONE.has(held.shape)) result.errno ??= box?.value || errno.EPROTO;
    } catch (e) {
      result.thrown ??= e instanceof Error ? e : new Error(String(e));
    }
  }
  return result;
}

function method(name: CallName, call: Call) {
  const context = cName(name, call);
  const all = [...call.args, ...(call.optargs ?? [])];
  const bytes = all.findIndex((a) => a.kind === "bytesIn" || a.kind === "bytesOut");
  const out = bytes >= 0 && all[bytes]!.kind === "bytesOut";
  const closures = all.flatMap((a, i) => (a.kind === "closure" ? [{ i, shape: a.shape }] : []));

  return function (this: Handle, ...args: unknown[]): unknown {
    const slot = slots.get(this);
    if (!slot || slot.closed) return fail(call, closedError.format(context), closedError.errno);
    const extra: Extra = {};
    const user = args[bytes];
    // Callbacks stay here under an id; the worker records their calls for replay.
    const ids: number[] = [];
    for (const { i, shape } of closures) {
      const fn = args[i];
      if (typeof fn !== "function") {
        args[i] = fn == null ? null : typeof fn;
        continue;
      }
      const id = slot.nextCallback++;
      const buf = user instanceof Uint8Array ? user : undefined;
      slot.callbacks.set(id, { fn: fn as Held["fn"], shape, ...(buf && { buf }) });
      ids.push((args[i] = id));
    }
    if (bytes >= 0) {
      // A buffer travels as its length; its bytes go through shared memory.
      if (user instanceof Uint8Array) {
        if (user.byteLength <= MAX_REQUEST_SIZE) {
          const shared = reserve(slot, user.byteLength);
          if (!out) shared.set(user);
        }
        args[bytes] = user.byteLength;
      } else {
        args[bytes] = user == null ? null : typeof user;
      }
    }
    if (slot.sabChanged) {
      extra.sab = slot.sab;
      slot.sabChanged = false;
    }
    if (call.spawns) extra.env = { ...process.env };

    const reply = cross(slot.id, name, args, extra);
    if (reply instanceof Error) {
      if (extra.sab) slot.sabChanged = true;
      for (const id of ids) slot.callbacks.delete(id);
      return fail(call, `${context}: ${reply.message}`, bridgeErrno(reply));
    }
    if (out && user instanceof Uint8Array) {
      // What arrived (all of it, or what chunks delivered before a failure); else zeroes.
      if (reply.errno === undefined || reply.events) user.set(new Uint8Array(slot.sab, 0, user.byteLength));
      else if (reply.init) user.fill(0);
    }
    track(slot.id, reply.cleanup);
    const replayed = replay(slot, reply.events);
    for (const id of ids) slot.callbacks.delete(id); // a blocking call's callbacks end with it
    if (reply.msg !== undefined) setError(reply.msg, reply.errno ?? 0);
    else if (replayed.thrown) return fail(call, `${context}: ${replayed.thrown.message}`, errno.EPROTO);
    else if (replayed.errno !== undefined) {
      const err = new NbdError(replayed.errno, `${call.issues ?? name}: command failed`);
      return fail(call, err.format(context), err.errno);
    }
    return reply.ret;
  };
}

for (const [name, call] of Object.entries(API) as [CallName, Call][]) {
  Object.defineProperty(Handle.prototype, name, { value: method(name, call), writable: true, configurable: true });
}

/** nbd_create: a new handle, or null (with the reason in getError()) if the worker cannot start. */
export function create(): Handle | null {
  const id = nextId++;
  const reply = cross(id, "create", [], {});
  if (reply instanceof Error) {
    setError(`nbd_create: ${reply.message}`, bridgeErrno(reply));
    return null;
  }
  return new Handle(id);
}
