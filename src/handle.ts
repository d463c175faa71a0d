/**
 * The blocking, C-style Handle on the caller's thread. Its methods are made
 * from the API table: each marshals its arguments (buffers go through the
 * handle's SharedArrayBuffer, never through a cloned message), crosses the
 * bridge, and turns the reply into libnbd's return value and last error.
 */
import { MAX_REQUEST_SIZE } from "./constants.js";
import { API, type CallName } from "./api/table.js";
import type { HandleMethods } from "./api/handle-methods.js";
import { errorValue } from "./api/invoke.js";
import { cName, isBytes, isOut, isPersist, type Call } from "./api/types.js";
import { Callbacks, type Staged } from "./callbacks.js";
import { bridgeErrno, bufferId, closeInbox, cross, openInbox, ringRead, workerGeneration } from "./bridge.js";
import { type AioSlot, QUEUEABLE, queue, ringPoll, takeRing } from "./aio-queue.js";
import type { Extra, Reply, Shared } from "./dispatch.js";
import { copy, zero } from "./client/bytes.js";
import { errno } from "./errno.js";
import { NbdError } from "./client/error.js";
import { setError } from "./errors.js";
import { track, untrack } from "./cleanup.js";
import { giveShared, giveStaging, takeShared, takeStaging } from "./shared-pool.js";

interface Slot extends AioSlot {
  sab: SharedArrayBuffer;
  /** The last view of sab that a reply's data was copied from: reused while the same. */
  view: Uint8Array;
  /** The SAB has grown since the worker last saw it. */
  sabChanged: boolean;
  /** The worker that runs it; if that worker died, so did the handle. */
  readonly generation: number;
}

const slots = new WeakMap<Handle, Slot>();
let nextId = 1;

// ---- the handle ----------------------------------------------------------------

/** An NBD handle (libnbd's `struct nbd_handle *`). Make one with create(). */
export class Handle {
  /** @internal Use create(). */
  constructor(id: number) {
    slots.set(this, {
      id, sab: new SharedArrayBuffer(0), view: new Uint8Array(0), sabChanged: false, closed: false, callbacks: new Callbacks(),
      generation: workerGeneration(), progressed: false, mustCross: false,
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
    if (slot.generation !== workerGeneration()) return untrack(slot.id); // its worker is gone, and its servers with it
    const reply = cross(slot.id, "close", [], {});
    if (!(reply instanceof Error)) {
      slot.callbacks.replay(reply.events); // the debug callback hears "closing handle"
      takeRing(slot, false); // and completion callbacks of the commands it failed, as those of crossed ones above
    }
    closeInbox(slot.id);
    untrack(slot.id);
    giveShared(slot.sab);
    slot.sab = new SharedArrayBuffer(0);
  }

  /** Closes the handle, as close() does: `using h = create()` closes it at the end of the block. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The calls of the API table, documented one by one in api/handle-methods.ts (generated). */
export interface Handle extends HandleMethods {}

const closedError = new NbdError(errno.EINVAL, "invalid state: the handle has been closed");
const workerDied = new NbdError(errno.EINVAL, "invalid state: DEAD: the worker thread that ran this handle died");

function fail(call: Call, message: string, errnum: number): ReturnType<typeof errorValue> {
  setError(message, errnum);
  return errorValue(call.ret);
}

/** Room in the handle's shared buffer for `n` bytes: grown in powers of two. */
function reserve(slot: Slot, n: number): Uint8Array {
  if (n > slot.sab.byteLength) {
    let size = 64 * 1024;
    while (size < n) size *= 2;
    giveShared(slot.sab);
    slot.sab = takeShared(size);
    slot.sabChanged = true;
  }
  return new Uint8Array(slot.sab, 0, n);
}

interface Marshalled {
  wire: unknown;
  /** What spans of shared memory in callback events map onto. */
  view?: Uint8Array;
  staged?: Staged;
  /** The caller's own shared memory, used in place: nothing to copy back. */
  inPlace?: true;
}

/**
 * How a buffer argument travels: the caller's own shared memory in place
 * (no copy at all); else, for a blocking call, its length (the bytes go
 * through the handle's SAB), and for aio a staging copy that outlives the call.
 */
function marshalBytes(slot: Slot, user: unknown, out: boolean, persist: boolean): Marshalled {
  if (!(user instanceof Uint8Array)) return { wire: user == null ? null : typeof user };
  if (user.byteLength > MAX_REQUEST_SIZE) return { wire: user.byteLength }; // refused by size; never sent
  if (user.buffer instanceof SharedArrayBuffer) {
    return { wire: shared(user as Uint8Array<SharedArrayBuffer>), view: new Uint8Array(user.buffer), inPlace: true };
  }
  if (!persist) {
    const shared = reserve(slot, user.byteLength);
    if (!out) copy(shared, user);
    return { wire: user.byteLength, view: user };
  }
  const from = takeStaging(user.byteLength);
  if (!out) copy(from, user);
  return { wire: shared(from), view: from, staged: out ? { to: user, from } : { from } };
}

const shared = (view: Uint8Array<SharedArrayBuffer>): Shared => [bufferId(view.buffer), view.byteOffset, view.byteLength];

/**
 * A function or symbol where no callback goes cannot be cloned to the worker:
 * it crosses as a stand-in that every argument check refuses, so that the
 * state is still checked first and the message names the argument.
 */
const standIn = (v: unknown): unknown =>
  typeof v === "function" || typeof v === "symbol" ? { notCloneable: typeof v } : v;

/** What a call that needs nothing else sends with it; frozen, since it is everyone's. */
const NO_EXTRA: Extra = Object.freeze({});
/** A call that takes no callback holds none. */
const NO_IDS: number[] = Object.freeze([]) as unknown as number[];

/** A view of the first n bytes of the handle's SAB. */
function sabView(slot: Slot, n: number): Uint8Array {
  const v = slot.view;
  if (v.buffer === slot.sab && v.byteLength === n) return v;
  return (slot.view = new Uint8Array(slot.sab, 0, n));
}

function method(name: CallName, call: Call) {
  const context = cName(name, call);
  const all = [...call.args, ...(call.optargs ?? [])];
  const bytes = all.findIndex(isBytes);
  const out = bytes >= 0 && isOut(all[bytes]!);
  const persist = bytes >= 0 && isPersist(all[bytes]!);
  const closures = all.flatMap((a, i) => (a.kind === "closure" ? [{ i, shape: a.shape }] : []));
  const queueable = QUEUEABLE[name];

  return function (this: Handle, ...args: unknown[]): unknown {
    const slot = slots.get(this);
    if (!slot || slot.closed) return fail(call, closedError.format(context), closedError.errno);
    if (slot.generation !== workerGeneration()) {
      // Its worker died: the handle is DEAD, as libnbd's after a fatal error.
      if (name.startsWith("aioIs")) return name === "aioIsDead" ? 1 : 0;
      return fail(call, workerDied.format(context), workerDied.errno);
    }
    if (queueable !== undefined) {
      const cookie = queue(slot, queueable, args);
      if (cookie !== undefined) return cookie;
    }
    if (name === "poll") {
      const r = ringPoll(slot, args);
      if (r !== undefined) return r;
    }
    // Made only when something rides along (NO_EXTRA otherwise).
    let extra = NO_EXTRA;
    const polling = name === "poll" || name === "poll2";
    if (polling) {
      // What the ring brought is news for this poll, which the worker reports unless the state says otherwise.
      const news = takeRing(slot, true) > 0 || slot.progressed;
      slot.progressed = false;
      extra = { ringSeen: news ? -1 : ringRead(slot.id) };
    }
    for (let i = 0; i < args.length && i < all.length; i++) {
      const kind = all[i]!.kind;
      if (kind === "closure" || i === bytes) continue;
      args[i] = kind === "stringList" && Array.isArray(args[i]) ? (args[i] as unknown[]).map(standIn) : standIn(args[i]);
    }
    const user = args[bytes];
    const buffer = bytes >= 0 ? marshalBytes(slot, user, out, persist) : undefined;
    if (buffer) args[bytes] = buffer.wire;
    // Callbacks stay here under an id; the worker records their calls for replay.
    const ids: number[] = closures.length ? [] : NO_IDS;
    for (const { i, shape } of closures) {
      const fn = args[i];
      if (typeof fn === "function") ids.push((args[i] = slot.callbacks.hold(fn as never, shape, buffer?.view)));
      else args[i] = fn == null ? fn : typeof fn;
    }
    if (slot.sabChanged) {
      if (extra === NO_EXTRA) extra = {};
      extra.sab = slot.sab;
      slot.sabChanged = false;
    }
    if (slot.callbacks.settlements.length) {
      if (extra === NO_EXTRA) extra = {};
      extra.settle = slot.callbacks.settlements.splice(0);
    }
    if (call.spawns) {
      if (extra === NO_EXTRA) extra = {};
      extra.env = { ...process.env };
    }
    slot.mustCross = false;

    const reply = cross(slot.id, name, args, extra);
    if (reply instanceof Error) {
      slot.queue = undefined; // the call may yet run (a bridge timeout): its next reply says what holds
      if (extra.sab) slot.sabChanged = true;
      slot.callbacks.drop(ids);
      if (buffer?.staged) giveStaging(buffer.staged.from);
      return fail(call, `${context}: ${reply.message}`, bridgeErrno(reply));
    }
    slot.queue = reply.queue;
    if (!persist && out && user instanceof Uint8Array) {
      // What arrived (all of it, or what chunks delivered before a failure); else zeroes.
      if (reply.errno === undefined || reply.events) {
        if (!buffer?.inPlace) copy(user, sabView(slot, user.byteLength));
      } else if (reply.init) zero(user);
    }
    track(slot.id, reply.cleanup);
    const aio = call.ret === "cookie" && typeof reply.ret === "bigint" && reply.ret > 0n;
    if (aio) slot.callbacks.adopt(Number(reply.ret), ids, buffer?.staged, true);
    else {
      if (buffer?.staged) giveStaging(buffer.staged.from);
      if (persist && out && reply.init && user instanceof Uint8Array) zero(user); // a refused aio read
    }
    const crossed = slot.callbacks.crossed;
    const replayed = slot.callbacks.replay(reply.events);
    // A crossed command ended and this call, not a poll, brought it: the worker keeps that for the next poll.
    if (slot.callbacks.crossed < crossed && !polling) slot.mustCross = true;
    const ringed = takeRing(slot, polling);
    if (polling && ringed && reply.ret === 0) reply.ret = 1; // the ring's news arrived as the poll's time ran out
    if (call.keeps && reply.errno === undefined) slot.callbacks.keep(call.keeps, ids);
    else if (!aio) slot.callbacks.drop(ids); // a blocking call's callbacks end with it
    if (call.releases && reply.errno === undefined) slot.callbacks.release(call.releases);
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
  // Named, so that a REPL or a stack trace shows h.pread as pread.
  const value = Object.defineProperty(method(name, call), "name", { value: name });
  Object.defineProperty(Handle.prototype, name, { value, writable: true, configurable: true });
}

/** nbd_create: a new handle, or null (with the reason in getError()) if the worker cannot start. */
export function create(): Handle | null {
  const id = nextId++;
  openInbox(id);
  const reply = cross(id, "create", [process.env.LIBNBD_DEBUG === "1"], {});
  if (reply instanceof Error) {
    closeInbox(id);
    setError(`nbd_create: ${reply.message}`, bridgeErrno(reply));
    return null;
  }
  return new Handle(id);
}
