/**
 * What a worker death does (the bridge's own failure mode), for each way a
 * worker can die while a call is in flight: process.exit in it, an uncaught
 * exception, running out of memory, and looping forever (wedged). The call
 * in progress fails within seconds (EIO, with what happened), every handle
 * of that worker is DEAD from then on (every call -1 or null with EINVAL,
 * never a throw or a hang), the servers those handles started are stopped,
 * a new create() starts a fresh worker that works, and the process exits
 * normally afterwards. The death is asked for through a test-only hook,
 * enabled by NBD_TS_TEST_HOOKS=1 in a child process.
 */
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { alive, scratchPath, waitFor } from "./helpers.js";

const dist = new URL("../src/", import.meta.url).href;
const testDist = new URL("./", import.meta.url).href;
/** How long a silent worker is waited for in these children (the default is 5 s). */
const STALL_MS = 1500;

const CHILD = `
import { create, getError, getErrno } from "${dist}index.js";
import { cross } from "${dist}bridge.js";
import { calls, plausibleArgs, errorValue } from "${testDist}table-args.js";
const [how, disk] = process.argv.slice(2);
const out = {};
// Two handles on the worker: a socket-activated qemu-nbd -t (which outlives its
// client, so only the clean-up can stop it) and a slow nbdkit behind connect_command.
const h = create();
out.connect = h.connectSystemdSocketActivation(["qemu-nbd", "-t", "-f", "raw", disk]);
out.pids = [Number(h.getSubprocessPid())];
const g = create();
out.connect2 = g.connectCommand(["nbdkit", "-s", "--filter=delay", "memory", "size=1M", "delay-read=10"]);
out.pids.push(Number(g.getSubprocessPid()));
out.hook = cross(0, "__die__", [how, 300], {}).ret;
const t = Date.now();
out.pread = g.pread(new Uint8Array(512), 0);
out.ms = Date.now() - t;
out.preadErr = [getError(), getErrno()];
// Every call of a dead handle: its error value and EINVAL, or a state query's answer.
out.bad = [];
for (const handle of [h, g]) {
  for (const [name, call] of calls) {
    const ret = handle[name](...plausibleArgs(call));
    if (name.startsWith("aioIs")) {
      if (ret !== (name === "aioIsDead" ? 1 : 0)) out.bad.push(name + " = " + ret);
    } else if (ret !== errorValue(call) || getErrno() !== 22 || !getError().startsWith("nbd_")) {
      out.bad.push(name + " = " + String(ret) + ": " + getError());
    }
  }
}
out.deadErr = (h.getSize(), getError());
h.close();
g.close();
const f = create();
out.fresh = f !== null;
out.connect3 = f.connectCommand(["nbdkit", "-s", "--exit-with-parent", "pattern", "size=1M"]);
const buf = new Uint8Array(16);
out.pread3 = f.pread(buf, 8);
out.word = new DataView(buf.buffer).getBigUint64(0).toString();
f.close();
console.log(JSON.stringify(out));
`;

const script = scratchPath("die.mjs");
const disk = scratchPath("disk.raw");
writeFileSync(script, CHILD);
writeFileSync(disk, new Uint8Array(1 << 20));

const figures: string[] = [];

for (const [how, message, nodeArgs] of [
  ["exit", "the worker thread died: Worker exited with code 70", []],
  ["throw", "the worker thread died: nbd-ts test hook: uncaught exception in the worker", []],
  ["oom", `the worker thread did not answer for ${STALL_MS} ms and was stopped`, ["--max-old-space-size=64"]],
  ["hang", `the worker thread did not answer for ${STALL_MS} ms and was stopped`, []],
] as const) {
  test(`the worker dies (${how}) during a pread: the call fails, its handles are dead, their servers stop, a new handle works`, () => {
    const r = spawnSync(process.execPath, [...nodeArgs, script, how, disk], {
      encoding: "utf8", timeout: 60_000,
      env: { ...process.env, NBD_TS_TEST_HOOKS: "1", NBD_TS_WORKER_STALL_MS: String(STALL_MS) },
    });
    assert.is(r.signal, null, `the child was killed by ${r.signal}: ${r.stderr}`);
    assert.is(r.status, 0, `the child exited normally: ${r.stderr}`);
    assert.not.match(r.stderr, /Unhandled|ERR_WORKER/, "no late error event from the dead worker");
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assert.is(out.connect, 0);
    assert.is(out.connect2, 0);
    assert.is(out.hook, 0, "the hook is armed");
    assert.is(out.pread, -1);
    assert.equal(out.preadErr, [`nbd_pread: ${message}`, 5], "EIO, saying what happened");
    const bound = how === "oom" || how === "hang" ? STALL_MS + 3000 : 2000;
    assert.ok(out.ms < bound, `the pread returned after ${out.ms} ms`);
    figures.push(`${how}: ${out.ms} ms`);
    assert.equal(out.bad, [], "every call of a dead handle fails with EINVAL");
    assert.is(out.deadErr, "nbd_get_size: invalid state: DEAD: the worker thread that ran this handle died: Invalid argument");
    for (const pid of out.pids) waitFor(() => !alive(pid), 5000, `server ${pid} to be stopped`);
    assert.ok(out.fresh, "create() after the death");
    assert.is(out.connect3, 0);
    assert.is(out.pread3, 0);
    assert.is(out.word, "8", "the fresh worker reads nbdkit's pattern");
  });
}

test("without NBD_TS_TEST_HOOKS the hook does nothing: the call is an unknown one, not a death", () => {
  const nohook = scratchPath("nohook.mjs");
  writeFileSync(nohook, `
import { create, getErrno } from "${dist}index.js";
import { cross } from "${dist}bridge.js";
const h = create();
const r = cross(0, "__die__", ["exit", 0], {});
console.log(JSON.stringify({ error: r instanceof Error, ret: r.ret, size: h.setExportName("x"), name: h.getExportName() }));
h.close();
`);
  const env = { ...process.env };
  delete env.NBD_TS_TEST_HOOKS;
  const r = spawnSync(process.execPath, [nohook], { encoding: "utf8", timeout: 60_000, env });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim());
  assert.is(out.error, false);
  assert.is(out.ret, -1, "no handle 0 in the worker");
  assert.is(out.size, 0);
  assert.is(out.name, "x", "the worker still serves its handles");
});

test("a call longer than the stall bound is not mistaken for a dead worker (the worker's heartbeat)", () => {
  const slow = scratchPath("slow.mjs");
  writeFileSync(slow, `
import { create, getError } from "${dist}index.js";
const h = create();
h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "--filter=delay", "memory", "size=1M", "delay-read=2"]);
const t = Date.now();
const r = h.pread(new Uint8Array(512), 0);
console.log(JSON.stringify({ r, err: getError(), ms: Date.now() - t, ready: h.aioIsReady() }));
h.close();
`);
  // A stall bound below the call's length: only the heartbeat keeps the worker alive.
  const r = spawnSync(process.execPath, [slow], {
    encoding: "utf8", timeout: 60_000, env: { ...process.env, NBD_TS_WORKER_STALL_MS: "1000" },
  });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim());
  assert.is(out.r, 0, String(out.err));
  assert.ok(out.ms >= 1900, `${out.ms} ms`);
  assert.is(out.ready, 1);
});

test("a stderr pipe read late (debug lines, a chatty server) holds the worker back but does not kill it; nothing is lost", () => {
  // Node makes a stdio pipe non-blocking: once full, a write fails with EAGAIN, which used to throw in
  // the worker and kill it. The reader here starts 1 s late, after more than a pipe's worth was written.
  const chatty = scratchPath("chatty.mjs");
  const result = scratchPath("chatty.json");
  writeFileSync(chatty, `
import { readFileSync, writeFileSync } from "node:fs";
import { create, getError } from "${dist}index.js";
const h = create();
h.setHandleName("n".repeat(4000));
h.setDebug(true);
let ret = 0;
for (let i = 0; i < 100 && ret === 0; i++) ret = h.setExportName("x");
const out = { debug: ret, err: getError() };
h.setDebug(false);
out.connect = h.connectCommand(["sh", "-c", "head -c 300000 /dev/zero | tr '\\\\0' x >&2; exec nbdkit -s --exit-with-parent null size=1M"]);
out.size = String(h.getSize());
out.err2 = getError();
h.close();
writeFileSync(${JSON.stringify(result)}, JSON.stringify(out));
`);
  const r = spawnSync("sh", ["-c", `"${process.execPath}" "${chatty}" 2>&1 >/dev/null | (sleep 1; wc -c)`], { encoding: "utf8", timeout: 60_000 });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(readFileSync(result, "utf8"));
  assert.is(out.debug, 0, `debug lines to a full pipe: ${out.err}`);
  assert.is(out.connect, 0, `a server writing 300 kB to a full pipe: ${out.err2}`);
  assert.is(out.size, "1048576");
  const debugLine = "libnbd: debug: " + "n".repeat(4000) + ": nbd_set_export_name: enter: export_name=\"x\"\n";
  assert.ok(Number(r.stdout.trim()) >= 100 * debugLine.length + 300_000, `every byte arrived: ${r.stdout.trim()}`);
});

test.after(() => {
  if (process.env.FAULT_FIGURES) console.log(`\n# worker death, time for the pending pread to return: ${figures.join(", ")}`);
});

test.run();
