/**
 * Faults: servers that break the protocol (test/fake-server.ts) or die, and
 * servers that refuse commands (nbdkit's error filter). Each failing call
 * returns -1 within seconds with libnbd's errno and a message that says what
 * was wrong; the handle ends DEAD, CLOSED or still READY as libnbd's does;
 * other handles keep working and a new one connects at once.
 *
 * The expected values are libnbd's: python3-libnbd (1.14) is run against
 * the same fake server and must agree, except where a case records what
 * 1.14 does instead (`libnbd114`) because nbd-ts follows newer libnbd
 * (lib/aio.c, states-reply-simple.c of 2023: EPROTO rather than EIO or
 * EINVAL, a simple reply to a read fails the read rather than the handle).
 * A server that never answers makes libnbd wait forever; nbd-ts's
 * set_timeout extension ends the wait (ETIMEDOUT, DEAD), so those cases
 * have no libnbd counterpart.
 *
 * FAULT_FIGURES=1 prints each fault's errno and time to return.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, spawnSync } from "node:child_process";
import { create, getErrno, getError, type Handle } from "nbd-ts";
import { errno } from "../src/errno.js";
import { fakeServer, patternAt, type Script } from "./fake-server.js";
import { alive, nbdkitUnix, pattern, timed, waitFor } from "./helpers.js";
import { newHandle } from "./handles.js";

const MiB = 1024 * 1024;
/** A failing call must return within this. */
const PROMPT_MS = 2000;

// ---- handles (newHandle's are closed after each test) -------------------------------

type State = "READY" | "DEAD" | "CLOSED" | "OTHER";
const stateOf = (h: Handle): State =>
  h.aioIsDead() ? "DEAD" : h.aioIsClosed() ? "CLOSED" : h.aioIsReady() ? "READY" : "OTHER";

// ---- the healthy server every case checks afterwards --------------------------------

let healthy: string | undefined;
let bystander: Handle | undefined;

/** A handle made before the fault, on another server, still works; a new handle connects at once. */
function othersUnharmed(what: string): void {
  if (!healthy) {
    healthy = nbdkitUnix("memory", "size=1M").socket;
    bystander = create()!;
    assert.is(bystander.connectUnix(healthy), 0, String(getError()));
  }
  const data = new Uint8Array(4096).fill(what.length & 0xff);
  assert.is(bystander!.pwrite(data, 8192), 0, `${what}: bystander pwrite: ${getError()}`);
  const back = new Uint8Array(4096);
  assert.is(bystander!.pread(back, 8192), 0, `${what}: bystander pread: ${getError()}`);
  assert.equal(back, data, `${what}: bystander reads back what it wrote`);
  const fresh = newHandle();
  const { value, ms } = timed(() => fresh.connectUnix(healthy!));
  assert.is(value, 0, `${what}: a new handle connects: ${getError()}`);
  assert.ok(ms < PROMPT_MS, `${what}: a new handle took ${ms} ms to connect`);
  assert.is(fresh.pread(new Uint8Array(512), 0), 0, `${what}: the new handle reads: ${getError()}`);
}

// ---- the cases -----------------------------------------------------------------------

/** A call, in a form both nbd-ts and python3-libnbd run: pread/pwrite take a count and an offset. */
type Op = ["pread" | "pwrite", number, number] | ["set_request_structured_replies", boolean] | ["set_tls", number];

interface Outcome { errno: number; message: string; state: State }

interface Case {
  name: string;
  script: Script;
  settings?: Op[];
  /** Calls that succeed before the one that fails. */
  before?: Op[];
  /** The call that fails; none: the connect itself fails. */
  op?: Op;
  expect: Outcome;
  /** The handle stays READY and the same call works the next time (the fault was one reply). */
  recovers?: boolean;
  /** What libnbd 1.14 does instead, where nbd-ts follows newer libnbd or words it differently. */
  libnbd114?: Partial<Outcome>;
  /** set_timeout before connecting: the server never answers, and libnbd would wait forever. */
  timeout?: number;
}

const outOfBounds = (offset: number, cmdOffset: number, length: number, count: number) =>
  `range of structured reply is out of bounds, offset=${offset}, cmd->offset=${cmdOffset}, ` +
  `length=${length}, cmd->count=${count}: this is likely to be a bug in the NBD server`;
const eof = (call: string): Outcome =>
  ({ errno: 0, message: `nbd_${call}: recv: server disconnected unexpectedly`, state: "DEAD" });
const dead = (call: string, message: string): Outcome => ({ errno: 0, message: `nbd_${call}: ${message}`, state: "DEAD" });
const READ: Op = ["pread", 16, 64];
const WRITE: Op = ["pwrite", 16, 64];

// Hooks run in the fake server's process: only their arguments are in scope.
// Option 7 is NBD_OPT_GO; chunk types: 0 NONE, 1 OFFSET_DATA, 2 OFFSET_HOLE,
// 5 BLOCK_STATUS, 0x8001 ERROR, 0x8002 ERROR_OFFSET.
const cases: Case[] = [
  // -- handshake
  {
    name: "greeting with a wrong NBDMAGIC",
    script: { greeting: "bad-magic" },
    expect: dead("connect_command", "handshake: server did not send expected NBD magic"),
  },
  {
    name: "greeting neither newstyle nor oldstyle",
    script: { greeting: "bad-second-magic" },
    expect: dead("connect_command", "handshake: server is not either an oldstyle or fixed newstyle NBD server"),
  },
  {
    name: "TLS required, but the server is not fixed newstyle",
    script: { handshakeFlags: 2 },
    settings: [["set_tls", 2]],
    expect: {
      errno: errno.ENOTSUP, state: "DEAD",
      message: "nbd_connect_command: handshake: server is not using fixed newstyle, but handle TLS setting is 'require' (2): Operation not supported",
    },
  },
  { name: "EOF before the greeting", script: { greeting: "close" }, expect: eof("connect_command") },
  {
    name: "EOF once NBD_OPT_GO is sent",
    script: { onOption: (opt) => (opt.code === 7 ? ["close"] : undefined) },
    expect: eof("connect_command"),
  },
  {
    name: "EOF in the middle of the reply to NBD_OPT_GO",
    script: { onOption: (opt, R) => (opt.code === 7 ? [R.go(opt).subarray(0, 25), "close"] : undefined) },
    expect: eof("connect_command"),
  },
  {
    name: "garbage instead of the reply to NBD_OPT_GO",
    script: { onOption: (opt, R) => (opt.code === 7 ? [R.bytes(64, 0x55)] : undefined) },
    expect: dead("connect_command", "handshake: invalid option reply magic"),
    libnbd114: { message: "nbd_connect_command: handshake: invalid option reply magic or option" },
  },
  {
    name: "a reply to NBD_OPT_GO that names another option",
    script: { onOption: (opt, R) => (opt.code === 7 ? [R.optionReply(8, 1)] : undefined) },
    expect: dead("connect_command", "handshake: unexpected option number in reply (8, expected 7)"),
    libnbd114: { message: "nbd_connect_command: handshake: invalid option reply magic or option" },
  },
  {
    name: "garbage after the NBD_OPT_GO ACK: READY until the next command reads it",
    script: { onOption: (opt, R) => (opt.code === 7 ? [R.go(opt), R.bytes(64, 0x55)] : undefined) },
    op: READ,
    expect: dead("pread", "invalid reply magic 0x55555555"),
    libnbd114: { message: "nbd_pread: invalid reply magic" },
  },
  // -- the server goes away
  {
    name: "EOF instead of a reply: CLOSED",
    script: { onRequest: () => ["close"] },
    op: READ,
    expect: { errno: errno.ENOTCONN, message: "nbd_pread: read: command failed: Transport endpoint is not connected", state: "CLOSED" },
  },
  {
    name: "EOF inside a reply header",
    script: { onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count)).subarray(0, 10), "close"] },
    op: READ,
    expect: eof("pread"),
  },
  {
    name: "EOF in the middle of a 4 MiB read's data (structured reply)",
    script: { size: 64n << 20n, onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count)).subarray(0, 1_000_000), "close"] },
    op: ["pread", 4 * MiB, 0],
    expect: eof("pread"),
  },
  {
    name: "EOF in the middle of a 4 MiB read's data (simple reply)",
    script: {
      size: 64n << 20n, structuredReplies: false,
      onRequest: (req, R) => [R.simple(req, { data: R.read(req.offset, req.count) }).subarray(0, 1_000_000), "close"],
    },
    op: ["pread", 4 * MiB, 0],
    expect: eof("pread"),
  },
  {
    name: "the server exits with a request unread: ECONNRESET",
    script: { onRequest: (req, R) => (req.index === 0 ? [R.reply(req), "reset"] : []) },
    before: [READ],
    op: READ,
    expect: { errno: errno.ECONNRESET, message: "nbd_pread: recv: Connection reset by peer", state: "DEAD" },
  },
  // -- the server goes silent (set_timeout; libnbd would wait forever)
  {
    name: "a server that never greets",
    script: { greeting: "silent" },
    timeout: 500,
    expect: { errno: errno.ETIMEDOUT, state: "DEAD", message: "nbd_connect_command: timed out after 500 ms waiting for the server: Connection timed out" },
  },
  {
    name: "a server that never answers NBD_OPT_GO",
    script: { onOption: (opt) => (opt.code === 7 ? [] : undefined) },
    timeout: 500,
    expect: { errno: errno.ETIMEDOUT, state: "DEAD", message: "nbd_connect_command: timed out after 500 ms waiting for the server: Connection timed out" },
  },
  {
    name: "a server that never answers a read",
    script: { onRequest: (req) => (req.type === 0 ? [] : undefined) },
    op: READ,
    timeout: 500,
    expect: { errno: errno.ETIMEDOUT, state: "DEAD", message: "nbd_pread: timed out after 500 ms waiting for the server: Connection timed out" },
  },
  {
    name: "a server that stops in the middle of a read reply",
    script: { onRequest: (req, R) => (req.type === 0 ? [R.data(req, req.offset, R.read(req.offset, req.count)).subarray(0, 30)] : undefined) },
    op: READ,
    timeout: 500,
    expect: { errno: errno.ETIMEDOUT, state: "DEAD", message: "nbd_pread: timed out after 500 ms waiting for the server: Connection timed out" },
  },
  // -- cookies and magics
  {
    name: "a simple reply with an unknown cookie",
    script: { onRequest: (req, R) => [R.simple(req, { cookie: req.cookie + 1000n })] },
    op: WRITE,
    expect: { errno: errno.EPROTO, message: "nbd_pwrite: no matching cookie 1001 found for server reply, this is probably a server bug: Protocol error", state: "DEAD" },
    libnbd114: { errno: 0, message: "nbd_pwrite: no matching cookie found for server reply, this is probably a bug in the server" },
  },
  {
    name: "a structured chunk with an unknown cookie",
    script: { onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count), { cookie: 77n })] },
    op: READ,
    expect: { errno: errno.EPROTO, message: "nbd_pread: no matching cookie 77 found for server reply, this is probably a server bug: Protocol error", state: "DEAD" },
    libnbd114: { errno: 0, message: "nbd_pread: no matching cookie found for server reply, this is probably a bug in the server" },
  },
  {
    name: "an unknown reply magic",
    script: { onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count), { magic: 0x12345678 })] },
    op: READ,
    expect: dead("pread", "invalid reply magic 0x12345678"),
    libnbd114: { message: "nbd_pread: invalid reply magic" },
  },
  {
    name: "an unknown chunk type",
    script: { onRequest: (req, R) => [R.chunk(req, 99, R.bytes(4))] },
    op: READ,
    expect: dead("pread", "unknown structured reply type (99)"),
  },
  {
    name: "an unknown chunk type whose payload never comes",
    script: { onRequest: (req, R) => [R.chunk(req, 99, R.bytes(0), { length: 100 })] },
    op: READ,
    expect: dead("pread", "unknown structured reply type (99)"),
  },
  {
    name: "a structured chunk although structured replies were refused",
    script: { structuredReplies: false, onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count))] },
    op: READ,
    expect: dead("pread", "server sent unexpected structured reply"),
  },
  // -- chunk lengths that do not fit their type
  {
    name: "OFFSET_HOLE of 8 bytes",
    script: { onRequest: (req, R) => [R.chunk(req, 2, R.bytes(8))] },
    op: READ,
    expect: dead("pread", "invalid length in NBD_REPLY_TYPE_OFFSET_HOLE"),
  },
  {
    name: "OFFSET_HOLE claiming 100 bytes that never come",
    script: { onRequest: (req, R) => [R.chunk(req, 2, R.bytes(0), { length: 100 })] },
    op: READ,
    expect: dead("pread", "invalid length in NBD_REPLY_TYPE_OFFSET_HOLE"),
  },
  {
    name: "NONE with a payload",
    script: { onRequest: (req, R) => [R.chunk(req, 0, R.bytes(4))] },
    op: READ,
    expect: dead("pread", "invalid length in NBD_REPLY_TYPE_NONE"),
  },
  {
    name: "NONE without the DONE flag",
    script: { onRequest: (req, R) => [R.none(req, { flags: 0 })] },
    op: READ,
    expect: dead("pread", "NBD_REPLY_FLAG_DONE must be set in NBD_REPLY_TYPE_NONE"),
  },
  {
    name: "ERROR shorter than its fixed part",
    script: { onRequest: (req, R) => [R.chunk(req, 0x8001, R.bytes(4))] },
    op: READ,
    expect: dead("pread", "too short length in structured reply error"),
  },
  {
    name: "ERROR whose message runs past the chunk",
    script: { onRequest: (req, R) => [R.chunk(req, 0x8001, R.cat(R.u32(5), new Uint8Array([0, 50]), R.bytes(10, 65)))] },
    op: READ,
    expect: dead("pread", "error message length too large"),
  },
  {
    name: "ERROR_OFFSET without room for its offset",
    script: { onRequest: (req, R) => [R.chunk(req, 0x8002, R.cat(R.u32(5), new Uint8Array([0, 2]), R.bytes(4, 65)))] },
    op: READ,
    expect: dead("pread", "error message length too large"),
    libnbd114: { message: "nbd_pread: invalid error payload length" },
  },
  {
    name: "a chunk longer than 64 MiB + 8",
    script: { onRequest: (req, R) => [R.chunk(req, 0x8001, R.bytes(0), { length: 67108873 })] },
    op: READ,
    expect: dead("pread", `invalid server reply length ${64 * MiB + 9}`),
    libnbd114: { message: "nbd_pread: invalid server reply length" },
  },
  {
    name: "OFFSET_DATA in reply to a write",
    script: { onRequest: (req, R) => [R.data(req, req.offset, R.bytes(16))] },
    op: WRITE,
    expect: dead("pwrite", "invalid command for receiving offset-data chunk, cmd->type=1, this is likely to be a bug in the server"),
  },
  {
    name: "OFFSET_HOLE in reply to a write",
    script: { onRequest: (req, R) => [R.hole(req, req.offset, 16)] },
    op: WRITE,
    expect: dead("pwrite", "invalid command for receiving offset-hole chunk, cmd->type=1, this is likely to be a bug in the server"),
  },
  {
    name: "BLOCK_STATUS in reply to a read",
    script: { onRequest: (req, R) => [R.chunk(req, 5, R.bytes(12))] },
    op: READ,
    expect: dead("pread", "invalid command for receiving block-status chunk, cmd->type=0, this is likely to be a bug in the server"),
  },
  // -- read chunks outside the request
  {
    name: "read data starting before the requested range",
    script: { onRequest: (req, R) => [R.data(req, req.offset - 8n, R.read(req.offset - 8n, req.count))] },
    op: READ,
    expect: dead("pread", outOfBounds(56, 64, 16, 16)),
  },
  {
    name: "read data running past the requested range",
    script: { onRequest: (req, R) => [R.data(req, req.offset + 8n, R.read(req.offset + 8n, req.count))] },
    op: READ,
    expect: dead("pread", outOfBounds(72, 64, 16, 16)),
  },
  {
    name: "more read data than asked for",
    script: { onRequest: (req, R) => [R.data(req, req.offset, R.read(req.offset, req.count + 8))] },
    op: READ,
    expect: dead("pread", outOfBounds(64, 64, 24, 16)),
  },
  {
    name: "an empty data chunk at the end of the range",
    script: { onRequest: (req, R) => [R.data(req, req.offset + 16n, R.bytes(0))] },
    op: READ,
    expect: dead("pread", outOfBounds(80, 64, 0, 16)),
  },
  {
    name: "a hole outside the requested range",
    script: { onRequest: (req, R) => [R.hole(req, req.offset + 8n, 16)] },
    op: READ,
    expect: dead("pread", outOfBounds(72, 64, 16, 16)),
  },
  {
    name: "an ERROR_OFFSET outside the requested range",
    script: { onRequest: (req, R) => [R.error(req, 5, "x", { offset: req.offset + 1000n })] },
    op: READ,
    expect: dead("pread", outOfBounds(1064, 64, 0, 16)),
  },
  // -- one bad reply: the command fails, the handle stays READY
  {
    name: "an unknown error chunk type (bit 15 set) fails the read only",
    script: { onRequest: (req, R) => (req.index ? undefined : [R.chunk(req, 0x8099, R.cat(R.u32(5), new Uint8Array([0, 2]), R.bytes(2, 65)))]) },
    op: READ,
    recovers: true,
    expect: { errno: errno.EIO, message: "nbd_pread: read: command failed: Input/output error", state: "READY" },
  },
  {
    name: "a simple error reply (no structured replies) fails the read only",
    script: { structuredReplies: false, onRequest: (req, R) => (req.index ? undefined : [R.simple(req, { error: 28 })]) },
    op: READ,
    recovers: true,
    expect: { errno: errno.ENOSPC, message: "nbd_pread: read: command failed: No space left on device", state: "READY" },
  },
  {
    name: "an ERROR chunk with error 0",
    script: { onRequest: (req, R) => (req.index ? undefined : [R.error(req, 0, "x")]) },
    op: READ,
    recovers: true,
    expect: { errno: errno.EPROTO, message: "nbd_pread: read: command failed: Protocol error", state: "READY" },
    libnbd114: { errno: errno.EINVAL, message: "nbd_pread: read: command failed: Invalid argument" },
  },
  {
    name: "an ERROR chunk with bytes after its message",
    script: { onRequest: (req, R) => (req.index ? undefined : [R.chunk(req, 0x8001, R.cat(R.u32(5), new Uint8Array([0, 2]), R.bytes(10, 65)))]) },
    op: READ,
    recovers: true,
    expect: { errno: errno.EIO, message: "nbd_pread: read: command failed: Input/output error", state: "READY" },
    libnbd114: { errno: 0, message: "nbd_pread: error payload length too large", state: "DEAD" },
  },
  {
    name: "read data that covers half the range",
    script: { onRequest: (req, R) => (req.index ? undefined : [R.data(req, req.offset, R.read(req.offset, 8))]) },
    op: READ,
    recovers: true,
    expect: { errno: errno.EPROTO, message: "nbd_pread: read: command failed: Protocol error", state: "READY" },
    libnbd114: { errno: errno.EIO, message: "nbd_pread: read: command failed: Input/output error" },
  },
  {
    name: "an empty data chunk (length 8) and nothing else",
    script: { onRequest: (req, R) => (req.index ? undefined : [R.chunk(req, 1, R.cat(R.u32(0), R.u32(64)))]) },
    op: READ,
    recovers: true,
    expect: { errno: errno.EPROTO, message: "nbd_pread: read: command failed: Protocol error", state: "READY" },
    libnbd114: { errno: errno.EIO, message: "nbd_pread: read: command failed: Input/output error" },
  },
  {
    name: "a simple reply to a read although structured replies were agreed",
    script: { onRequest: (req, R) => (req.index ? undefined : [R.simple(req, { data: R.read(req.offset, req.count) })]) },
    op: READ,
    recovers: true,
    expect: { errno: errno.EPROTO, message: "nbd_pread: read: command failed: Protocol error", state: "READY" },
    libnbd114: { errno: 0, message: "nbd_pread: server sent unexpected simple reply for read", state: "DEAD" },
  },
];

// ---- running a case on nbd-ts ----------------------------------------------------------

function tsOp(h: Handle, op: Op): number {
  switch (op[0]) {
    case "pread": return h.pread(new Uint8Array(op[1]), op[2]);
    case "pwrite": return h.pwrite(new Uint8Array(op[1]).fill(0xee), op[2]);
    case "set_request_structured_replies": return h.setRequestStructuredReplies(op[1]);
    case "set_tls": return h.setTls(op[1]);
  }
}

const errnoName = (n: number): string => Object.entries(errno).find(([, v]) => v === n)?.[0] ?? String(n);
/** fault → errno → ms to return → state, for FAULT_FIGURES. */
const figures: string[] = [];

for (const c of cases) {
  test(c.name, () => {
    const h = newHandle();
    for (const op of c.settings ?? []) assert.is(tsOp(h, op), 0);
    if (c.timeout) assert.is(h.setTimeout(c.timeout), 0);
    const connect = timed(() => h.connectCommand(fakeServer(c.script)));
    let ret = connect.value;
    let ms = connect.ms;
    if (c.op) {
      assert.is(ret, 0, `connect: ${getError()}`);
      // Nothing was in flight: like libnbd, the handle has not looked at the socket yet.
      assert.is(h.aioIsReady(), 1, h.connectionState() ?? "");
      for (const op of c.before ?? []) assert.is(tsOp(h, op), 0, `${op[0]}: ${getError()}`);
      ({ value: ret, ms } = timed(() => tsOp(h, c.op!)));
    }
    assert.is(ret, -1, "the call fails");
    assert.is(getError(), c.expect.message);
    assert.is(getErrno(), c.expect.errno, String(getError()));
    assert.is(stateOf(h), c.expect.state, h.connectionState() ?? "");
    assert.ok(ms < PROMPT_MS, `returned after ${ms} ms`);
    if (c.timeout) assert.ok(ms >= c.timeout - 10, `returned after ${ms} ms, before the timeout`);
    figures.push(`| ${c.name} | ${c.op ? c.op[0] : "connect"} | ${errnoName(c.expect.errno)} | ${ms} | ${c.expect.state} |`);
    if (c.recovers) {
      const buf = new Uint8Array(16);
      assert.is(h.pread(buf, 64), 0, `the next read: ${getError()}`);
      assert.equal(buf, pattern(64, 16), "the next read gets the data");
    }
    if (c.expect.state === "DEAD") {
      // Nothing works on a dead handle but close.
      assert.is(h.pread(new Uint8Array(1), 0), -1);
      assert.match(getError()!, /^nbd_pread: invalid state: DEAD: /);
    }
    othersUnharmed(c.name);
  });
}

// ---- the same cases on libnbd 1.14 -------------------------------------------------------

const PY = String.raw`
import json, sys, time, nbd
def call(h, op):
    name, args = op[0], op[1:]
    if name == "pwrite": args = [b"\xee" * args[0], args[1]]
    getattr(h, name)(*args)
def state(h):
    return "DEAD" if h.aio_is_dead() else "CLOSED" if h.aio_is_closed() else "READY" if h.aio_is_ready() else "OTHER"
out = []
for spec in json.load(sys.stdin):
    h = nbd.NBD()
    res = {}
    try:
        for op in spec["settings"]: call(h, op)
        h.connect_command(spec["argv"])
        for op in spec["before"]: call(h, op)
        res["ready"] = h.aio_is_ready()
        t = time.time()
        try: call(h, spec["op"]); res["ok"] = True
        finally: res["ms"] = (time.time() - t) * 1000
    except nbd.Error as e:
        res.update(errno=e.errnum, message=e.string)
    res["state"] = state(h)
    del h
    out.append(res)
json.dump(out, sys.stdout)
`;

interface PyResult { errno?: number; message?: string; state: State; ok?: boolean; ready?: boolean }

test("libnbd 1.14 (python3-libnbd) fails the same way against the same fake servers", () => {
  const compared = cases.filter((c) => !c.timeout);
  const specs = compared.map((c) => ({
    argv: fakeServer(c.script), settings: c.settings ?? [], before: c.before ?? [], op: c.op ?? ["get_size"],
  }));
  const r = spawnSync("/usr/bin/python3", ["-c", PY], { input: JSON.stringify(specs), encoding: "utf8", timeout: 60_000 });
  assert.is(r.status, 0, `python3-libnbd: ${r.stderr || r.error}`);
  const results = JSON.parse(r.stdout) as PyResult[];
  compared.forEach((c, i) => {
    const want = { ...c.expect, ...c.libnbd114 };
    const got = results[i]!;
    assert.equal({ errno: got.errno, message: got.message, state: got.state }, want, c.name);
    if (c.op) assert.ok(got.ready, `${c.name}: READY before the failing call`);
  });
});

// ---- not faults, but edges a strict server tests -----------------------------------------

test("a server without FIXED_NEWSTYLE: plain newstyle, NBD_OPT_EXPORT_NAME only (as libnbd)", () => {
  // The fake hangs up on any other option, as a plain newstyle server may.
  const h = newHandle();
  assert.is(h.connectCommand(fakeServer({ handshakeFlags: 2 })), 0, String(getError()));
  assert.is(h.getProtocol(), "newstyle");
  assert.is(h.getStructuredRepliesNegotiated(), 0);
  assert.is(h.getHandshakeFlags(), 2);
  const buf = new Uint8Array(64);
  assert.is(h.pread(buf, 1000), 0, String(getError()));
  assert.equal(buf, pattern(1000, 64));
  assert.is(h.pwrite(new Uint8Array(8).fill(9), 1004), 0, String(getError()));
  assert.is(h.pread(buf, 1000), 0);
  assert.equal(buf.subarray(4, 12), new Uint8Array(8).fill(9));

  const py = spawnSync("/usr/bin/python3", ["-c", String.raw`
import nbd, sys
h = nbd.NBD(); h.connect_command(sys.argv[1:])
print(h.get_protocol(), h.get_structured_replies_negotiated(), h.pread(8, 1000).hex())`, ...fakeServer({ handshakeFlags: 2 })],
  { encoding: "utf8", timeout: 30_000 });
  assert.is(py.stdout.trim(), `newstyle False ${Buffer.from(pattern(1000, 8)).toString("hex")}`, py.stderr);
});

test("an export larger than 2^63-1 bytes: getSize is EOVERFLOW (newer libnbd; 1.14 returns it negative), I/O is bounded by the real size", () => {
  for (const size of [2n ** 63n, 2n ** 64n - 1n]) {
    const h = newHandle();
    assert.is(h.connectCommand(fakeServer({ size })), 0, String(getError()));
    assert.is(h.getSize(), -1n);
    assert.is(getErrno(), errno.EOVERFLOW);
    assert.is(getError(), `nbd_get_size: server export size ${size} does not fit in a signed 64-bit integer: Value too large for defined data type`);
    const buf = new Uint8Array(16);
    assert.is(h.pread(buf, size - 16n), 0, String(getError()));
    assert.equal(buf, patternAt(size - 16n, 16));
    assert.is(h.pread(buf, size - 8n), -1);
    assert.is(getError(), "nbd_pread: request out of bounds: Invalid argument");
    assert.is(h.aioIsReady(), 1);
  }
  // libnbd 1.14 gives int64_t(size): negative, or -1 (an error without a message).
  const py = spawnSync("/usr/bin/python3", ["-c", String.raw`
import nbd, sys
h = nbd.NBD(); h.connect_command(sys.argv[1:])
print(h.get_size(), h.pread(8, 2**63 - 8).hex())`, ...fakeServer({ size: 2n ** 63n })], { encoding: "utf8", timeout: 30_000 });
  assert.is(py.stdout.trim(), `${-(2n ** 63n)} ${Buffer.from(patternAt(2n ** 63n - 8n, 8)).toString("hex")}`, py.stderr);
});

test("an export of 2^63-1 bytes: size, reads and writes at its end, bounds (same as libnbd)", () => {
  const size = 2n ** 63n - 1n;
  const h = newHandle();
  assert.is(h.connectCommand(fakeServer({ size })), 0, String(getError()));
  assert.is(h.getSize(), size);
  const buf = new Uint8Array(16);
  assert.is(h.pread(buf, size - 16n), 0, String(getError()));
  assert.equal(buf, patternAt(size - 16n, 16));
  assert.is(h.pwrite(new Uint8Array(7).fill(7), size - 7n), 0, String(getError()));
  assert.is(h.pread(buf, size - 16n), 0);
  assert.equal(buf.subarray(9), new Uint8Array(7).fill(7));
  assert.equal(buf.subarray(0, 9), patternAt(size - 16n, 9));
  assert.is(h.pread(new Uint8Array(1), size - 1n), 0, "the last byte");
  assert.is(h.pread(new Uint8Array(2), size - 1n), -1);
  assert.is(getError(), "nbd_pread: request out of bounds: Invalid argument");
  assert.is(h.pwrite(new Uint8Array(1), size), -1);
  assert.is(getErrno(), errno.ENOSPC);
  assert.is(h.pread(new Uint8Array(1), 2n ** 64n - 1n), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(h.aioIsReady(), 1);

  const py = spawnSync("/usr/bin/python3", ["-c", String.raw`
import nbd, sys
s = 2**63 - 1
h = nbd.NBD(); h.connect_command(sys.argv[1:])
h.pwrite(b"\x07" * 7, s - 7)
out = [str(h.get_size()), h.pread(16, s - 16).hex()]
try: h.pread(2, s - 1)
except nbd.Error as e: out.append(e.string)
print(" ".join(out))`, ...fakeServer({ size })], { encoding: "utf8", timeout: 30_000 });
  assert.is(py.stdout.trim(), `${size} ${Buffer.from(buf).toString("hex")} nbd_pread: request out of bounds: Invalid argument`, py.stderr);
});

// ---- real servers ------------------------------------------------------------------------------

/** Kills `pid` with SIGKILL after `ms`, from another process (this thread is blocked in a call). */
function killLater(pid: number, ms: number): void {
  spawn("sh", ["-c", `sleep ${ms / 1000}; kill -9 ${pid}`], { stdio: "ignore" }).unref();
}

test("nbdkit killed with SIGKILL during a sync 32 MiB pread or pwrite: -1 at once, CLOSED, ENOTCONN (as libnbd)", () => {
  const results: string[] = [];
  for (const op of ["pread", "pwrite"] as const) {
    const server = nbdkitUnix("--filter=delay", "memory", "size=64M", "delay-read=3", "delay-write=3");
    const h = newHandle();
    assert.is(h.connectUnix(server.socket), 0, String(getError()));
    const buf = new Uint8Array(32 * MiB).fill(op === "pread" ? 0x11 : 0x22);
    killLater(server.pid, 500);
    const { value, ms } = timed(() => (op === "pread" ? h.pread(buf, 0) : h.pwrite(buf, 0)));
    assert.is(value, -1, op);
    const name = op === "pread" ? "read" : "write";
    assert.is(getError(), `nbd_${op}: ${name}: command failed: Transport endpoint is not connected`);
    assert.is(getErrno(), errno.ENOTCONN);
    assert.ok(ms >= 400 && ms < 500 + PROMPT_MS, `${op} returned after ${ms} ms`);
    assert.is(stateOf(h), "CLOSED");
    figures.push(`| nbdkit SIGKILLed during a 32 MiB ${op} (killed 500 ms in) | ${op} | ENOTCONN | ${ms} | CLOSED |`);
    if (op === "pread") assert.ok(buf.every((b) => b === 0), "the failed read's buffer is zeroed");
    waitFor(() => !alive(server.pid), 5000, "nbdkit to die");
    results.push(`${getError()} ${getErrno()} ${stateOf(h)}`);
    othersUnharmed(`kill during ${op}`);
  }

  // libnbd, the same way.
  const py: string[] = [];
  for (const op of ["pread", "pwrite"] as const) {
    const server = nbdkitUnix("--filter=delay", "memory", "size=64M", "delay-read=3", "delay-write=3");
    killLater(server.pid, 800); // python starts more slowly
    const r = spawnSync("/usr/bin/python3", ["-c", String.raw`
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
try: h.${op}(32 << 20, 0) if "${op}" == "pread" else h.pwrite(bytes(32 << 20), 0)
except nbd.Error as e: print(e.string, e.errnum, "CLOSED" if h.aio_is_closed() else "DEAD" if h.aio_is_dead() else "?")`,
    server.socket], { encoding: "utf8", timeout: 30_000 });
    py.push(r.stdout.trim());
    waitFor(() => !alive(server.pid), 5000, "nbdkit to die");
  }
  assert.equal(py, results);
});

test("nbdkit's error filter: each failed command has its errno, the handle stays READY, the data stays right", () => {
  const size = MiB;
  const h = newHandle();
  const server = nbdkitUnix("--filter=error", "memory", `size=${size}`,
    "error-pread=EIO", "error-pread-rate=40%", "error-pwrite=ENOSPC", "error-pwrite-rate=40%",
    "error-trim=EPERM", "error-trim-rate=40%", "error-zero=EINVAL", "error-zero-rate=40%");
  assert.is(h.connectUnix(server.socket), 0, String(getError()));
  const model = new Uint8Array(size);
  const expected = {
    pread: [errno.EIO, "nbd_pread: read: command failed: Input/output error"],
    pwrite: [errno.ENOSPC, "nbd_pwrite: write: command failed: No space left on device"],
    trim: [errno.EPERM, "nbd_trim: trim: command failed: Operation not permitted"],
    zero: [errno.EINVAL, "nbd_zero: write-zeroes: command failed: Invalid argument"],
  } as const;
  const seen = { pread: [0, 0], pwrite: [0, 0], trim: [0, 0], zero: [0, 0] };
  let seed = 12345;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  const { ms } = timed(() => {
    for (let i = 0; i < 200; i++) {
      const kind = (["pread", "pwrite", "trim", "zero"] as const)[i % 4]!;
      const offset = rand(size / 512) * 512;
      const count = Math.min(512 * (1 + rand(16)), size - offset);
      let ret: number;
      if (kind === "pread") {
        const buf = new Uint8Array(count);
        ret = h.pread(buf, offset);
        if (ret === 0) assert.equal(buf, model.subarray(offset, offset + count), `pread ${count}@${offset}`);
      } else if (kind === "pwrite") {
        const data = new Uint8Array(count).fill(1 + rand(255));
        ret = h.pwrite(data, offset);
        if (ret === 0) model.set(data, offset);
      } else {
        ret = kind === "trim" ? h.trim(count, offset) : h.zero(count, offset);
        if (ret === 0) model.fill(0, offset, offset + count);
      }
      if (ret === -1) {
        assert.is(getErrno(), expected[kind][0], `${kind}: ${getError()}`);
        assert.is(getError(), expected[kind][1]);
      } else {
        assert.is(ret, 0);
      }
      seen[kind][ret === 0 ? 0 : 1]! += 1;
      assert.is(h.aioIsReady(), 1, `after ${kind}: ${h.connectionState()}`);
    }
  });
  for (const [kind, [ok, failed]] of Object.entries(seen)) {
    assert.ok(ok! > 0 && failed! > 0, `${kind}: ${ok} succeeded, ${failed} failed`);
  }
  assert.ok(ms < 10_000, `200 commands took ${ms} ms`);
  // Failed writes, trims and zeroes changed nothing: the disk is the model.
  const all = new Uint8Array(size);
  waitFor(() => h.pread(all, 0) === 0, 5000, "a full read that the filter lets through");
  assert.ok(Buffer.from(all).equals(Buffer.from(model)), "the disk holds exactly what succeeded");
  othersUnharmed("error filter");
});

test.after(() => {
  bystander?.close();
  if (process.env.FAULT_FIGURES) {
    console.log(["\n| fault | call | errno | ms | handle |", "|---|---|---|---|---|", ...figures].join("\n"));
  }
});

test.run();
