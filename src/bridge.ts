/**
 * The one place that blocks: a synckit call into the worker, always bounded.
 * A failure of the bridge itself (the worker died, stopped answering, or an
 * argument could not be cloned) comes back as a failed reply, never as a
 * throw.
 *
 * The worker answers every call within a slice (dispatch.ts): a call that
 * takes longer answers "pending" and is resumed. So a worker that says
 * nothing for STALL_MS is not busy but gone: killed by running out of
 * memory (which no exit handler of its own can report) or wedged. It is
 * then terminated and counts as dead, like one that crashed or exited.
 */
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { basename, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import type { Worker } from "node:worker_threads";
import { createSyncFn } from "synckit";
import { RESUME, type Extra, type Reply, type dispatch } from "./dispatch.js";
import { errno } from "./errno.js";
import { stopAll } from "./cleanup.js";

/**
 * Every call is bounded. libnbd itself waits forever for a silent server;
 * an hour is far beyond any legitimate call and still ends a hang.
 */
export const BRIDGE_TIMEOUT_MS = Number(process.env.NBD_TS_BRIDGE_TIMEOUT_MS) || 60 * 60 * 1000;

/** A worker silent this long (it answers within a slice) is lost. */
export const STALL_MS = Number(process.env.NBD_TS_WORKER_STALL_MS) || 5000;

const WORKER = fileURLToPath(new URL("../workers/nbd-worker.js", import.meta.url));

let sync: ((...a: Parameters<typeof dispatch>) => Reply) | undefined;
let worker: Worker | undefined;
let generation = 0;

/** Which worker runs the handles made now; a handle made under another one is dead. */
export const workerGeneration = (): number => generation;

/**
 * synckit keeps one worker per path and remembers a dead one; after a death,
 * the same file under another spelling of its path starts a fresh worker.
 */
const workerPath = (gen: number): string => `${dirname(WORKER)}/${"./".repeat(gen)}${basename(WORKER)}`;

/** Starts a worker; synckit does not hand out its Worker, but Node announces every new one on this channel. */
function start(): void {
  const grab = (message: unknown) => { worker = (message as { worker: Worker }).worker; };
  worker = undefined;
  subscribe("worker_threads", grab);
  try {
    sync = createSyncFn<typeof dispatch>(workerPath(generation), { timeout: STALL_MS });
  } finally {
    unsubscribe("worker_threads", grab);
  }
  // A worker out of memory says so on its 'error' event, later, where nobody listens: the
  // process would die of it. The call that found the worker gone has already failed.
  (worker as Worker | undefined)?.on("error", () => {});
}

/** The worker failed (crashed, exited, went silent): not an argument that could not be cloned. */
const workerLost = (err: Error): boolean => err.name !== "DataCloneError";

class BridgeTimeout extends Error {}

export function cross(id: number, name: string, args: unknown[], extra: Extra): Reply | Error {
  const deadline = Date.now() + BRIDGE_TIMEOUT_MS;
  try {
    if (!sync) start();
    let reply = sync!(id, name, args, extra);
    while (reply.pending !== undefined) {
      if (Date.now() > deadline) return new BridgeTimeout(`no answer within ${BRIDGE_TIMEOUT_MS} ms`);
      reply = sync!(0, RESUME, [reply.pending], {});
    }
    return reply;
  } catch (err) {
    let e = err instanceof Error ? err : new Error(String(err));
    if (workerLost(e)) {
      e = new Error(/timed-out/.test(e.message)
        ? `the worker thread did not answer for ${STALL_MS} ms and was stopped`
        : `the worker thread died: ${e.message}`);
      void worker?.terminate();
      sync = undefined;
      worker = undefined;
      generation++;
      stopAll(); // the dead worker's servers: nothing will close them now
    }
    return e;
  }
}

/** The errno for a failure of the bridge itself. */
export function bridgeErrno(err: Error): number {
  if (err.name === "DataCloneError") return errno.EINVAL;
  if (err instanceof BridgeTimeout) return errno.ETIMEDOUT;
  return errno.EIO;
}
