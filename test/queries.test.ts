/**
 * What a handle says about itself and about the server: the defaults of a
 * new handle, the export size, the export flags (can_* / is_*), block size
 * constraints, the protocol variant, structured replies, export names and
 * descriptions. Wherever python3-libnbd (libnbd 1.14) can be asked the same
 * question of the same server, its answer is the expected one.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { chmodSync, statSync, writeFileSync } from "node:fs";
import {
  CONTEXT_BASE_ALLOCATION, SIZE_MAXIMUM, SIZE_MINIMUM, SIZE_PAYLOAD, SIZE_PREFERRED,
  STRICT_MASK, MAX_REQUEST_SIZE, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { scratchFile, scratchPath } from "./helpers.js";
import { fails, nbdkit, NBDKIT, newHandle } from "./handles.js";
import { call, camel, python, specScript, runSpec, type Op, type Result, type Run, type Spec } from "./libnbd.js";

const MiB = 1024 * 1024;

// ---- python3-libnbd (libnbd 1.14) as the oracle ----------------------------------

const PY = specScript(String.raw`
def call(h, op):
    try: return {"ok": norm(getattr(h, op[0])(*op[1:]))}
    except nbd.Error as e: return {"err": e.string, "errno": e.errnum}
`);

/** Runs `spec` on nbd-ts and compares with what python3-libnbd got from its own server of the same command. */
function sameAsLibnbd(spec: Spec, py: Run): { h: Handle; ops: Result[] } {
  const h = newHandle();
  const run = runSpec(h, spec, call);
  assert.equal(run, py, `nbd-ts vs libnbd 1.14 for ${spec.argv?.join(" ") ?? "a new handle"}`);
  return { h, ops: run.ops };
}

/** Compares a batch of specs (one python process for all of them). */
function allSameAsLibnbd(specs: Spec[]): { h: Handle; ops: Result[] }[] {
  const py = python<Run[]>(PY, specs);
  return specs.map((spec, i) => sameAsLibnbd(spec, py[i]!));
}

const FLAGS = [
  "is_read_only", "can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
  "can_cache", "can_df", "can_multi_conn", "is_rotational",
] as const;

/** Everything there is to ask once connected (SIZE_PAYLOAD is 1.18 only, so not here). */
const QUERIES: Op[] = [
  ["get_size"], ...FLAGS.map((f): Op => [f]), ["can_meta_context", CONTEXT_BASE_ALLOCATION],
  ["get_block_size", SIZE_MINIMUM], ["get_block_size", SIZE_PREFERRED], ["get_block_size", SIZE_MAXIMUM],
  ["get_protocol"], ["get_structured_replies_negotiated"], ["get_handshake_flags"], ["get_export_name"],
  ["get_canonical_export_name"], ["get_export_description"], ["aio_is_ready"],
];
const at = (name: string, arg?: unknown): number => QUERIES.findIndex(([n, a]) => n === name && (arg === undefined || a === arg));

/** libnbd 1.18's payload maximum (lib/flags.c, nbd_internal_set_payload), from the advertised maximum. */
const payloadFor = (max: number): bigint => BigInt(max ? Math.min(MAX_REQUEST_SIZE, Math.max(MiB, max)) : 32 * MiB);

// ---- a new handle ---------------------------------------------------------------

test("defaults of a new handle are libnbd's", () => {
  const [{ h, ops }] = allSameAsLibnbd([{
    settings: [],
    ops: [
      ["get_export_name"], ["get_full_info"], ["get_request_structured_replies"], ["get_handshake_flags"],
      ["get_pread_initialize"], ["aio_is_created"], ["aio_is_ready"], ["aio_is_closed"],
      ["get_size"], ["can_flush"], ["get_block_size", SIZE_MINIMUM], ["get_protocol"], ["get_canonical_export_name"],
    ],
  }]) as [{ h: Handle; ops: Result[] }];
  assert.equal(ops.slice(0, 6), [{ ok: "" }, { ok: 0 }, { ok: 1 }, { ok: 3 }, { ok: 1 }, { ok: 1 }]);
  fails(h.getSize(), errno.ENOTCONN,
    "nbd_get_size: invalid state: START: the handle must be negotiating, or connected with the server, or shut down: Transport endpoint is not connected");
  // libnbd 1.18's STRICT_MASK (1.14's is 0x1f).
  assert.is(h.getStrictMode(), STRICT_MASK);
  assert.is(STRICT_MASK, 0x7f);
  assert.ok(h.connectionState()!.startsWith("START"), String(h.connectionState()));
  // Handle names come from one process-wide counter: "nbd<N>", then "nbd<N+1>".
  const name = h.getHandleName()!;
  const m = /^nbd(\d+)$/.exec(name);
  assert.ok(m, name);
  assert.is(newHandle().getHandleName(), `nbd${Number(m![1]) + 1}`);
  assert.is(h.setHandleName("mine"), 0);
  assert.is(h.getHandleName(), "mine");
});

// ---- size and flags, server by server -------------------------------------------------

test("size, flags, block sizes, protocol: the same answers as libnbd from nbdkit and qemu-nbd", () => {
  const content = new Uint8Array(12345).fill(1);
  const file = scratchFile("q.img", content.length, content);
  const disk = scratchFile("q-disk.img", MiB);
  const specs: Spec[] = [
    ["memory", "size=1M"],
    ["-r", "memory", "size=1M"],
    ["pattern", "size=5G"],
    ["null", "size=123456789"],
    ["file", file],
    ["-r", "file", file],
    ["--filter=nozero", "memory", "size=1M"],
    ["--filter=nozero", "memory", "size=1M", "zeromode=emulate", "fastzeromode=none"],
    ["--filter=blocksize-policy", "memory", "size=1M", "blocksize-minimum=512"],
    ["--filter=blocksize-policy", "memory", "size=1M", "blocksize-preferred=65536", "blocksize-maximum=65536"],
    ["--filter=blocksize-policy", "memory", "size=256M", "blocksize-maximum=128M"],
  ].map((args): Spec => ({ argv: [...NBDKIT, ...args], ops: QUERIES }));
  specs.push(
    { argv: ["qemu-nbd", "-f", "raw", "-x", "", disk], sa: true, ops: QUERIES },
    { argv: ["qemu-nbd", "-r", "-f", "raw", "-x", "", disk], sa: true, ops: QUERIES },
  );
  const runs = allSameAsLibnbd(specs);

  // The answers as nbd-ts types, and what can be checked another way.
  for (const { h, ops } of runs) {
    assert.is(typeof h.getSize(), "bigint");
    for (const f of FLAGS) assert.ok([0, 1].includes(h[camel(f) as "canFlush"]()), f);
    // No meta context was asked for, so none is there.
    assert.equal(ops[at("can_meta_context")], { ok: 0 });
    // SIZE_PAYLOAD follows from the maximum libnbd saw.
    const max = (ops[at("get_block_size", SIZE_MAXIMUM)] as { ok: number }).ok;
    assert.is(h.getBlockSize(SIZE_PAYLOAD), payloadFor(max));
    assert.is(h.getBlockSize(SIZE_MINIMUM), BigInt((ops[at("get_block_size", SIZE_MINIMUM)] as { ok: number }).ok));
  }
  assert.is(runs[2]!.h.getSize(), 5n * 1024n ** 3n);
  assert.is(runs[3]!.h.getSize(), 123456789n);
  assert.is(runs[4]!.h.getSize(), BigInt(statSync(file).size));
  assert.is(runs[11]!.h.getSize(), BigInt(statSync(disk).size));
  // -r and its absence, as the command lines say.
  assert.equal(runs.map(({ h }) => h.isReadOnly()), [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
  // The blocksize-policy servers: what they were told to advertise.
  assert.equal([SIZE_MINIMUM, SIZE_PREFERRED, SIZE_MAXIMUM, SIZE_PAYLOAD].map((t) => runs[9]!.h.getBlockSize(t)),
    [1n, 65536n, 65536n, BigInt(MiB)]);
  assert.is(runs[10]!.h.getBlockSize(SIZE_MAXIMUM), 128n * BigInt(MiB));
  assert.is(runs[10]!.h.getBlockSize(SIZE_PAYLOAD), BigInt(MAX_REQUEST_SIZE));
  assert.is(runs[0]!.h.getBlockSize(SIZE_PAYLOAD), 32n * BigInt(MiB));
});

test("getBlockSize: a size type that does not exist is -1n EINVAL", () => {
  const h = nbdkit(["memory", "size=1M"]);
  fails(h.getBlockSize(4), errno.EINVAL, "nbd_get_block_size: size_type: invalid value for parameter: 4: Invalid argument");
  fails(h.getBlockSize(-1), errno.EINVAL, "nbd_get_block_size: size_type: invalid value for parameter: -1: Invalid argument");
  assert.is(h.getBlockSize(SIZE_PAYLOAD), 32n * BigInt(MiB));
  h.close();
  // libnbd 1.14 words it the same way.
  allSameAsLibnbd([{ argv: [...NBDKIT, "memory", "size=1M"], ops: [["get_block_size", 4], ["get_block_size", -1]] }]);
});

// ---- protocol variants and structured replies --------------------------------------

test("protocol: newstyle-fixed, oldstyle (-o), newstyle (--mask-handshake 0); structured replies on and off", () => {
  const ops: Op[] = [
    ["get_protocol"], ["get_structured_replies_negotiated"], ["get_handshake_flags"], ["get_request_structured_replies"],
    ["can_df"], ["get_size"], ["can_meta_context", CONTEXT_BASE_ALLOCATION], ["get_block_size", SIZE_MAXIMUM],
  ];
  const runs = allSameAsLibnbd([
    { argv: [...NBDKIT, "memory", "size=65536"], ops },
    { argv: [...NBDKIT, "-o", "memory", "size=65536"], ops },
    { argv: [...NBDKIT, "--mask-handshake", "0", "memory", "size=65536"], ops },
    { argv: [...NBDKIT, "memory", "size=65536"], settings: [["set_request_structured_replies", false]], ops },
    { argv: [...NBDKIT, "-o", "memory", "size=65536"], settings: [["set_request_structured_replies", false]], ops },
  ]);
  const [fixed, old, plain, noSr] = runs.map((r) => r.h) as [Handle, Handle, Handle, Handle];
  assert.is(fixed.getProtocol(), "newstyle-fixed");
  assert.is(old.getProtocol(), "oldstyle");
  assert.is(plain.getProtocol(), "newstyle");
  assert.equal(runs.map(({ h }) => h.getStructuredRepliesNegotiated()), [1, 0, 0, 0, 0]);
  // Without structured replies libnbd ignores the server's DF flag.
  assert.is(fixed.canDf(), 1);
  assert.is(noSr.canDf(), 0);
  assert.is(noSr.getRequestStructuredReplies(), 0);
  assert.is(noSr.getProtocol(), "newstyle-fixed");
  // Payload limits apply whatever the protocol.
  for (const h of [fixed, old, plain, noSr]) assert.is(h.getBlockSize(SIZE_PAYLOAD), 32n * BigInt(MiB));
  // Settings that only make sense before connecting are refused now.
  fails(fixed.setRequestStructuredReplies(false), errno.EINVAL,
    "nbd_set_request_structured_replies: invalid state: READY: the handle must be newly created: Invalid argument");
  assert.is(fixed.getRequestStructuredReplies(), 1);
});

// ---- export names and descriptions ---------------------------------------------------

test("canonical name and description: ENOTSUP unless sent; setFullInfo(true) asks qemu-nbd for them", () => {
  const disk = scratchFile("named.img", MiB);
  const qemu = ["qemu-nbd", "-r", "-f", "raw", "-x", "name", "-D", "desc", disk];
  const ops: Op[] = [["get_full_info"], ["get_export_name"], ["get_canonical_export_name"], ["get_export_description"], ["get_size"]];
  const runs = allSameAsLibnbd([
    { argv: [...NBDKIT, "memory", "size=1M"], ops },
    { argv: [...NBDKIT, "memory", "size=1M"], settings: [["set_full_info", true]], ops },
    { argv: qemu, sa: true, settings: [["set_export_name", "name"]], ops },
    { argv: qemu, sa: true, settings: [["set_export_name", "name"], ["set_full_info", true]], ops },
  ]);
  const [mem, , q, qFull] = runs.map((r) => r.h) as [Handle, Handle, Handle, Handle];
  fails(mem.getCanonicalExportName(), errno.ENOTSUP,
    "nbd_get_canonical_export_name: server did not advertise a canonical name: Operation not supported");
  fails(mem.getExportDescription(), errno.ENOTSUP,
    "nbd_get_export_description: server did not advertise a description: Operation not supported");
  // qemu-nbd sends the description unasked, the name only when asked.
  fails(q.getCanonicalExportName(), errno.ENOTSUP,
    "nbd_get_canonical_export_name: server did not advertise a canonical name: Operation not supported");
  assert.is(q.getExportDescription(), "desc");
  assert.is(qFull.getFullInfo(), 1);
  assert.is(qFull.getCanonicalExportName(), "name");
  assert.is(qFull.getExportDescription(), "desc");
  assert.is(qFull.getExportName(), "name");
  fails(qFull.setFullInfo(false), errno.EINVAL,
    "nbd_set_full_info: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument");
});

test("export names: qemu-nbd -x NAME serves NAME only; a wrong name is ENOENT and the handle is dead", () => {
  const disk = scratchFile("export.img", MiB);
  const argv = ["qemu-nbd", "-f", "raw", "-x", "NAME", disk];
  const ops: Op[] = [["get_export_name"], ["get_size"], ["aio_is_ready"], ["set_export_name", "other"], ["get_export_name"]];
  const runs = allSameAsLibnbd([
    { argv, sa: true, settings: [["set_export_name", "NAME"], ["get_export_name"]], ops },
    { argv, sa: true, settings: [["set_export_name", "wrong"], ["get_export_name"]], ops: [] },
    { argv, sa: true, settings: [], ops: [] },
  ]);
  const [good, wrong, unnamed] = runs.map((r) => r.h) as [Handle, Handle, Handle];
  assert.is(good.getExportName(), "NAME");
  assert.is(good.getSize(), BigInt(MiB));
  fails(good.setExportName("other"), errno.EINVAL,
    "nbd_set_export_name: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument");
  assert.is(wrong.aioIsDead(), 1);
  assert.is(wrong.getExportName(), "wrong");
  const h = newHandle();
  assert.is(h.setExportName("wrong"), 0);
  fails(h.connectSystemdSocketActivation(argv), errno.ENOENT,
    "nbd_connect_systemd_socket_activation: handshake: server has no export named 'wrong': No such file or directory");
  fails(h.getSize(), errno.EINVAL,
    "nbd_get_size: invalid state: DEAD: the handle must be negotiating, or connected with the server, or shut down: Invalid argument");
  assert.is(unnamed.aioIsDead(), 1);
  // nbdkit serves whatever name is asked for, and libnbd keeps the one it sent.
  const any = nbdkit(["memory", "size=1M"], (k) => assert.is(k.setExportName("anything/at all"), 0));
  assert.is(any.getExportName(), "anything/at all");
  assert.is(any.aioIsReady(), 1);
});

// ---- every export flag, true and false, from a plugin that says so ----------------------

const EFLAGS_PLUGIN = `#!/usr/bin/env bash
# After libnbd's tests/eflags-plugin.sh: key=METHOD print=TEXT rc=N makes
# METHOD print TEXT and exit N; 0 = true, 3 = false, 2 = not implemented.
if [ "$1" = config ]; then
  case "$2" in
    key|print|rc) printf '%s' "$3" > "$tmpdir/$2"; exit 0 ;;
    *) echo "unknown parameter $2=$3" >&2; exit 1 ;;
  esac
fi
if [ -f "$tmpdir/key" ] && [ "$1" = "$(cat "$tmpdir/key")" ]; then
  print=$(cat "$tmpdir/print" 2>/dev/null)
  [ -n "$print" ] && echo "$print"
  exit "$(cat "$tmpdir/rc" 2>/dev/null || echo 0)"
fi
case "$1" in
  get_size) echo 1M ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  can_write|can_zero) exit 0 ;;
  thread_model) echo parallel ;;
  *) exit 2 ;;
esac
`;

test("each can_*/is_* flag, true and false, from an nbdkit sh plugin (as libnbd's eflags tests)", () => {
  const plugin = scratchPath("eflags-plugin.sh");
  writeFileSync(plugin, EFLAGS_PLUGIN);
  chmodSync(plugin, 0o755);
  interface Case { flag: (typeof FLAGS)[number]; key: string; print?: string; rc: number; expect: 0 | 1; filter?: string; noSr?: true }
  const cases: Case[] = [
    { flag: "can_flush", key: "can_flush", rc: 0, expect: 1 },
    { flag: "can_flush", key: "can_flush", rc: 3, expect: 0 },
    { flag: "can_fua", key: "can_fua", print: "native", rc: 0, expect: 1 },
    { flag: "can_fua", key: "can_fua", print: "none", rc: 0, expect: 0 },
    { flag: "is_rotational", key: "is_rotational", rc: 0, expect: 1 },
    { flag: "is_rotational", key: "is_rotational", rc: 3, expect: 0 },
    { flag: "can_trim", key: "can_trim", rc: 0, expect: 1 },
    { flag: "can_trim", key: "can_trim", rc: 3, expect: 0 },
    { flag: "can_zero", key: "can_zero", rc: 0, expect: 1 },
    { flag: "can_zero", key: "can_zero", rc: 3, expect: 0, filter: "--filter=nozero" },
    { flag: "can_fast_zero", key: "can_fast_zero", rc: 0, expect: 1 },
    { flag: "can_fast_zero", key: "can_fast_zero", rc: 3, expect: 0 },
    { flag: "can_df", key: "can_df", rc: 0, expect: 1 },
    { flag: "can_df", key: "can_df", rc: 0, expect: 0, noSr: true },
    { flag: "can_multi_conn", key: "can_multi_conn", rc: 0, expect: 1 },
    { flag: "can_multi_conn", key: "can_multi_conn", rc: 3, expect: 0 },
    { flag: "can_cache", key: "can_cache", print: "native", rc: 0, expect: 1 },
    { flag: "can_cache", key: "can_cache", print: "none", rc: 0, expect: 0 },
    { flag: "is_read_only", key: "can_write", rc: 3, expect: 1 },
    { flag: "is_read_only", key: "can_write", rc: 0, expect: 0 },
  ];
  const specs = cases.map((c): Spec => ({
    argv: [...NBDKIT, ...(c.filter ? [c.filter] : []), "sh", plugin, `key=${c.key}`, `print=${c.print ?? ""}`, `rc=${c.rc}`],
    ...(c.noSr && { settings: [["set_request_structured_replies", false]] }),
    ops: [...FLAGS.map((f): Op => [f]), ["shutdown"]],
  }));
  // Two cases that libnbd's suite does not have: can_zero false without the nozero filter, and nbdkit -r.
  specs.push(
    { argv: [...NBDKIT, "sh", plugin, "key=can_zero", "print=", "rc=3"], ops: [...FLAGS.map((f): Op => [f]), ["shutdown"]] },
    { argv: [...NBDKIT, "-r", "sh", plugin, "key=none", "print=", "rc=0"], ops: [...FLAGS.map((f): Op => [f]), ["shutdown"]] },
  );
  const runs = allSameAsLibnbd(specs);
  cases.forEach((c, i) => {
    const { h, ops } = runs[i]!;
    assert.equal(ops[FLAGS.indexOf(c.flag)], { ok: c.expect }, `${c.flag} with ${c.key} print=${c.print ?? ""} rc=${c.rc}`);
    assert.equal(ops[FLAGS.length], { ok: 0 }, "shutdown");
    // The flags are still known once the connection is closed.
    assert.is(h.aioIsClosed(), 1);
    assert.is(h[camel(c.flag) as "canFlush"](), c.expect);
  });
  assert.is(runs[cases.length + 1]!.h.isReadOnly(), 1);
});

test("flag queries before connecting: ENOTCONN, with libnbd's words", () => {
  const { h } = allSameAsLibnbd([{ ops: QUERIES.filter(([n]) => !["aio_is_ready", "get_handshake_flags", "get_export_name"].includes(n)) }])[0]!;
  const before = "invalid state: START: the handle must be negotiating, or connected with the server, or shut down: Transport endpoint is not connected";
  fails(h.canFua(), errno.ENOTCONN, `nbd_can_fua: ${before}`);
  fails(h.isReadOnly(), errno.ENOTCONN, `nbd_is_read_only: ${before}`);
  fails(h.getBlockSize(SIZE_PAYLOAD), errno.ENOTCONN, `nbd_get_block_size: ${before}`);
  fails(h.canMetaContext(CONTEXT_BASE_ALLOCATION), errno.ENOTCONN, `nbd_can_meta_context: ${before}`);
  fails(h.getProtocol(), errno.ENOTCONN, `nbd_get_protocol: ${before}`);
});

test.run();
