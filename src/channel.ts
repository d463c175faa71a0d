/**
 * The bridge's shared memory: one SharedArrayBuffer between the caller's
 * thread and the worker, holding a few 32-bit words that say who is where,
 * the request being made and the reply to it. The caller writes a request
 * and bumps REQUEST; the worker answers and sets REPLY to the same number.
 * Neither side sends a message unless a value cannot live in shared memory
 * (see wire.ts). Beside the request there is a queue of aio commands the
 * caller issued without waiting (see handle.ts), which the worker takes in
 * order, always before the next request, and a ring through which the
 * worker reports those commands' completions, so that poll need not cross
 * (see handle.ts poll). Both sides import this file, so the layout is in
 * one place.
 */
import { receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import { API } from "./api/table.js";

/** Word indices in the header (an Int32Array over the first bytes). */
export const enum Word {
  /** The number of the latest request (the caller bumps it). */
  REQUEST,
  /** The number of the request last answered (the worker sets it, then notifies). */
  REPLY,
  /** Non-zero once the worker is gone: it exited or failed; the reason is in the DEATH area. */
  DEAD,
  /** Bumped by the worker while it has a call in progress: a worker that is silent for long is wedged. */
  BEAT,
  /** The request's values came with attachments (a message on the port). */
  REQUEST_ATTACHED,
  /** The reply's values came with attachments. */
  REPLY_ATTACHED,
  /** Set by the worker once it runs: until then a silent worker is starting, not lost. */
  STARTED,
  /** Bumped by the caller for every request and every queued command: what a sleeping worker waits on. */
  BELL,
  /** How many commands the caller has queued, and how many the worker has taken. */
  QUEUED,
  TAKEN,
  /** How many messages the caller has sent on the registry port (see Registration). */
  REGISTERED,
  /**
   * Set while the worker sleeps (Atomics.waitAsync on BELL) and while the
   * caller sleeps (Atomics.wait on REPLY): a side notifies the other only
   * then, as a notify costs a system call and a lock shared with every
   * wait. Each side sets its word before it looks one last time and
   * sleeps, and the other changes the awaited word before it reads this
   * one, so no wake-up is missed.
   */
  WORKER_ASLEEP,
  CALLER_ASLEEP,
  /** How many ring entries the worker has written, and how many the caller has read (see Ring). */
  COMPLETED,
  CONSUMED,
  /** Set while the worker holds entries that found the ring full: the caller rings BELL once it has made room. */
  BACKLOG,
  /** Set while the caller sleeps on COMPLETED (a fast poll): as CALLER_ASLEEP, for that word. */
  POLL_ASLEEP,
}

/**
 * An aio buffer the worker is to know by `id` from now on, and the numbers
 * of those it is to forget once it has taken the first `queued` commands
 * (those may still name them).
 */
export interface Registration { id: number; sab: SharedArrayBuffer; forget: number[]; queued: number }

/** A queued aio command: Float64 fields of a queue slot. */
export const enum Queued {
  HANDLE,
  /** Its call number (aioPread, aioPwrite). */
  CALL,
  /** The cookie the caller gave out for it (the worker's next one: see Commands.queueable). */
  COOKIE,
  OFFSET,
  /** Its buffer: a shared buffer the worker knows by this number, and where in it. */
  BUFFER,
  AT,
  LENGTH,
  /** A settlement (CALL is SETTLE): whether it retires the command, and the errno it fails it with (see Settlement). */
  RETIRE = OFFSET,
  ERRNO = LENGTH,
}
export const QUEUE_SLOTS = 256;
const SLOT_FIELDS = 7;

/**
 * A completion ring entry (Float64 fields): a queued command's reply is
 * complete (COOKIE > 0, with the errno its completion callback sees), or
 * the handle's connection ended (COOKIE 0), which poll must cross to report.
 */
export const enum Ring {
  HANDLE,
  COOKIE,
  ERRNO,
}
export const RING_SLOTS = 1024;
const RING_FIELDS = 3;

const HEADER_BYTES = 128;
const DEATH_BYTES = 1024;
export const REQUEST_BYTES = 64 * 1024;
export const REPLY_BYTES = 256 * 1024;

export const DEATH_AT = HEADER_BYTES;
export const REQUEST_AT = DEATH_AT + DEATH_BYTES;
export const REPLY_AT = REQUEST_AT + REQUEST_BYTES;
export const QUEUE_AT = REPLY_AT + REPLY_BYTES;
export const RING_AT = QUEUE_AT + QUEUE_SLOTS * SLOT_FIELDS * 8;
export const CHANNEL_BYTES = RING_AT + RING_SLOTS * RING_FIELDS * 8;

/** The queue's slots, one after another; the fields of the i-th command queued start at slotAt(i). */
export const queueFields = (sab: SharedArrayBuffer): Float64Array => new Float64Array(sab, QUEUE_AT, QUEUE_SLOTS * SLOT_FIELDS);
export const slotAt = (i: number): number => (i % QUEUE_SLOTS) * SLOT_FIELDS;

/** The ring's entries; the n-th written starts at ringAt(n). */
export const ringFields = (sab: SharedArrayBuffer): Float64Array => new Float64Array(sab, RING_AT, RING_SLOTS * RING_FIELDS);
export const ringAt = (n: number): number => (n % RING_SLOTS) * RING_FIELDS;

/** The header words of a channel's buffer. */
export const words = (sab: SharedArrayBuffer): Int32Array => new Int32Array(sab, 0, HEADER_BYTES / 4);

/**
 * Calls go by number: the table's calls, then the bridge's own. Both
 * threads build this list from the same table, so the numbers agree.
 */
export const CALLS: readonly string[] = ["create", "close", "__die__", "__settle__", ...Object.keys(API)];
export const callNumber = new Map(CALLS.map((name, i) => [name, i]));

/** How often a worker with a call in progress says it is alive, and how long the caller waits for a sign. */
export const BEAT_MS = 200;

/**
 * The worker's first code, run as an eval'd script before any module loads,
 * so that its end, however it comes (an exit, an uncaught exception, a
 * module that does not load), reaches the caller, who may be blocked
 * waiting for it: the reason goes into the DEATH area, DEAD is set, and
 * the waiter is woken. Then it loads `entry` and calls its run(workerData).
 */
export const bootstrap = (entry: string): string => `
const { workerData } = require("node:worker_threads");
const h = new Int32Array(workerData.sab, 0, ${HEADER_BYTES / 4});
const die = (why) => {
  if (Atomics.load(h, ${Word.DEAD})) return;
  const text = Buffer.from(workerData.sab, ${DEATH_AT}, ${DEATH_BYTES});
  text.writeUInt32LE(text.write(String(why).slice(0, 256), 4), 0);
  Atomics.store(h, ${Word.DEAD}, 1);
  Atomics.notify(h, ${Word.REPLY});
  Atomics.notify(h, ${Word.COMPLETED});
};
const fatal = (e) => { die(e instanceof Error ? e.message : e); process.exit(1); };
process.on("exit", (code) => die("Worker exited with code " + code));
process.on("uncaughtException", fatal);
process.on("unhandledRejection", fatal);
// Keeps the event loop alive between calls: a worker asleep in Atomics.waitAsync has nothing else pending.
setInterval(() => {}, 2 ** 31 - 1);
import(${JSON.stringify(entry)}).then((m) => m.run(workerData), fatal);
`;

/** Why the worker went away, as it reported it. */
export function deathReason(sab: SharedArrayBuffer): string {
  const text = Buffer.from(sab, DEATH_AT, DEATH_BYTES);
  return text.toString("utf8", 4, 4 + text.readUInt32LE(0));
}

/** A message on the port belongs to one request or reply: anything else is stale. */
export interface Attachments { seq: number; values: unknown[] }

/** Takes the port's message for `seq`, dropping stale ones. */
export function attachments(port: MessagePort, seq: number): unknown[] {
  for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
    const a = m.message as Attachments;
    if (a.seq === seq) return a.values;
  }
  throw new Error(`nbd-ts: the values of message ${seq} are missing`);
}
