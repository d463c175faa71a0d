/**
 * 4 KiB sync pread latency, nbd-ts against libnbd's C API, on the same
 * `nbdkit memory 1G` over a Unix socket, in the same run. Rounds alternate
 * between the two so that machine noise hits both; the figure is the median
 * of the per-round medians. CPU time per call is the whole process's
 * (nbd-ts: both threads) divided by the number of calls.
 *
 *   npm run bench            (N=20000 calls per round, 3 rounds)
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, getError } from "nbd-ts";

const N = Number(process.env.N ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SIZE = 4096;

const dir = mkdtempSync(join(tmpdir(), "nbdts-bench-"));
const socket = join(dir, "sock");
const server = spawn("nbdkit", ["-f", "-U", socket, "memory", "1G"], { stdio: "inherit" });

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function libnbd(bin: string): { median: number; cpu: number } {
  const [median, cpu] = execFileSync(bin, [socket, String(N), String(SIZE)], { encoding: "utf8" }).trim().split(" ").map(Number);
  return { median: median!, cpu: cpu! };
}

function nbdts(): { median: number; cpu: number } {
  const h = create();
  if (!h || h.connectUnix(socket) === -1) throw new Error(getError() ?? "create failed");
  const blocks = Number(h.getSize()) / SIZE;
  const buf = new Uint8Array(SIZE);
  const times = new Float64Array(N);
  for (let i = 0; i < 1000; i++) h.pread(buf, Math.floor(Math.random() * blocks) * SIZE);
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < N; i++) {
    const offset = Math.floor(Math.random() * blocks) * SIZE;
    const t0 = process.hrtime.bigint();
    if (h.pread(buf, offset) === -1) throw new Error(getError() ?? "pread failed");
    times[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  const used = process.cpuUsage(cpu0);
  h.close();
  times.sort();
  return { median: times[N >> 1]!, cpu: (used.user + used.system) / N };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

try {
  const bin = join(dir, "pread-latency");
  const source = fileURLToPath(new URL("../../bench/pread-latency.c", import.meta.url));
  execFileSync("cc", ["-O2", "-o", bin, source, "-lnbd"]);
  for (let i = 0; !existsSync(socket); i++) {
    if (i > 500) throw new Error("nbdkit did not start");
    sleep(10);
  }
  const c: { median: number; cpu: number }[] = [];
  const ts: { median: number; cpu: number }[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    c.push(libnbd(bin));
    ts.push(nbdts());
  }
  const row = (name: string, a: number, b: number) =>
    `| ${name.padEnd(22)} | ${a.toFixed(1).padStart(7)} | ${b.toFixed(1).padStart(7)} | ${(b / a).toFixed(2).padStart(5)}× |`;
  console.log(`\n4 KiB sync pread, ${N} calls × ${ROUNDS} rounds, nbdkit memory 1G over a Unix socket\n`);
  console.log("| figure                 |  libnbd |  nbd-ts | ratio  |");
  console.log("|------------------------|---------|---------|--------|");
  console.log(row("lat: median µs/call", median(c.map((x) => x.median)), median(ts.map((x) => x.median))));
  console.log(row("lat: CPU µs/call", median(c.map((x) => x.cpu)), median(ts.map((x) => x.cpu))));
} finally {
  server.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
