/**
 * What a worker crash does (the bridge's own failure mode): the call in
 * progress fails, every handle of that worker is DEAD from then on (-1 and
 * EINVAL, never a throw or a hang), the servers those handles started are
 * stopped, and a new create() starts a fresh worker that works. The crash is
 * asked for through a test-only hook, enabled by NBD_TS_TEST_HOOKS=1 in a
 * child process.
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { alive, scratchPath, waitFor } from "./helpers.js";

const dist = new URL("../src/", import.meta.url).href;

const CHILD = `
import { create, getError, getErrno } from "${dist}index.js";
import { cross } from "${dist}bridge.js";
const out = {};
const h = create();
out.connect = h.connectSystemdSocketActivation(["qemu-nbd", "-t", "-f", "raw", process.argv[2]]);
out.pid = Number(h.getSubprocessPid());
const crash = cross(0, "__exit__", [], {});
out.crash = crash instanceof Error;
out.pread = h.pread(new Uint8Array(512), 0);
out.preadErr = [getError(), getErrno()];
out.size = String(h.getSize());
out.dead = h.aioIsDead();
out.ready = h.aioIsReady();
h.close();
const g = create();
out.fresh = g !== null;
out.connect2 = g.connectCommand(["nbdkit", "-s", "--exit-with-parent", "pattern", "size=1M"]);
const buf = new Uint8Array(16);
out.pread2 = g.pread(buf, 8);
out.word = new DataView(buf.buffer).getBigUint64(0).toString();
g.close();
console.log(JSON.stringify(out));
`;

test("a worker crash: its handles die cleanly, their servers stop, a new handle gets a fresh worker", () => {
  const script = scratchPath("crash.mjs");
  const disk = scratchPath("disk.raw");
  writeFileSync(script, CHILD);
  writeFileSync(disk, new Uint8Array(1 << 20));
  const r = spawnSync(process.execPath, [script, disk], {
    encoding: "utf8", timeout: 60_000, env: { ...process.env, NBD_TS_TEST_HOOKS: "1" },
  });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
  assert.is(out.connect, 0);
  assert.ok(out.crash, "the crashing call fails");
  assert.is(out.pread, -1);
  assert.equal(out.preadErr, ["nbd_pread: invalid state: DEAD: the worker thread that ran this handle died: Invalid argument", 22]);
  assert.is(out.size, "-1", "every call of a dead handle fails");
  assert.is(out.dead, 1);
  assert.is(out.ready, 0);
  // qemu-nbd -t outlives its client: only the crash clean-up can have stopped it.
  waitFor(() => !alive(out.pid), 5000, `qemu-nbd ${out.pid} to be stopped`);
  assert.ok(out.fresh, "create() after the crash");
  assert.is(out.connect2, 0);
  assert.is(out.pread2, 0);
  assert.is(out.word, "8", "the fresh worker reads nbdkit's pattern");
});

test("without NBD_TS_TEST_HOOKS the hook does nothing: the call is an unknown one, not a crash", () => {
  const script = scratchPath("nohook.mjs");
  writeFileSync(script, `
import { create, getErrno } from "${dist}index.js";
import { cross } from "${dist}bridge.js";
const h = create();
const r = cross(0, "__exit__", [], {});
console.log(JSON.stringify({ error: r instanceof Error, ret: r.ret, size: h.setExportName("x"), name: h.getExportName() }));
h.close();
`);
  const env = { ...process.env };
  delete env.NBD_TS_TEST_HOOKS;
  const r = spawnSync(process.execPath, [script], { encoding: "utf8", timeout: 60_000, env });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim());
  assert.is(out.error, false);
  assert.is(out.ret, -1, "no handle 0 in the worker");
  assert.is(out.size, 0);
  assert.is(out.name, "x", "the worker still serves its handles");
});

test.run();
