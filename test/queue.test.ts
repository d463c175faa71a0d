/**
 * Queued aio (handle.ts queue(), dispatch.ts issueQueued): aio_pread and
 * aio_pwrite that the handle's last reply shows would pass the checks
 * return their cookie without crossing to the worker. What must hold: the
 * cookies are the ones libnbd gives for the same calls (python3-libnbd
 * 1.14), mixed with calls that cross; queued commands reach the server in
 * order and before anything asked later; every buffer, plain or shared, and
 * more shared ones than the worker keeps by number, gets its own data; a
 * command queued after the server died while the handle was idle behaves as
 * libnbd's (a cookie, DEAD, then ENOTCONN) and leaves its buffer zeroed;
 * what cannot be queued (out of bounds, flags, a closed handle) fails at
 * once, as before.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { CMD_FLAG_FUA, getErrno, getError, type Handle } from "nbd-ts";
import { bridgeStats } from "../src/bridge.js";
import { errno } from "../src/errno.js";
import { pattern, sleep } from "./helpers.js";
import { NBDKIT, fails, nbdkit } from "./handles.js";
import { python as oracle } from "./libnbd.js";

const SIGKILL = 9;

const python = (script: string): number[] => oracle(`import json, nbd, signal, time\n${script}`);

/** Polls until every cookie's command has completed; the errno each ended with (0: success). A lost command fails, never hangs. */
function outcomes(h: Handle, cookies: bigint[]): number[] {
  return cookies.map((c) => {
    for (let i = 0; i < 10_000; i++) {
      const r = h.aioCommandCompleted(c);
      if (r === 1) return 0;
      if (r === -1) return getErrno();
      const p = h.poll(10_000);
      assert.ok(p === 1, `poll: ${p} ${getError()} waiting for command ${c} (${h.aioInFlight()} in flight)`);
    }
    throw new Error(`command ${c} never completed`);
  });
}

/** The calls crossed and commands queued while `f` ran. */
function counted<T>(f: () => T): { value: T; crossed: number; queued: number } {
  const { crossed, queued } = bridgeStats;
  const value = f();
  return { value, crossed: bridgeStats.crossed - crossed, queued: bridgeStats.queued - queued };
}

test("cookies: queued commands take the cookies libnbd gives, between those of calls that cross", () => {
  const h = nbdkit(["memory", "size=1M"]);
  const shared = new Uint8Array(new SharedArrayBuffer(4096));
  const plain = new Uint8Array(4096);
  const ops = (): bigint[] => [
    h.aioPread(shared, 0),
    h.aioPread(shared, 4096),
    h.aioPwrite(plain, 8192),
    h.aioFlush(),
    h.aioPread(plain, 0),
    BigInt(h.pread(plain, 0)),
    h.aioPwrite(shared, 12288, undefined, CMD_FLAG_FUA), // flags: it crosses
    h.aioPread(shared, 0),
  ];
  const { value: got, queued, crossed } = counted(ops);
  assert.equal([queued, crossed], [5, 3], "flush, pread and the write with a flag cross; the rest are queued");
  outcomes(h, got.filter((c) => c > 0n));
  const expected = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
b = nbd.Buffer(4096)
got = [h.aio_pread(b, 0), h.aio_pread(b, 4096), h.aio_pwrite(b, 8192), h.aio_flush(), h.aio_pread(b, 0)]
h.pread(4096, 0)
got += [0, h.aio_pwrite(b, 12288, flags=nbd.CMD_FLAG_FUA), h.aio_pread(b, 0)]
print(json.dumps(got))
`);
  assert.equal(got.map(Number), expected);
});

test("order: queued writes reach a one-at-a-time server before a later read, and the data is right", () => {
  const h = nbdkit(["--filter=noparallel", "memory", "size=4M"]);
  const bufs = Array.from({ length: 16 }, (_, i) => pattern(i * 65536, 65536));
  const { value: cookies, queued } = counted(() => bufs.map((b, i) => h.aioPwrite(b, i * 65536)));
  assert.is(queued, 16);
  const back = new Uint8Array(16 * 65536);
  assert.is(h.pread(back, 0), 0, getError()!); // behind the writes: noparallel runs them in order
  assert.equal(back, pattern(0, 16 * 65536));
  assert.equal(outcomes(h, cookies), new Array(16).fill(0));
});

test("buffers: 100 shared buffers (more than the worker keeps by number) and 100 plain ones each get their own data", () => {
  const h = nbdkit(["pattern", "size=64M"]);
  for (const shared of [true, false]) {
    const bufs = Array.from({ length: 100 }, () => (shared ? new Uint8Array(new SharedArrayBuffer(8192)) : new Uint8Array(8192)));
    const cookies: bigint[] = [];
    const done: number[] = [];
    bufs.forEach((b, i) => {
      cookies.push(h.aioPread(b, i * 65536, (err) => (done.push(i), err.value)));
      if (i % 16 === 15) h.poll(0);
    });
    assert.equal(outcomes(h, cookies), new Array(100).fill(0));
    assert.is(done.length, 100, "every completion callback ran once");
    bufs.forEach((b, i) => assert.equal(b, pattern(i * 65536, 8192), `buffer ${i} (${shared ? "shared" : "plain"})`));
  }
});

test("a command queued after the server died while the handle was idle: a cookie, DEAD, then ENOTCONN, as libnbd", () => {
  const h = nbdkit(["memory", "size=1M"]);
  const buf = new Uint8Array(512).fill(0xee);
  outcomes(h, [h.aioPwrite(buf, 0)]);
  outcomes(h, [h.aioPread(buf, 0)]); // the staging buffer now holds 0xee
  buf.fill(0xff);
  assert.is(h.killSubprocess(SIGKILL), 0);
  sleep(300);
  const { value: c, crossed } = counted(() => h.aioPread(buf, 0));
  assert.is(crossed, 0, "it was queued");
  assert.ok(c > 0n, `a cookie, not ${c}: ${getError()}`);
  const got = [Number(c), h.aioIsDead(), h.aioInFlight()];
  fails(h.aioCommandCompleted(c), errno.ENOTCONN, "nbd_aio_command_completed: read: command failed: Transport endpoint is not connected");
  assert.equal(buf, new Uint8Array(512), "the failed read left zeroes, not the staging buffer's old bytes");
  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
b = nbd.Buffer(512)
for i in range(2):
    c = h.aio_pread(b, 0)
    while not h.aio_command_completed(c): h.poll(-1)
h.kill_subprocess(signal.SIGKILL)
time.sleep(0.3)
c = h.aio_pread(b, 0)
out = [c, h.aio_is_dead(), h.aio_in_flight()]
try:
    h.aio_command_completed(c)
except nbd.Error as e:
    out.append(e.errnum)
print(json.dumps(out))
`);
  assert.equal([...got, errno.ENOTCONN], [py[0], py[1] ? 1 : 0, py[2], py[3]]);
});

test("the same when the command crosses (FUA, a completion callback): a cookie whose callback saw ENOTCONN, DEAD; a blocking read fails with ENOTCONN, as libnbd", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.killSubprocess(SIGKILL), 0);
  sleep(300);
  const seen: number[] = [];
  const { value: c, crossed } = counted(() => h.aioPwrite(new Uint8Array(512), 0, (err) => (seen.push(err.value), 0), CMD_FLAG_FUA));
  assert.is(crossed, 1, "it crossed");
  assert.ok(c > 0n, `a cookie, not ${c}: ${getError()}`);
  const got = [Number(c), h.aioIsDead(), h.aioInFlight(), ...seen];
  fails(h.aioCommandCompleted(c), errno.ENOTCONN, "nbd_aio_command_completed: write: command failed: Transport endpoint is not connected");
  const b = nbdkit(["memory", "size=1M"]);
  assert.is(b.killSubprocess(SIGKILL), 0);
  sleep(300);
  fails(b.pread(new Uint8Array(512), 0), errno.ENOTCONN, "nbd_pread: read: command failed: Transport endpoint is not connected");
  got.push(b.aioIsDead());
  const py = python(`
out = []
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
h.kill_subprocess(signal.SIGKILL)
time.sleep(0.3)
seen = []
c = h.aio_pwrite(nbd.Buffer(512), 0, completion=lambda err: seen.append(err) or 0, flags=nbd.CMD_FLAG_FUA)
out += [c, h.aio_is_dead(), h.aio_in_flight()] + [int(e.value) if hasattr(e, "value") else int(e) for e in seen]
b = nbd.NBD()
b.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
b.kill_subprocess(signal.SIGKILL)
time.sleep(0.3)
try:
    b.pread(512, 0)
except nbd.Error as e:
    out.append(b.aio_is_dead())
print(json.dumps(out))
`);
  assert.equal(got, py.map(Number));
});

test("a command that completed before anyone asked: aio_command_completed 0, then poll reports it at once, as libnbd", () => {
  const h = nbdkit(["memory", "size=1M"]);
  let called = 0;
  const c = h.aioPread(new Uint8Array(4096), 0, () => (called++, 0));
  sleep(200); // the reply is in by now
  const got: number[] = [h.aioCommandCompleted(c)];
  const t = Date.now();
  got.push(h.poll(5000), h.aioCommandCompleted(c));
  assert.ok(Date.now() - t < 1000, `poll took ${Date.now() - t} ms`);
  assert.is(called, 1, "the completion callback ran once (here, when a call brought it back)");
  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
c = h.aio_pread(nbd.Buffer(4096), 0, completion=lambda err: 0)
time.sleep(0.2)
print(json.dumps([int(h.aio_command_completed(c)), h.poll(5000), int(h.aio_command_completed(c))]))
`);
  assert.equal(got, py);
});

test("what cannot be queued fails at once, as it did: out of bounds, a flag the server lacks, a closed handle", () => {
  const h = nbdkit(["memory", "size=1M"]);
  const buf = new Uint8Array(4096);
  outcomes(h, [h.aioPread(buf, 0)]);
  fails(h.aioPread(buf, 1024 * 1024), errno.EINVAL, "nbd_aio_pread: request out of bounds: Invalid argument");
  fails(h.aioPwrite(buf, 1024 * 1024 - 512), errno.ENOSPC, "nbd_aio_pwrite: request out of bounds: No space left on device");
  fails(h.aioPread(buf, -1), errno.EINVAL, "nbd_aio_pread: offset: expected an integer from 0 to 2^64-1, got -1: Invalid argument");
  fails(h.aioPread(new Uint8Array(0), 0), errno.EINVAL, "nbd_aio_pread: count cannot be 0: Invalid argument");
  assert.is(h.aioInFlight(), 0);
  h.close();
  fails(h.aioPread(buf, 0), errno.EINVAL, "nbd_aio_pread: invalid state: the handle has been closed: Invalid argument");
});

test.run();
