/**
 * Option negotiation (opt mode) and meta contexts against real servers:
 * nbdkit (null, memory, sh plugins written here, fixed newstyle, plain
 * newstyle with --mask-handshake 0, oldstyle with -o) and qemu-nbd. Ported
 * from libnbd's T19-T26 (python 210-255, opt-*.c, newstyle-limited.c,
 * oldstyle.c, shutdown-opt-mode.c). Wherever python3-libnbd (libnbd 1.14)
 * has the call and behaves as 1.18 does, its answers are the expected ones;
 * the 1.16+ calls (opt_set_meta_context*, opt_list_meta_context_queries,
 * opt_structured_reply, set_request_meta_context) and the 1.16+ semantics
 * (set_export_name wipes what opt_info learned; can_meta_context asks only
 * for a successful meta context request) follow libnbd's source.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { chmodSync, writeFileSync } from "node:fs";
import {
  getError, CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_ALLOCATION_DEPTH, SIZE_MAXIMUM, SIZE_MINIMUM,
  SIZE_PREFERRED, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { alive, scratchFile, scratchPath, waitFor } from "./helpers.js";
import { fails, newHandle } from "./handles.js";
import {
  call, python, specScript, runSpec, type Op, type Result as AnyResult, type Run, type Spec as AnySpec,
} from "./libnbd.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const NBDKIT = ["nbdkit", "-s", "--exit-with-parent", "--log=null"];
const BASE = CONTEXT_BASE_ALLOCATION;

// ---- plugin scripts (libnbd.md §3.3), written for these tests -----------------------

function script(name: string, text: string): string {
  const path = scratchPath(name);
  writeFileSync(path, text);
  chmodSync(path, 0o755);
  return path;
}

/** NBD_OPT_LIST answers chosen by mode=N: 0 an error, 1 "a" and "b", 2 none, "desc" with descriptions, else "a". */
const LIST_SH = script("opt-list.sh", `#!/bin/sh
case "$1" in
  config)
    if [ "$2" != mode ]; then echo "EINVAL unknown parameter $2" >&2; exit 1; fi
    printf '%s\\n' "$3" > "$tmpdir/mode" ;;
  list_exports)
    mode=$(cat "$tmpdir/mode")
    case "$mode" in
      0) echo "EINVAL listing not supported" >&2; exit 1 ;;
      1) printf 'NAMES\\na\\nb\\n' ;;
      2) echo NAMES ;;
      desc) printf 'INTERLEAVED\\na\\nthe first\\nb\\nthe second\\n' ;;
      *) printf 'NAMES\\na\\n' ;;
    esac ;;
  get_size) echo 512 ;;
  pread) dd if=/dev/zero bs="$3" count=1 2>/dev/null ;;
  *) exit 2 ;;
esac
`);

/** Every export is its own name: size = length of the name, writable only as "b"; "a" does not exist. */
const INFO_SH = script("opt-info.sh", `#!/bin/sh
case "$1" in
  open)
    if [ "$3" = a ]; then echo "ENOENT export not available" >&2; exit 1; fi
    printf '%s\\n' "$3" ;;
  get_size) printf %s "$2" | wc -c ;;
  can_write) if [ "$2" = b ]; then exit 0; fi; exit 3 ;;
  pread) printf %s "$2" | dd bs=1 count="$3" skip="$4" 2>/dev/null ;;
  pwrite) cat > /dev/null ;;
  *) exit 2 ;;
esac
`);

/** One writable 64 KiB export, "a"; any other name fails to open (for plain newstyle, T20). */
const LIMITED_SH = script("limited.sh", `#!/bin/sh
disk="$tmpdir/disk"
case "$1" in
  open)
    if [ "$3" != a ]; then echo "ENOENT no export named $3" >&2; exit 1; fi
    [ -e "$disk" ] || truncate -s 65536 "$disk"
    echo a ;;
  get_size) echo 65536 ;;
  can_write) exit 0 ;;
  pread) dd if="$disk" iflag=skip_bytes,count_bytes skip="$4" count="$3" bs=64K 2>/dev/null ;;
  pwrite) dd of="$disk" iflag=fullblock oflag=seek_bytes seek="$4" conv=notrunc bs=64K 2>/dev/null ;;
  *) exit 2 ;;
esac
`);

const PLAIN = [...NBDKIT, "--mask-handshake", "0", "sh", LIMITED_SH];
const OLDSTYLE = [...NBDKIT, "-o", "memory", "size=65536"];
const MEMORY = [...NBDKIT, "memory", "size=1M"];
const DISK = scratchFile("opt.img", MiB);

// ---- handles (closed after each test: ./handles.ts) ------------------------------------

/** A handle in opt mode, connected with connect_command (or socket activation) and negotiating. */
function negotiating(argv: string[], before?: (h: Handle) => void, sa = false): Handle {
  const h = newHandle();
  assert.is(h.setOptMode(true), 0);
  before?.(h);
  const r = sa ? h.connectSystemdSocketActivation(argv) : h.connectCommand(argv);
  assert.is(r, 0, `connect ${argv.join(" ")}: ${getError()}`);
  assert.is(h.aioIsNegotiating(), 1, String(h.connectionState()));
  return h;
}

/** What a list or context callback was called with, in order. */
function recorder<A extends unknown[]>(): { calls: A[]; cb: (...a: A) => number } {
  const calls: A[] = [];
  return { calls, cb: (...a: A) => (calls.push(a), 0) };
}

// ---- python3-libnbd (libnbd 1.14) as the oracle ----------------------------------

interface Spec extends AnySpec { argv: string[] }
type Result = AnyResult & { calls?: unknown[][] };

/** Calls whose one argument is a callback: both sides pass one that records its calls. */
const WITH_CALLBACK = new Set(["opt_list", "opt_list_meta_context"]);

const PY = specScript(String.raw`
def call(h, op):
    name, args, calls = op[0], op[1:], None
    if name in ("opt_list", "opt_list_meta_context"):
        calls = []
        args = [lambda *a: (calls.append(list(a)), 0)[1]]
    try: r = {"ok": norm(getattr(h, name)(*args))}
    except nbd.Error as e: r = {"err": e.string, "errno": e.errnum}
    if calls is not None: r["calls"] = calls
    return r
`);

function tsCall(h: Handle, [name, ...args]: Op): Result {
  let calls: unknown[][] | undefined;
  if (WITH_CALLBACK.has(name)) {
    const rec = recorder();
    calls = rec.calls;
    args = [rec.cb];
  }
  const r: Result = call(h, [name, ...args]);
  if (calls) r.calls = calls;
  return r;
}

/** Runs each spec on nbd-ts and on libnbd 1.14 (one python process for all), and compares every answer. */
function sameAsLibnbd(specs: Spec[]): { h: Handle; ops: Result[] }[] {
  const py = python<Run<Result>[]>(PY, specs);
  return specs.map((spec, i) => {
    const h = newHandle();
    const run = runSpec(h, spec, tsCall);
    assert.equal(run, py[i], `nbd-ts vs libnbd 1.14 for ${spec.argv.join(" ")}`);
    return { h, ops: run.ops };
  });
}

const okOf = (r: Result | undefined): unknown => (r && "ok" in r ? r.ok : undefined);

// ---- opt mode: entering it, leaving it ---------------------------------------------------

test("setOptMode/getOptMode; connect returns NEGOTIATING; queries there; optAbort → CLOSED (T21)", () => {
  const queries: Op[] = [
    ["aio_is_negotiating"], ["aio_is_ready"], ["aio_is_connecting"], ["connection_state"], ["get_opt_mode"],
    ["get_protocol"], ["get_structured_replies_negotiated"], ["get_handshake_flags"],
    ["get_size"], ["is_read_only"], ["can_flush"], ["get_block_size", SIZE_MINIMUM],
  ];
  const [{ h, ops }, ready] = sameAsLibnbd([
    {
      argv: [...NBDKIT, "null"],
      settings: [["get_opt_mode"], ["set_opt_mode", true], ["get_opt_mode"]],
      ops: [
        ...queries, ["set_opt_mode", false], ["aio_disconnect"],
        ["opt_abort"], ["aio_is_closed"], ["connection_state"], ["get_size"], ["get_protocol"],
        ["opt_abort"], ["opt_go"], ["opt_info"],
      ],
    },
    // errors-not-negotiating.c: the opt calls on a handle that went straight to READY.
    { argv: [...NBDKIT, "null"], ops: [["get_opt_mode"], ["opt_abort"], ["opt_go"], ["opt_list"], ["aio_is_ready"]] },
  ]) as [{ h: Handle; ops: Result[] }, { h: Handle; ops: Result[] }];

  assert.equal(ops.slice(0, 8).map(okOf),
    [1, 0, 0, "NEGOTIATING: Connection is ready to negotiate an NBD option", 1, "newstyle-fixed", 1, 3]);
  assert.equal(ops[8], {
    err: "nbd_get_size: server has not returned export size, you need to connect to the server first: Invalid argument",
    errno: errno.EINVAL,
  });
  assert.equal(ops[12], {
    err: "nbd_set_opt_mode: invalid state: NEGOTIATING: the handle must be newly created: Invalid argument",
    errno: errno.EINVAL,
  });
  assert.equal(ops.slice(14, 17).map(okOf), [0, 1, "CLOSED: Connection is closed"]);
  assert.is(h.aioIsClosed(), 1);
  fails(h.getSize(), errno.EINVAL,
    "nbd_get_size: server has not returned export size, you need to connect to the server first: Invalid argument");
  fails(h.optAbort(), errno.EINVAL, "nbd_opt_abort: invalid state: CLOSED: the handle must be negotiating: Invalid argument");
  // I/O is for READY handles only.
  const h2 = negotiating([...NBDKIT, "null"]);
  fails(h2.pread(new Uint8Array(512), 0), errno.EINVAL,
    "nbd_pread: invalid state: NEGOTIATING: the handle must be connected with the server: Invalid argument");
  assert.equal(ready.ops.map(okOf), [0, undefined, undefined, undefined, 1]);
  fails(ready.h.optAbort(), errno.EINVAL, "nbd_opt_abort: invalid state: READY: the handle must be negotiating: Invalid argument");
});

test("optGo → READY and I/O works; the opt calls are then refused", () => {
  const h = negotiating(MEMORY);
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(h.aioIsReady(), 1);
  assert.is(h.getSize(), BigInt(MiB));
  const data = new Uint8Array(4 * KiB).map((_, i) => i * 7);
  assert.is(h.pwrite(data, 8 * KiB), 0, String(getError()));
  const back = new Uint8Array(4 * KiB);
  assert.is(h.pread(back, 8 * KiB), 0, String(getError()));
  assert.equal(back, data);
  fails(h.optGo(), errno.EINVAL, "nbd_opt_go: invalid state: READY: the handle must be negotiating: Invalid argument");
  fails(h.optInfo(), errno.EINVAL, "nbd_opt_info: invalid state: READY: the handle must be negotiating: Invalid argument");
  const list = recorder();
  fails(h.optList(list.cb), errno.EINVAL, "nbd_opt_list: invalid state: READY: the handle must be negotiating: Invalid argument");
  fails(h.optSetMetaContext(list.cb), errno.EINVAL,
    "nbd_opt_set_meta_context: invalid state: READY: the handle must be negotiating: Invalid argument");
  fails(h.optStructuredReply(), errno.EINVAL,
    "nbd_opt_structured_reply: invalid state: READY: the handle must be negotiating: Invalid argument");
  assert.equal(list.calls, []);
  fails(h.setOptMode(false), errno.EINVAL, "nbd_set_opt_mode: invalid state: READY: the handle must be newly created: Invalid argument");
  assert.is(h.getOptMode(), 1);
});

test("shutdown while negotiating aborts the negotiation; aioDisconnect is refused (T26)", () => {
  const h = negotiating([...NBDKIT, "null"]);
  fails(h.aioDisconnect(), errno.EINVAL,
    "nbd_aio_disconnect: invalid state: NEGOTIATING: the handle must be connected with the server: Invalid argument");
  assert.is(h.aioIsNegotiating(), 1);
  assert.is(h.optAbort(), 0);
  assert.is(h.aioIsClosed(), 1);

  const h2 = negotiating([...NBDKIT, "null"]);
  const pid = Number(h2.getSubprocessPid());
  assert.is(h2.shutdown(), 0, String(getError()));
  assert.is(h2.aioIsClosed(), 1);
  // The server got NBD_OPT_ABORT and went away (nbdkit -s exits when its client leaves).
  waitFor(() => !alive(pid), 5_000, "nbdkit to exit after NBD_OPT_ABORT");
  fails(h2.shutdown(), errno.EINVAL,
    "nbd_shutdown: invalid state: CLOSED: the handle must be negotiating, or connected with the server: Invalid argument");
  fails(h2.optGo(), errno.EINVAL, "nbd_opt_go: invalid state: CLOSED: the handle must be negotiating: Invalid argument");
});

// ---- NBD_OPT_LIST -----------------------------------------------------------------------------

test("optList: a server error, two names, none, one, descriptions (T22); count returned", () => {
  const ops: Op[] = [
    ["opt_list"], ["aio_is_negotiating"], ["set_export_name", "b"], ["opt_go"], ["get_size"], ["aio_is_ready"],
  ];
  const modes = ["0", "1", "2", "3", "desc"];
  const runs = sameAsLibnbd(modes.map((m): Spec => ({
    argv: [...NBDKIT, "sh", LIST_SH, `mode=${m}`], settings: [["set_opt_mode", true]], ops,
  })));
  const lists = runs.map(({ ops }) => ops[0]!);
  assert.equal(lists[0], {
    err: "nbd_opt_list: server replied with error to list request: Operation not supported", errno: errno.ENOTSUP, calls: [],
  });
  assert.equal(lists[1], { ok: 2, calls: [["a", ""], ["b", ""]] });
  assert.equal(lists[2], { ok: 0, calls: [] });
  assert.equal(lists[3], { ok: 1, calls: [["a", ""]] });
  assert.equal(lists[4], { ok: 2, calls: [["a", "the first"], ["b", "the second"]] });
  // Listing does not end negotiation, whatever the server answered: opt_go still works.
  for (const { h, ops } of runs) {
    assert.equal(ops.slice(1).map(okOf), [1, 0, 0, 512, 1]);
    const buf = new Uint8Array(512).fill(0xff);
    assert.is(h.pread(buf, 0), 0, String(getError()));
    assert.ok(buf.every((b) => b === 0));
  }
});

test("optList callbacks: in order; a -1 return is ignored; a throw fails the call, not the handle", () => {
  // nbdkit answers NBD_OPT_LIST once per connection, hence a handle each.
  const argv = [...NBDKIT, "sh", LIST_SH, "mode=desc"];
  const h1 = negotiating(argv);
  const seen: [string, string][] = [];
  assert.is(h1.optList((name, desc) => (seen.push([name, desc]), -1)), 2, String(getError()));
  assert.equal(seen, [["a", "the first"], ["b", "the second"]]);
  assert.is(h1.aioIsNegotiating(), 1);

  seen.length = 0;
  const h = negotiating(argv);
  const r = h.optList((name, desc) => {
    seen.push([name, desc]);
    if (name === "a") throw new Error("list callback gave up");
    return 0;
  });
  assert.is(r, -1);
  assert.ok(getError()?.startsWith("nbd_opt_list: "), String(getError()));
  assert.ok(getError()?.includes("list callback gave up"), String(getError()));
  // libnbd calls the callback for every export whatever it returned.
  assert.equal(seen, [["a", "the first"], ["b", "the second"]]);
  assert.is(h.aioIsNegotiating(), 1);
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(h.getSize(), 512n);
});

// ---- NBD_OPT_INFO, NBD_OPT_GO and the export name ---------------------------------------------

test("optInfo fills size and flags and stays negotiating; a missing export fails opt_info and opt_go (T23, libnbd 1.14 agrees)", () => {
  const [{ h, ops }] = sameAsLibnbd([{
    argv: [...NBDKIT, "sh", INFO_SH],
    settings: [["set_opt_mode", true]],
    ops: [
      ["get_size"], ["is_read_only"], ["opt_info"], ["get_size"], ["is_read_only"], ["aio_is_negotiating"],
      ["set_export_name", "a"], ["opt_info"], ["get_size"], ["aio_is_negotiating"],
      ["opt_go"], ["is_read_only"], ["connection_state"],
      ["set_export_name", "b"], ["opt_info"], ["get_size"], ["is_read_only"], ["can_flush"],
      ["set_export_name", "good"], ["opt_go"], ["get_size"], ["is_read_only"], ["aio_is_ready"],
      ["set_export_name", "a"], ["get_export_name"], ["opt_info"], ["get_size"],
    ],
  }]) as [{ h: Handle; ops: Result[] }];
  assert.equal(ops.slice(2, 6).map(okOf), [0, 0, 1, 1]);
  assert.equal(ops[7], {
    err: "nbd_opt_info: server replied with error to opt_info request: No such file or directory", errno: errno.ENOENT,
  });
  assert.equal(ops[10], {
    err: "nbd_opt_go: server replied with error to opt_go request: No such file or directory", errno: errno.ENOENT,
  });
  assert.equal(okOf(ops[12]), "NEGOTIATING: Connection is ready to negotiate an NBD option");
  assert.equal(ops.slice(14, 17).map(okOf), [0, 1, 0]);
  assert.equal(ops.slice(19, 23).map(okOf), [0, 4, 1, 1]);
  assert.equal(ops[23], {
    err: "nbd_set_export_name: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument",
    errno: errno.EINVAL,
  });
  assert.equal(okOf(ops[24]), "good");
  const buf = new Uint8Array(4);
  assert.is(h.pread(buf, 0), 0, String(getError()));
  assert.equal(new TextDecoder().decode(buf), "good");
});

test("setExportName while negotiating wipes what optInfo learned, unless the name is the same (libnbd 1.16+, T23)", () => {
  const h = negotiating([...NBDKIT, "sh", INFO_SH], (h) => assert.is(h.addMetaContext(BASE), 0));
  const noSize = "nbd_get_size: server has not returned export size, you need to connect to the server first: Invalid argument";
  const noFlags = "nbd_is_read_only: server has not returned export flags, you need to connect to the server first: Invalid argument";
  const noMeta = "nbd_can_meta_context: need a successful server meta context request first: Invalid argument";
  fails(h.getSize(), errno.EINVAL, noSize);
  fails(h.isReadOnly(), errno.EINVAL, noFlags);
  fails(h.canMetaContext(BASE), errno.EINVAL, noMeta);

  // Info on "" (no name set yet).
  assert.is(h.optInfo(), 0, String(getError()));
  assert.is(h.getSize(), 0n);
  assert.is(h.isReadOnly(), 1);
  assert.is(h.canMetaContext(BASE), 1);

  // A new name wipes it all (1.14 kept it).
  assert.is(h.setExportName("b"), 0);
  fails(h.getSize(), errno.EINVAL, noSize);
  fails(h.isReadOnly(), errno.EINVAL, noFlags);
  fails(h.canMetaContext(BASE), errno.EINVAL, noMeta);

  assert.is(h.setExportName("a"), 0);
  fails(h.optInfo(), errno.ENOENT, "nbd_opt_info: server replied with error to opt_info request: No such file or directory");

  // Info on "b" without the automatic SET_META_CONTEXT: size and flags, but no contexts.
  assert.is(h.setExportName("b"), 0);
  assert.is(h.setRequestMetaContext(false), 0);
  assert.is(h.getRequestMetaContext(), 0);
  assert.is(h.optInfo(), 0, String(getError()));
  assert.is(h.setExportName("b"), 0); // the same name: nothing is wiped
  assert.is(h.getSize(), 1n);
  assert.is(h.isReadOnly(), 0);
  fails(h.canMetaContext(BASE), errno.EINVAL, noMeta);
  assert.is(h.setRequestMetaContext(true), 0);

  // A failed go wipes as well and stays negotiating.
  assert.is(h.setExportName("a"), 0);
  fails(h.optGo(), errno.ENOENT, "nbd_opt_go: server replied with error to opt_go request: No such file or directory");
  assert.is(h.aioIsNegotiating(), 1);
  fails(h.getSize(), errno.EINVAL, noSize);
  fails(h.isReadOnly(), errno.EINVAL, noFlags);
  fails(h.canMetaContext(BASE), errno.EINVAL, noMeta);

  assert.is(h.setExportName("good"), 0);
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(h.getSize(), 4n);
  assert.is(h.isReadOnly(), 1);
  assert.is(h.canMetaContext(BASE), 1);
  // Too late to change anything, and nothing is lost by trying.
  fails(h.setExportName("a"), errno.EINVAL,
    "nbd_set_export_name: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument");
  assert.is(h.getExportName(), "good");
  fails(h.optInfo(), errno.EINVAL, "nbd_opt_info: invalid state: READY: the handle must be negotiating: Invalid argument");
  assert.is(h.getSize(), 4n);
  assert.is(h.canMetaContext(BASE), 1);
  assert.is(h.shutdown(), 0);
});

test("the contexts optInfo selected survive optGo with setRequestMetaContext(false) (T23)", () => {
  const h = negotiating([...NBDKIT, "sh", INFO_SH], (h) => assert.is(h.addMetaContext("x-unexpected:bogus"), 0));
  fails(h.canMetaContext(BASE), errno.EINVAL,
    "nbd_can_meta_context: need a successful server meta context request first: Invalid argument");
  assert.is(h.optInfo(), 0, String(getError()));
  assert.is(h.canMetaContext(BASE), 0);
  assert.is(h.canMetaContext("x-unexpected:bogus"), 0);
  assert.is(h.setRequestMetaContext(false), 0);
  assert.is(h.addMetaContext(BASE), 0); // too late to matter: no request is made any more
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(h.canMetaContext(BASE), 0);
  assert.is(h.getNrMetaContexts(), 2);
});

test("qemu-nbd: optList with a description; optInfo/optGo for a missing export stay negotiating; full info, then not", () => {
  const argv = ["qemu-nbd", "-f", "raw", "-x", "foo", "-D", "a disk", "-A", DISK];
  const [{ h, ops }] = sameAsLibnbd([{
    argv, sa: true,
    settings: [["set_opt_mode", true], ["set_export_name", "bar"]],
    ops: [
      ["get_protocol"], ["opt_list"], ["opt_info"], ["opt_go"], ["connection_state"],
      ["set_export_name", "foo"], ["opt_list_meta_context"], ["set_full_info", true], ["opt_info"], ["get_size"],
      ["get_export_description"], ["get_canonical_export_name"],
      // A second NBD_OPT_INFO starts from nothing: no name unless asked for again.
      ["set_full_info", false], ["opt_info"], ["get_canonical_export_name"], ["get_export_description"],
      ["opt_go"], ["aio_is_ready"], ["get_size"], ["get_canonical_export_name"],
    ],
  }]) as [{ h: Handle; ops: Result[] }];
  assert.equal(ops[1], { ok: 1, calls: [["foo", "a disk"]] });
  assert.equal(ops[2], {
    err: "nbd_opt_info: server replied with error to opt_info request: No such file or directory", errno: errno.ENOENT,
  });
  assert.equal(ops[3], {
    err: "nbd_opt_go: server replied with error to opt_go request: No such file or directory", errno: errno.ENOENT,
  });
  assert.equal(ops[6], { ok: 2, calls: [[BASE], [CONTEXT_QEMU_ALLOCATION_DEPTH]] });
  assert.equal(ops.slice(9, 12).map(okOf), [MiB, "a disk", "foo"]);
  const noName = {
    err: "nbd_get_canonical_export_name: server did not advertise a canonical name: Operation not supported",
    errno: errno.ENOTSUP,
  };
  assert.equal(ops[14], noName);
  assert.equal(ops.slice(15, 19).map(okOf), ["a disk", 0, 1, MiB]);
  assert.equal(ops[19], noName);
  const buf = new Uint8Array(512).fill(1);
  assert.is(h.pread(buf, 0), 0, String(getError()));
  assert.ok(buf.every((b) => b === 0));
});

test("setRequestBlockSize(false) against qemu-nbd's block sizes (blkdebug align=4096)", () => {
  const argv = ["qemu-nbd", "--image-opts", "-x", "",
    `driver=blkdebug,align=4096,image.driver=file,image.filename=${DISK}`];
  const sizes: Op[] = [["get_block_size", SIZE_MINIMUM], ["get_block_size", SIZE_PREFERRED], ["get_block_size", SIZE_MAXIMUM]];
  const runs = sameAsLibnbd([
    { argv, sa: true, settings: [["get_request_block_size"]], ops: [...sizes, ["get_size"]] },
    { argv, sa: true, settings: [["set_request_block_size", false], ["get_request_block_size"]], ops: [...sizes, ["get_size"]] },
    // qemu-nbd refuses NBD_OPT_INFO from a client that will not honour block sizes (NBD_REP_ERR_BLOCK_SIZE_REQD).
    {
      argv, sa: true, settings: [["set_request_block_size", false], ["set_opt_mode", true]],
      ops: [["opt_info"], ["get_block_size", SIZE_MINIMUM], ["aio_is_negotiating"], ["opt_go"], ...sizes],
    },
  ]);
  assert.equal(runs[0]!.ops.map(okOf), [4096, 4096, 32 * MiB, MiB]);
  assert.equal(runs[1]!.ops.map(okOf), [1, 4096, 32 * MiB, MiB]);
  assert.equal(runs[2]!.ops[0], {
    err: "nbd_opt_info: server replied with error to opt_info request: Invalid argument", errno: errno.EINVAL,
  });
  assert.equal(runs[2]!.ops.slice(2).map(okOf), [1, 0, 1, 4096, 32 * MiB]);
  // The request setting may change while negotiating, and then the minimum is honoured.
  const h = negotiating(argv, (h) => h.setRequestBlockSize(false), true);
  assert.is(h.setRequestBlockSize(true), 0);
  assert.is(h.getRequestBlockSize(), 1);
  assert.is(h.optInfo(), 0, String(getError()));
  assert.is(h.getBlockSize(SIZE_MINIMUM), 4096n);
  assert.is(h.optGo(), 0, String(getError()));
  fails(h.pread(new Uint8Array(512), 0), errno.EINVAL, "nbd_pread: request is unaligned: Invalid argument");
  fails(h.setRequestBlockSize(false), errno.EINVAL,
    "nbd_set_request_block_size: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument");
});

// ---- meta contexts: the request list, and what connecting does with it --------------------

test("addMetaContext/getNrMetaContexts/getMetaContext/clearMetaContexts (libnbd 1.14 agrees)", () => {
  const long = "x".repeat(4097);
  const [{ h }] = sameAsLibnbd([{
    argv: MEMORY,
    settings: [
      ["get_nr_meta_contexts"], ["get_meta_context", 0], ["add_meta_context", BASE], ["add_meta_context", "x-nosuch:"],
      ["add_meta_context", long], ["get_nr_meta_contexts"], ["get_meta_context", 0], ["get_meta_context", 1],
      ["get_meta_context", 2], ["clear_meta_contexts"], ["get_nr_meta_contexts"], ["add_meta_context", BASE],
    ],
    ops: [
      ["get_nr_meta_contexts"], ["get_meta_context", 0], ["add_meta_context", "y:"], ["clear_meta_contexts"],
      ["can_meta_context", BASE], ["can_meta_context", "x-nosuch:"], ["get_nr_meta_contexts"],
    ],
  }]) as [{ h: Handle; ops: Result[] }];
  fails(h.getMetaContext(1), errno.EINVAL, "nbd_get_meta_context: meta context request out of range: Invalid argument");
  fails(h.addMetaContext(long), errno.EINVAL,
    "nbd_add_meta_context: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument");
  const fresh = newHandle();
  fails(fresh.addMetaContext(long), errno.ENAMETOOLONG,
    "nbd_add_meta_context: meta context name too long for NBD protocol: File name too long");
  assert.is(fresh.getNrMetaContexts(), 0);
  assert.is(fresh.getRequestMetaContext(), 1);
  assert.is(fresh.setRequestMetaContext(false), 0);
  assert.is(fresh.getRequestMetaContext(), 0);
  assert.is(h.canMetaContext(BASE), 1);
  fails(h.setRequestMetaContext(false), errno.EINVAL,
    "nbd_set_request_meta_context: invalid state: READY: the handle must be newly created, or negotiating: Invalid argument");
});

test("connect sends SET_META_CONTEXT for added contexts: nbdkit memory, qemu-nbd (libnbd 1.14 agrees)", () => {
  const ops: Op[] = [["can_meta_context", BASE], ["can_meta_context", CONTEXT_QEMU_ALLOCATION_DEPTH], ["get_structured_replies_negotiated"]];
  const both: Op[] = [["add_meta_context", BASE], ["add_meta_context", CONTEXT_QEMU_ALLOCATION_DEPTH]];
  const runs = sameAsLibnbd([
    { argv: MEMORY, settings: [["add_meta_context", BASE]], ops },
    { argv: MEMORY, settings: both, ops },
    { argv: ["qemu-nbd", "-f", "raw", "-x", "", DISK], sa: true, settings: both, ops },
    { argv: ["qemu-nbd", "-f", "raw", "-x", "", "-A", DISK], sa: true, settings: both, ops },
    // Without structured replies there is nothing to negotiate, and that is a valid answer.
    { argv: MEMORY, settings: [["set_request_structured_replies", false], ["add_meta_context", BASE]], ops },
    { argv: MEMORY, ops },
  ]);
  assert.equal(runs.map(({ ops }) => ops.map(okOf)),
    [[1, 0, 1], [1, 0, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 0, 1]]);
  // The negotiated context is the one block status reports under.
  const names: string[] = [];
  const h = runs[0]!.h;
  assert.is(h.blockStatus(64 * KiB, 0, (name) => (names.push(name), 0)), 0, String(getError()));
  assert.ok(names.length > 0 && names.every((n) => n === BASE), names.join());
});

test("setRequestMetaContext(false): connect asks for nothing, canMetaContext is EINVAL, block status ENOTSUP", () => {
  const h = newHandle();
  assert.is(h.addMetaContext(BASE), 0);
  assert.is(h.setRequestMetaContext(false), 0);
  assert.is(h.connectCommand(MEMORY), 0, String(getError()));
  fails(h.canMetaContext(BASE), errno.EINVAL,
    "nbd_can_meta_context: need a successful server meta context request first: Invalid argument");
  fails(h.blockStatus(512, 0, () => 0), errno.ENOTSUP,
    "nbd_block_status: did not negotiate any metadata contexts, either you did not call nbd_add_meta_context before " +
    "connecting or the server does not support it: Operation not supported");
  // With nothing requested, "none negotiated" is a plain 0.
  const h2 = newHandle();
  assert.is(h2.setRequestMetaContext(false), 0);
  assert.is(h2.connectCommand(MEMORY), 0, String(getError()));
  assert.is(h2.canMetaContext(BASE), 0);
});

// ---- NBD_OPT_LIST_META_CONTEXT --------------------------------------------------------------

test("optListMetaContext: all, none, one; stateless; 'base:' (T24, libnbd 1.14 agrees)", () => {
  const [{ h, ops }] = sameAsLibnbd([{
    argv: MEMORY,
    settings: [["set_opt_mode", true]],
    ops: [
      ["opt_list_meta_context"],
      ["add_meta_context", "x-nosuch:"], ["opt_list_meta_context"],
      ["add_meta_context", BASE], ["get_nr_meta_contexts"], ["get_meta_context", 1], ["opt_list_meta_context"],
      ["opt_info"], ["get_size"], ["can_meta_context", BASE],
      ["clear_meta_contexts"], ["add_meta_context", "x-nosuch:"], ["opt_list_meta_context"],
      ["add_meta_context", "base:"], ["opt_list_meta_context"], ["aio_is_negotiating"],
    ],
  }]) as [{ h: Handle; ops: Result[] }];
  const all = ops[0] as { ok: number; calls: string[][] };
  assert.ok(all.ok >= 1 && all.ok === all.calls.length, JSON.stringify(all));
  assert.ok(all.calls.some(([n]) => n === BASE), JSON.stringify(all));
  assert.equal(ops[2], { ok: 0, calls: [] });
  assert.equal(ops.slice(4, 6).map(okOf), [2, BASE]);
  assert.equal(ops[6], { ok: 1, calls: [[BASE]] });
  assert.equal(ops.slice(7, 10).map(okOf), [0, MiB, 1]);
  assert.equal(ops[12], { ok: 0, calls: [] });
  const base = ops[14] as { ok: number; calls: string[][] };
  assert.ok(base.ok >= 1 && base.ok <= all.ok && base.ok === base.calls.length, JSON.stringify(base));
  assert.ok(base.calls.some(([n]) => n === BASE));
  assert.is(okOf(ops[15]), 1);
  // Listing is stateless (1.16+; 1.14 wiped what opt_info had learned).
  assert.is(h.getSize(), BigInt(MiB));
  assert.is(h.canMetaContext(BASE), 1);
  // Before any SET the requested context is not known (1.16+: 1.14 says "export flags").
  const h2 = negotiating(MEMORY, (h) => h.addMetaContext(BASE));
  fails(h2.canMetaContext(BASE), errno.EINVAL,
    "nbd_can_meta_context: need a successful server meta context request first: Invalid argument");
  assert.is(h2.optListMetaContext(() => 0), 1);
  fails(h2.canMetaContext(BASE), errno.EINVAL,
    "nbd_can_meta_context: need a successful server meta context request first: Invalid argument");
  assert.is(h.optAbort(), 0);
});

test("optListMetaContextQueries: explicit lists override addMetaContext (1.16+, python 245)", () => {
  const h = negotiating(MEMORY, (h) => h.addMetaContext("x-nosuch:"));
  const all = recorder<[string]>();
  const n = h.optListMetaContextQueries([], all.cb);
  assert.ok(n >= 1 && n === all.calls.length, `${n} ${getError()}`);
  assert.ok(all.calls.some(([c]) => c === BASE));
  assert.is(h.clearMetaContexts(), 0);
  const none = recorder<[string]>();
  assert.is(h.optListMetaContextQueries(["x-nosuch:"], none.cb), 0);
  assert.equal(none.calls, []);
  const one = recorder<[string]>();
  assert.is(h.optListMetaContextQueries(["x-nosuch:", BASE], one.cb), 1);
  assert.equal(one.calls, [[BASE]]);
  assert.is(h.getNrMetaContexts(), 0);
  assert.is(h.optAbort(), 0);
});

test("optListMetaContext without structured replies, then optStructuredReply (T24)", () => {
  const h = negotiating(MEMORY, (h) => h.setRequestStructuredReplies(false));
  assert.is(h.getStructuredRepliesNegotiated(), 0);
  // libnbd 1.18 asks the server anyway (1.14 refused by itself), and nbdkit 1.32 answers.
  const before = recorder<[string]>();
  const m = h.optListMetaContext(before.cb);
  assert.ok(m >= 1 && m === before.calls.length, `${m} ${getError()}`);
  assert.ok(before.calls.some(([c]) => c === BASE));
  assert.is(h.getStructuredRepliesNegotiated(), 0);
  assert.is(h.aioIsNegotiating(), 1);
  assert.is(h.optStructuredReply(), 1, String(getError()));
  assert.is(h.getStructuredRepliesNegotiated(), 1);
  const after = recorder<[string]>();
  const n = h.optListMetaContext(after.cb);
  assert.ok(n >= 1 && n === after.calls.length, `${n} ${getError()}`);
  assert.ok(after.calls.some(([c]) => c === BASE));
  assert.is(h.optAbort(), 0);
});

// ---- NBD_OPT_SET_META_CONTEXT --------------------------------------------------------------

test("optSetMetaContext: needs structured replies; wildcards, empty, two with one match; survives optGo (T25, python 250)", () => {
  const h = negotiating(MEMORY, (h) => h.setRequestStructuredReplies(false));
  assert.is(h.getStructuredRepliesNegotiated(), 0);
  // Nothing requested: no contexts, and that is known.
  assert.is(h.canMetaContext(BASE), 0);
  assert.is(h.addMetaContext(BASE), 0);
  const noMeta = "nbd_can_meta_context: need a successful server meta context request first: Invalid argument";
  fails(h.canMetaContext(BASE), errno.EINVAL, noMeta);

  // SET cannot succeed before structured replies.
  // libnbd 1.18 sends the request anyway; nbdkit refuses it.
  const early = recorder<[string]>();
  fails(h.optSetMetaContext(early.cb), errno.ENOTSUP,
    "nbd_opt_set_meta_context: server replied with error to meta context request: Operation not supported");
  assert.equal(early.calls, []);
  assert.is(h.aioIsNegotiating(), 1);
  assert.is(h.optStructuredReply(), 1, String(getError()));
  assert.is(h.getStructuredRepliesNegotiated(), 1);
  fails(h.canMetaContext(BASE), errno.EINVAL, noMeta);

  // nbdkit does not match wildcards for SET (it does for LIST).
  assert.is(h.clearMetaContexts(), 0);
  assert.is(h.addMetaContext("base:"), 0);
  const wild = recorder<[string]>();
  assert.is(h.optSetMetaContext(wild.cb), 0, String(getError()));
  assert.equal(wild.calls, []);
  assert.is(h.canMetaContext(BASE), 0);

  // No queries: not an error, selects nothing.
  assert.is(h.clearMetaContexts(), 0);
  assert.is(h.optSetMetaContext(wild.cb), 0, String(getError()));
  assert.is(h.canMetaContext(BASE), 0);

  // Two asked, one granted; with the automatic request off.
  assert.is(h.addMetaContext("x-nosuch:context"), 0);
  assert.is(h.addMetaContext(BASE), 0);
  assert.is(h.setRequestMetaContext(false), 0);
  const two = recorder<[string]>();
  assert.is(h.optSetMetaContext(two.cb), 1, String(getError()));
  assert.equal(two.calls, [[BASE]]);
  assert.is(h.canMetaContext(BASE), 1);

  // opt_go keeps the last SET's choice.
  assert.is(h.clearMetaContexts(), 0);
  assert.is(h.addMetaContext("x-nosuch:context"), 0);
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(h.canMetaContext(BASE), 1);

  // Too late to set, and nothing is lost.
  const late = recorder<[string]>();
  fails(h.optSetMetaContext(late.cb), errno.EINVAL,
    "nbd_opt_set_meta_context: invalid state: READY: the handle must be negotiating: Invalid argument");
  assert.equal(late.calls, []);
  assert.is(h.canMetaContext(BASE), 1);
  const names: string[] = [];
  assert.is(h.blockStatus(64 * KiB, 0, (name) => (names.push(name), 0)), 0, String(getError()));
  assert.ok(names.length > 0 && names.every((n) => n === BASE), names.join());
  assert.is(h.shutdown(), 0);
});

test("optSetMetaContextQueries: explicit lists, which override addMetaContext (1.16+, python 255)", () => {
  const h = negotiating(MEMORY);
  const wild = recorder<[string]>();
  assert.is(h.optSetMetaContextQueries(["base:"], wild.cb), 0, String(getError()));
  assert.equal(wild.calls, []);
  assert.is(h.canMetaContext(BASE), 0);

  assert.is(h.addMetaContext(BASE), 0);
  const empty = recorder<[string]>();
  assert.is(h.optSetMetaContextQueries([], empty.cb), 0, String(getError()));
  assert.equal(empty.calls, []);
  assert.is(h.canMetaContext(BASE), 0);

  const two = recorder<[string]>();
  assert.is(h.optSetMetaContextQueries(["x-nosuch:context", BASE], two.cb), 1, String(getError()));
  assert.equal(two.calls, [[BASE]]);
  assert.is(h.canMetaContext(BASE), 1);

  assert.is(h.setRequestMetaContext(false), 0);
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(h.canMetaContext(BASE), 1);
  assert.is(h.shutdown(), 0);
});

test("context callbacks: a throw fails optListMetaContext / optSetMetaContextQueries but the negotiation stands", () => {
  const argv = ["qemu-nbd", "-f", "raw", "-x", "", "-A", DISK];
  const h = negotiating(argv, undefined, true);
  const seen: string[] = [];
  const r = h.optListMetaContext((name) => {
    seen.push(name);
    throw new Error(`no thanks: ${name}`);
  });
  assert.is(r, -1);
  assert.ok(getError()?.startsWith("nbd_opt_list_meta_context: "), String(getError()));
  assert.ok(getError()?.includes(`no thanks: ${BASE}`), String(getError()));
  assert.equal(seen, [BASE, CONTEXT_QEMU_ALLOCATION_DEPTH]);
  assert.is(h.aioIsNegotiating(), 1);

  // SET names the same contexts, in the server's order again.
  const order = seen.splice(0);
  const s = h.optSetMetaContextQueries([CONTEXT_QEMU_ALLOCATION_DEPTH, BASE], (name) => {
    seen.push(name);
    if (name === CONTEXT_QEMU_ALLOCATION_DEPTH) throw new TypeError("not this one");
    return 0;
  });
  assert.is(s, -1);
  assert.ok(getError()?.startsWith("nbd_opt_set_meta_context_queries: "), String(getError()));
  assert.ok(getError()?.includes("not this one"), String(getError()));
  assert.equal(seen, order);
  // libnbd ignores what a context callback returns: the server's choice was recorded.
  assert.is(h.canMetaContext(BASE), 1);
  assert.is(h.canMetaContext(CONTEXT_QEMU_ALLOCATION_DEPTH), 1);
  // opt_go's automatic request (none added, so none sent) replaces that choice with nothing.
  assert.is(h.optGo(), 0, String(getError()));
  assert.is(h.canMetaContext(CONTEXT_QEMU_ALLOCATION_DEPTH), 0);
  assert.is(h.canMetaContext(BASE), 0);
});

// ---- other protocols: plain newstyle (T20) and oldstyle (T19) ------------------------------------

test("plain newstyle (--mask-handshake 0): negotiating, but only opt_go works; opt_abort → DEAD (T20)", () => {
  const probe: Op[] = [
    ["aio_is_negotiating"], ["get_protocol"], ["get_structured_replies_negotiated"], ["get_handshake_flags"],
    ["opt_list"], ["opt_info"], ["opt_list_meta_context"], ["get_size"], ["aio_is_negotiating"],
    ["opt_abort"], ["aio_is_dead"], ["connection_state"], ["get_size"], ["opt_abort"],
  ];
  const runs = sameAsLibnbd([
    { argv: PLAIN, settings: [["set_opt_mode", true], ["set_export_name", "a"]], ops: probe },
    // A wrong name cannot be retried: the server hangs up on NBD_OPT_EXPORT_NAME.
    { argv: PLAIN, settings: [["set_opt_mode", true]], ops: [["set_export_name", "b"], ["opt_go"], ["aio_is_dead"], ["connection_state"]] },
    { argv: PLAIN, settings: [["set_opt_mode", true]], ops: [["set_export_name", "a"], ["opt_go"], ["aio_is_ready"], ["get_size"]] },
    {
      argv: PLAIN, settings: [["set_export_name", "a"], ["add_meta_context", BASE]],
      ops: [["aio_is_ready"], ["get_protocol"], ["get_structured_replies_negotiated"], ["can_meta_context", BASE], ["get_size"]],
    },
    { argv: PLAIN, settings: [["set_export_name", "b"]], ops: [] },
  ]);
  const p = runs[0]!.ops;
  assert.equal(p.slice(0, 4).map(okOf), [1, "newstyle", 0, 0]);
  const notFixed = (call: string) => `nbd_${call}: server is not using fixed newstyle protocol: Operation not supported`;
  assert.equal(p[4], { err: notFixed("opt_list"), errno: errno.ENOTSUP, calls: [] });
  assert.equal(p[5], { err: notFixed("opt_info"), errno: errno.ENOTSUP });
  assert.equal(p[6], { err: notFixed("opt_list_meta_context"), errno: errno.ENOTSUP, calls: [] });
  assert.equal(p.slice(8, 12).map(okOf),
    [1, 0, 1, "DEAD: Connection is in an unrecoverable error state, can only be closed"]);
  assert.equal(runs[1]!.ops[1], { err: "nbd_opt_go: recv: server disconnected unexpectedly", errno: 0 });
  assert.equal(runs[1]!.ops.slice(2).map(okOf), [1, "DEAD: Connection is in an unrecoverable error state, can only be closed"]);
  assert.equal(runs[2]!.ops.map(okOf), [0, 0, 1, 64 * KiB]);
  assert.equal(runs[3]!.ops.map(okOf), [1, "newstyle", 0, 0, 64 * KiB]);
  assert.is(runs[4]!.h.aioIsDead(), 1);

  // The 1.16+ calls refuse the same way; I/O works after opt_go.
  const h = negotiating(PLAIN, (h) => h.setExportName("a"));
  fails(h.optStructuredReply(), errno.ENOTSUP, notFixed("opt_structured_reply"));
  fails(h.optSetMetaContext(() => 0), errno.ENOTSUP, notFixed("opt_set_meta_context"));
  fails(h.optListMetaContextQueries([BASE], () => 0), errno.ENOTSUP, notFixed("opt_list_meta_context_queries"));
  fails(h.optSetMetaContextQueries([BASE], () => 0), errno.ENOTSUP, notFixed("opt_set_meta_context_queries"));
  assert.is(h.aioIsNegotiating(), 1);
  assert.is(h.optGo(), 0, String(getError()));
  const data = new Uint8Array(512).map((_, i) => 255 - (i & 0xff));
  assert.is(h.pwrite(data, 1024), 0, String(getError()));
  const back = new Uint8Array(512);
  assert.is(h.pread(back, 1024), 0, String(getError()));
  assert.equal(back, data);

  // shutdown() while negotiating is an opt_abort: here too the handle dies, and shutdown says 0.
  const h3 = negotiating(PLAIN);
  assert.is(h3.shutdown(), 0, String(getError()));
  assert.is(h3.aioIsDead(), 1);
});

test("a server that dies while the handle negotiates: the next option fails and the handle is DEAD", () => {
  for (const call of ["optInfo", "optGo", "optList", "optListMetaContext", "optStructuredReply"] as const) {
    const h = negotiating(MEMORY);
    const pid = Number(h.getSubprocessPid());
    assert.is(h.killSubprocess(9), 0);
    waitFor(() => !alive(pid), 5_000, "nbdkit to die");
    const seen = recorder();
    const r = call === "optList" || call === "optListMetaContext" ? h[call](seen.cb) : h[call]();
    assert.is(r, -1, call);
    assert.ok(getError()?.startsWith(`nbd_${call.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}: `), String(getError()));
    assert.equal(seen.calls, []);
    assert.is(h.aioIsDead(), 1, `${call}: ${h.connectionState()}`);
    fails(h.optAbort(), errno.EINVAL, "nbd_opt_abort: invalid state: DEAD: the handle must be negotiating: Invalid argument");
  }
});

test("oldstyle (-o): opt mode is ignored, connect goes straight to READY; shutdown works (T19, T26)", () => {
  const [{ h, ops }] = sameAsLibnbd([{
    argv: OLDSTYLE,
    settings: [["set_opt_mode", true], ["add_meta_context", BASE], ["set_export_name", "ignored"]],
    ops: [
      ["aio_is_ready"], ["aio_is_negotiating"], ["get_protocol"], ["get_structured_replies_negotiated"],
      ["can_meta_context", BASE], ["get_size"], ["get_opt_mode"], ["opt_abort"], ["opt_go"], ["opt_list"],
    ],
  }]) as [{ h: Handle; ops: Result[] }];
  assert.equal(ops.slice(0, 7).map(okOf), [1, 0, "oldstyle", 0, 0, 65536, 1]);
  assert.equal(ops[7], {
    err: "nbd_opt_abort: invalid state: READY: the handle must be negotiating: Invalid argument", errno: errno.EINVAL,
  });
  const data = new Uint8Array(512).map((_, i) => i % 251);
  assert.is(h.pwrite(data, 1024), 0, String(getError()));
  const back = new Uint8Array(512);
  assert.is(h.pread(back, 1024), 0, String(getError()));
  assert.equal(back, data);
  const chunks: [number, bigint, number, number][] = [];
  assert.is(h.preadStructured(back, 1024, (sub, off, status, err) => (chunks.push([sub.length, off, status, err.value]), 0)), 0);
  assert.equal(chunks, [[512, 1024n, 1, 0]]);
  assert.is(h.shutdown(), 0, String(getError()));
  assert.is(h.aioIsClosed(), 1);
});

test.run();
