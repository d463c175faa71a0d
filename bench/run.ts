/**
 * nbd-ts beside libnbd's C API, on the same `nbdkit memory 1G` (filled from
 * `nbdkit pattern` with nbdcopy) over a Unix socket, in the same run. Rounds
 * alternate between the two so that machine noise hits both; each figure is
 * the median of its rounds. CPU time is the whole process's (nbd-ts: both
 * threads) per call.
 *
 *   npm run bench         (ROUNDS=3, N=20000 sync calls per round)
 *
 * Figures: lat, 4 KiB sync pread at random aligned offsets; aio, aioPread of
 * 256 KiB with 16 in flight over the whole export, driven by poll; promise,
 * the same workload through nbd-ts/async (16 concurrent awaited preads).
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, getError } from "nbd-ts";
import * as nbdAsync from "nbd-ts/async";

const N = Number(process.env.N ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const LAT_SIZE = 4096;
const AIO_REQ = 256 * 1024;
const AIO_DEPTH = 16;

const dir = mkdtempSync(join(tmpdir(), "nbdts-bench-"));
const socket = join(dir, "sock");
const server = spawn("nbdkit", ["-f", "-U", socket, "memory", "1G"], { stdio: "inherit" });

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

/** Compiles one of the C programs beside this script against libnbd. */
function compile(name: string): string {
  const bin = join(dir, name);
  execFileSync("cc", ["-O2", "-o", bin, fileURLToPath(new URL(`../../bench/${name}.c`, import.meta.url)), "-lnbd"]);
  return bin;
}

const numbers = (bin: string, ...args: (string | number)[]): number[] =>
  execFileSync(bin, [socket, ...args.map(String)], { encoding: "utf8" }).trim().split(" ").map(Number);

function connect() {
  const h = create();
  if (!h || h.connectUnix(socket) === -1) throw new Error(getError() ?? "create failed");
  return h;
}

function latency(): { median: number; cpu: number } {
  const h = connect();
  const blocks = Number(h.getSize()) / LAT_SIZE;
  const buf = new Uint8Array(LAT_SIZE);
  const times = new Float64Array(N);
  for (let i = 0; i < 1000; i++) h.pread(buf, Math.floor(Math.random() * blocks) * LAT_SIZE);
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < N; i++) {
    const offset = Math.floor(Math.random() * blocks) * LAT_SIZE;
    const t0 = process.hrtime.bigint();
    if (h.pread(buf, offset) === -1) throw new Error(getError() ?? "pread failed");
    times[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  const used = process.cpuUsage(cpu0);
  h.close();
  times.sort();
  return { median: times[N >> 1]!, cpu: (used.user + used.system) / N };
}

/** MB/s reading the whole export with aio_pread, AIO_DEPTH in flight. */
function aio(): number {
  const h = connect();
  const size = Number(h.getSize());
  const bufs = Array.from({ length: AIO_DEPTH }, () => new Uint8Array(AIO_REQ));
  let inFlight = 0;
  let offset = 0;
  let slot = 0;
  const done = () => { inFlight--; return 1; };
  const t0 = process.hrtime.bigint();
  while (offset < size || inFlight > 0) {
    while (inFlight < AIO_DEPTH && offset < size) {
      if (h.aioPread(bufs[slot++ % AIO_DEPTH]!, offset, done) === -1n) throw new Error(getError() ?? "aioPread");
      inFlight++;
      offset += AIO_REQ;
    }
    if (h.poll(-1) === -1) throw new Error(getError() ?? "poll");
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  h.close();
  return size / s / 1e6;
}

/** MB/s through the Promise API: AIO_DEPTH readers awaiting pread in turn. */
async function promise(): Promise<number> {
  const h = nbdAsync.create();
  await h.connectUnix(socket);
  const size = Number(await h.getSize());
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: AIO_DEPTH }, async () => {
    const buf = new Uint8Array(AIO_REQ);
    for (let offset = next; offset < size; offset = next) {
      next += AIO_REQ;
      await h.pread(buf, offset);
    }
  }));
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await h.close();
  return size / s / 1e6;
}

try {
  for (let i = 0; !existsSync(socket); i++) {
    if (i > 500) throw new Error("nbdkit did not start");
    sleep(10);
  }
  // Fill the export, so that reads return real data rather than nbdkit's sparse zeroes.
  execFileSync("nbdcopy", ["--", "[", "nbdkit", "pattern", "1G", "]", `nbd+unix:///?socket=${socket}`]);
  const latBin = compile("pread-latency");
  const aioBin = compile("aio-read");
  const rows: Record<string, [number[], number[]]> = {
    "lat: median µs/call": [[], []],
    "lat: CPU µs/call": [[], []],
    "aio: MB/s": [[], []],
    "promise: MB/s (vs libnbd aio)": [[], []],
  };
  for (let r = 0; r < ROUNDS; r++) {
    const [cMedian, cCpu] = numbers(latBin, N, LAT_SIZE);
    const ts = latency();
    rows["lat: median µs/call"]![0].push(cMedian!);
    rows["lat: median µs/call"]![1].push(ts.median);
    rows["lat: CPU µs/call"]![0].push(cCpu!);
    rows["lat: CPU µs/call"]![1].push(ts.cpu);
    const [cAio] = numbers(aioBin, AIO_REQ, AIO_DEPTH);
    rows["aio: MB/s"]![0].push(cAio!);
    rows["aio: MB/s"]![1].push(aio());
    rows["promise: MB/s (vs libnbd aio)"]![0].push(cAio!);
    rows["promise: MB/s (vs libnbd aio)"]![1].push(await promise());
  }
  console.log(`\nnbd-ts vs libnbd ${ROUNDS} rounds, nbdkit memory 1G over a Unix socket\n`);
  console.log("| figure                         |  libnbd |  nbd-ts | ratio  |");
  console.log("|--------------------------------|---------|---------|--------|");
  for (const [name, [c, t]] of Object.entries(rows)) {
    const a = median(c);
    const b = median(t);
    console.log(`| ${name.padEnd(30)} | ${a.toFixed(1).padStart(7)} | ${b.toFixed(1).padStart(7)} | ${(b / a).toFixed(2).padStart(5)}× |`);
  }
} finally {
  server.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
