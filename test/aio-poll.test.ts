/**
 * poll answered from the completion ring (handle.ts ringPoll, channel.ts
 * Ring): while every aio command in flight on a handle was queued, poll
 * does not cross to the worker. What must hold: the data and the
 * completion callbacks are those of libnbd (python3-libnbd 1.14 as the
 * oracle where it says something): each callback runs once, retiring works,
 * errors reach the callback and aio_command_completed; a crossed aio command
 * (block status, structured read) on the same handle makes poll cross until
 * it is done; two handles' completions each reach their own handle; a
 * server killed with commands in flight fails each once and poll reports
 * the end as before; completions that find the ring full wait, in order;
 * poll's timeouts hold; memory and fds stay flat over 100,000 commands.
 */
import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { getErrno, getError, type Handle } from "nbd-ts";
import { bridgeStats } from "../src/bridge.js";
import { RING_SLOTS } from "../src/channel.js";
import { errno } from "../src/errno.js";
import { nbdkitUnix, sleep, timed, waitFor } from "./helpers.js";
import { NBDKIT, fails, nbdkit, newHandle } from "./handles.js";
import { python as oracle } from "./libnbd.js";

const SIGKILL = 9;
const python = (script: string): unknown => oracle(`import json, nbd\n${script}`);

/** The calls crossed while `f` ran. */
function crossings<T>(f: () => T): { value: T; crossed: number } {
  const before = bridgeStats.crossed;
  const value = f();
  return { value, crossed: bridgeStats.crossed - before };
}

/** nbdkit's pattern plugin: each 8-byte word is its own offset. Checks a read's first and last words. */
function patterned(buf: Uint8Array, offset: number): boolean {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  return v.getBigUint64(0) === BigInt(offset) && v.getBigUint64(buf.byteLength - 8) === BigInt(offset + buf.byteLength - 8);
}

/**
 * Reads `count` blocks of `size` bytes from offset 0 on, `depth` in flight,
 * driven by poll(-1): how many reads had the right data, and the polls.
 */
function readLoop(h: Handle, count: number, size: number, depth: number): { good: number; polls: number; calls: number[] } {
  const calls = new Array<number>(count).fill(0);
  let good = 0;
  let inFlight = 0;
  let polls = 0;
  for (let next = 0; next < count || inFlight > 0;) {
    while (inFlight < depth && next < count) {
      const i = next++;
      const buf = new Uint8Array(size);
      const cookie = h.aioPread(buf, i * size, (err) => {
        calls[i]!++;
        inFlight--;
        if (err.value === 0 && patterned(buf, i * size)) good++;
        return 1;
      });
      assert.ok(cookie > 0n, String(getError()));
      inFlight++;
    }
    assert.is(h.poll(-1), 1, String(getError()));
    polls++;
  }
  return { good, polls, calls };
}

test("aio reads driven by poll(-1): no poll crosses, every read has its data, every callback runs once", () => {
  const h = nbdkit(["pattern", "size=64M"]);
  const settled = bridgeStats.settled;
  const { value, crossed } = crossings(() => readLoop(h, 2000, 16384, 16));
  assert.is(crossed, 0, "neither aio_pread nor poll crossed");
  assert.is(value.good, 2000);
  assert.ok(value.calls.every((n) => n === 1), "each completion callback ran once");
  assert.ok(value.polls <= 2000, `${value.polls} polls`);
  assert.ok(bridgeStats.settled - settled >= 2000, "the callbacks' decisions went back through the queue");
  assert.is(h.aioInFlight(), 0);
  fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");
});

test("retiring: a retired cookie is not reported, an unretired one once, as libnbd; callbacks in the order replies came", () => {
  const h = nbdkit(["--filter=noparallel", "memory", "size=1M"]); // one request at a time: replies in order
  const order: number[] = [];
  const buf = new Uint8Array(4096);
  const cookies = [0, 1, 2, 3].map((i) => h.aioPread(buf, 0, () => (order.push(i), i % 2 ? 0 : 1)));
  const { crossed } = crossings(() => {
    while (order.length < 4) assert.is(h.poll(-1), 1, String(getError()));
  });
  assert.is(crossed, 0);
  assert.equal(order, [0, 1, 2, 3]);
  const got = [...cookies.map((c) => h.aioCommandCompleted(c)), h.aioCommandCompleted(cookies[1]!), h.poll(0)];
  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "--filter=noparallel", "memory", "size=1M"])})
b = nbd.Buffer(4096)
cs = [h.aio_pread(b, 0, completion=(lambda e, i=i: 0 if i % 2 else 1)) for i in range(4)]
while h.aio_in_flight(): h.poll(-1)
print(json.dumps([int(h.aio_command_completed(c)) for c in cs] + [int(h.aio_command_completed(cs[1])), h.poll(0)]))
`);
  assert.equal(got, py);
});

test("errors through the ring: the callback sees the errno, aio_command_completed reports it once, as libnbd", () => {
  const args = ["--filter=error", "memory", "size=1M", "error-pread=EIO", "error-pread-rate=1"];
  const h = nbdkit(args);
  const seen: number[] = [];
  const buf = new Uint8Array(4096).fill(0xee);
  const c1 = h.aioPread(buf, 0, (err) => (seen.push(err.value), 1));
  const c2 = h.aioPread(buf, 4096, (err) => (seen.push(err.value), 0));
  const c3 = h.aioPread(new Uint8Array(512), 0); // no callback at all
  const { crossed } = crossings(() => {
    while (seen.length < 2) assert.is(h.poll(-1), 1, String(getError()));
  });
  assert.is(crossed, 0);
  assert.equal(seen, [errno.EIO, errno.EIO]);
  assert.equal(buf, new Uint8Array(4096), "the failed read left zeroes");
  const got: unknown[] = [];
  for (const c of [c1, c2, c2]) {
    const r = h.aioCommandCompleted(c);
    got.push(r === -1 ? [getError(), getErrno()] : r);
  }
  waitFor(() => h.aioCommandCompleted(c3) !== 0 || (h.poll(100), false), 5000, "the read without a callback");
  assert.equal([getError(), getErrno()], ["nbd_aio_command_completed: read: command failed: Input/output error", errno.EIO]);
  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, ...args])})
b = nbd.Buffer(4096)
c1 = h.aio_pread(b, 0, completion=lambda e: 1)
c2 = h.aio_pread(b, 4096, completion=lambda e: 0)
while h.aio_in_flight(): h.poll(-1)
out = []
for c in (c1, c2, c2):
    try: out.append(int(h.aio_command_completed(c)))
    except nbd.Error as e: out.append([e.string, e.errnum])
print(json.dumps(out))
`);
  assert.equal(got, py);
});

test("a crossed aio_block_status and aio_pread_structured among queued reads: poll crosses while they are in flight, then not", () => {
  const h = nbdkit(["--filter=delay", "pattern", "size=4M", "delay-read=50ms"], (h) => h.addMetaContext("base:allocation"));
  const done: string[] = [];
  const extents: number[] = [];
  const chunks: number[] = [];
  const bufs = [0, 1, 2, 3].map(() => new Uint8Array(4096));
  const structured = new Uint8Array(8192);
  const { crossed } = crossings(() => {
    h.aioPread(bufs[0]!, 0, () => (done.push("read0"), 1));
    assert.ok(h.aioBlockStatus(4 * 1024 * 1024, 0, (_ctx, _off, entries) => (extents.push(...entries), 0), () => (done.push("extents"), 1)) > 0n);
    h.aioPread(bufs[1]!, 4096, () => (done.push("read1"), 1));
    assert.ok(h.aioPreadStructured(structured, 8192, (_buf, offset) => (chunks.push(Number(offset)), 0), () => (done.push("structured"), 1)) > 0n);
    h.aioPread(bufs[2]!, 16384, () => (done.push("read2"), 1));
    while (done.length < 5) assert.is(h.poll(-1), 1, String(getError()));
  });
  assert.ok(crossed >= 3, `${crossed} crossings: the two crossed calls and polls while they were in flight`);
  assert.equal([...done].sort(), ["extents", "read0", "read1", "read2", "structured"]);
  assert.equal(extents, [4 * 1024 * 1024, 0], "pattern: all data");
  assert.equal(chunks, [8192]);
  assert.ok(patterned(bufs[0]!, 0) && patterned(bufs[1]!, 4096) && patterned(bufs[2]!, 16384) && patterned(structured, 8192));
  // Nothing crossed is in flight any more: the next reads and polls stay on this side.
  const again = crossings(() => readLoop(h, 64, 4096, 8));
  assert.is(again.crossed, 0);
  assert.is(again.value.good, 64);
});

test("two handles polled in turn: each one's completions run in its own poll, never in the other's", () => {
  const a = nbdkit(["pattern", "size=1M"]);
  const b = nbdkit(["pattern", "size=1M"]);
  const ran = { a: 0, b: 0 };
  const bufs = Array.from({ length: 8 }, () => new Uint8Array(4096));
  for (let i = 0; i < 4; i++) {
    a.aioPread(bufs[i]!, i * 4096, () => (ran.a++, 1));
    b.aioPread(bufs[4 + i]!, i * 4096, () => (ran.b++, 1));
  }
  sleep(200); // all eight are done by now: a's polls read b's completions too
  const { crossed } = crossings(() => {
    while (ran.a < 4) assert.is(a.poll(-1), 1);
    assert.is(ran.b, 0, "b's callbacks wait for b's own poll");
    assert.is(b.poll(0), 1, "b's completions were waiting for it");
    assert.is(ran.b, 4);
    assert.is(a.poll(0), 0);
    assert.is(b.poll(0), 0);
  });
  assert.is(crossed, 0);
  bufs.forEach((buf, i) => assert.ok(patterned(buf, (i % 4) * 4096), `buffer ${i}`));
});

test("completions that find the ring full wait in order: every callback runs once, nothing is lost or hangs", () => {
  const h = nbdkit(["pattern", "size=64M"]);
  const n = RING_SLOTS + 1000;
  const calls = new Array<number>(n).fill(0);
  const order: number[] = [];
  const bufs: Uint8Array[] = [];
  const { crossed } = crossings(() => {
    for (let i = 0; i < n; i++) {
      const buf = new Uint8Array(512);
      bufs.push(buf);
      h.aioPread(buf, i * 4096, () => (calls[i]!++, order.push(i), 1));
      if (i % 200 === 199) sleep(20); // the worker takes the queue's 256 slots as they come; nobody polls
    }
    sleep(300); // all done: the ring is full, the rest wait in the worker
    while (order.length < n) assert.is(h.poll(-1), 1, String(getError()));
  });
  assert.is(crossed, 0);
  assert.ok(calls.every((c) => c === 1), "each callback ran once");
  assert.ok(bufs.every((b, i) => patterned(b, i * 4096)));
  assert.is(h.poll(0), 0);
});

test("nbdkit SIGKILLed with queued reads in flight: each fails once with ENOTCONN, then poll reports the end as before", () => {
  const server = nbdkitUnix("--filter=delay", "pattern", "size=4M", "delay-read=10");
  const h = newHandle();
  assert.is(h.connectUnix(server.socket), 0, String(getError()));
  const seen: number[][] = Array.from({ length: 32 }, () => []);
  const bufs = seen.map(() => new Uint8Array(4096).fill(0xaa));
  const cookies = bufs.map((buf, i) => h.aioPread(buf, i * 4096, (err) => (seen[i]!.push(err.value), i % 2)));
  assert.is(h.aioInFlight(), 32);
  assert.is(h.poll(100), 0, "nothing done yet");
  // Killed while the first poll below waits on the ring: the worker's end of the connection must reach it.
  spawn("sh", ["-c", `sleep 0.3; kill -${SIGKILL} ${server.pid}`], { stdio: "ignore" });
  const results: number[] = [];
  const { ms } = timed(() => {
    while (seen.some((s) => s.length === 0)) {
      const r = h.poll(2000);
      results.push(r === -1 ? -getErrno() : r);
      assert.ok(results.length < 10, `polls: ${results}`);
    }
  });
  assert.ok(ms >= 250 && ms < 2000, `${ms} ms`);
  assert.ok(results.every((r) => r === 1 || r === -errno.ECONNRESET), `poll results ${results}`);
  assert.equal(seen, seen.map(() => [errno.ENOTCONN]));
  assert.ok(bufs.every((b) => b.every((x) => x === 0)), "failed reads leave zeroes");
  cookies.forEach((c, i) => {
    if (i % 2) assert.is(h.aioCommandCompleted(c), 0, "retired by its callback");
    else fails(h.aioCommandCompleted(c), errno.ENOTCONN, "nbd_aio_command_completed: read: command failed: Transport endpoint is not connected");
  });
  assert.ok(h.aioIsDead() === 1 || h.aioIsClosed() === 1, String(h.connectionState()));
  assert.is(h.poll(0), -1, "nothing left to poll for");
  assert.is(getErrno(), errno.EINVAL);
});

test("poll's timeout: 0 returns 0 at once, a timeout with nothing done returns 0 after it, neither crossing", () => {
  const h = nbdkit(["--filter=delay", "memory", "size=1M", "delay-read=1"]);
  const idle = crossings(() => [h.poll(0), timed(() => h.poll(150))]);
  assert.is(idle.crossed, 0);
  const [zero, waited] = idle.value as [number, { value: number; ms: number }];
  assert.is(zero, 0);
  assert.is(waited.value, 0);
  assert.ok(waited.ms >= 140 && waited.ms < 1000, `${waited.ms} ms`);
  let called = 0;
  h.aioPread(new Uint8Array(512), 0, () => (called++, 1));
  const busy = crossings(() => [h.poll(0), h.poll(100)]);
  assert.equal([busy.value, busy.crossed, called], [[0, 0], 0, 0], "the read takes a second");
  const { value, ms } = timed(() => h.poll(5000));
  assert.is(value, 1);
  assert.ok(ms < 2000, `${ms} ms`);
  assert.is(called, 1);
});

test("with set_timeout, poll crosses (the worker must time it), and a queued read's completion still wakes it at once", () => {
  const h = nbdkit(["--filter=delay", "pattern", "size=1M", "delay-read=100ms"]);
  assert.is(h.setTimeout(5000), 0);
  let called = 0;
  const buf = new Uint8Array(4096);
  h.aioPread(buf, 8192, () => (called++, 1));
  const { value, crossed } = crossings(() => timed(() => h.poll(-1)));
  assert.is(value.value, 1, String(getError()));
  assert.ok(crossed >= 1, "poll crossed");
  assert.ok(value.ms < 2000, `${value.ms} ms: woken by the ring's entry, not by the timeout`);
  assert.is(called, 1);
  assert.ok(patterned(buf, 8192));
  assert.is(h.aioIsReady(), 1, "alive: the timeout did not trip");
});

test("a poll that crosses reports only what happened since the last poll: ring completions leave nothing behind in the worker", () => {
  const h = nbdkit(["memory", "size=1M"]);
  let called = 0;
  h.aioPread(new Uint8Array(4096), 0, () => (called++, 1));
  while (!called) assert.is(h.poll(-1), 1);
  assert.is(h.poll2(-1, 0), 0, "the completion the ring brought was reported: the worker's poll has nothing");
  const flush = h.aioFlush(); // crosses: its end reaches this thread as events, and the worker keeps it for a poll
  sleep(100);
  assert.is(h.aioCommandCompleted(flush), 1);
  assert.is(h.poll(0), 1, "the flush's completion, which no poll has reported yet");
  assert.is(h.poll(0), 0);
  assert.is(h.poll2(-1, 0), 0, "the worker's poll has nothing left to report either");
  h.aioPread(new Uint8Array(4096), 0, () => (called++, 1));
  sleep(100);
  assert.is(h.poll2(-1, 0), 1, "a crossing poll reports a completion only the ring told");
  assert.is(called, 2);
  assert.is(h.poll(0), 0);
  assert.is(h.poll2(-1, 0), 0);
});

test("100,000 queued reads through the ring: RSS and fds stay flat", () => {
  const fds = (): number => readdirSync("/proc/self/fd").length;
  const rssMiB = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) / 1024;
  const h = nbdkit(["pattern", "size=64M"]);
  readLoop(h, 10_000, 512, 16);
  const before = { fds: fds(), rss: rssMiB() };
  const { value, crossed } = crossings(() => readLoop(h, 100_000, 512, 16));
  const after = { fds: fds(), rss: rssMiB() };
  assert.is(crossed, 0);
  assert.is(value.good, 100_000);
  assert.ok(after.fds <= before.fds + 2, `fds ${before.fds} → ${after.fds}`);
  assert.ok(after.rss < before.rss + 32, `RSS ${before.rss.toFixed(1)} → ${after.rss.toFixed(1)} MiB`);
});

test.run();
