/**
 * The one place that blocks: a synckit call into the worker, always bounded
 * by a timeout. A failure of the bridge itself (the worker died, the call
 * timed out, an argument could not be cloned) comes back as a failed reply,
 * never as a throw.
 */
import { createSyncFn } from "synckit";
import type { Extra, Reply, dispatch } from "./dispatch.js";
import { errno } from "./errno.js";

/**
 * Every wait is bounded. libnbd itself waits forever for a silent server;
 * an hour is far beyond any legitimate call and still ends a hang.
 */
export const BRIDGE_TIMEOUT_MS = Number(process.env.NBD_TS_BRIDGE_TIMEOUT_MS) || 60 * 60 * 1000;

const WORKER_URL = new URL("../workers/nbd-worker.js", import.meta.url);

let sync: ((...a: Parameters<typeof dispatch>) => Reply) | undefined;

export function cross(id: number, name: string, args: unknown[], extra: Extra): Reply | Error {
  try {
    sync ??= createSyncFn<typeof dispatch>(WORKER_URL, { timeout: BRIDGE_TIMEOUT_MS });
    return sync(id, name, args, extra);
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

/** The errno for a failure of the bridge itself. */
export function bridgeErrno(err: Error): number {
  if (err.name === "DataCloneError") return errno.EINVAL;
  if (/timed-out/.test(err.message)) return errno.ETIMEDOUT;
  return errno.EIO;
}
