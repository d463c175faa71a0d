/**
 * The worker side of the bridge: handles by id, each a Connection plus the
 * SharedArrayBuffer that carries its data. Buffers arrive as lengths and are
 * turned into views of that memory; an aio buffer is shared memory of its
 * own, known by a number once it has been sent; everything else goes to
 * invoke(), which never throws, so the worker only ever returns plain
 * records. Aio commands the caller queued (issueQueued) go straight to the
 * Connection.
 */
import { Connection } from "./client/connection.js";
import { errno } from "./errno.js";
import { asNbdError } from "./client/error.js";
import { errorValue, invoke, type Outcome } from "./api/invoke.js";
import { API, type CallName } from "./api/table.js";
import { type Call, cName, isBytes, isPersist } from "./api/types.js";
import type { Settlement } from "./callbacks.js";
import { CALLS, Queued, RING_SLOTS, type Registration, Ring, Word, ringAt, ringFields, slotAt, words } from "./channel.js";
import { Cmd } from "./protocol/constants.js";

/** What rides along with a call, besides its arguments. */
export interface Extra {
  /** The handle's data buffer, sent when it is new or has grown. */
  sab?: SharedArrayBuffer;
  /** The caller's environment, for calls that spawn a server. */
  env?: NodeJS.ProcessEnv;
  /** What the caller's callbacks decided about aio commands (see callbacks.ts). */
  settle?: Settlement[];
  /**
   * With poll: how many ring entries for the handle the caller has read, or
   * -1 when what it read is news for this poll; either way, the worker's
   * poll reports any news at once (see unseen in Commands).
   */
  ringSeen?: number;
}

/**
 * An aio buffer on the wire: the number the worker knows its shared memory
 * by (see bufferId in bridge.ts), where the view starts and its length.
 */
export type Shared = [id: number, at: number, length: number];

/**
 * Whether the caller may queue aio reads and writes on this handle without
 * waiting (Commands.queueable): [next cookie, export size, alignment, largest
 * write, writes allowed], refreshed by every reply for the handle.
 */
export type QueueFacts = [cookie: number, size: number, align: number, payload: number, write: boolean, poll: boolean];

export interface Reply extends Outcome {
  /** Whether the handle zeroes read buffers (so a failed read leaves zeroes). */
  init?: boolean;
  /** A server process or socket dir that the main thread must clean up at exit. */
  cleanup?: { pid?: number; dir?: string };
  /** Absent: the caller may not queue commands on the handle now. */
  queue?: QueueFacts;
}

interface Slot {
  conn: Connection;
  sab: SharedArrayBuffer;
  /** The last view of sab a call's buffer became: reused while the same (it is never kept past the call). */
  view: Uint8Array;
  /** Completes a reply for the handle (see finish): one function for every call that waited, not one each. */
  finish: (reply: Reply) => Reply;
  /** Ring entries made for the handle so far (written or waiting in the backlog). */
  posted: number;
}

const slots = new Map<number, Slot>();
/** Aio buffers by number. */
const buffers = new Map<number, SharedArrayBuffer>();

/** Aio buffers to forget once the queue has been taken this far: [queued, numbers], oldest first. */
const forgetting: [number, number[]][] = [];

/** What the caller sent on the registry port: the new buffer now, what to forget in its turn (see forgetTaken). */
export function register({ id, sab, forget, queued }: Registration): void {
  buffers.set(id, sab);
  if (forget.length) forgetting.push([queued, forget]);
}

/** The queue has been taken up to `taken`: forget what the commands before it could still have named. */
export function forgetTaken(taken: number): void {
  while (forgetting.length && forgetting[0]![0] <= taken) for (const id of forgetting.shift()![1]) buffers.delete(id);
}

/** An aio buffer's view; undefined only if the caller's registry and the worker's disagree (a bug). */
function shared([id, at, length]: Shared): Uint8Array | undefined {
  const sab = buffers.get(id);
  return sab && new Uint8Array(sab, at, length);
}

/**
 * A buffer too large to be sent at all (over libnbd's 64 MiB limit) is
 * represented by its length alone: the size check fails the call before
 * any byte would be touched.
 */
function lengthOnly(n: number): Uint8Array {
  return Object.defineProperty(new Uint8Array(0), "byteLength", { value: n });
}

/**
 * Test-only ways for the worker to die while a call is in flight, `ms` from
 * now, enabled by NBD_TS_TEST_HOOKS=1 (never otherwise): exit, an uncaught
 * exception, running out of memory, or looping forever (wedged).
 */
function die(how: unknown, ms: unknown): void {
  const kill: Record<string, () => void> = {
    exit: () => process.exit(70),
    throw: () => { throw new Error("nbd-ts test hook: uncaught exception in the worker"); },
    oom: () => {
      const hog: number[][] = [];
      for (;;) hog.push(new Array(1 << 20).fill(1.5));
    },
    hang: () => { for (;;); },
  };
  const fn = kill[String(how)];
  if (fn) setTimeout(fn, Number(ms) || 0);
}

/**
 * The bytes a call moves through its handle's shared buffer (its buffer
 * argument travels as a length): the caller copies them out (a read), or
 * the next ones in (a write), before it asks anything more (see serve.ts).
 */
export function throughHandle(name: string, args: readonly unknown[]): number {
  const call = API[name as CallName] as Call | undefined;
  const i = call ? call.args.findIndex(isBytes) : -1;
  const v = args[i];
  return typeof v === "number" ? v : 0;
}

/** Runs one call for the caller's thread: its reply at once when it has one, else a Promise of it. */
export function dispatch(id: number, name: string, args: unknown[], extra: Extra = {}): Reply | Promise<Reply> {
  if (name === "__die__" && process.env.NBD_TS_TEST_HOOKS === "1") {
    die(args[0], args[1]);
    return { ret: 0 };
  }
  if (name === "create") {
    const conn = new Connection(id);
    conn.debug = args[0] === true; // LIBNBD_DEBUG=1 in the caller's environment
    conn.log("nbd_create", "opening handle");
    const slot: Slot = { conn, sab: new SharedArrayBuffer(0), view: new Uint8Array(0), finish: (reply) => finish(slot, reply), posted: 0 };
    conn.ring = (cookie, error) => {
      slot.posted++;
      post(id, cookie, error);
    };
    slots.set(id, slot);
    return { ret: 0 };
  }
  const slot = slots.get(id);
  if (!slot) return { ret: -1, errno: errno.EINVAL, msg: `nbd-ts: no handle ${id} in the worker` };
  if (name === "close") {
    slots.delete(id);
    return slot.conn.close().then(() => {
      const events = slot.conn.drainEvents();
      return events.length ? { ret: 0, events } : { ret: 0 };
    });
  }
  if (extra.sab) slot.sab = extra.sab;
  for (const [cookie, retire, err] of extra.settle ?? []) slot.conn.settleFromCaller(cookie, retire === 1, err);
  if (extra.ringSeen !== undefined && extra.ringSeen !== slot.posted) slot.conn.unseen();
  const call = API[name as CallName];
  for (let i = 0; i < call.args.length; i++) {
    const arg = call.args[i]!;
    const v = args[i];
    if (!isBytes(arg)) continue;
    if (typeof v === "number") args[i] = v <= slot.sab.byteLength && !isPersist(arg) ? view(slot, v) : lengthOnly(v);
    else if (Array.isArray(v)) {
      args[i] = shared(v as Shared); // an aio buffer: memory of its own
      if (!args[i]) return { ret: errorValue(call.ret), errno: errno.EIO, msg: `${cName(name, call)}: nbd-ts: an aio buffer unknown to the worker` };
    }
  }
  const outcome = invoke(slot.conn, name as CallName, args, extra.env);
  if ("spawns" in call) {
    const spawned = (reply: Reply): Reply => finish(slot, reply, true);
    return outcome instanceof Promise ? outcome.then(spawned) : spawned(outcome);
  }
  return outcome instanceof Promise ? outcome.then(slot.finish) : finish(slot, outcome);
}

/** A view of the first n bytes of the handle's data buffer. */
function view(slot: Slot, n: number): Uint8Array {
  const v = slot.view;
  if (v.buffer === slot.sab && v.byteLength === n) return v;
  return (slot.view = new Uint8Array(slot.sab, 0, n));
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** What every reply carries besides the outcome. */
function finish(slot: Slot, reply: Reply, spawns = false): Reply {
  if (reply.errno !== undefined) reply.init = slot.conn.preadInitialize;
  if (spawns) reply.cleanup = slot.conn.cleanup;
  const queue = slot.conn.queueable();
  if (queue && queue.size <= MAX_SAFE) {
    reply.queue = [queue.cookie, Number(queue.size), queue.align, queue.payload, queue.write, queue.poll];
  }
  return reply;
}

/**
 * Issues the aio commands the caller queued (see handle.ts), the first to
 * the end-th, from the queue's fields (`slotAt` finds each), and applies
 * the settlements queued among them. Each handle's requests go out
 * together, in one write. The caller checked what the Connection would
 * check with the facts of its last reply; if the connection has ended
 * since, the command completes at once with the error, as if it had been
 * in flight.
 */
export function issueQueued(q: Float64Array, first: number, end: number): void {
  const corked = new Set<Connection>();
  for (let i = first; i < end; i++) {
    forgetTaken(i);
    const at = slotAt(i);
    const conn = slots.get(q[at + Queued.HANDLE]!)?.conn;
    if (!conn) continue;
    const call = CALLS[q[at + Queued.CALL]!];
    const cookie = q[at + Queued.COOKIE]!;
    if (call === "__settle__") {
      conn.settleFromCaller(cookie, q[at + Queued.RETIRE] === 1, q[at + Queued.ERRNO]!);
      continue;
    }
    if (!corked.has(conn)) {
      corked.add(conn);
      conn.cork();
    }
    const write = call === "aioPwrite";
    const offset = BigInt(q[at + Queued.OFFSET]!);
    let buf: Uint8Array = new Uint8Array(0);
    try {
      const sab = buffers.get(q[at + Queued.BUFFER]!);
      if (!sab) throw new Error("nbd-ts: a queued command's buffer is unknown to the worker");
      buf = new Uint8Array(sab, q[at + Queued.AT]!, q[at + Queued.LENGTH]!);
      // Only under the cookie the caller gave out (a connection that ended since refuses it below).
      const next = conn.queueable()?.cookie;
      if (next !== undefined && next !== cookie) throw new Error(`nbd-ts: a queued command's cookie ${cookie} is not the next (${next})`);
      conn.aioQueued(write, buf, offset);
    } catch (e) {
      conn.abandonQueued(write ? Cmd.WRITE : Cmd.READ, cookie, offset, buf, asNbdError(e, errno.EIO).errno || errno.ENOTCONN);
    }
  }
  forgetTaken(end);
  for (const conn of corked) conn.uncork();
}

// ---- the completion ring -------------------------------------------------------------

interface RingOut {
  h: Int32Array;
  fields: Float64Array;
  written: number;
  /** Entries that found the ring full, in order: [handle, cookie, errno] each. */
  backlog: number[];
  notifying: boolean;
}
let ring: RingOut | undefined;

/** The worker's side of the channel's completion ring (see Ring in channel.ts). */
export function openRing(sab: SharedArrayBuffer): void {
  ring = { h: words(sab), fields: ringFields(sab), written: 0, backlog: [], notifying: false };
}

/**
 * Adds an entry. One that finds the ring full waits in the backlog, in
 * order, until the caller has read enough (it rings BELL when it sees
 * BACKLOG set: then flushBacklog).
 */
function post(handle: number, cookie: number, error: number): void {
  const r = ring!;
  if (r.backlog.length === 0 && write(r, handle, cookie, error)) return;
  r.backlog.push(handle, cookie, error);
  Atomics.store(r.h, Word.BACKLOG, 1);
  flushBacklog(); // the caller may have made room before it could see BACKLOG
}

/** Moves what the backlog holds into the ring, as far as there is room. */
export function flushBacklog(): void {
  const r = ring;
  if (!r?.backlog.length) return;
  let i = 0;
  while (i < r.backlog.length && write(r, r.backlog[i]!, r.backlog[i + 1]!, r.backlog[i + 2]!)) i += 3;
  r.backlog.splice(0, i);
  if (r.backlog.length === 0) Atomics.store(r.h, Word.BACKLOG, 0);
}

function write(r: RingOut, handle: number, cookie: number, error: number): boolean {
  if (r.written - Atomics.load(r.h, Word.CONSUMED) >= RING_SLOTS) return false;
  const at = ringAt(r.written);
  r.fields[at + Ring.HANDLE] = handle;
  r.fields[at + Ring.COOKIE] = cookie;
  r.fields[at + Ring.ERRNO] = error;
  Atomics.store(r.h, Word.COMPLETED, ++r.written);
  // A caller asleep in poll is woken once the loop has read what else is there: it then takes them together.
  if (!r.notifying) {
    r.notifying = true;
    setImmediate(wakeCaller, r, true);
  }
  return true;
}

/**
 * Wakes a caller asleep in poll. A lone entry waits one more turn of the
 * loop (which does not block then: an immediate is pending), in which the
 * replies already arriving may complete another, so that one wake-up takes
 * two. Measured (aio loop, 256 KiB × 16): 15% fewer context switches, no
 * less throughput.
 */
function wakeCaller(r: RingOut, first: boolean): void {
  if (first && r.written - Atomics.load(r.h, Word.CONSUMED) < 2) return void setImmediate(wakeCaller, r, false);
  r.notifying = false;
  if (Atomics.load(r.h, Word.POLL_ASLEEP)) Atomics.notify(r.h, Word.COMPLETED);
}
