/**
 * stats_bytes_sent, stats_chunks_sent, stats_bytes_received,
 * stats_chunks_received (T32, libnbd's python 620-stats). python3-libnbd
 * 1.14 predates these calls, so the bytes are checked against the wire
 * itself: the server runs behind a small relay that counts what passes each
 * way, and the chunk counts against the NBD protocol's message sizes
 * (compact headers: a 28-byte request, a 16-byte simple reply, a 20-byte
 * structured chunk header).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync, writeFileSync } from "node:fs";
import { create, getErrno, getError, type Handle } from "nbd-ts";
import * as nbdAsync from "nbd-ts/async";
import { errno } from "../src/errno.js";
import { nbdkitUnix, scratchPath } from "./helpers.js";

const NBDKIT = ["nbdkit", "-s", "--exit-with-parent", "memory", "1M"];

/** [bytes sent, chunks sent, bytes received, chunks received]. */
type Stats = [bigint, bigint, bigint, bigint];
interface Counters {
  statsBytesSent(): bigint | Promise<bigint>;
  statsChunksSent(): bigint | Promise<bigint>;
  statsBytesReceived(): bigint | Promise<bigint>;
  statsChunksReceived(): bigint | Promise<bigint>;
}

const stats = (h: Handle): Stats => [h.statsBytesSent(), h.statsChunksSent(), h.statsBytesReceived(), h.statsChunksReceived()];
const statsOf = async (h: Counters): Promise<Stats> =>
  [await h.statsBytesSent(), await h.statsChunksSent(), await h.statsBytesReceived(), await h.statsChunksReceived()];
const delta = (after: Stats, before: Stats): number[] => after.map((v, i) => Number(v - before[i]!));

// ---- a relay that counts the bytes on the wire -------------------------------------

const RELAY = scratchPath("relay.mjs");
writeFileSync(RELAY, `
// connect_command server: relays its socket (fd 0) to a server it runs, counting bytes.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { Socket } from "node:net";
const [file, cmd, ...args] = process.argv.slice(2);
const server = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"] });
const client = new Socket({ fd: 0, readable: true, writable: true });
let sent = 0, received = 0;
// Counted before passing on: by the time the client sees an answer, its bytes are on file.
const save = () => writeFileSync(file, JSON.stringify({ sent, received }));
save();
client.on("data", (d) => { sent += d.length; save(); server.stdin.write(d); });
client.on("end", () => server.stdin.end());
client.on("error", () => server.kill());
server.stdin.on("error", () => {});
server.stdout.on("data", (d) => { received += d.length; save(); client.write(d); });
server.stdout.on("end", () => client.end());
`);

let relays = 0;
/** A handle connected to nbdkit through the relay; `wire()` says what crossed so far. */
function relayed(before?: (h: Handle) => void): { h: Handle; wire: () => { sent: number; received: number } } {
  const file = scratchPath(`wire-${relays++}.json`);
  const h = create()!;
  before?.(h);
  assert.is(h.connectCommand([process.execPath, RELAY, file, ...NBDKIT]), 0, String(getError()));
  return { h, wire: () => JSON.parse(readFileSync(file, "utf8")) as { sent: number; received: number } };
}

function matchesWire(s: Stats, wire: { sent: number; received: number }, what: string): void {
  assert.is(s[0], BigInt(wire.sent), `${what}: bytes sent = bytes on the wire to the server`);
  assert.is(s[2], BigInt(wire.received), `${what}: bytes received = bytes on the wire from the server`);
}

// ---- T32 ----------------------------------------------------------------------------

test("before connecting every counter is 0n (a bigint); they never touch the last error", () => {
  const h = create()!;
  assert.equal(stats(h), [0n, 0n, 0n, 0n]);
  for (const v of stats(h)) assert.is(typeof v, "bigint");
  assert.is(h.getSize(), -1n);
  const [msg, err] = [getError(), getErrno()];
  assert.equal(stats(h), [0n, 0n, 0n, 0n]);
  assert.is(getError(), msg, "a call that cannot fail leaves the error alone");
  assert.is(getErrno(), err);
  h.close();
});

test("connect, flush, pread, pwrite, shutdown: the counts T32 gives, and the bytes the wire carried", () => {
  const { h, wire } = relayed();
  const s1 = stats(h);
  assert.ok(s1[1] > 0n, "chunks sent");
  assert.ok(s1[0] > s1[1], "bytes sent > chunks sent");
  assert.ok(s1[3] > 0n, "chunks received");
  assert.ok(s1[2] > s1[3], "bytes received > chunks received");
  matchesWire(s1, wire(), "handshake");
  assert.is(h.getStructuredRepliesNegotiated(), 1);

  // flush: one 28-byte request out, one 16-byte simple reply back (nbdkit 1.32).
  assert.is(h.flush(), 0, String(getError()));
  const s2 = stats(h);
  assert.equal(delta(s2, s1), [28, 1, 16, 1]);
  matchesWire(s2, wire(), "flush");

  // pread of 512: one structured chunk, 20-byte header + 8-byte offset + the data.
  const buf = new Uint8Array(512);
  assert.is(h.pread(buf, 0), 0, String(getError()));
  const s3 = stats(h);
  assert.equal(delta(s3, s2), [28, 1, 20 + 8 + 512, 1]);
  matchesWire(s3, wire(), "pread");

  // pwrite of N: the request carries the data; the reply is simple.
  for (const n of [1, 4096, 65537]) {
    const before = stats(h);
    assert.is(h.pwrite(new Uint8Array(n).fill(7), 1024), 0, String(getError()));
    const after = stats(h);
    assert.equal(delta(after, before), [28 + n, 1, 16, 1], `pwrite ${n}`);
    matchesWire(after, wire(), `pwrite ${n}`);
  }
  const s4 = stats(h);
  assert.is(h.pread(buf, 1024), 0);
  assert.ok(buf.every((b) => b === 7), "the write landed");
  const s5 = stats(h);
  assert.equal(delta(s5, s4), [28, 1, 540, 1]);

  // A failed request that never went out counts nothing.
  assert.is(h.pread(buf, 1048576), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.equal(stats(h), s5);

  // shutdown: NBD_CMD_DISC is one more chunk; the server may or may not answer it (python 620).
  assert.is(h.shutdown(), 0, String(getError()));
  const s6 = stats(h);
  assert.is(s6[0], s5[0] + 28n);
  assert.is(s6[1], s5[1] + 1n);
  assert.ok(s6[2] >= s5[2]);
  assert.is(s6[3], s5[3] + (s6[2] > s5[2] ? 1n : 0n));
  assert.is(h.aioIsClosed(), 1);
  assert.equal(stats(h), s6, "still readable once the connection is closed");
  matchesWire(s6, wire(), "shutdown");

  // After close(): a closed handle answers every call with its error value (API.md).
  h.close();
  const names = ["statsBytesSent", "statsChunksSent", "statsBytesReceived", "statsChunksReceived"] as const;
  const cnames = ["nbd_stats_bytes_sent", "nbd_stats_chunks_sent", "nbd_stats_bytes_received", "nbd_stats_chunks_received"];
  names.forEach((name, i) => {
    assert.is(h[name](), -1n, name);
    assert.is(getErrno(), errno.EINVAL);
    assert.is(getError(), `${cnames[i]}: invalid state: the handle has been closed: Invalid argument`);
  });
});

test("without structured replies a 512-byte read is one 16-byte simple reply plus the data", () => {
  const { h, wire } = relayed((h) => assert.is(h.setRequestStructuredReplies(false), 0));
  assert.is(h.getStructuredRepliesNegotiated(), 0);
  const s1 = stats(h);
  matchesWire(s1, wire(), "handshake");
  assert.is(h.pread(new Uint8Array(512), 0), 0, String(getError()));
  const s2 = stats(h);
  assert.equal(delta(s2, s1), [28, 1, 16 + 512, 1]);
  matchesWire(s2, wire(), "pread");
  // Fewer options went out than with structured replies (no NBD_OPT_STRUCTURED_REPLY), and fewer
  // again than by default, where NBD_OPT_EXTENDED_HEADERS goes first (nbdkit 1.32 refuses it).
  const { h: sr } = relayed((h) => assert.is(h.setRequestExtendedHeaders(false), 0));
  assert.is(stats(sr)[1], s1[1] + 1n, "one option more with structured replies");
  const { h: other } = relayed();
  assert.is(stats(other)[1], s1[1] + 2n, "two more by default: extended headers (refused), then structured replies");
  assert.is(stats(other)[3], stats(sr)[3] + 1n, "and one more reply, the refusal");
  sr.close();
  other.close();
  h.close();
});

test("aio commands count the same as blocking ones; a 1 MiB read is one chunk from nbdkit", () => {
  const { h, wire } = relayed();
  const s1 = stats(h);
  const buf = new Uint8Array(new SharedArrayBuffer(1 << 20));
  const cookies = [h.aioPread(buf, 0), h.aioFlush(), h.aioPwrite(new Uint8Array(100), 0)];
  for (const c of cookies) assert.ok(c > 0n, String(getError()));
  while (h.aioInFlight() > 0) assert.ok(h.poll(-1) >= 0, String(getError()));
  for (const c of cookies) assert.is(h.aioCommandCompleted(c), 1);
  const s2 = stats(h);
  assert.equal(delta(s2, s1), [28 * 3 + 100, 3, 20 + 8 + (1 << 20) + 16 + 16, 3]);
  matchesWire(s2, wire(), "aio");
  h.close();
});

test("the Promise API counts exactly as the blocking API on the same server, step by step", async () => {
  const server = nbdkitUnix("memory", "size=1M");
  const h = create()!;
  const a = nbdAsync.create();
  const steps: [string, (x: Handle | nbdAsync.AsyncHandle) => unknown][] = [
    ["connect", (x) => x.connectUnix(server.socket)],
    ["flush", (x) => x.flush()],
    ["pread", (x) => x.pread(new Uint8Array(512), 0)],
    ["pwrite", (x) => x.pwrite(new Uint8Array(3000), 512)],
    ["zero", (x) => x.zero(4096, 8192)],
    ["shutdown", (x) => x.shutdown()],
  ];
  const sync: Stats[] = [stats(h)];
  const async: Stats[] = [await statsOf(a)];
  for (const [what, step] of steps) {
    assert.is(step(h), 0, `${what}: ${getError()}`);
    sync.push(stats(h));
    assert.is(await step(a), 0, what);
    async.push(await statsOf(a));
  }
  assert.equal(async, sync);
  assert.equal(sync[0], [0n, 0n, 0n, 0n]);
  assert.equal(delta(sync[2]!, sync[1]!), [28, 1, 16, 1], "flush");
  assert.equal(delta(sync[4]!, sync[3]!), [28 + 3000, 1, 16, 1], "pwrite");
  for (const v of async.flat()) assert.is(typeof v, "bigint");
  h.close();
  await a.close();
  try {
    await a.statsBytesSent();
    assert.unreachable("a closed async handle rejects");
  } catch (e) {
    assert.instance(e, nbdAsync.NbdError);
    assert.is((e as nbdAsync.NbdError).errno, errno.EINVAL);
    assert.is((e as Error).message, "nbd_stats_bytes_sent: invalid state: the handle has been closed: Invalid argument");
  }
});

test.run();
