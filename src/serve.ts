/**
 * The worker's side of the bridge: it watches the shared BELL word, issues
 * the aio commands queued since it last looked, runs each call
 * (dispatch.ts) and writes the reply into shared memory, then sets REPLY
 * (and notifies, if the caller sleeps) from wherever the call finished: for
 * a read, the socket's read callback, with no promise chain of its own in
 * between. After a reply it keeps its event loop turning for a moment
 * (HOT_US), so that the caller's next request, which usually follows within
 * microseconds, is seen without the worker having to be woken; after that
 * it sleeps in Atomics.waitAsync until rung.
 */
import { receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import {
  type Attachments, type Registration, BEAT_MS, CALLS, REPLY_AT, REPLY_BYTES, REQUEST_AT, REQUEST_BYTES, Word, attachments,
  queueFields, words,
} from "./channel.js";
import { type Reply, dispatch, flushBacklog, forgetTaken, issueQueued, openRing, register, throughHandle } from "./dispatch.js";
import { errno } from "./errno.js";
import { errorValue } from "./api/invoke.js";
import { API, type CallName } from "./api/table.js";
import type { Call } from "./api/types.js";
import { NoRoom, Wire } from "./wire.js";

/**
 * How long the worker looks for the next request before it sleeps (µs).
 * Measured (bench lat, 2-core VM): 0 costs a wake-up per call (76 µs a
 * call against 21); 20 to 1000 all reach the floor; 50 used the least CPU.
 */
const HOT_US = Number(process.env.NBD_TS_WORKER_HOT_US ?? 50);
/** How fast the caller copies between its buffer and shared memory (src/client/bytes.ts), a little under. */
const COPY_BYTES_PER_US = 40_000;

export function serve(sab: SharedArrayBuffer, port: MessagePort, registry: MessagePort): void {
  const h = words(sab);
  const request = new Wire(sab, REQUEST_AT, REQUEST_BYTES);
  const reply = new Wire(sab, REPLY_AT, REPLY_BYTES);
  let seen = 0; // requests are numbered from 1: one may be waiting already
  const queue = queueFields(sab);
  openRing(sab);
  let taken = 0;
  let hotUntil = 0;
  /** A look is due on the next turn of the loop. */
  let scheduled = false;
  /** BELL when the worker last looked. */
  let bell = 0;
  /** Which sleep is current: a waitAsync that resolves after a newer one was set up is ignored. */
  let sleep = 0;

  /**
   * Calls in progress, and the heartbeat that says so every BEAT_MS. While
   * one is, the worker does not sleep on BELL (its caller waits, and asks
   * nothing more) but the heartbeat looks at it: a caller that gave up on
   * the call (its bridge timeout) may have asked something else.
   */
  let running = 0;
  let beat: ReturnType<typeof setInterval> | undefined;
  const pulse = () => {
    Atomics.add(h, Word.BEAT, 1);
    if (Atomics.load(h, Word.BELL) !== bell && !scheduled) look();
    if (running === 0) {
      clearInterval(beat);
      beat = undefined;
    }
  };

  const soon = () => {
    scheduled = true;
    setImmediate(look);
  };

  let registered = 0;

  /**
   * Writes what waits for room in the ring, learns the aio buffers the
   * caller registered, then issues what it queued, in order. The queue's
   * count is read first: the buffers of the commands it counts were
   * registered before them, so they are known.
   */
  function drain(): void {
    flushBacklog(); // the caller rings when it has made room in the ring
    const queued = Atomics.load(h, Word.QUEUED);
    if (Atomics.load(h, Word.REGISTERED) !== registered) {
      for (let m = receiveMessageOnPort(registry); m; m = receiveMessageOnPort(registry)) {
        register(m.message as Registration);
        registered++;
      }
      forgetTaken(taken);
    }
    if (queued === taken) return;
    const first = taken;
    taken = queued;
    try {
      issueQueued(queue, first, queued);
    } finally {
      Atomics.store(h, Word.TAKEN, queued);
    }
  }

  function look(): void {
    scheduled = false;
    bell = Atomics.load(h, Word.BELL); // before looking: a ring after it ends the sleep below at once
    drain();
    const seq = Atomics.load(h, Word.REQUEST);
    if (seq !== seen) {
      seen = seq;
      take(seq);
    }
    if (scheduled) return; // answered at once: the next look is already due
    if (performance.now() < hotUntil) return soon();
    if (running) return; // answer() looks again
    const mine = ++sleep;
    Atomics.store(h, Word.WORKER_ASLEEP, 1);
    const wait = Atomics.waitAsync(h, Word.BELL, bell);
    if (!wait.async) return wake(); // rung meanwhile
    void wait.value.then(() => { if (mine === sleep && !scheduled) wake(); });
  }

  function wake(): void {
    Atomics.store(h, Word.WORKER_ASLEEP, 0);
    soon();
  }

  function take(seq: number): void {
    Atomics.add(h, Word.BEAT, 1);
    let out: Reply | Promise<Reply>;
    let name = "";
    let copied = 0;
    try {
      drain(); // what was queued before this request goes first
      request.rewind(Atomics.load(h, Word.REQUEST_ATTACHED) ? attachments(port, seq) : []);
      const [id, call, args, extra] = request.read() as [number, number, unknown[], object];
      name = CALLS[call]!;
      copied = throughHandle(name, args); // before dispatch turns the lengths into views
      out = dispatch(id, name, args, extra);
    } catch (e) {
      out = failure(e, name);
    }
    if (!(out instanceof Promise)) return answer(seq, out, copied);
    // The reply will come from an I/O callback: nothing to look out for until then but a new request.
    hotUntil = 0;
    running++;
    beat ??= setInterval(pulse, BEAT_MS);
    // A poll that something woke is answered once the loop has read all that is there: what else has
    // completed goes back with it, so the caller polls less often.
    const settle = name === "poll" || name === "poll2"
      ? (r: Reply) => void setImmediate(() => { running--; answer(seq, r, 0); })
      : (r: Reply) => { running--; answer(seq, r, copied); };
    out.then(settle, (e: unknown) => settle(failure(e, name)));
  }

  /** `copied`: bytes the call moved through its handle's buffer, which the caller copies before it asks more. */
  function answer(seq: number, out: Reply, copied: number): void {
    if (Atomics.load(h, Word.REQUEST) === seq) { // else the caller stopped waiting for it
      reply.rewind();
      try {
        reply.write(out);
      } catch (e) {
        if (!(e instanceof NoRoom)) throw e;
        reply.attachWhole(out);
      }
      const attached = reply.attached.length ? 1 : 0;
      if (attached) port.postMessage({ seq, values: reply.attached } satisfies Attachments);
      Atomics.store(h, Word.REPLY_ATTACHED, attached);
      Atomics.store(h, Word.REPLY, seq);
      if (Atomics.load(h, Word.CALLER_ASLEEP)) Atomics.notify(h, Word.REPLY);
      hotUntil = performance.now() + (HOT_US + copied / COPY_BYTES_PER_US) / 1000;
    }
    if (!scheduled) soon();
  }

  Atomics.store(h, Word.STARTED, 1);
  Atomics.notify(h, Word.REPLY);
  look();
}

/** Something threw where nothing should: the call fails, the worker goes on. */
function failure(e: unknown, name: string): Reply {
  const call = API[name as CallName] as Call | undefined;
  return {
    ret: call ? errorValue(call.ret) : -1,
    errno: errno.EIO,
    msg: `nbd-ts: internal error in the worker: ${e instanceof Error ? e.message : String(e)}`,
  };
}
