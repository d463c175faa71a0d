/**
 * What must not outlive the process: servers that handles started and the
 * directories of their sockets. A process that exits without close() still
 * stops them (libnbd leaves that to nbd_close; a script that forgets would
 * leave a qemu-nbd -t running forever).
 */
import { rmSync } from "node:fs";

export interface Leftover { pid?: number; dir?: string }
/** What to stop, or how to find out at exit (a connect still running has not said yet). */
type Source = Leftover | (() => Leftover | undefined);

const leftovers = new Map<unknown, Source>();
let hooked = false;

/** Remember what `owner` started, until untrack(owner). */
export function track(owner: unknown, leftover: Source | undefined): void {
  if (!leftover || (typeof leftover === "object" && leftover.pid === undefined && !leftover.dir)) return;
  leftovers.set(owner, leftover);
  if (hooked) return;
  hooked = true;
  process.once("exit", () => stopAll(() => true));
}

/** Stops what the matching owners started (by default: the worker's handles, known by their numeric ids). */
export function stopAll(which: (owner: unknown) => boolean = (owner) => typeof owner === "number"): void {
  for (const [owner, source] of leftovers) {
    if (!which(owner)) continue;
    const { pid, dir } = (typeof source === "function" ? source() : source) ?? {};
    try { if (pid !== undefined) process.kill(pid, "SIGTERM"); } catch { /* already gone */ }
    if (dir) rmSync(dir, { recursive: true, force: true });
    leftovers.delete(owner);
  }
}

export function untrack(owner: unknown): void {
  leftovers.delete(owner);
}
