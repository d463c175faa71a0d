/**
 * The one place that blocks: a synckit call into the worker, always bounded
 * by a timeout. A failure of the bridge itself (the worker died, the call
 * timed out, an argument could not be cloned) comes back as a failed reply,
 * never as a throw.
 */
import { basename, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createSyncFn } from "synckit";
import type { Extra, Reply, dispatch } from "./dispatch.js";
import { errno } from "./errno.js";
import { stopAll } from "./cleanup.js";

/**
 * Every wait is bounded. libnbd itself waits forever for a silent server;
 * an hour is far beyond any legitimate call and still ends a hang.
 */
export const BRIDGE_TIMEOUT_MS = Number(process.env.NBD_TS_BRIDGE_TIMEOUT_MS) || 60 * 60 * 1000;

const WORKER = fileURLToPath(new URL("../workers/nbd-worker.js", import.meta.url));

let sync: ((...a: Parameters<typeof dispatch>) => Reply) | undefined;
let generation = 0;

/** Which worker runs the handles made now; a handle made under another one is dead. */
export const workerGeneration = (): number => generation;

/**
 * synckit keeps one worker per path and remembers a dead one; after a death,
 * the same file under another spelling of its path starts a fresh worker.
 */
const workerPath = (gen: number): string => `${dirname(WORKER)}/${"./".repeat(gen)}${basename(WORKER)}`;

/** The worker failed (crashed, exited): not a slow call, not an uncloneable argument. */
const workerLost = (err: Error): boolean => err.name !== "DataCloneError" && !/timed-out/.test(err.message);

export function cross(id: number, name: string, args: unknown[], extra: Extra): Reply | Error {
  try {
    sync ??= createSyncFn<typeof dispatch>(workerPath(generation), { timeout: BRIDGE_TIMEOUT_MS });
    return sync(id, name, args, extra);
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    if (workerLost(e)) {
      sync = undefined;
      generation++;
      stopAll(); // the dead worker's servers: nothing will close them now
    }
    return e;
  }
}

/** The errno for a failure of the bridge itself. */
export function bridgeErrno(err: Error): number {
  if (err.name === "DataCloneError") return errno.EINVAL;
  if (/timed-out/.test(err.message)) return errno.ETIMEDOUT;
  return errno.EIO;
}
