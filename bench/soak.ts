/**
 * Soak (not CI): SOAK_CYCLES connect/pread/close cycles, each a new handle
 * with nbdkit's pattern plugin started by socket activation, a 4 KiB read
 * checked against the pattern, and close(). Every SOAK_EVERY cycles it
 * prints this process's open file descriptors (/proc/self/fd: both threads),
 * RSS, the JS heap, and its child processes (live and zombie).
 *
 *   npm run soak          (SOAK_CYCLES=10000, SOAK_EVERY=500)
 *
 * It fails if, after the first WARMUP cycles, the fd count ever exceeds the
 * warm-up figure by more than FD_SLACK, if RSS ends more than RSS_SLACK_MIB
 * above it, if a cycle's socket dir outlives its close(), or if a child
 * process (a server, or a zombie) is left at the end.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { create, getError } from "nbd-ts";

const CYCLES = Number(process.env.SOAK_CYCLES ?? 10_000);
const EVERY = Number(process.env.SOAK_EVERY ?? 500);
const WARMUP = Math.min(1000, Math.floor(CYCLES / 10));
const FD_SLACK = 4;
const RSS_SLACK_MIB = 32;
const SIZE = 1 << 20;
const ARGV = ["nbdkit", "-f", "pattern", `size=${SIZE}`];

const fds = (): number => readdirSync("/proc/self/fd").length;
const rssMiB = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) / 1024;

/** This process's children: [live, zombie]. */
function children(): [number, number] {
  let live = 0;
  let zombie = 0;
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(ppid) !== process.pid) continue;
      if (state === "Z") zombie++;
      else live++;
    } catch { /* gone meanwhile */ }
  }
  return [live, zombie];
}

function cycle(i: number): void {
  const h = create();
  if (!h) throw new Error(`cycle ${i}: create: ${getError()}`);
  let dir: string | undefined;
  try {
    if (h.connectSystemdSocketActivation(ARGV) !== 0) throw new Error(`cycle ${i}: connect: ${getError()}`);
    dir = dirname(/socket=([^&]+)/.exec(h.getUri() ?? "")![1]!);
    const offset = ((i * 7919) % (SIZE / 4096)) * 4096;
    const buf = new Uint8Array(4096);
    if (h.pread(buf, offset) !== 0) throw new Error(`cycle ${i}: pread: ${getError()}`);
    const word = new DataView(buf.buffer).getBigUint64(8);
    if (word !== BigInt(offset + 8)) throw new Error(`cycle ${i}: read ${word} at ${offset + 8}`);
  } finally {
    h.close();
  }
  if (dir && existsSync(dir)) throw new Error(`cycle ${i}: ${dir} outlived close()`);
}

const start = Date.now();
let warm: { fds: number; rss: number } | undefined;
let maxFds = 0;
const row = (...cells: (string | number)[]) => console.log(`| ${cells.join(" | ")} |`);
console.log(`soak: ${CYCLES} cycles of create, connectSystemdSocketActivation(${ARGV.join(" ")}), pread 4 KiB, close`);
row("cycle", "s", "fds", "RSS MiB", "heap MiB", "children (live/zombie)");
row("---", "---", "---", "---", "---", "---");
const report = (i: number) => {
  const [live, zombie] = children();
  row(i, ((Date.now() - start) / 1000).toFixed(1), fds(), rssMiB().toFixed(1),
    (process.memoryUsage().heapUsed / 2 ** 20).toFixed(1), `${live}/${zombie}`);
};
report(0);
for (let i = 1; i <= CYCLES; i++) {
  cycle(i);
  if (i === WARMUP) warm = { fds: fds(), rss: rssMiB() };
  if (i > WARMUP) maxFds = Math.max(maxFds, fds());
  if (i % EVERY === 0 || i === CYCLES) report(i);
}

const failures: string[] = [];
const end = { fds: fds(), rss: rssMiB() };
if (warm) {
  if (maxFds > warm.fds + FD_SLACK) failures.push(`fds grew from ${warm.fds} after warm-up to ${maxFds} (bound +${FD_SLACK})`);
  if (end.rss > warm.rss + RSS_SLACK_MIB) {
    failures.push(`RSS grew from ${warm.rss.toFixed(1)} MiB after warm-up to ${end.rss.toFixed(1)} MiB (bound +${RSS_SLACK_MIB})`);
  }
}
const [live, zombies] = children();
if (live || zombies) failures.push(`child processes left: ${live} live, ${zombies} zombies`);

const seconds = (Date.now() - start) / 1000;
console.log(`\n${CYCLES} cycles in ${seconds.toFixed(1)} s (${((seconds * 1000) / CYCLES).toFixed(1)} ms each); ` +
  `after ${WARMUP} warm-up cycles: fds ${warm?.fds} → max ${maxFds}, end ${end.fds}; ` +
  `RSS ${warm?.rss.toFixed(1)} → ${end.rss.toFixed(1)} MiB`);
if (failures.length) {
  console.log(`FAIL: ${failures.join("; ")}`);
  process.exit(1);
}
console.log(`OK: fds within +${FD_SLACK} and RSS within +${RSS_SLACK_MIB} MiB of the warm-up figures; nothing left behind`);
