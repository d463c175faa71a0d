/**
 * nbd-ts/async: the same client and the same API table, for async code that
 * does not need the blocking API. No worker, no bridge: the Connection runs
 * on the caller's own thread, buffers are used in place, callbacks are called
 * directly. Every call returns a Promise of what the blocking call returns;
 * a failure rejects with an NbdError carrying libnbd's message and errno.
 *
 *   import { create } from "nbd-ts/async";
 *   const h = create();
 *   await h.connectUnix("/tmp/sock");
 *   await h.pread(buf, 0);
 */
import { invoke } from "./api/invoke.js";
import { API, type CallName } from "./api/table.js";
import type { AsyncMethods } from "./api/handle-methods.js";
import { cName, isBytes, isOut, type Call } from "./api/types.js";
import { track, untrack } from "./cleanup.js";
import { Connection } from "./client/connection.js";
import { NbdError as ClientError } from "./client/error.js";
import { errno, errnoName } from "./errno.js";

export * from "./constants.js";

/** A failed call: libnbd's message ("nbd_pread: request out of bounds: …") and errno. */
export class NbdError extends Error {
  override name = "NbdError";
  /** The errno's symbolic name ("EINVAL"), as Node's system errors have it. */
  readonly code: string | undefined;

  constructor(message: string, readonly errno: number) {
    super(message);
    this.code = errnoName(errno);
  }
}

export type { AsyncMethods };

const connections = new WeakMap<AsyncHandle, Connection>();
const closed = new ClientError(errno.EINVAL, "invalid state: the handle has been closed");
let nextId = 1;

/** An NBD handle for async code: the blocking Handle's calls, each returning a Promise. Make one with create(). */
export class AsyncHandle {
  /** @internal Use create(). */
  constructor() {
    const conn = new Connection(nextId++);
    conn.debug = process.env.LIBNBD_DEBUG === "1";
    conn.log("nbd_create", "opening handle");
    connections.set(this, conn);
  }

  /** nbd_close: stops a server the handle started and removes its socket dir. */
  async close(): Promise<void> {
    const conn = connections.get(this);
    if (!conn) return;
    connections.delete(this);
    await conn.close();
    untrack(this);
  }

  /** Closes the handle, as close() does: `await using h = create()` closes it at the end of the block. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The calls of the API table, documented one by one in api/handle-methods.ts (generated). */
export interface AsyncHandle extends AsyncMethods {}

function method(name: CallName, call: Call) {
  const all = [...call.args, ...(call.optargs ?? [])];
  const out = all.findIndex((a) => isBytes(a) && isOut(a));

  return async function (this: AsyncHandle, ...args: unknown[]): Promise<unknown> {
    const conn = connections.get(this);
    if (!conn) throw new NbdError(closed.format(cName(name, call)), closed.errno);
    // Tracked before it runs: a process that exits while the handshake runs still stops the server.
    if (call.spawns) track(this, () => conn.cleanup);
    const result = await invoke(conn, name, args);
    if (result.errno === undefined) return result.ret;
    // As in C: with pread_initialize, a failed read leaves zeroes, not stale bytes.
    const buf = args[out];
    if (out >= 0 && buf instanceof Uint8Array && conn.preadInitialize) buf.fill(0);
    throw new NbdError(result.msg!, result.errno);
  };
}

for (const [name, call] of Object.entries(API) as [CallName, Call][]) {
  const value = Object.defineProperty(method(name, call), "name", { value: name });
  Object.defineProperty(AsyncHandle.prototype, name, { value, writable: true, configurable: true });
}

/** A new handle (nbd_create). */
export function create(): AsyncHandle {
  return new AsyncHandle();
}
