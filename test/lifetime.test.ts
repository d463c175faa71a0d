/**
 * What outlives a script: a process that exits without close() (end of
 * script, process.exit, an uncaught exception) still stops the servers its
 * handles started and removes their socket dirs; a script that closes its
 * handles, or never connected, exits by itself. Each case runs a child Node
 * script that imports the built package by absolute path.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { alive, scratchFile, scratchPath, waitFor } from "./helpers.js";
import { RUN_TAG, leftovers, snapshot } from "./leaks.js";
import { create, getError } from "../src/index.js";

const PACKAGE = new URL("../src/index.js", import.meta.url).href;

/**
 * The child: opens one handle per server spec, prints one JSON line per
 * handle ({pid, comm, dir}) once all are connected, then ends as `mode` says.
 */
const CHILD = `
import { create, getError } from ${JSON.stringify(PACKAGE)};
import { readFileSync, readlinkSync } from "node:fs";
import { dirname } from "node:path";

const [mode, specs] = [process.argv[2], JSON.parse(process.argv[3])];
const handles = [];
for (const { how, argv } of specs) {
  const h = create();
  const r = how === "sa" ? h.connectSystemdSocketActivation(argv)
    : how === "cmd" ? h.connectCommand(argv)
    : how === "none" ? 0
    : h.connectCommand(argv) === -1 ? 0 : -1; // "fail": a connect that must fail
  if (r !== 0) { console.error("connect failed: " + getError()); process.exit(3); }
  handles.push(h);
  if (how !== "sa" && how !== "cmd") { console.log(JSON.stringify({ how })); continue; }
  const pid = Number(h.getSubprocessPid());
  const comm = readFileSync("/proc/" + pid + "/comm", "utf8").trim();
  let dir = null;
  if (how === "sa") {
    const inode = readlinkSync("/proc/" + pid + "/fd/3").replace(/\\D/g, "");
    const line = readFileSync("/proc/net/unix", "utf8").split("\\n").find((l) => l.split(/\\s+/)[6] === inode);
    dir = dirname(line.split(/\\s+/)[7]);
  }
  const buf = new Uint8Array(512);
  if (h.pread(buf, 0) !== 0) { console.error("pread failed: " + getError()); process.exit(3); }
  console.log(JSON.stringify({ how, pid, comm, dir }));
}
if (mode === "exit") process.exit(0);
if (mode === "throw") throw new Error("uncaught, on purpose");
if (mode === "signal") process.kill(process.pid, "SIGTERM");
if (mode === "close") for (const h of handles) h.close();
// "end": the script just ends, handles open.
`;

const script = scratchPath("child.mjs");
writeFileSync(script, CHILD);

interface Spec { how: "sa" | "cmd" | "none" | "fail"; argv: string[] }
interface Started { how: string; pid: number; comm: string; dir: string | null }

const raw = scratchFile("lifetime.raw", 1024 * 1024);
// nbdkit -f, plain qemu-nbd and nbdkit -s also end once their client is gone
// (as under libnbd); qemu-nbd -t does not, so only the exit hook stops it.
const SERVERS: (Spec & { comm: string })[] = [
  { how: "sa", argv: ["nbdkit", "-f", "memory", "size=1M"], comm: "nbdkit" },
  { how: "sa", argv: ["qemu-nbd", "-f", "raw", raw], comm: "qemu-nbd" },
  { how: "sa", argv: ["qemu-nbd", "-t", "-f", "raw", raw], comm: "qemu-nbd" },
  { how: "cmd", argv: ["nbdkit", "-s", "memory", "size=1M"], comm: "nbdkit" },
];

/**
 * Runs the child script. Its stdout (which activated servers inherit) goes to
 * a file, so a surviving server cannot keep spawnSync waiting on a pipe;
 * stderr is a pipe, which the servers do not inherit (theirs is the worker's).
 */
function runChild(mode: string, specs: Spec[]): {
  status: number | null; signal: string | null; ms: number; started: Started[]; stderr: string;
} {
  const out = scratchPath(`child-${mode}.out`);
  const fd = openSync(out, "w");
  const start = Date.now();
  let r;
  try {
    r = spawnSync(process.execPath, [script, mode, JSON.stringify(specs)], {
      stdio: ["ignore", fd, "pipe"], encoding: "utf8", timeout: 30_000,
    });
  } finally {
    closeSync(fd);
  }
  const ms = Date.now() - start;
  const started = readFileSync(out, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Started);
  return { status: r.status, signal: r.signal, ms, started, stderr: r.stderr };
}

/** The servers a child started: the ones asked for, each a live pid of the right program while it ran. */
function checkStarted(started: Started[]): void {
  assert.is(started.length, SERVERS.length, `the child printed ${started.length} servers`);
  started.forEach((s, i) => {
    assert.is(s.how, SERVERS[i]!.how);
    assert.is(s.comm, SERVERS[i]!.comm, `server ${i} ran ${s.comm}`);
    assert.ok(s.pid > 0);
    if (s.how === "sa") assert.match(s.dir ?? "", /^\/tmp\/nbd-ts-[^/]+$/);
    else assert.is(s.dir, null);
  });
}

/** None of them lives on, and their socket dirs are gone. */
function checkGone(started: Started[]): void {
  for (const s of started) {
    waitFor(() => !alive(s.pid), 5000, `${s.comm} ${s.pid} (${s.how}) to exit after its client process did`);
    if (s.dir) assert.not.ok(existsSync(s.dir), `${s.dir} outlived the process`);
  }
}

for (const [mode, status, what] of [
  ["end", 0, "the script ends with its handles open"],
  ["exit", 0, "the script calls process.exit(0) with its handles open"],
  ["throw", 1, "the script dies of an uncaught exception with its handles open"],
] as const) {
  test(`${what}: its servers stop and their socket dirs go`, () => {
    const r = runChild(mode, SERVERS);
    assert.is(r.signal, null, `the child was killed by ${r.signal} after ${r.ms} ms`);
    assert.is(r.status, status, r.stderr);
    assert.ok(r.ms < 15_000, `the child took ${r.ms} ms to exit`);
    checkStarted(r.started);
    checkGone(r.started);
  });
}

test("a script killed by SIGTERM runs no code (README): servers that end with their client end, as under libnbd", () => {
  const r = runChild("signal", SERVERS);
  assert.is(r.signal, "SIGTERM", r.stderr);
  checkStarted(r.started);
  try {
    for (const [i, s] of r.started.entries()) {
      if (SERVERS[i]!.argv.includes("-t")) continue; // persistent: it waits for the next client
      waitFor(() => !alive(s.pid), 5000, `${s.comm} ${s.pid} (${s.how}) to exit after its client was killed`);
    }
  } finally {
    // What no code ran to stop: qemu-nbd -t, and the socket dirs (libnbd leaves its own too).
    for (const s of r.started) {
      if (alive(s.pid)) process.kill(s.pid, "SIGTERM");
      if (s.dir) rmSync(s.dir, { recursive: true, force: true });
    }
  }
});

test("a script that closes its handles exits by itself, promptly, with its servers already gone", () => {
  const r = runChild("close", SERVERS);
  assert.is(r.signal, null, `the child was killed by ${r.signal} after ${r.ms} ms: it did not exit by itself`);
  assert.is(r.status, 0, r.stderr);
  assert.ok(r.ms < 10_000, `the child took ${r.ms} ms to exit`);
  checkStarted(r.started);
  for (const s of r.started) {
    assert.not.ok(alive(s.pid), `${s.comm} ${s.pid} outlived close()`);
    if (s.dir) assert.not.ok(existsSync(s.dir), `${s.dir} outlived close()`);
  }
});

test("a script whose handles never connected, or failed to, exits by itself", () => {
  for (const mode of ["end", "close"]) {
    const r = runChild(mode, [{ how: "none", argv: [] }, { how: "fail", argv: ["/nonexistent/prog"] }]);
    assert.is(r.signal, null, `${mode}: the child was killed by ${r.signal} after ${r.ms} ms`);
    assert.is(r.status, 0, `${mode}: status ${r.status}: ${r.stderr}`);
    assert.ok(r.ms < 10_000, `${mode}: the child took ${r.ms} ms to exit`);
    assert.equal(r.started.map((s) => s.how), ["none", "fail"]);
  }
});

test("Promise API: a process that exits while a socket-activated server is still in its handshake stops it", () => {
  // nbdkit's delay filter holds the handshake for 10 s; the script exits after 300 ms.
  const asyncPackage = new URL("../src/async.js", import.meta.url).href;
  const child = scratchPath("exit-mid-connect.mjs");
  writeFileSync(child, `
import { create } from ${JSON.stringify(asyncPackage)};
const h = create();
h.connectSystemdSocketActivation(["nbdkit", "-f", "--filter=delay", "memory", "1M", "delay-open=10"]).catch(() => {});
setTimeout(() => process.exit(0), 300);
`);
  const before = snapshot();
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [child], { encoding: "utf8", timeout: 30_000 });
  assert.is(r.status, 0, r.stderr);
  assert.ok(Date.now() - t0 < 5_000, "the script exits at once, not after the handshake");
  assert.equal(leftovers(before, 5_000), [], "no server or socket dir outlives the script");
});

test("the leak check blames a run only for its own servers and socket dirs (runs side by side)", () => {
  const before = snapshot();
  const mine = process.env[RUN_TAG] ?? "this run";
  process.env[RUN_TAG] = "another run";
  const h = create()!;
  try {
    assert.is(h.connectSystemdSocketActivation(["nbdkit", "memory", "1M"]), 0, getError() ?? "");
  } finally {
    process.env[RUN_TAG] = mine;
  }
  const theirs = leftovers(before, 0);
  process.env[RUN_TAG] = "another run";
  const asThem = leftovers(before, 0);
  process.env[RUN_TAG] = mine;
  h.close();
  assert.equal(theirs, [], "another run's server and socket dir are not this run's leftovers");
  assert.is(asThem.length, 2, `that run sees both as its own: ${asThem.join(", ")}`);
  assert.ok(asThem.some((l) => l.startsWith("nbdkit")) && asThem.some((l) => l.startsWith("/tmp/nbd-ts-")));
  assert.equal(leftovers(before, 2_000), [], "close removed both");
});

test.run();
