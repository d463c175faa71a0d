/**
 * aio on the caller's thread without crossing to the worker: aio_pread and
 * aio_pwrite go into the shared queue (channel.ts) under the cookie the
 * worker will give them; their completions come back through the ring, where
 * this thread copies their data, runs their callbacks and sends the
 * callbacks' decisions back through the queue; and poll answers from the
 * ring while every command in flight came that way. Anything else crosses
 * (handle.ts), and the worker's poll keeps libnbd's exact results.
 */
import { MAX_REQUEST_SIZE } from "./constants.js";
import type { CallName } from "./api/table.js";
import type { Callbacks, Staged } from "./callbacks.js";
import { awaitRing, bufferId, queueArray, queueSlot, queued, ringEntries, settled } from "./bridge.js";
import { Queued, callNumber } from "./channel.js";
import type { QueueFacts } from "./dispatch.js";
import { copy } from "./client/bytes.js";
import { takeStaging } from "./shared-pool.js";

/** What of a handle's state the shortcuts read and keep (a part of handle.ts's Slot). */
export interface AioSlot {
  readonly id: number;
  /** Callbacks the worker may call. */
  callbacks: Callbacks;
  closed: boolean;
  /** Set while aio reads and writes may be queued without waiting (see queue()). */
  queue?: QueueFacts | undefined;
  /** Queued commands' completions were handled outside a poll: the next poll reports them. */
  progressed: boolean;
  /** The next poll crosses: the worker has news for it (the connection ended, or a crossed aio command did unpolled). */
  mustCross: boolean;
}

/** The aio calls a caller may issue by queueing them, and whether they write. */
export const QUEUEABLE: Partial<Record<CallName, boolean>> = { aioPread: false, aioPwrite: true };

/**
 * aio_pread and aio_pwrite without waiting for the worker: when the facts
 * of the handle's last reply show that the Connection's checks would pass
 * (connected, in bounds, aligned, no flags), the command goes into the
 * shared queue under the cookie the worker will give it, and the call
 * returns that cookie at once; the worker issues it before anything the
 * caller asks later. Undefined when it cannot be queued: the call crosses.
 */
export function queue(slot: AioSlot, write: boolean, args: unknown[]): bigint | undefined {
  const facts = slot.queue;
  if (!facts || args.length > 4) return undefined;
  const [buf, offset, completion, flags] = args;
  if (!(buf instanceof Uint8Array) || (flags !== undefined && flags !== 0)) return undefined;
  if (completion != null && typeof completion !== "function") return undefined;
  const at = typeof offset === "bigint" && offset <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(offset) : offset;
  const n = buf.byteLength;
  const [cookie, size, align, payload, writable] = facts;
  if (typeof at !== "number" || !Number.isInteger(at) || at < 0 || n === 0 || n > MAX_REQUEST_SIZE || at + n > size) return undefined;
  if (align > 1 && (at % align !== 0 || n % align !== 0)) return undefined;
  if (write && (!writable || n > payload)) return undefined;
  const place = queueSlot();
  if (place < 0) return undefined;
  const own = buf.buffer instanceof SharedArrayBuffer;
  const from = own ? (buf as Uint8Array<SharedArrayBuffer>) : takeStaging(n);
  const staged: Staged | undefined = own ? undefined : write ? { from } : { to: buf, from };
  if (write && !own) copy(from, buf);
  const ids = typeof completion === "function" ? [slot.callbacks.hold(completion as never, "completion")] : [];
  const q = queueArray();
  q[place + Queued.HANDLE] = slot.id;
  q[place + Queued.CALL] = callNumber.get(write ? "aioPwrite" : "aioPread")!;
  q[place + Queued.COOKIE] = cookie;
  q[place + Queued.OFFSET] = at;
  q[place + Queued.BUFFER] = bufferId(from.buffer);
  q[place + Queued.AT] = from.byteOffset;
  q[place + Queued.LENGTH] = n;
  queued();
  facts[0] = cookie + 1;
  slot.callbacks.adopt(cookie, ids, staged, false);
  return BigInt(cookie);
}

const SETTLE = callNumber.get("__settle__")!;

/**
 * The callbacks' decisions go to the worker through the queue, so that
 * they do not wait for a call to cross; what finds the queue full rides
 * with the next call that crosses (Extra.settle), after these.
 */
function sendSettlements(slot: AioSlot): void {
  const all = slot.callbacks.settlements;
  let i = 0;
  for (; i < all.length; i++) {
    const place = queueSlot();
    if (place < 0) break;
    const [cookie, retire, err] = all[i]!;
    const q = queueArray();
    q[place + Queued.HANDLE] = slot.id;
    q[place + Queued.CALL] = SETTLE;
    q[place + Queued.COOKIE] = cookie;
    q[place + Queued.RETIRE] = retire;
    q[place + Queued.ERRNO] = err;
    settled();
  }
  if (i) all.splice(0, i);
}

/**
 * Handles what the ring brought for the handle: each queued command that
 * completed gets its data copied and its completion callback run, and is
 * settled. Returns how many; outside a poll, the next poll reports them.
 */
export function takeRing(slot: AioSlot, inPoll: boolean): number {
  const entries = ringEntries(slot.id);
  let n = 0;
  for (let i = 0; i < entries.length; i += 2) {
    const cookie = entries[i]!;
    if (cookie === 0) slot.mustCross = true; // the connection ended: poll must cross to report it
    else {
      slot.callbacks.complete(cookie, entries[i + 1]!);
      n++;
    }
  }
  if (n && !inPoll) slot.progressed = true;
  if (!slot.closed) sendSettlements(slot);
  return n;
}

/** How long a poll waits on the ring before it crosses, where a worker that went silent is noticed (bridge.ts wait). */
const RING_WAIT_MS = 1000;

const isTimeout = (t: unknown): t is number => typeof t === "number" && Number.isInteger(t) && t >= -1 && t <= 2 ** 31 - 1;

/**
 * nbd_poll without crossing, when all it could wait for comes through the
 * ring: the handle's commands in flight were all queued (none crossed),
 * and its last reply allowed it (READY, no debug callback, no timeout).
 * Undefined: the poll crosses (with what is left of its timeout in args).
 */
export function ringPoll(slot: AioSlot, args: unknown[]): number | undefined {
  const timeout = args[0];
  if (!slot.queue?.[5] || slot.callbacks.crossed || slot.mustCross || args.length !== 1 || !isTimeout(timeout)) return undefined;
  const n = takeRing(slot, true);
  // The connection ended: the worker's poll reports that, and what ran here with it (progressed).
  if (slot.mustCross) return giveWay(slot, n);
  if (n || slot.progressed) {
    slot.progressed = false;
    return 1;
  }
  if (timeout === 0) return 0;
  const start = performance.now();
  for (;;) {
    const waited = performance.now() - start;
    if (!awaitRing((timeout < 0 ? RING_WAIT_MS : Math.min(timeout, RING_WAIT_MS)) - waited)) {
      const left = timeout - (performance.now() - start);
      if (timeout >= 0 && left <= 0) return 0;
      args[0] = timeout < 0 ? -1 : Math.ceil(left);
      return undefined;
    }
    const n = takeRing(slot, true);
    if (slot.mustCross) return giveWay(slot, n);
    if (n) return 1;
  }
}

/** ringPoll gives way to a poll that crosses, which must report the `n` completions it handled. */
function giveWay(slot: AioSlot, n: number): undefined {
  if (n) slot.progressed = true;
  return undefined;
}
