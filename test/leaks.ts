/**
 * What a test may not leave behind: a live nbdkit, qemu-nbd or nbd-server
 * process, or a socket dir of ours in /tmp. Zombies do not count: they are
 * gone processes waiting for a parent that no longer runs. When the runner
 * tags its children's environment (RUN_TAG), only servers carrying the tag
 * count, and a socket dir whose socket another run's server holds is that
 * run's, so that test runs side by side do not blame each other.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

const SERVERS = new Set(["nbdkit", "qemu-nbd", "nbd-server"]);
const OUR_DIRS = /^nbd-ts-/;
export const RUN_TAG = "NBD_TS_TEST_RUN";

/** Whether the process carries this run's tag (every server inherits it, daemonized or not). */
function ours(pid: string): boolean {
  const tag = process.env[RUN_TAG];
  if (!tag) return true;
  try {
    return readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").includes(`${RUN_TAG}=${tag}`);
  } catch {
    return false;
  }
}

export interface Snapshot { pids: Set<number>; dirs: Set<string> }

/** Live NBD server processes, as "pid name". */
export function servers(): Map<number, string> {
  const found = new Map<number, string>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      if (SERVERS.has(name) && state !== "Z" && ours(entry)) found.set(Number(entry), name);
    } catch { /* the process ended while we looked */ }
  }
  return found;
}

export function socketDirs(): Set<string> {
  return new Set(readdirSync("/tmp").filter((d) => OUR_DIRS.test(d)));
}

/** The pids holding a socket bound in /tmp/`dir` (found by inode: /proc/net/unix, then each process's fds). */
function holders(dir: string): string[] {
  const inodes = new Set<string>();
  for (const line of readFileSync("/proc/net/unix", "utf8").split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[7]?.startsWith(`/tmp/${dir}/`)) inodes.add(`socket:[${f[6]}]`);
  }
  if (!inodes.size) return [];
  const pids: string[] = [];
  for (const pid of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      if (readdirSync(`/proc/${pid}/fd`).some((fd) => inodes.has(readlinkSync(`/proc/${pid}/fd/${fd}`)))) pids.push(pid);
    } catch { /* gone, or not ours to read */ }
  }
  return pids;
}

/** A socket dir is another run's when a process holding its socket carries another tag (or none). */
const othersDir = (dir: string): boolean => !!process.env[RUN_TAG] && holders(dir).some((pid) => !ours(pid));

export function snapshot(): Snapshot {
  return { pids: new Set(servers().keys()), dirs: socketDirs() };
}

/** What exists now that did not before, waiting briefly for servers that are on their way out. */
export function leftovers(before: Snapshot, waitMs = 2000): string[] {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const left = [
      ...[...servers()].filter(([pid]) => !before.pids.has(pid)).map(([pid, name]) => `${name} (pid ${pid})`),
      ...[...socketDirs()].filter((d) => !before.dirs.has(d) && !othersDir(d)).map((d) => `/tmp/${d}`),
    ];
    if (left.length === 0 || Date.now() > deadline) return left;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
  }
}
