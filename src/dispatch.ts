/**
 * The worker side of the bridge: handles by id, each a Connection plus the
 * SharedArrayBuffer that carries its data. Buffers arrive as lengths and are
 * turned into views of that memory; everything else goes to invoke(), which
 * never throws, so the worker only ever returns plain records. Every call
 * answers within a slice, finished or not (see bridge.ts for why).
 */
import { Connection } from "./client/connection.js";
import { errno } from "./errno.js";
import { invoke, type Outcome } from "./api/invoke.js";
import { API, type CallName } from "./api/table.js";
import { isBytes, isPersist } from "./api/types.js";
import type { Settlement } from "./callbacks.js";

/** What rides along with a call, besides its arguments. */
export interface Extra {
  /** The handle's data buffer, sent when it is new or has grown. */
  sab?: SharedArrayBuffer;
  /** The caller's environment, for calls that spawn a server. */
  env?: NodeJS.ProcessEnv;
  /** What the caller's callbacks decided about aio commands (see callbacks.ts). */
  settle?: Settlement[];
}

export interface Reply extends Outcome {
  /** Whether the handle zeroes read buffers (so a failed read leaves zeroes). */
  init?: boolean;
  /** A server process or socket dir that the main thread must clean up at exit. */
  cleanup?: { pid?: number; dir?: string };
  /** Not finished within its slice: ask again with RESUME and this ticket. */
  pending?: number;
}

/** The call that asks after a pending one: RESUME(ticket). */
export const RESUME = "__resume__";
/** How long a call may run before the worker answers "pending". */
const SLICE_MS = 200;
const unfinished = new Map<number, Promise<Reply>>();
let tickets = 0;

/**
 * One clock for all calls, not a timer each (that costs microseconds per
 * call): every SLICE_MS it answers "pending" for each call still running.
 * It runs only while calls do, and holds nothing of a call that has ended.
 */
const running = new Set<() => void>();
let clock: ReturnType<typeof setInterval> | undefined;

function onTick(): void {
  for (const pend of running) pend();
  running.clear();
  clearInterval(clock);
  clock = undefined;
}

/** The reply, if `work` ends by the clock's next tick; else "pending" under a ticket. */
function within(work: Promise<Reply>, ticket?: number): Promise<Reply> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const pend = () => {
      answered = true;
      const t = ticket ?? ++tickets;
      unfinished.set(t, work);
      resolve({ ret: 0, pending: t });
    };
    running.add(pend);
    clock ??= setInterval(onTick, SLICE_MS);
    work.then((reply) => {
      running.delete(pend);
      if (answered) return; // a later RESUME takes the reply
      if (ticket !== undefined) unfinished.delete(ticket);
      resolve(reply);
    }, (err: unknown) => {
      running.delete(pend);
      if (!answered) reject(err);
    });
  });
}

/**
 * Test-only ways for the worker to die while a call is in flight, `ms` from
 * now, enabled by NBD_TS_TEST_HOOKS=1 (never otherwise): exit, an uncaught
 * exception, running out of memory, or looping forever.
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

interface Slot { conn: Connection; sab: SharedArrayBuffer }

const slots = new Map<number, Slot>();

/**
 * A buffer too large to be sent at all (over libnbd's 64 MiB limit) is
 * represented by its length alone: the size check fails the call before
 * any byte would be touched.
 */
function lengthOnly(n: number): Uint8Array {
  return Object.defineProperty(new Uint8Array(0), "byteLength", { value: n });
}

export function dispatch(id: number, name: string, args: unknown[], extra: Extra = {}): Promise<Reply> {
  if (name === RESUME) {
    const work = unfinished.get(args[0] as number);
    return work ? within(work, args[0] as number) : Promise.resolve({ ret: -1, errno: errno.EINVAL, msg: "nbd-ts: no such pending call" });
  }
  if (name === "__die__" && process.env.NBD_TS_TEST_HOOKS === "1") {
    die(args[0], args[1]);
    return Promise.resolve({ ret: 0 });
  }
  return within(run(id, name, args, extra));
}

async function run(id: number, name: string, args: unknown[], extra: Extra): Promise<Reply> {
  if (name === "create") {
    const conn = new Connection(id);
    conn.debug = args[0] === true; // LIBNBD_DEBUG=1 in the caller's environment
    conn.log("nbd_create", "opening handle");
    slots.set(id, { conn, sab: new SharedArrayBuffer(0) });
    return { ret: 0 };
  }
  const slot = slots.get(id);
  if (!slot) return { ret: -1, errno: errno.EINVAL, msg: `nbd-ts: no handle ${id} in the worker` };
  if (name === "close") {
    slots.delete(id);
    await slot.conn.close();
    const events = slot.conn.drainEvents();
    return events.length ? { ret: 0, events } : { ret: 0 };
  }
  if (extra.sab) slot.sab = extra.sab;
  for (const [cookie, retire, err] of extra.settle ?? []) slot.conn.settleFromCaller(cookie, retire === 1, err);
  const call = API[name as CallName];
  call.args.forEach((arg, i) => {
    const v = args[i];
    if (!isBytes(arg)) return;
    if (typeof v === "number") args[i] = v <= slot.sab.byteLength && !isPersist(arg) ? new Uint8Array(slot.sab, 0, v) : lengthOnly(v);
    else if (typeof v === "object" && v !== null && "sab" in v) {
      const { sab, offset, length } = v as { sab: SharedArrayBuffer; offset: number; length: number };
      args[i] = new Uint8Array(sab, offset, length); // an aio buffer: memory of its own
    }
  });
  const reply: Reply = await invoke(slot.conn, name as CallName, args, extra.env);
  if (reply.errno !== undefined) reply.init = slot.conn.preadInitialize;
  if ("spawns" in call) reply.cleanup = slot.conn.cleanup;
  return reply;
}
