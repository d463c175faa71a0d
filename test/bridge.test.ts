/**
 * The bridge's own mechanics (src/bridge.ts, channel.ts, wire.ts, serve.ts):
 * values of every kind cross both ways intact, also those too large for the
 * shared areas (they go as a message); a blocking call works in the caller's
 * own shared memory in place; the caller's spin can be turned off; a call
 * the caller gives up on (NBD_TS_BRIDGE_TIMEOUT_MS) fails with ETIMEDOUT and
 * its late reply confuses nothing;
 * a long call is not taken for a wedged worker (the worker's heartbeat),
 * while a wedged worker is found, stopped and replaced within the stall
 * bound; a worker that cannot load its module fails create() at once.
 */
import { spawnSync } from "node:child_process";
import { cpSync, writeFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { CONTEXT_BASE_ALLOCATION, getErrno, getError } from "nbd-ts";
import { errno } from "../src/errno.js";
import { pattern, scratchPath } from "./helpers.js";
import { nbdkit, newHandle } from "./handles.js";

const dist = new URL("../src/", import.meta.url).href;

/** Runs `code` (an ES module that may import nbd-ts as "nbd") in a child; what it printed last, parsed. */
function child(code: string, env: NodeJS.ProcessEnv = {}) {
  const script = scratchPath(`child-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(script, code.replaceAll('"nbd"', JSON.stringify(`${dist}index.js`)).replaceAll('"bridge"', JSON.stringify(`${dist}bridge.js`)));
  const r = spawnSync(process.execPath, [script], { encoding: "utf8", timeout: 60_000, env: { ...process.env, ...env } });
  assert.is(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

test("strings of any size and script cross both ways intact, beyond the shared areas too (64 KiB out, 256 KiB back)", () => {
  const h = newHandle();
  for (const name of ["", "é€😀 ∑ñ", "x".repeat(100_000), "ü".repeat(200_000)]) {
    assert.is(h.setHandleName(name), 0, getError()!);
    assert.is(h.getHandleName(), name);
  }
  // A value the shared area cannot hold (a bigint beyond 64 bits) still reaches the worker's checks.
  assert.is(h.setExportName("x"), 0);
  const g = nbdkit(["memory", "size=1M"]);
  assert.is(g.pread(new Uint8Array(512), 2n ** 70n), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.match(getError()!, /^nbd_pread: offset: expected an integer from 0 to 2\^64-1, got 1180591620717411303424/);
});

test("a reply larger than the shared area (block status with 32768 extents) comes whole", () => {
  // A 32 KiB page of data every 64 KiB: data and hole extents alternate over 1 GiB.
  const h = nbdkit(["data", "( 1 @+65535 )*16384"], (h) => h.addMetaContext(CONTEXT_BASE_ALLOCATION));
  const entries: number[] = [];
  assert.is(h.blockStatus(1 << 30, 0, (_ctx, _off, e) => (entries.push(...e), 0)), 0, getError()!);
  assert.is(entries.length, 2 * 32768, "length and flags of each extent");
  for (let i = 0; i < entries.length; i += 4) {
    assert.equal(entries.slice(i, i + 4), [32768, 0, 32768, 3], `extents ${i / 2} and ${i / 2 + 1}`);
  }
});

test("blocking reads and writes use the caller's shared memory in place: only the view is touched; failures leave zeroes", () => {
  const h = nbdkit(["--filter=error", "pattern", "size=1M", "error-pread-rate=1", "error-pread-file=" + scratchPath("fail")]);
  const sab = new SharedArrayBuffer(3 * 4096);
  const around = new Uint8Array(sab).fill(0x55);
  const view = new Uint8Array(sab, 4096, 4096);
  assert.is(h.pread(view, 8192), 0, getError()!);
  assert.equal(view, pattern(8192, 4096));
  assert.ok(around.subarray(0, 4096).every((b) => b === 0x55) && around.subarray(8192).every((b) => b === 0x55), "bytes around the view untouched");
  // The chunk callback sees the caller's own memory.
  let same = false;
  assert.is(h.preadStructured(view, 0, (sub) => ((same = sub.buffer === sab && sub.byteOffset >= 4096), 0)), 0, getError()!);
  assert.ok(same);
  assert.equal(view, pattern(0, 4096));
  // A read the server fails (the error filter, once its file exists) leaves zeroes, as pread_initialize asks.
  writeFileSync(scratchPath("fail"), "");
  assert.is(h.pread(view, 0), -1);
  assert.is(getErrno(), errno.EIO);
  assert.equal(view, new Uint8Array(4096));
  // Refused before it is sent (out of bounds): zeroes too.
  view.fill(1);
  assert.is(h.pread(view, 1 << 20), -1);
  assert.equal(view, new Uint8Array(4096));
  const w = nbdkit(["memory", "size=1M"]);
  const data = new Uint8Array(new SharedArrayBuffer(8192), 1000, 5000);
  data.set(pattern(77, 5000));
  assert.is(w.pwrite(data, 123), 0, getError()!);
  const back = new Uint8Array(5000);
  assert.is(w.pread(back, 123), 0);
  assert.equal(back, pattern(77, 5000));
});

test("with NBD_TS_SPIN_US=0 the caller never spins: calls still work", () => {
  const out = child(`
    import { create } from "nbd";
    const h = create();
    const r = [h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "pattern", "size=1M"])];
    const buf = new Uint8Array(8);
    for (let i = 0; i < 200; i++) r.push(h.pread(buf, 8 * i));
    h.close();
    console.log(JSON.stringify({ ok: r.every((x) => x === 0), last: new DataView(buf.buffer).getBigUint64(0).toString() }));
  `, { NBD_TS_SPIN_US: "0" });
  assert.equal(out, { ok: true, last: String(8 * 199) });
});

test("a call past the bridge timeout fails with ETIMEDOUT; its late reply is dropped, other calls go on", () => {
  const out = child(`
    import { create, getError, getErrno } from "nbd";
    const slow = create();
    slow.connectCommand(["nbdkit", "-s", "--exit-with-parent", "--filter=delay", "pattern", "size=1M", "delay-read=1"]);
    const fast = create();
    fast.connectCommand(["nbdkit", "-s", "--exit-with-parent", "pattern", "size=1M"]);
    const out = {};
    let t = Date.now();
    out.slow = [slow.pread(new Uint8Array(8), 0), getError(), getErrno(), Date.now() - t];
    const buf = new Uint8Array(8);
    const word = () => new DataView(buf.buffer).getBigUint64(0).toString();
    out.fast = [fast.pread(buf, 64), word()];
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500); // the slow reply comes, to no one
    out.after = [fast.pread(buf, 128), word(), String(slow.getSize()), slow.aioIsReady()];
    slow.close();
    fast.close();
    console.log(JSON.stringify(out));
  `, { NBD_TS_BRIDGE_TIMEOUT_MS: "400" });
  assert.is(out.slow[0], -1);
  assert.match(out.slow[1], /^nbd_pread: no answer from the worker thread within 400 ms/);
  assert.is(out.slow[2], errno.ETIMEDOUT);
  assert.ok(out.slow[3] >= 400 && out.slow[3] < 900, `gave up after ${out.slow[3]} ms`);
  assert.equal(out.fast, [0, "64"]);
  assert.equal(out.after, [0, "128", "1048576", 1]);
});

test("a call longer than the stall bound is not a stall: the worker's heartbeat goes on while it waits", () => {
  const out = child(`
    import { create, getError } from "nbd";
    const h = create();
    h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "--filter=delay", "memory", "size=1M", "delay-read=2"]);
    const t = Date.now();
    const r = h.pread(new Uint8Array(512), 0);
    console.log(JSON.stringify({ r, err: getError(), ms: Date.now() - t, dead: h.aioIsDead() }));
    h.close();
  `, { NBD_TS_WORKER_STALL_MS: "700" });
  assert.is(out.r, 0, out.err);
  assert.ok(out.ms >= 1900, `took ${out.ms} ms`);
  assert.is(out.dead, 0);
});

test("a wedged worker: the call fails within the stall bound, its handles are DEAD, a new handle gets a fresh worker", () => {
  const out = child(`
    import { create, getError, getErrno } from "nbd";
    import { cross } from "bridge";
    const h = create();
    // A read the server answers after a second: the worker wedges (300 ms after the hook) while it waits.
    h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "--filter=delay", "pattern", "size=1M", "delay-read=1"]);
    const out = { hook: cross(0, "__die__", ["hang", 300], {}).ret };
    const t = Date.now();
    out.pread = h.pread(new Uint8Array(8), 0);
    out.ms = Date.now() - t;
    out.err = [getError(), getErrno()];
    out.size = String(h.getSize());
    out.deadErr = [getError(), getErrno()];
    out.dead = h.aioIsDead();
    h.close();
    const g = create();
    out.connect = g.connectCommand(["nbdkit", "-s", "--exit-with-parent", "pattern", "size=1M"]);
    const buf = new Uint8Array(8);
    out.pread2 = g.pread(buf, 16);
    out.word = new DataView(buf.buffer).getBigUint64(0).toString();
    g.close();
    console.log(JSON.stringify(out));
  `, { NBD_TS_TEST_HOOKS: "1", NBD_TS_WORKER_STALL_MS: "1000" });
  assert.is(out.hook, 0, "the hook is armed");
  assert.is(out.pread, -1);
  assert.equal(out.err, ["nbd_pread: the worker thread did not answer for 1000 ms and was stopped", errno.EIO]);
  assert.ok(out.ms >= 1000 && out.ms < 5000, `found after ${out.ms} ms`);
  assert.is(out.size, "-1");
  assert.equal(out.deadErr, ["nbd_get_size: invalid state: DEAD: the worker thread that ran this handle died: Invalid argument", errno.EINVAL]);
  assert.is(out.dead, 1);
  assert.is(out.connect, 0);
  assert.is(out.pread2, 0);
  assert.is(out.word, "16");
});

test("a worker whose module does not load: create() fails at once with the reason (EIO), and again after", () => {
  // A copy of the library without its worker file beside it.
  const copy = scratchPath("no-worker");
  cpSync(new URL("../src/", import.meta.url), `${copy}/src`, { recursive: true });
  writeFileSync(`${copy}/package.json`, JSON.stringify({ type: "module" }));
  const out = child(`
    import { create, getError, getErrno } from ${JSON.stringify(`${copy}/src/index.js`)};
    const t = Date.now();
    const h = create();
    const first = [h, getError(), getErrno(), Date.now() - t];
    const g = create();
    console.log(JSON.stringify({ first, second: [g, getError()] }));
  `);
  assert.is(out.first[0], null);
  assert.match(out.first[1], /^nbd_create: the worker thread died: Cannot find module '.*no-worker\/workers\/nbd-worker\.js'/);
  assert.is(out.first[2], errno.EIO);
  assert.ok(out.first[3] < 5000, `took ${out.first[3]} ms`);
  assert.equal(out.second[0], null);
  assert.match(out.second[1], /^nbd_create: the worker thread died: Cannot find module/);
});

test.run();
