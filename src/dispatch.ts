/**
 * The worker side of the bridge: handles by id, each a Connection plus the
 * SharedArrayBuffer that carries its data. Buffers arrive as lengths and are
 * turned into views of that memory; everything else goes to invoke(), which
 * never throws, so the worker only ever returns plain records.
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

/** Runs one call for the caller's thread: its reply at once when it has one, else a Promise of it. */
export function dispatch(id: number, name: string, args: unknown[], extra: Extra = {}): Reply | Promise<Reply> {
  // A worker crash on demand, for the tests of what a crash does (never otherwise).
  if (name === "__exit__" && process.env.NBD_TS_TEST_HOOKS === "1") process.exit(70);
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
    return slot.conn.close().then(() => {
      const events = slot.conn.drainEvents();
      return events.length ? { ret: 0, events } : { ret: 0 };
    });
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
  const outcome = invoke(slot.conn, name as CallName, args, extra.env);
  const finish = (reply: Reply): Reply => {
    if (reply.errno !== undefined) reply.init = slot.conn.preadInitialize;
    if ("spawns" in call) reply.cleanup = slot.conn.cleanup;
    return reply;
  };
  return outcome instanceof Promise ? outcome.then(finish) : finish(outcome);
}
