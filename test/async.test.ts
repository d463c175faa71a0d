/**
 * The Promise API (nbd-ts/async) against the blocking API, on the same
 * server: the same results, the same errors (message and errno), the same
 * callbacks; failures reject with an NbdError instead of returning -1.
 */
import { randomFillSync } from "node:crypto";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { CONTEXT_BASE_ALLOCATION, create, getErrno, getError, type Handle } from "nbd-ts";
import * as nbdAsync from "nbd-ts/async";
import { errno } from "../src/errno.js";
import { alive, nbdkitUnix, waitFor } from "./helpers.js";

const server = nbdkitUnix("memory", "size=4M");

function pair(): [Handle, nbdAsync.AsyncHandle] {
  const h = create()!;
  h.addMetaContext(CONTEXT_BASE_ALLOCATION);
  assert.is(h.connectUnix(server.socket), 0, String(getError()));
  const a = nbdAsync.create();
  return [h, a];
}

/** What a blocking call gave, or what the async one resolved or rejected with. */
function sync<T>(f: () => T): { ok?: T; err?: [string | null, number] } {
  const r = f();
  return r === -1 || r === -1n || r === null ? { err: [getError(), getErrno()] } : { ok: r };
}
async function later<T>(f: () => Promise<T>): Promise<{ ok?: T; err?: [string | null, number] }> {
  try {
    return { ok: await f() };
  } catch (e) {
    assert.instance(e, nbdAsync.NbdError);
    const err = e as nbdAsync.NbdError;
    assert.is(err.code, Object.entries(errno).find(([, v]) => v === err.errno)?.[0]);
    return { err: [err.message, err.errno] };
  }
}

test("the same reads, writes, queries and errors through both APIs", async () => {
  const [h, a] = pair();
  await a.addMetaContext(CONTEXT_BASE_ALLOCATION);
  assert.is(await a.connectUnix(server.socket), 0);
  const data = randomFillSync(new Uint8Array(8192));
  assert.equal(sync(() => h.pwrite(data, 4096)), await later(() => a.pwrite(data, 4096)));
  const b1 = new Uint8Array(16384);
  const b2 = new Uint8Array(16384);
  assert.equal(sync(() => h.pread(b1, 0)), await later(() => a.pread(b2, 0)));
  assert.equal(b1, b2);
  assert.equal(b1.subarray(4096, 12288), data);
  for (const q of ["getSize", "isReadOnly", "canFlush", "canFua", "canTrim", "canZero", "getProtocol",
    "getStructuredRepliesNegotiated", "statsChunksSent"] as const) {
    assert.equal(sync(() => h[q]()), await later(() => a[q]() as Promise<unknown>), q);
  }
  // Failures: libnbd's message and errno, as a rejection.
  const cases: [string, () => unknown, () => Promise<unknown>][] = [
    ["past the end", () => h.pread(b1, 4 << 20), () => a.pread(b2, 4 << 20)],
    ["write past the end", () => h.pwrite(data, 4 << 20), () => a.pwrite(data, 4 << 20)],
    ["bad flags", () => h.pread(b1, 0, 0x40), () => a.pread(b2, 0, 0x40)],
    ["zero length", () => h.zero(0, 0), () => a.zero(0, 0)],
    ["wrong state", () => h.connectUnix(server.socket), () => a.connectUnix(server.socket)],
    ["bad argument", () => h.pread("x" as never, 0), () => a.pread("x" as never, 0)],
    ["bad offset", () => h.trim(512, -1), () => a.trim(512, -1)],
  ];
  for (const [what, s, p] of cases) {
    const want = sync(s);
    assert.ok(want.err, what);
    assert.equal(await later(p), want, what);
  }
  assert.equal(b2, new Uint8Array(b2.length), "a failed read leaves zeroes, as with pread_initialize");
  h.close();
  await a.close();
});

test("callbacks are called directly, with the same arguments as the blocking API replays", async () => {
  const [h, a] = pair();
  await a.addMetaContext(CONTEXT_BASE_ALLOCATION);
  await a.connectUnix(server.socket);
  const seen: unknown[][] = [[], []];
  const extent = (i: number) => (ctx: string, off: bigint, entries: Uint32Array) => {
    seen[i]!.push([ctx, off, [...entries]]);
    return 0;
  };
  assert.is(h.blockStatus(1 << 20, 0, extent(0)), 0, String(getError()));
  assert.is(await a.blockStatus(1 << 20, 0, extent(1)), 0);
  assert.ok(seen[0]!.length > 0);
  assert.equal(seen[1], seen[0]);
  const chunks: unknown[][] = [[], []];
  const chunk = (i: number) => (sub: Uint8Array, off: bigint, status: number) => {
    chunks[i]!.push([sub.length, off, status]);
    return 0;
  };
  assert.is(h.preadStructured(new Uint8Array(4096), 0, chunk(0)), 0);
  assert.is(await a.preadStructured(new Uint8Array(4096), 0, chunk(1)), 0);
  assert.equal(chunks[1], chunks[0]);
  // A callback that fails the command fails the call, in both.
  const failing = (_s: Uint8Array, _o: bigint, _st: number, err: { value: number }) => { err.value = errno.EIO; return -1; };
  const want = sync(() => h.preadStructured(new Uint8Array(512), 0, failing));
  assert.equal(want.err, ["nbd_pread_structured: read: command failed: Input/output error", errno.EIO]);
  assert.equal(await later(() => a.preadStructured(new Uint8Array(512), 0, failing)), want);
  h.close();
  await a.close();
});

test("aio through the Promise API: many reads in flight, poll, completion callbacks", async () => {
  const a = nbdAsync.create();
  await a.connectUnix(server.socket);
  const data = randomFillSync(new Uint8Array(1 << 20));
  assert.is(await a.pwrite(data, 0), 0);
  const bufs = Array.from({ length: 32 }, () => new Uint8Array(32768));
  let completions = 0;
  const cookies: bigint[] = [];
  for (const [i, b] of bufs.entries()) {
    cookies.push(await a.aioPread(b, i * 32768, (err) => { assert.is(err.value, 0); completions++; return 0; }));
  }
  while ((await a.aioInFlight()) > 0) assert.ok((await a.poll(-1)) >= 0);
  assert.is(completions, 32);
  for (const c of cookies) assert.is(await a.aioCommandCompleted(c), 1);
  bufs.forEach((b, i) => assert.equal(b, data.subarray(i * 32768, (i + 1) * 32768)));
  await a.close();
});

test("a socket-activated server is stopped by close(), and a closed handle rejects", async () => {
  const a = nbdAsync.create();
  await a.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]);
  const pid = Number(await a.getSubprocessPid());
  assert.ok(alive(pid));
  await a.close();
  waitFor(() => !alive(pid), 5000, "the server to exit");
  const err = await later(() => a.getSize());
  assert.equal(err.err, ["nbd_get_size: invalid state: the handle has been closed: Invalid argument", errno.EINVAL]);
});

test.run();
