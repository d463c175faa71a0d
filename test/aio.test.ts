/**
 * The aio family: 64 reads in flight over 64 MiB (every byte checked),
 * writes and flush, completion callbacks (called once, with the errno;
 * 1 retires), aio_command_completed / aio_peek_command_completed /
 * aio_in_flight, poll and poll2, the calls that cannot exist here
 * (aio_get_fd, aio_notify_*), structured reads and block status with
 * completion, plain and shared buffers, aio_disconnect, a server that dies
 * with commands in flight (libnbd's tests/server-death.c) and
 * shutdown(SHUTDOWN_ABANDON_PENDING) (tests/shutdown-flags.c). Where libnbd
 * 1.14 (python3-libnbd) can answer the same question, its answer is the
 * expected one.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, rmSync, writeFileSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import {
  AIO_DIRECTION_READ, create, getErrno, getError, CMD_FLAG_DF, CMD_FLAG_FUA, CONTEXT_BASE_ALLOCATION, READ_DATA,
  SHUTDOWN_ABANDON_PENDING, STATE_HOLE, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { pattern, scratchPath, sleep } from "./helpers.js";
import { nbdkit, NBDKIT, newHandle } from "./handles.js";
import { python as oracle } from "./libnbd.js";

const KiB = 1024;
const MiB = 1024 * 1024;
const SIGKILL = 9;
const SIGSTOP = 19;

// ---- handles made by newHandle and nbdkit (./handles.ts) are closed after each test ------

function fails(ret: number | bigint, err: number, message: string | RegExp): void {
  assert.ok(ret === -1 || ret === -1n, `expected failure, got ${String(ret)}`);
  if (typeof message === "string") assert.is(getError(), message);
  else assert.match(getError() ?? "", message);
  assert.is(getErrno(), err);
}

/** A cookie: a positive bigint. */
function cookie(c: bigint): bigint {
  assert.is(typeof c, "bigint");
  assert.ok(c > 0n, `aio call failed: ${getError()}`);
  return c;
}

/** Polls until `cookies` have all completed successfully (aio_command_completed 1 for each). */
function complete(h: Handle, cookies: bigint[]): void {
  for (const c of cookies) {
    for (let i = 0; ; i++) {
      const r = h.aioCommandCompleted(c);
      assert.ok(r !== -1, `command ${c}: ${getError()}`);
      if (r === 1) break;
      assert.ok(i < 1000, `command ${c} never completed`);
      assert.is(h.poll(-1), 1);
    }
  }
}

/** Polls until nothing is in flight. */
function drain(h: Handle): void {
  for (let i = 0; h.aioInFlight() > 0; i++) {
    assert.ok(i < 1000, "commands never completed");
    assert.is(h.poll(-1), 1, String(getError()));
  }
}

/** nbdkit's pattern at `offset` (a multiple of 8 below 2^32): each big-endian 8-byte word is its offset. */
function isPattern(buf: Uint8Array, offset: number): boolean {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let i = 0; i < buf.byteLength; i += 8) {
    if (v.getUint32(i) !== 0 || v.getUint32(i + 4) !== offset + i) return false;
  }
  return true;
}

const random = (n: number): Uint8Array => randomFillSync(new Uint8Array(n));

/** Sends SIGCONT to `pid` after `ms`, from another process: this thread will be blocked in a call by then. */
function continueLater(pid: bigint, ms: number): void {
  assert.ok(pid > 0n, String(getError()));
  spawn("sh", ["-c", `sleep ${ms / 1000}; kill -CONT ${pid}`], { stdio: "ignore" }).unref();
}

const python = (script: string): unknown => oracle(`import json, nbd, errno, signal, time\n${script}`);

// ---- the acceptance test: 64 reads in flight over 64 MiB ---------------------------

test("64 aio_preads in flight over a 64 MiB pattern: every byte right, plain and shared buffers", () => {
  const size = 64 * MiB;
  const block = 128 * KiB;
  const depth = 64;
  const h = nbdkit(["pattern", `size=${size}`]);
  const shared = new SharedArrayBuffer(size / 2);
  const result = new Uint8Array(size);
  /** cookie → [offset, buffer] for reads issued and not yet retired. */
  const pending = new Map<bigint, [number, Uint8Array]>();
  let next = 0;
  let callbacks = 0;
  let badInCallback = 0;
  while (next < size || pending.size > 0) {
    while (pending.size < depth && next < size) {
      const offset = next;
      // Even blocks: plain buffers, filled when the command completes; odd ones: views over shared memory.
      const buf = (offset / block) % 2 === 0 ? new Uint8Array(block) : new Uint8Array(shared, (offset / 2) - (offset / 2) % block, block);
      const c = cookie(h.aioPread(buf, offset, (error) => {
        callbacks++;
        // The buffer is filled before the completion callback runs.
        if (error.value !== 0 || !isPattern(buf, offset)) badInCallback++;
        return 0;
      }));
      pending.set(c, [offset, buf]);
      next += block;
    }
    const inFlight = h.aioInFlight();
    assert.ok(inFlight >= 0 && inFlight <= pending.size, `${inFlight} in flight, ${pending.size} not yet retired`);
    assert.is(h.poll(-1), 1);
    for (let c = h.aioPeekCommandCompleted(); c > 0n; c = h.aioPeekCommandCompleted()) {
      assert.is(h.aioCommandCompleted(c), 1, String(getError()));
      const [offset, buf] = pending.get(c)!;
      result.set(buf, offset);
      pending.delete(c);
    }
  }
  assert.is(callbacks, size / block, "one completion call per command");
  assert.is(badInCallback, 0, "each buffer held its data when its callback ran");
  assert.ok(isPattern(result, 0), "64 MiB equal the pattern");
  // The shared views were written in place, each at its own place.
  for (let offset = block; offset < size; offset += 2 * block) {
    const at = (offset / 2) - (offset / 2) % block;
    if (!isPattern(new Uint8Array(shared, at, block), offset)) assert.unreachable(`shared view for ${offset}`);
  }
  assert.is(h.aioInFlight(), 0);
  fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");
});

// ---- writes, flush, buffers ----------------------------------------------------------

test("aio_pwrite (with and without FUA) + aio_flush, then read back; aio_pread of odd sizes", () => {
  const h = nbdkit(["memory", "size=4M"]);
  const writes: [number, Uint8Array, number][] = [
    [0, random(4096), 0], [4096, random(65536), CMD_FLAG_FUA], [MiB + 3, random(1000), 0], [4 * MiB - 7, random(7), CMD_FLAG_FUA],
  ];
  // One from a view over shared memory, one from a view into a larger plain buffer.
  const sab = new Uint8Array(new SharedArrayBuffer(10000));
  sab.set(random(10000));
  const plain = random(5000);
  writes.push([2 * MiB, sab.subarray(100, 8292), 0], [3 * MiB, plain.subarray(17, 4017), 0]);
  const cookies = writes.map(([offset, buf, flags]) => cookie(h.aioPwrite(buf, offset, undefined, flags)));
  const flushed = cookie(h.aioFlush());
  assert.ok(cookies.every((c, i) => i === 0 || c > cookies[i - 1]!), "cookies increase");
  assert.ok(flushed > cookies[cookies.length - 1]!);
  complete(h, [...cookies, flushed]);
  for (const [offset, buf] of writes) {
    const back = new Uint8Array(buf.byteLength);
    assert.is(h.pread(back, offset), 0);
    assert.equal(back, buf, `write at ${offset}`);
  }
  // aio_pread into buffers of odd sizes.
  const reads = writes.map(([offset, buf]) => [offset, new Uint8Array(buf.byteLength).fill(0xcc)] as const);
  complete(h, reads.map(([offset, buf]) => cookie(h.aioPread(buf, offset))));
  reads.forEach(([offset, buf], i) => assert.equal(buf, writes[i]![1], `aio read at ${offset}`));
  // Errors the client finds come back at once, as the error value.
  fails(h.aioPwrite(new Uint8Array(512), 4 * MiB), errno.ENOSPC, "nbd_aio_pwrite: request out of bounds: No space left on device");
  fails(h.aioPread(new Uint8Array(0), 0), errno.EINVAL, "nbd_aio_pread: count cannot be 0: Invalid argument");
  fails(h.aioFlush(undefined, CMD_FLAG_FUA), errno.EINVAL, "nbd_aio_flush: flags: invalid value for flag: 0x1: Invalid argument");
  assert.is(h.aioInFlight(), 0);
});

// ---- completion callbacks -------------------------------------------------------------

test("completion callbacks: once, {value: 0} on success and the errno on failure; 1 retires, 0 leaves it", () => {
  const inject = scratchPath("inject");
  const args = ["--filter=error", "memory", "size=1M", "error-pread=EIO", "error-pread-rate=1", `error-pread-file=${inject}`];
  const h = nbdkit(args);
  const seen: [string, number][] = [];
  const cb = (name: string, ret: number) => (error: { value: number }) => (seen.push([name, error.value]), ret);

  // Success, left for aio_command_completed: 1, then unknown (0).
  const w = cookie(h.aioPwrite(random(512), 0, cb("write", 0)));
  drain(h);
  const r = cookie(h.aioPread(new Uint8Array(512), 0, cb("read", 0)));
  drain(h);
  assert.equal(seen, [["write", 0], ["read", 0]]);
  assert.is(h.aioPeekCommandCompleted(), w, "the oldest done command first");
  assert.is(h.aioCommandCompleted(r), 1);
  assert.is(h.aioCommandCompleted(w), 1);
  assert.is(h.aioCommandCompleted(w), 0, "once retired, unknown");
  assert.is(h.aioCommandCompleted(r), 0);
  fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");

  // Success, retired by the callback.
  seen.length = 0;
  const w2 = cookie(h.aioPwrite(random(512), 512, cb("write", 1)));
  drain(h);
  assert.equal(seen, [["write", 0]]);
  assert.is(h.aioCommandCompleted(w2), 0, "retired by its callback");
  fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");

  // Failure (the error filter fails every read while the file exists).
  writeFileSync(inject, "");
  seen.length = 0;
  const bad = new Uint8Array(512).fill(7);
  const r2 = cookie(h.aioPread(bad, 0, cb("read", 0)));
  const r3 = cookie(h.aioPread(new Uint8Array(512), 0, cb("retired read", 1)));
  drain(h);
  assert.equal(seen.sort(), [["read", errno.EIO], ["retired read", errno.EIO]], "either may finish first");
  assert.is(h.aioPeekCommandCompleted(), r2);
  fails(h.aioCommandCompleted(r2), errno.EIO, "nbd_aio_command_completed: read: command failed: Input/output error");
  assert.is(h.aioCommandCompleted(r2), 0, "a failed command is retired by aio_command_completed too");
  assert.is(h.aioCommandCompleted(r3), 0);
  assert.equal(bad, new Uint8Array(512), "pread_initialize zeroed the buffer of the failed read");
  // A callback that throws changes nothing: the command waits for aio_command_completed.
  const r4 = cookie(h.aioPread(new Uint8Array(512), 0, () => { throw new Error("completion exploded"); }));
  drain(h);
  fails(h.aioCommandCompleted(r4), errno.EIO, "nbd_aio_command_completed: read: command failed: Input/output error");
  fails(h.aioCommandCompleted(0), errno.EINVAL, "nbd_aio_command_completed: invalid aio cookie 0: Invalid argument");
  assert.is(h.aioIsReady(), 1);
  h.close();
  rmSync(inject);

  // libnbd 1.14 sees the same on the same server.
  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, ...args])})
seen = []
def cb(name, ret):
    def f(err):
        seen.append([name, err.value]); return ret
    return f
out = {}
w = h.aio_pwrite(b"x" * 512, 0, cb("write", 0))
while h.aio_in_flight() > 0: h.poll(-1)
r = h.aio_pread(nbd.Buffer(512), 0, cb("read", 0))
while h.aio_in_flight() > 0: h.poll(-1)
out["peek"] = h.aio_peek_command_completed() == w
out["cc"] = [h.aio_command_completed(r), h.aio_command_completed(w), h.aio_command_completed(w)]
w2 = h.aio_pwrite(b"x" * 512, 512, cb("write", 1))
while h.aio_in_flight() > 0: h.poll(-1)
out["retired"] = h.aio_command_completed(w2)
open(${JSON.stringify(inject)}, "w").close()
r2 = h.aio_pread(nbd.Buffer(512), 0, cb("read", 0))
r3 = h.aio_pread(nbd.Buffer(512), 0, cb("retired read", 1))
while h.aio_in_flight() > 0: h.poll(-1)
try:
    h.aio_command_completed(r2)
except nbd.Error as e:
    out["err"] = [e.string, e.errnum]
out["after"] = [h.aio_command_completed(r2), h.aio_command_completed(r3)]
out["seen"] = seen[:3] + sorted(seen[3:])
print(json.dumps(out))
`);
  assert.equal(py, {
    peek: true, cc: [true, true, false], retired: false,
    err: ["nbd_aio_command_completed: read: command failed: Input/output error", errno.EIO], after: [false, false],
    seen: [["write", 0], ["read", 0], ["write", 0], ["read", errno.EIO], ["retired read", errno.EIO]],
  });
});

test("a completion callback that returns -1 with an errno in its box fails its command with that errno (as libnbd 1.14)", () => {
  const h = nbdkit(["memory", "size=1M"]);
  const fail = (err: number) => (error: { value: number }) => ((error.value = err), -1);
  const r = cookie(h.aioPread(new Uint8Array(512), 0, fail(errno.ECONNABORTED)));
  const w = cookie(h.aioPwrite(random(512), 0, fail(errno.ENOSPC)));
  // -1 with the box left at 0 changes nothing.
  const ok = cookie(h.aioPread(new Uint8Array(512), 512, () => -1));
  drain(h);
  fails(h.aioCommandCompleted(r), errno.ECONNABORTED, "nbd_aio_command_completed: read: command failed: Software caused connection abort");
  fails(h.aioCommandCompleted(w), errno.ENOSPC, "nbd_aio_command_completed: write: command failed: No space left on device");
  assert.is(h.aioCommandCompleted(ok), 1);
  assert.is(h.aioIsReady(), 1, "the connection is unharmed");

  const py = oracle<unknown[]>(`
import json, nbd
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
def fail(err):
    def f(error):
        error.value = err
        return -1
    return f
c = [h.aio_pread(nbd.Buffer(512), 0, fail(${errno.ECONNABORTED})), h.aio_pwrite(b"x" * 512, 0, fail(${errno.ENOSPC})),
     h.aio_pread(nbd.Buffer(512), 512, lambda error: -1)]
while h.aio_in_flight() > 0: h.poll(-1)
out = []
for x in c:
    try:
        out.append(h.aio_command_completed(x))
    except nbd.Error as e:
        out.append([e.string, e.errnum])
print(json.dumps(out))
`);
  assert.equal(py, [
    ["nbd_aio_command_completed: read: command failed: Software caused connection abort", errno.ECONNABORTED],
    ["nbd_aio_command_completed: write: command failed: No space left on device", errno.ENOSPC],
    true,
  ]);
});

test("a command whose callback retires it is never reported as completed, however soon it is asked", () => {
  const h = nbdkit(["memory", "size=1M"]);
  let calls = 0;
  for (const ask of ["aioCommandCompleted", "aioPeekCommandCompleted"] as const) {
    const c = cookie(h.aioPread(new Uint8Array(512), 0, () => (calls++, 1)));
    sleep(200); // the reply has arrived; no call has brought its callback to this thread yet
    if (ask === "aioCommandCompleted") assert.is(h.aioCommandCompleted(c), 0, "retired by its callback");
    else assert.ok(h.aioPeekCommandCompleted() !== c, "peek does not offer a retired command");
    drain(h);
    assert.is(h.aioCommandCompleted(c), 0);
    fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");
  }
  assert.is(calls, 2);
});

// ---- peek, in flight, poll -------------------------------------------------------------

test("aio_in_flight and aio_peek_command_completed while commands wait on a slow server", () => {
  const h = nbdkit(["--filter=delay", "memory", "size=1M", "delay-read=1"]);
  assert.is(h.aioInFlight(), 0);
  const a = cookie(h.aioPread(new Uint8Array(512), 0));
  const b = cookie(h.aioPread(new Uint8Array(512), 512));
  const c = cookie(h.aioPread(new Uint8Array(512), 1024));
  assert.is(h.aioInFlight(), 3);
  assert.is(h.aioIsProcessing(), 1);
  assert.is(h.aioIsReady(), 0);
  assert.is(h.aioPeekCommandCompleted(), 0n, "in flight, none done");
  assert.is(h.aioCommandCompleted(b), 0);
  assert.is(h.poll(0), 0, "nothing yet");
  drain(h);
  assert.is(h.aioInFlight(), 0);
  assert.is(h.aioIsReady(), 1);
  const done = [h.aioPeekCommandCompleted()];
  assert.ok([a, b, c].includes(done[0]!));
  complete(h, [a, b, c]);
  fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");
});

test("poll: 1 after progress, 0 when idle without hanging; START is EINVAL; poll2(-1, …) works, poll2(3, 0) ENOTSUP", () => {
  const fresh = newHandle();
  fails(fresh.poll(0), errno.EINVAL, "nbd_poll: nothing to poll for in state START: Invalid argument");
  fails(fresh.poll(-1), errno.EINVAL, "nbd_poll: nothing to poll for in state START: Invalid argument");
  fails(fresh.poll2(-1, 0), errno.EINVAL, "nbd_poll2: nothing to poll for in state START: Invalid argument");
  fails(fresh.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");

  const h = nbdkit(["--filter=delay", "memory", "size=1M", "delay-read=1"]);
  let t = Date.now();
  assert.is(h.poll(0), 0);
  assert.is(h.poll(100), 0);
  assert.is(h.poll2(-1, 100), 0);
  let took = Date.now() - t;
  assert.ok(took >= 180 && took < 3000, `poll(0) + 2 × 100 ms took ${took} ms`);
  // A read that takes a second: poll(100) times out, poll(-1) returns 1 once it is done.
  const c = cookie(h.aioPread(new Uint8Array(512), 0));
  assert.is(h.poll(100), 0);
  t = Date.now();
  assert.is(h.poll(-1), 1);
  took = Date.now() - t;
  assert.ok(took > 500 && took < 5000, `poll(-1) returned after ${took} ms`);
  assert.is(h.aioCommandCompleted(c), 1);
  assert.is(h.poll(0), 0, "nothing new");
  // poll2 with fd -1 is poll.
  const c2 = cookie(h.aioPread(new Uint8Array(512), 0));
  assert.is(h.poll2(-1, -1), 1);
  assert.is(h.aioCommandCompleted(c2), 1);
  fails(h.poll2(3, 0), errno.ENOTSUP, /^nbd_poll2: .*: Operation not supported$/);
  // The event-loop calls for external loops cannot work here.
  for (const [name, call] of [["aio_get_fd", () => h.aioGetFd()], ["aio_notify_read", () => h.aioNotifyRead()], ["aio_notify_write", () => h.aioNotifyWrite()]] as const) {
    fails(call(), errno.ENOTSUP, new RegExp(`^nbd_${name}: .*poll.*: Operation not supported$`));
  }
  assert.is(h.aioIsReady(), 1);
});

// ---- structured reads and block status -------------------------------------------------

const SCRIPT = scratchPath("base-allocation.sh");
writeFileSync(SCRIPT, `#!/bin/sh
case "$1" in
  thread_model) echo parallel ;;
  get_size) echo 65536 ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  can_extents) exit 0 ;;
  extents) echo 0 8192; echo 8192 8192 hole; echo 16384 16384 hole,zero; echo 32768 16384 zero; echo 49152 16384 ;;
  *) exit 2 ;;
esac
`);
chmodSync(SCRIPT, 0o755);

test("aio_pread_structured: chunks then completion, buffer filled; a chunk's -1 reaches completion and the result", () => {
  const h = nbdkit(["pattern", "size=1M"]);
  for (const shared of [false, true]) {
    const buf = shared ? new Uint8Array(new SharedArrayBuffer(8192), 1000, 4096) : new Uint8Array(4096);
    const order: string[] = [];
    const c = cookie(h.aioPreadStructured(buf, 4096, (sub, off, status, error) => {
      order.push(`chunk ${off} ${sub.byteLength} ${status} ${error.value}`);
      if (!isPattern(sub, Number(off))) order.push("bad chunk data");
      return 0;
    }, (error) => {
      order.push(`completion ${error.value}`);
      if (!isPattern(buf, 4096)) order.push("buffer not filled");
      return 0;
    }));
    complete(h, [c]);
    assert.equal(order, [`chunk 4096 4096 ${READ_DATA} 0`, "completion 0"], shared ? "shared" : "plain");
    assert.ok(isPattern(buf, 4096));
  }
  // A chunk callback's -1: the completion callback sees the error, aio_command_completed reports it.
  const seen: number[] = [];
  const c = cookie(h.aioPreadStructured(new Uint8Array(512), 0, (_s, _o, _st, error) => { error.value = errno.ENOMEM; return -1; },
    (error) => (seen.push(error.value), 0)));
  drain(h);
  assert.equal(seen, [errno.ENOMEM]);
  fails(h.aioCommandCompleted(c), errno.ENOMEM, "nbd_aio_command_completed: read: command failed: Cannot allocate memory");
  const c2 = cookie(h.aioPreadStructured(new Uint8Array(512), 0, () => -1));
  drain(h);
  fails(h.aioCommandCompleted(c2), errno.EPROTO, "nbd_aio_command_completed: read: command failed: Protocol error");
  // Without a completion callback, and with DF.
  const buf = new Uint8Array(100);
  let chunks = 0;
  complete(h, [cookie(h.aioPreadStructured(buf, 8, () => (chunks++, 0), undefined, CMD_FLAG_DF))]);
  assert.is(chunks, 1);
  assert.equal(buf, pattern(8, 100));
  h.close();

  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "pattern", "size=1M"])})
seen = []
def chunk(buf, off, s, err):
    err.value = errno.ENOMEM
    return -1
c = h.aio_pread_structured(nbd.Buffer(512), 0, chunk, lambda err: seen.append(err.value) or 0)
while h.aio_in_flight() > 0: h.poll(-1)
try:
    h.aio_command_completed(c)
except nbd.Error as e:
    print(json.dumps([seen, e.string, e.errnum]))
`);
  assert.equal(py, [[errno.ENOMEM], "nbd_aio_command_completed: read: command failed: Cannot allocate memory", errno.ENOMEM]);
});

test("aio_block_status and aio_block_status_64: extents then completion; a -1 fails the command", () => {
  const h = nbdkit(["sh", SCRIPT], (h) => h.addMetaContext(CONTEXT_BASE_ALLOCATION));
  // The server may answer the two in either order; each command's own calls come in order.
  const order32: string[] = [];
  const order64: string[] = [];
  const c32 = cookie(h.aioBlockStatus(65536, 0, (ctx, off, entries, error) => {
    order32.push(`${ctx} ${off} ${entries.constructor.name} [${entries.join(",")}] ${error.value}`);
    return 0;
  }, (error) => (order32.push(`completion ${error.value}`), 0)));
  const c64 = cookie(h.aioBlockStatus64(1024, 32256, (ctx, off, entries, error) => {
    order64.push(`${ctx} ${off} ${entries.constructor.name} [${entries.join(",")}] ${error.value}`);
    return 0;
  }, (error) => (order64.push(`completion ${error.value}`), 0)));
  complete(h, [c32, c64]);
  assert.equal(order32, ["base:allocation 0 Uint32Array [8192,0,8192,1,16384,3,16384,2,16384,0] 0", "completion 0"]);
  assert.equal(order64, ["base:allocation 32256 BigUint64Array [512,3,16384,2] 0", "completion 0"]);
  const seen: number[] = [];
  const bad = cookie(h.aioBlockStatus(65536, 0, () => -1, (error) => (seen.push(error.value), 1)));
  drain(h);
  assert.equal(seen, [errno.EPROTO], "the completion callback sees the extent callback's failure");
  assert.is(h.aioCommandCompleted(bad), 0, "and retired it");
  const bad2 = cookie(h.aioBlockStatus64(65536, 0, (_c, _o, _e, error) => { error.value = errno.EIO; return -1; }));
  drain(h);
  fails(h.aioCommandCompleted(bad2), errno.EIO, "nbd_aio_command_completed: block-status: command failed: Input/output error");
  assert.is(h.aioIsReady(), 1);
});

// ---- disconnecting ---------------------------------------------------------------------

test("aio_disconnect: a second is EINVAL, commands in flight finish as the server decides, then CLOSED", () => {
  const h = nbdkit(["--filter=delay", "memory", "size=1M", "delay-read=1"]);
  const seen: number[] = [];
  const c = cookie(h.aioPread(new Uint8Array(512), 0, (error) => (seen.push(error.value), 0)));
  assert.is(h.aioDisconnect(), 0);
  fails(h.aioDisconnect(), errno.EINVAL,
    /^nbd_aio_disconnect: (cannot request more commands after NBD_CMD_DISC|invalid state: CLOSED: the handle must be connected with the server): Invalid argument$/);
  fails(h.aioPread(new Uint8Array(512), 0), errno.EINVAL,
    /^nbd_aio_pread: (cannot request more commands after NBD_CMD_DISC|invalid state: CLOSED: the handle must be connected with the server): Invalid argument$/);
  // libnbd's loop: poll until closed; every poll succeeds.
  for (let i = 0; !h.aioIsClosed(); i++) {
    assert.ok(i < 100, "never closed");
    assert.is(h.poll(-1), 1, String(getError()));
  }
  assert.is(h.aioInFlight(), 0);
  // nbdkit's delay filter abandons the read when the client disconnects: ESHUTDOWN.
  assert.equal(seen, [errno.ESHUTDOWN]);
  fails(h.aioCommandCompleted(c), errno.ESHUTDOWN, "nbd_aio_command_completed: read: command failed: Cannot send after transport endpoint shutdown");
  fails(h.poll(0), errno.EINVAL, "nbd_poll: nothing to poll for in state CLOSED: Invalid argument");
  h.close();

  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "--filter=delay", "memory", "size=1M", "delay-read=1"])})
seen = []
c = h.aio_pread(nbd.Buffer(512), 0, lambda err: seen.append(err.value) or 0)
h.aio_disconnect()
out = []
try: h.aio_disconnect()
except nbd.Error as e: out.append([e.string, e.errnum])
while not h.aio_is_closed(): h.poll(-1)
try: h.aio_command_completed(c)
except nbd.Error as e: out.append([e.string, e.errnum])
print(json.dumps([seen, h.aio_in_flight(), out]))
`);
  assert.equal(py, [[errno.ESHUTDOWN], 0, [
    ["nbd_aio_disconnect: cannot request more commands after NBD_CMD_DISC: Invalid argument", errno.EINVAL],
    ["nbd_aio_command_completed: read: command failed: Cannot send after transport endpoint shutdown", errno.ESHUTDOWN],
  ]]);
});

test("aio_disconnect, then poll after the server has gone: that poll reports the close (1), the next is EINVAL", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.aioDisconnect(), 0);
  sleep(300); // the server has closed its end by now
  assert.is(h.poll(-1), 1, String(getError()));
  assert.is(h.aioIsClosed(), 1);
  fails(h.poll(-1), errno.EINVAL, "nbd_poll: nothing to poll for in state CLOSED: Invalid argument");
  h.close();
  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
h.aio_disconnect()
time.sleep(0.3)
print(json.dumps([h.poll(-1), h.aio_is_closed()]))
`);
  assert.equal(py, [1, true]);
});

test("the server dies while the handle is idle: poll finds out (1, CLOSED) instead of waiting forever", () => {
  const h = nbdkit(["memory", "size=1M"]);
  assert.is(h.killSubprocess(SIGKILL), 0);
  sleep(300);
  const t = Date.now();
  assert.is(h.poll(-1), 1, String(getError()));
  assert.ok(Date.now() - t < 2000);
  assert.is(h.aioIsClosed(), 1);
  fails(h.poll(0), errno.EINVAL, "nbd_poll: nothing to poll for in state CLOSED: Invalid argument");
  fails(h.aioPread(new Uint8Array(512), 0), errno.EINVAL, "nbd_aio_pread: invalid state: CLOSED: the handle must be connected with the server: Invalid argument");
  h.close();
  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=1M"])})
h.kill_subprocess(signal.SIGKILL)
time.sleep(0.3)
r = h.poll(-1)
print(json.dumps([r, h.aio_is_closed()]))
`);
  assert.equal(py, [1, true]);
});

test("server death with commands in flight (server-death.c): all complete with ENOTCONN, nothing hangs", () => {
  const h = nbdkit(["--filter=delay", "memory", "size=1m", "delay-read=15", "delay-trim=15"]);
  const buf = new Uint8Array(512).fill(9);
  const read = cookie(h.aioPread(buf, 0));
  let trimRetired = false;
  let trimError = -1;
  cookie(h.aioTrim(512, 0, (error) => {
    trimError = error.value;
    if (error.value !== errno.ENOTCONN) return 0;
    trimRetired = true;
    return 1;
  }));
  assert.is(h.aioPeekCommandCompleted(), 0n);
  assert.is(h.aioCommandCompleted(read), 0);
  assert.is(h.aioInFlight(), 2);
  const t = Date.now();
  assert.is(h.killSubprocess(SIGKILL), 0);
  let r: number;
  for (let i = 0; (r = h.poll(1000)) === 1; i++) {
    assert.ok(i < 20);
    if (h.aioIsDead() || h.aioIsClosed()) break;
  }
  assert.ok(h.aioIsDead() === 1 || h.aioIsClosed() === 1, `server death not detected (poll ${r}: ${getError()})`);
  assert.ok(Date.now() - t < 5000, "detected long before the 15 s delay");
  assert.is(h.aioInFlight(), 0);
  assert.is(h.aioPeekCommandCompleted(), read);
  fails(h.aioCommandCompleted(read), errno.ENOTCONN, "nbd_aio_command_completed: read: command failed: Transport endpoint is not connected");
  assert.is(trimError, errno.ENOTCONN);
  assert.ok(trimRetired);
  fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");
  assert.equal(buf, new Uint8Array(512), "the failed read's buffer holds zeroes");
  fails(h.aioPread(buf, 0), errno.EINVAL, /^nbd_aio_pread: invalid state: (DEAD|CLOSED): the handle must be connected with the server: Invalid argument$/);
});

// The server is stopped while two 2 MiB writes are issued: the first fills the socket, the second waits
// to go out. shutdown runs while it is still stopped, and the server continues half a second later.
test("shutdown(SHUTDOWN_ABANDON_PENDING) with a stopped server: unsent writes fail with ENOTCONN, sent ones complete", () => {
  const h = nbdkit(["memory", "size=2m"]);
  assert.is(h.killSubprocess(SIGSTOP), 0);
  const data = random(2 * MiB);
  const seen: number[] = [];
  const first = cookie(h.aioPwrite(data, 0));
  cookie(h.aioPwrite(data, 0, (error) => (seen.push(error.value), 1)));
  assert.is(h.aioInFlight(), 2);
  continueLater(h.getSubprocessPid(), 500);
  assert.is(h.shutdown(SHUTDOWN_ABANDON_PENDING), 0, String(getError()));
  assert.is(h.aioIsClosed(), 1);
  assert.is(h.aioInFlight(), 0);
  assert.is(h.aioPeekCommandCompleted(), first);
  assert.equal(seen, [errno.ENOTCONN], "the second write was never sent");
  // The first was sent: nbdkit writes it, or refuses it as it shuts down (libnbd sees the same race).
  const r = h.aioCommandCompleted(first);
  assert.ok(r === 1 || (r === -1 && getErrno() === errno.ESHUTDOWN), `first write: ${r} ${getError()}`);
  fails(h.aioPeekCommandCompleted(), errno.EINVAL, "nbd_aio_peek_command_completed: no commands are in flight: Invalid argument");
  fails(h.shutdown(), errno.EINVAL, "nbd_shutdown: invalid state: CLOSED: the handle must be negotiating, or connected with the server: Invalid argument");
  h.close();

  // Without the flag both writes go out before NBD_CMD_DISC: each is done, or refused by nbdkit as it shuts down
  // (ESHUTDOWN, libnbd sees the same race), never ENOTCONN.
  const h2 = nbdkit(["memory", "size=2m"]);
  assert.is(h2.killSubprocess(SIGSTOP), 0);
  const a = cookie(h2.aioPwrite(data, 0));
  const b = cookie(h2.aioPwrite(data.subarray(0, MiB), MiB));
  continueLater(h2.getSubprocessPid(), 300);
  assert.is(h2.shutdown(), 0);
  assert.is(h2.aioInFlight(), 0);
  for (const c of [a, b]) {
    const r = h2.aioCommandCompleted(c);
    assert.ok(r === 1 || (r === -1 && getErrno() === errno.ESHUTDOWN), `write ${c}: ${r} ${getError()}`);
  }

  const py = python(`
h = nbd.NBD()
h.connect_command(${JSON.stringify([...NBDKIT, "memory", "size=2m"])})
h.kill_subprocess(signal.SIGSTOP)
seen = []
buf = b"x" * (2 * 1024 * 1024)
c1 = h.aio_pwrite(buf, 0)
h.aio_pwrite(buf, 0, lambda err: seen.append(err.value) or 1)
import os, subprocess, threading
pid = int(subprocess.check_output(["pgrep", "-P", str(os.getpid()), "nbdkit"]))
threading.Timer(0.5, os.kill, [pid, signal.SIGCONT]).start()
h.shutdown(nbd.SHUTDOWN_ABANDON_PENDING)
out = [h.aio_in_flight(), h.aio_peek_command_completed() == c1, seen]
try: h.aio_command_completed(c1)
except nbd.Error as e: assert e.errnum == errno.ESHUTDOWN
print(json.dumps(out))
`);
  assert.equal(py, [0, true, [errno.ENOTCONN]]);
});

test("aioGetDirection and aioIsProcessing follow the handle's state; nbdkit sparse-random reads are stable", () => {
  const fresh = create()!;
  assert.is(fresh.aioGetDirection(), 0, "nothing to wait for before connecting");
  fresh.close();
  const h = nbdkit(["--filter=delay", "sparse-random", "size=16M", "delay-read=1"], (h) => h.addMetaContext("base:allocation"));
  assert.is(h.aioGetDirection(), AIO_DIRECTION_READ, "a connected handle waits for replies");
  assert.is(h.aioIsProcessing(), 0);
  const a = new Uint8Array(64 * KiB);
  const c = h.aioPread(a, 0);
  assert.ok(c > 0n, String(getError()));
  assert.is(h.aioIsProcessing(), 1, "a command in flight");
  assert.is(h.aioIsReady(), 0);
  complete(h, [c]);
  assert.is(h.aioIsProcessing(), 0);
  assert.is(h.aioIsReady(), 1);
  // sparse-random: the same bytes every time, and extents that say where data is.
  const b = new Uint8Array(64 * KiB);
  assert.is(h.pread(b, 0), 0, String(getError()));
  assert.equal(b, a);
  // nbdkit 1.32's sparse-random answers block status with one extent (nbdinfo --map agrees).
  let covered = 0;
  let flags = -1;
  assert.is(h.blockStatus(16 * MiB, 0, (_ctx, _off, e) => {
    for (let i = 0; i < e.length; i += 2) covered += e[i]!;
    flags = e[1]!;
    return 0;
  }), 0, String(getError()));
  assert.is(covered, 16 * MiB);
  const map = spawnSync("nbdinfo", ["--map", "--", "[", "nbdkit", "sparse-random", "size=16M", "]"], { encoding: "utf8" });
  assert.is(Number(map.stdout.trim().split(/\s+/)[2]), flags, map.stdout);
  assert.ok(flags & STATE_HOLE);
});

test.run();
