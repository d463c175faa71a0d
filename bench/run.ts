/**
 * nbd-ts beside libnbd's C API (and nbdcopy), on the same `nbdkit memory 1G`
 * (filled from `nbdkit pattern` with nbdcopy) over a Unix socket, in the
 * same run. Rounds alternate between the two so that machine noise hits
 * both; each figure is the median of its rounds. CPU time is the whole
 * process's (nbd-ts: main thread and worker) per call.
 *
 *   npm run bench
 *
 * Environment: ROUNDS (5), N (20000 sync calls for lat), CONNECTS (10 per
 * round), RSS_CALLS (1000000), ONLY (a comma-separated list of figures),
 * WARMUP (1: one round first whose figures are dropped; 0: none).
 *
 * The C side is in bench/*.c, compiled here with cc -lnbd.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, getError, type Handle } from "nbd-ts";
import * as nbdAsync from "nbd-ts/async";
import { copyToNull } from "../examples/copy-to-null.js";
import { connectClose } from "./connect.js";

const ROUNDS = Number(process.env.ROUNDS ?? 5);
/**
 * A first round whose figures are dropped, on both sides: nbd-ts's code runs
 * interpreted until V8 has compiled it (its first 1 GiB pass ran 20-40% slower
 * than its later ones), where libnbd's was compiled ahead of time.
 */
const WARMUP = process.env.WARMUP !== "0";
const N = Number(process.env.N ?? 20_000);
const CONNECTS = Number(process.env.CONNECTS ?? 10);
const RSS_CALLS = Number(process.env.RSS_CALLS ?? 1_000_000);
const ONLY = process.env.ONLY?.split(",");
const LAT_SIZE = 4096;
const SEQ_SIZE = 2 * 1024 * 1024;
const AIO_REQ = 256 * 1024;
const AIO_DEPTH = 16;

const dir = mkdtempSync(join(tmpdir(), "nbdts-bench-"));
const socket = join(dir, "sock");
const uri = `nbd+unix:///?socket=${socket}`;
const server = spawn("nbdkit", ["-f", "-U", socket, "memory", "1G"], { stdio: "inherit" });

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const cpuMicros = (u: NodeJS.CpuUsage) => u.user + u.system;
const wanted = (figure: string) => !ONLY || ONLY.includes(figure);

/** Compiles one of the C programs beside this script against libnbd. */
function compile(name: string): string {
  const bin = join(dir, name);
  execFileSync("cc", ["-O2", "-o", bin, fileURLToPath(new URL(`../../bench/${name}.c`, import.meta.url)), "-lnbd"]);
  return bin;
}

/** Runs a C program and returns the numbers it printed. */
const numbers = (bin: string, ...args: (string | number)[]): number[] =>
  execFileSync(bin, args.map(String), { encoding: "utf8" }).trim().split(" ").map(Number);

function must<T>(ret: T, failed: T, what: string): T {
  if (ret === failed) throw new Error(`${what}: ${getError()}`);
  return ret;
}

function connect(): Handle {
  const h = create();
  if (!h) throw new Error(getError() ?? "create failed");
  must(h.connectUnix(socket), -1, "connect_unix");
  return h;
}

// ---- nbd-ts's side of each figure -------------------------------------------------

/** 4 KiB sync preads at random aligned offsets: median µs and CPU µs per call. */
function latency(): [number, number] {
  const h = connect();
  const blocks = Number(h.getSize()) / LAT_SIZE;
  const buf = new Uint8Array(LAT_SIZE);
  const times = new Float64Array(N);
  for (let i = 0; i < 1000; i++) h.pread(buf, Math.floor(Math.random() * blocks) * LAT_SIZE);
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < N; i++) {
    const offset = Math.floor(Math.random() * blocks) * LAT_SIZE;
    const t0 = process.hrtime.bigint();
    must(h.pread(buf, offset), -1, "pread");
    times[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  const cpu = cpuMicros(process.cpuUsage(cpu0)) / N;
  h.close();
  times.sort();
  return [times[N >> 1]!, cpu];
}

/** MB/s of sync pread or pwrite of SEQ_SIZE, in order over the whole export (`shared`: from and into shared memory). */
function sequential(write: boolean, shared = false): number {
  const h = connect();
  const size = Number(h.getSize());
  const buf = new Uint8Array(shared ? new SharedArrayBuffer(SEQ_SIZE) : new ArrayBuffer(SEQ_SIZE));
  buf.forEach((_, i) => (buf[i] = i * 7 + 1)); // in place: map() would make a copy over an ordinary ArrayBuffer
  const t0 = process.hrtime.bigint();
  for (let offset = 0; offset < size; offset += SEQ_SIZE) {
    must(write ? h.pwrite(buf, offset) : h.pread(buf, offset), -1, write ? "pwrite" : "pread");
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  h.close();
  return size / s / 1e6;
}

/** MB/s reading the whole export with aio_pread, AIO_DEPTH in flight, driven by poll (`shared`: into shared memory). */
function aio(shared = false): number {
  const h = connect();
  const size = Number(h.getSize());
  const bufs = Array.from({ length: AIO_DEPTH }, () => new Uint8Array(shared ? new SharedArrayBuffer(AIO_REQ) : new ArrayBuffer(AIO_REQ)));
  let inFlight = 0;
  let offset = 0;
  let slot = 0;
  const done = () => { inFlight--; return 1; };
  const t0 = process.hrtime.bigint();
  while (offset < size || inFlight > 0) {
    while (inFlight < AIO_DEPTH && offset < size) {
      must(h.aioPread(bufs[slot++ % AIO_DEPTH]!, offset, done), -1n, "aio_pread");
      inFlight++;
      offset += AIO_REQ;
    }
    must(h.poll(-1), -1, "poll");
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

/** MB/s of examples/copy-to-null (connect to close, in this process). */
function copy(): number {
  const t0 = process.hrtime.bigint();
  const { size } = copyToNull(uri);
  return size / (Number(process.hrtime.bigint() - t0) / 1e9) / 1e6;
}

/** MB/s of `nbdcopy [OPTIONS] URI null:` (the whole process). */
function nbdcopy(...options: string[]): number {
  const t0 = process.hrtime.bigint();
  execFileSync("nbdcopy", [...options, uri, "null:"]);
  return 1024 ** 3 / (Number(process.hrtime.bigint() - t0) / 1e9) / 1e6;
}

/** connect.ts in a fresh process, as connect.c runs: median ms of create, connect, close. */
const connectFresh = (): number =>
  Number(execFileSync(process.execPath, [fileURLToPath(new URL("connect.js", import.meta.url)), String(CONNECTS)], { encoding: "utf8" }));

/** MiB the resident set grows over RSS_CALLS sync 4 KiB preads, after a warm-up. */
function rss(): number {
  const h = connect();
  const blocks = Number(h.getSize()) / LAT_SIZE;
  const buf = new Uint8Array(LAT_SIZE);
  const read = () => must(h.pread(buf, Math.floor(Math.random() * blocks) * LAT_SIZE), -1, "pread");
  for (let i = 0; i < 20_000; i++) read();
  const rss0 = process.memoryUsage.rss();
  for (let i = 0; i < RSS_CALLS; i++) read();
  const grown = (process.memoryUsage.rss() - rss0) / 2 ** 20;
  h.close();
  return grown;
}

// ---- the run ------------------------------------------------------------------------

interface Row {
  figure: string;
  what: string;
  goal: string;
  c: number[];
  ts: number[];
  digits?: number;
}

const rows: Record<string, Row> = {
  lat: { figure: "lat", what: `${N} sync 4 KiB pread, random offsets: median µs`, goal: "≤ 1.0×", c: [], ts: [] },
  latCpu: { figure: "lat", what: "CPU µs per call (whole process)", goal: "(shown)", c: [], ts: [] },
  seq: { figure: "seq", what: "sync 2 MiB pread over 1 GiB: MB/s", goal: "≥ 0.9×", c: [], ts: [], digits: 0 },
  seqShared: { figure: "seq", what: "the same into a SharedArrayBuffer (no copy): MB/s", goal: "(shown)", c: [], ts: [], digits: 0 },
  write: { figure: "write", what: "sync 2 MiB pwrite over 1 GiB: MB/s", goal: "≥ 0.9×", c: [], ts: [], digits: 0 },
  writeShared: { figure: "write", what: "the same from a SharedArrayBuffer (no copy): MB/s", goal: "(shown)", c: [], ts: [], digits: 0 },
  aio: { figure: "aio", what: "aioPread 256 KiB × 16 + poll over 1 GiB: MB/s", goal: "≥ 1.0×", c: [], ts: [], digits: 0 },
  aioShared: { figure: "aio", what: "the same into SharedArrayBuffers (no copy): MB/s", goal: "(shown)", c: [], ts: [], digits: 0 },
  promise: { figure: "promise", what: "the same, Promise API: MB/s (vs libnbd aio)", goal: "≥ 1.0×", c: [], ts: [], digits: 0 },
  copy: { figure: "copy", what: "1 GiB to null with block status: MB/s (vs nbdcopy)", goal: "≥ 1.0×", c: [], ts: [], digits: 0 },
  copyOne: { figure: "copy", what: "the same vs nbdcopy --connections=1 (one connection, as the example)", goal: "(shown)", c: [], ts: [], digits: 0 },
  connect: { figure: "connect", what: "socket activation of nbdkit + close, in a process of its own as connect.c: median ms", goal: "≤ 1.2×", c: [], ts: [], digits: 2 },
  connectHere: { figure: "connect", what: "the same in the bench process, after the other figures (a bigger process forks slower)", goal: "(shown)", c: [], ts: [], digits: 2 },
  rss: { figure: "rss", what: `RSS growth over ${RSS_CALLS.toLocaleString("en")} sync 4 KiB pread: MiB`, goal: "≤ 16 MiB", c: [], ts: [], digits: 1 },
};

const started = Date.now();
const log = (msg: string) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(0)} s] ${msg}\n`);

try {
  for (let i = 0; !existsSync(socket); i++) {
    if (i > 500) throw new Error("nbdkit did not start");
    sleep(10);
  }
  // Fill the export, so that reads return real data rather than nbdkit's sparse zeroes.
  execFileSync("nbdcopy", ["--", "[", "nbdkit", "pattern", "1G", "]", uri]);
  const bin = {
    lat: compile("pread-latency"),
    seq: compile("seq-io"),
    aio: compile("aio-read"),
    connect: compile("connect"),
  };
  let warming = WARMUP;
  const add = (key: string, c: number, ts: number) => {
    if (warming) return;
    rows[key]!.c.push(c);
    rows[key]!.ts.push(ts);
  };
  for (let r = WARMUP ? -1 : 0; r < ROUNDS; r++) {
    warming = r < 0;
    log(warming ? "warm-up round (dropped)" : `round ${r + 1} of ${ROUNDS}`);
    if (wanted("lat")) {
      const [cLat, cCpu] = numbers(bin.lat, socket, N, LAT_SIZE);
      const [tsLat, tsCpu] = latency();
      add("lat", cLat!, tsLat);
      add("latCpu", cCpu!, tsCpu);
    }
    if (wanted("seq")) {
      const [c] = numbers(bin.seq, socket, "read", SEQ_SIZE);
      add("seq", c!, sequential(false));
      add("seqShared", c!, sequential(false, true));
    }
    if (wanted("write")) {
      const [c] = numbers(bin.seq, socket, "write", SEQ_SIZE);
      add("write", c!, sequential(true));
      add("writeShared", c!, sequential(true, true));
    }
    if (wanted("aio") || wanted("promise")) {
      const [cAio] = numbers(bin.aio, socket, AIO_REQ, AIO_DEPTH);
      if (wanted("aio")) {
        add("aio", cAio!, aio());
        add("aioShared", cAio!, aio(true));
      }
      if (wanted("promise")) add("promise", cAio!, await promise());
    }
    if (wanted("copy")) {
      const ts = copy();
      add("copy", nbdcopy(), ts);
      add("copyOne", nbdcopy("--connections=1"), ts);
    }
    if (wanted("connect")) {
      const [c] = numbers(bin.connect, CONNECTS);
      add("connect", c!, connectFresh());
      add("connectHere", c!, connectClose(CONNECTS));
    }
  }
  warming = false;
  if (wanted("rss")) {
    log(`rss: ${RSS_CALLS} calls each`);
    add("rss", numbers(bin.lat, socket, RSS_CALLS, LAT_SIZE, "rss")[0]! / 1024, rss());
  }
  log("done");

  const cpu = cpus()[0]?.model ?? "unknown CPU";
  console.log(`\nnbd-ts vs libnbd: medians of ${ROUNDS} rounds${WARMUP ? " after a warm-up round" : ""} (rss: one run); ` +
    `nbdkit memory 1G over a Unix socket; ${cpus().length} × ${cpu}, Node ${process.version}\n`);
  console.log("| figure | workload and unit | libnbd | nbd-ts | ratio | goal |");
  console.log("|---|---|--:|--:|--:|---|");
  for (const row of Object.values(rows)) {
    if (!row.ts.length) continue;
    const a = median(row.c);
    const b = median(row.ts);
    const d = row.digits ?? 1;
    const ratio = row.figure === "rss" ? "" : `${(b / a).toFixed(2)}×`;
    console.log(`| ${row.figure} | ${row.what} | ${a.toFixed(d)} | ${b.toFixed(d)} | ${ratio} | ${row.goal} |`);
  }
  console.log(`\n(${((Date.now() - started) / 1000).toFixed(0)} s; copy: libnbd column is nbdcopy's whole process, nbd-ts's is the example's copyToNull in this process)`);
} finally {
  server.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
