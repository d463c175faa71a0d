/**
 * The one place that blocks. A call is written into shared memory (see
 * channel.ts, wire.ts), the worker's BELL is rung (and the worker notified
 * only if it sleeps), and the caller waits for the reply: first by spinning
 * for a moment on the shared REPLY word, which catches a quick reply without
 * the cost of being woken, then asleep in Atomics.wait. Aio reads and
 * writes may skip the wait altogether (queued(), see handle.ts). Every wait
 * is bounded. A failure of the bridge itself (the worker died or went
 * silent, the call timed out, an argument could not be cloned) comes back
 * as an Error, never as a throw.
 */
import { MessageChannel, Worker, type MessagePort } from "node:worker_threads";
import {
  type Attachments, type Registration, BEAT_MS, CALLS, CHANNEL_BYTES, QUEUE_SLOTS, REPLY_AT, REPLY_BYTES, REQUEST_AT,
  REQUEST_BYTES, Ring, Word, attachments, bootstrap, callNumber, deathReason, queueFields, ringAt, ringFields, slotAt, words,
} from "./channel.js";
import type { Extra, Reply } from "./dispatch.js";
import { errno } from "./errno.js";
import { stopAll } from "./cleanup.js";
import { NoRoom, Wire } from "./wire.js";

/**
 * Every wait is bounded. libnbd itself waits forever for a silent server;
 * an hour is far beyond any legitimate call and still ends a hang.
 */
export const BRIDGE_TIMEOUT_MS = Number(process.env.NBD_TS_BRIDGE_TIMEOUT_MS) || 60 * 60 * 1000;

/** A worker with a call in progress that gives no sign of life for this long is wedged (or out of memory). */
export const STALL_MS = Number(process.env.NBD_TS_WORKER_STALL_MS) || 5000;

/** How long a new worker may take to start running. */
const START_MS = 30_000;

/**
 * How long the caller may spin before it sleeps (µs). A reply that comes
 * within the spin costs no wake-up (on a VM, waking a sleeping thread costs
 * more than a whole 4 KiB read); a spin that ends without one was CPU time
 * taken from the worker and the server. So each kind of call spins only
 * while spinning pays: a failed spin halves its budget, a successful one
 * doubles it, and a kind whose budget fell to nothing tries again now and then.
 * Measured (bench lat, 2-core VM, median of 4 runs): no spin 46 µs a call,
 * 25 µs 40, 50 µs 22, 100 and 200 µs 24.5; CPU per call the same (about
 * 53 µs: a sleep and a wake-up cost as much CPU as the spin they replace).
 */
export const SPIN_US = Number(process.env.NBD_TS_SPIN_US ?? 50);
/** Budgets below this are not worth a spin. */
const SPIN_MIN_US = 4;
/** A kind of call that stopped spinning tries again once in this many calls. */
const SPIN_RETRY = 64;
const spinBudget = new Float64Array(CALLS.length).fill(SPIN_US);
const spinSkipped = new Uint16Array(CALLS.length);

const WORKER_YOUNG_MB = 8;

const WORKER = new URL("../workers/nbd-worker.js", import.meta.url).href;

interface Channel {
  sab: SharedArrayBuffer;
  h: Int32Array;
  request: Wire;
  reply: Wire;
  port: MessagePort;
  worker: Worker;
  queue: Float64Array;
  /** Commands queued so far. */
  queued: number;
  /** The completion ring, and how many of its entries have been read. */
  ring: Float64Array;
  consumed: number;
  /** Aio buffers the worker knows, by number (see Shared in dispatch.ts), oldest first, and their bytes. */
  buffers: Map<SharedArrayBuffer, number>;
  bytes: number;
  /** Where the worker learns and forgets them (see Registration in channel.ts), and how many messages went. */
  registry: MessagePort;
  registrations: number;
}

/**
 * How many aio buffers (and bytes) the worker keeps by number: beyond that
 * the oldest is forgotten, and sent again if it is used again. (A bound, not
 * garbage collection: a blocking program may never give the event loop the
 * turn a FinalizationRegistry needs.)
 */
const KEPT_BUFFERS = 64;
const KEPT_BYTES = 256 * 1024 * 1024;

let channel: Channel | undefined;
let generation = 0;
/** Numbers of requests and of aio buffers: never reused, not even by a fresh worker. */
let seq = 0;
let nextBuffer = 1;

/**
 * How many calls crossed to the worker, how many aio commands were queued
 * instead, and how many settlements went through the queue (for tests and the bench).
 */
export const bridgeStats = { crossed: 0, queued: 0, settled: 0 };

/** Which worker runs the handles made now; a handle made under another one is dead. */
export const workerGeneration = (): number => generation;

class BridgeTimeout extends Error {}
/** The worker is gone: its handles are dead. */
class WorkerLost extends Error {}

function start(): Channel {
  const sab = new SharedArrayBuffer(CHANNEL_BYTES);
  const { port1, port2 } = new MessageChannel();
  const registry = new MessageChannel();
  // No execArgv of ours (--eval, --input-type...) belongs in the worker; NBD_TS_WORKER_EXEC_ARGV can add some (--cpu-prof).
  const execArgv = process.env.NBD_TS_WORKER_EXEC_ARGV?.split(" ").filter(Boolean) ?? [];
  const worker = new Worker(bootstrap(WORKER), {
    eval: true, execArgv, workerData: { sab, port: port2, registry: registry.port2 }, transferList: [port2, registry.port2],
    // V8 grows a busy worker's young generation to tens of MiB; 8 costs no measurable time (bench lat, aio, seq)
    // and keeps the resident set flat over millions of calls (the rss figure: +10 MiB without it, none with it).
    resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_MB },
  });
  worker.unref();
  // Its 'error' event comes later, where nobody waits: the call that found the worker gone has already failed.
  worker.on("error", () => {});
  return {
    sab, h: words(sab), port: port1, worker,
    request: new Wire(sab, REQUEST_AT, REQUEST_BYTES),
    reply: new Wire(sab, REPLY_AT, REPLY_BYTES),
    queue: queueFields(sab), queued: 0, ring: ringFields(sab), consumed: 0,
    buffers: new Map(), bytes: 0, registry: registry.port1, registrations: 0,
  };
}

/**
 * The number the worker knows an aio buffer by (see Shared in dispatch.ts).
 * A buffer new to it is sent on the registry port first, with the numbers
 * of any it is to forget; the worker reads that port before it takes the
 * next call or queued command, so no call has to cross for it.
 */
export function bufferId(sab: SharedArrayBuffer): number {
  const ch = (channel ??= start());
  const known = ch.buffers.get(sab);
  if (known !== undefined) return known;
  const forget: number[] = [];
  for (const [old, id] of ch.buffers) {
    if (ch.buffers.size < KEPT_BUFFERS && ch.bytes + sab.byteLength <= KEPT_BYTES) break;
    ch.buffers.delete(old);
    ch.bytes -= old.byteLength;
    forget.push(id);
  }
  const id = nextBuffer++;
  ch.buffers.set(sab, id);
  ch.bytes += sab.byteLength;
  ch.registry.postMessage({ id, sab, forget, queued: ch.queued } satisfies Registration);
  Atomics.store(ch.h, Word.REGISTERED, ++ch.registrations);
  return id;
}

/**
 * Where the fields of the next queued command go (see Queued in
 * channel.ts): an index into queueFields(), or -1 when the queue is full or
 * no worker runs (then the command goes by cross()). queued() sends it.
 */
export function queueSlot(): number {
  const ch = channel;
  if (!ch || ch.queued - Atomics.load(ch.h, Word.TAKEN) >= QUEUE_SLOTS) return -1;
  return slotAt(ch.queued);
}

export const queueArray = (): Float64Array => channel!.queue;

/** The command written at queueSlot() is complete: the worker takes it, in order, before anything after it. */
export function queued(): void {
  const ch = channel!;
  bridgeStats.queued++;
  Atomics.store(ch.h, Word.QUEUED, ++ch.queued);
  ring(ch);
}

/**
 * A settlement written at queueSlot() is complete. Nothing waits on it, so
 * the worker is not rung for it: it takes it with whatever comes next (a
 * command, a call), or when the queue is half full.
 */
export function settled(): void {
  const ch = channel!;
  bridgeStats.settled++;
  Atomics.store(ch.h, Word.QUEUED, ++ch.queued);
  if (ch.queued - Atomics.load(ch.h, Word.TAKEN) >= QUEUE_SLOTS / 2) ring(ch);
}

// ---- the completion ring -------------------------------------------------------------

/** What the ring said for each open handle and no call of the handle has taken yet: [cookie, errno] pairs; and how many in all. */
interface Inbox { entries: number[]; read: number }
const inboxes = new Map<number, Inbox>();

/** The handle `id` hears from the ring from now on (it is being made), or no longer (closed). */
export function openInbox(id: number): void { inboxes.set(id, { entries: [], read: 0 }); }
export function closeInbox(id: number): void { inboxes.delete(id); }

/** Reads what the worker has written into the ring, each entry into its handle's inbox. */
function readRing(ch: Channel): void {
  const end = Atomics.load(ch.h, Word.COMPLETED);
  if (end === ch.consumed) return;
  const f = ch.ring;
  for (let n = ch.consumed; n < end; n++) {
    const at = ringAt(n);
    const box = inboxes.get(f[at + Ring.HANDLE]!);
    if (!box) continue; // a closed handle's
    box.entries.push(f[at + Ring.COOKIE]!, f[at + Ring.ERRNO]!);
    box.read++;
  }
  ch.consumed = end;
  Atomics.store(ch.h, Word.CONSUMED, end);
  if (Atomics.load(ch.h, Word.BACKLOG)) ring(ch); // there is room now for what waits
}

/** The ring's entries for handle `id` not taken yet, oldest first: [cookie, errno] pairs (cookie 0: its connection ended). */
export function ringEntries(id: number): number[] {
  if (channel) readRing(channel);
  const box = inboxes.get(id);
  if (!box?.entries.length) return [];
  const entries = box.entries;
  box.entries = [];
  return entries;
}

/** How many ring entries for handle `id` have been read so far (see Extra.ringSeen). */
export const ringRead = (id: number): number => inboxes.get(id)?.read ?? 0;

/**
 * Waits up to `ms` for the worker to write into the ring: true once it
 * has, false when the time is up or the worker is gone (cross() then says
 * how). Asleep, in slices that look at DEAD.
 */
export function awaitRing(ms: number): boolean {
  const ch = channel;
  if (!ch) return false;
  const h = ch.h;
  const deadline = performance.now() + ms;
  for (;;) {
    if (Atomics.load(h, Word.COMPLETED) !== ch.consumed) return true;
    const left = deadline - performance.now();
    if (left <= 0 || Atomics.load(h, Word.DEAD)) return false;
    Atomics.store(h, Word.POLL_ASLEEP, 1);
    Atomics.wait(h, Word.COMPLETED, ch.consumed, Math.min(BEAT_MS, left));
    Atomics.store(h, Word.POLL_ASLEEP, 0);
  }
}

export function cross(id: number, name: string, args: unknown[], extra: Extra): Reply | Error {
  try {
    const ch = (channel ??= start());
    const n = ++seq;
    bridgeStats.crossed++;
    const kind = callNumber.get(name);
    if (kind === undefined) return new Error(`nbd-ts: no call ${name} in the worker`);
    const call = [id, kind, args, extra];
    ch.request.rewind();
    try {
      ch.request.write(call);
    } catch (e) {
      if (!(e instanceof NoRoom)) throw e;
      ch.request.attachWhole(call);
    }
    const attached = ch.request.attached.length ? 1 : 0;
    if (attached) ch.port.postMessage({ seq: n, values: ch.request.attached } satisfies Attachments);
    Atomics.store(ch.h, Word.REQUEST_ATTACHED, attached);
    Atomics.store(ch.h, Word.REQUEST, n);
    ring(ch);
    wait(ch, n, kind);
    ch.reply.rewind(Atomics.load(ch.h, Word.REPLY_ATTACHED) ? attachments(ch.port, n) : []);
    return ch.reply.read() as Reply;
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    if (e instanceof WorkerLost) lose();
    return e;
  }
}

/** Something new for the worker: it wakes if it sleeps. */
function ring(ch: Channel): void {
  Atomics.add(ch.h, Word.BELL, 1);
  if (Atomics.load(ch.h, Word.WORKER_ASLEEP)) Atomics.notify(ch.h, Word.BELL);
}

/** Waits until the worker has answered request `n`: a short spin, then sleep, in slices that check on the worker. */
function wait(ch: Channel, n: number, kind: number): void {
  const h = ch.h;
  if (Atomics.load(h, Word.REPLY) === n) return;
  let budget = spinBudget[kind]!;
  if (budget < SPIN_MIN_US && SPIN_US > 0 && ++spinSkipped[kind]! >= SPIN_RETRY) {
    spinSkipped[kind] = 0;
    budget = SPIN_US;
  }
  if (budget >= SPIN_MIN_US) {
    const until = performance.now() + budget / 1000;
    let caught = true;
    // The clock is read once in 256 loads (well under a µs): each reading allocates a number the GC must sweep.
    for (let i = 1; Atomics.load(h, Word.REPLY) !== n; i++) {
      if ((i & 255) === 0 && performance.now() > until) {
        caught = false;
        break;
      }
    }
    spinBudget[kind] = caught ? Math.min(SPIN_US, budget * 2) : budget / 2;
    if (caught) return;
  }
  let now = Date.now();
  const deadline = now + BRIDGE_TIMEOUT_MS;
  let beat = Atomics.load(h, Word.BEAT);
  let lastSign = now;
  for (;;) {
    const seen = Atomics.load(h, Word.REPLY);
    if (seen === n) return;
    if (Atomics.load(h, Word.DEAD)) throw new WorkerLost(`the worker thread died: ${deathReason(ch.sab)}`);
    if (now >= deadline) throw new BridgeTimeout(`no answer from the worker thread within ${BRIDGE_TIMEOUT_MS} ms`);
    const b = Atomics.load(h, Word.BEAT);
    if (b !== beat) {
      beat = b;
      lastSign = now;
    } else if (!Atomics.load(h, Word.STARTED)) {
      if (now - lastSign > START_MS) throw new WorkerLost(`the worker thread did not start within ${START_MS} ms`);
    } else if (now - lastSign > STALL_MS) {
      throw new WorkerLost(`the worker thread did not answer for ${STALL_MS} ms and was stopped`);
    }
    Atomics.store(h, Word.CALLER_ASLEEP, 1);
    Atomics.wait(h, Word.REPLY, seen, Math.min(BEAT_MS, deadline - now));
    Atomics.store(h, Word.CALLER_ASLEEP, 0);
    now = Date.now();
  }
}

/** The worker is gone: stop it for good, and the servers of its handles (nothing else will close them now). */
function lose(): void {
  void channel?.worker.terminate();
  channel = undefined;
  inboxes.clear();
  generation++;
  stopAll();
}

/** The errno for a failure of the bridge itself. */
export function bridgeErrno(err: Error): number {
  if (err.name === "DataCloneError") return errno.EINVAL;
  if (err instanceof BridgeTimeout) return errno.ETIMEDOUT;
  return errno.EIO;
}
