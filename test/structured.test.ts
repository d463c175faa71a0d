/**
 * pread_structured: the chunk callback against nbdkit's pattern (one data
 * chunk), qemu-nbd on a qcow2 with holes (data and hole chunks at their
 * absolute offsets, as views of the caller's buffer), simple replies
 * (structured replies off, oldstyle: one call for the whole buffer), and a
 * callback's failures (-1, an errno in the box, a throw). Where libnbd 1.14
 * (python3-libnbd) can answer the same question, its answer is the expected one.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash } from "node:crypto";
import {
  getErrno, getError, CMD_FLAG_DF, CMD_FLAG_FUA, READ_DATA, READ_ERROR, READ_HOLE, STRICT_COMMANDS, STRICT_MASK,
  type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { pattern, run, scratchPath, waitFor } from "./helpers.js";
import { fakeServer } from "./fake-server.js";
import { connected, NBDKIT, newHandle } from "./handles.js";
import { python as oracle } from "./libnbd.js";

const KiB = 1024;
const MiB = 1024 * 1024;

/** The call returned exactly -1, with `err` and exactly libnbd's message. */
function fails(ret: number, err: number, message: string): void {
  assert.is(ret, -1, "expected failure");
  assert.is(getError(), message);
  assert.is(getErrno(), err);
}

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** What one chunk callback call saw: [offset, length, status, error]. */
type Seen = [number, number, number, number];

interface Recorded {
  ret: number;
  seen: Seen[];
  /** The bytes each chunk's subbuf held during the callback. */
  bytes: Uint8Array[];
  /** Each subbuf's place in the caller's buffer, or -1 if it is not a view of it. */
  at: number[];
}

/**
 * pread_structured into `buf`, recording each callback call; the callback
 * returns -1 (after setting the box to `setErr`, if given) on call number `failAt`.
 */
function readChunks(h: Handle, buf: Uint8Array, offset: number, flags?: number, failAt = -1, setErr = 0): Recorded {
  const rec: Recorded = { ret: 0, seen: [], bytes: [], at: [] };
  rec.ret = h.preadStructured(buf, offset, (sub, off, status, error) => {
    rec.seen.push([Number(off), sub.byteLength, status, error.value]);
    rec.bytes.push(sub.slice());
    rec.at.push(sub.buffer === buf.buffer ? sub.byteOffset - buf.byteOffset : -1);
    if (rec.seen.length - 1 === failAt) {
      if (setErr) error.value = setErr;
      return -1;
    }
    return 0;
  }, flags);
  return rec;
}

// ---- python3-libnbd (libnbd 1.14) as the oracle ----------------------------------

interface Read { count: number; offset: number; flags?: number; failAt?: number; setErr?: number }
interface Spec { argv: string[]; sa?: boolean; sr?: boolean; reads: Read[] }
type PyRead = { seen: Seen[]; sha: string } | { err: string; errno: number; seen: Seen[] };

const PY = String.raw`
import hashlib, json, sys, nbd
out = []
for spec in json.load(sys.stdin):
    h = nbd.NBD()
    if spec.get("sr") is False: h.set_request_structured_replies(False)
    if spec.get("sa"): h.connect_systemd_socket_activation(spec["argv"])
    else: h.connect_command(spec["argv"])
    res = []
    for r in spec["reads"]:
        seen = []
        def cb(buf, off, status, err, r=r, seen=seen):
            seen.append([off, len(buf), status, err.value])
            if len(seen) - 1 == r.get("failAt", -1):
                if r.get("setErr"): err.value = r["setErr"]
                return -1
            return 0
        try:
            buf = h.pread_structured(r["count"], r["offset"], cb, r.get("flags", 0))
            res.append({"seen": seen, "sha": hashlib.sha256(buf).hexdigest()})
        except nbd.Error as e:
            res.append({"err": e.string, "errno": e.errnum, "seen": seen})
    h.shutdown()
    del h
    out.append(res)
json.dump(out, sys.stdout)
`;

const python = (specs: Spec[]): PyRead[][] => oracle<PyRead[][]>(PY, specs);

/** The same reads through nbd-ts, in python's shape. */
function ours(spec: Spec): PyRead[] {
  const h = connected(spec.argv, spec.sa ?? false, (h) => {
    if (spec.sr === false) assert.is(h.setRequestStructuredReplies(false), 0);
  });
  const res = spec.reads.map((r): PyRead => {
    const buf = new Uint8Array(r.count);
    const rec = readChunks(h, buf, r.offset, r.flags, r.failAt, r.setErr);
    return rec.ret === 0 ? { seen: rec.seen, sha: sha(buf) } : { err: getError()!, errno: getErrno(), seen: rec.seen };
  });
  assert.is(h.shutdown(), 0);
  return res;
}

// ---- a qcow2 with data, holes and a zero cluster -----------------------------------

const QCOW2 = scratchPath("holes.qcow2");
/** [offset, length, byte]: what qemu-io writes (byte -1: write -z). The rest of the 1 MiB image is unallocated. */
const WRITES: [number, number, number][] = [
  [0, 64 * KiB, 0x11], [256 * KiB, 64 * KiB, 0x22], [512 * KiB, 64 * KiB, -1], [700 * KiB, 4 * KiB, 0x44],
  [960 * KiB, 64 * KiB, 0x33],
];
run("qemu-img", ["create", "-q", "-f", "qcow2", QCOW2, "1M"]);
run("qemu-io", ["-f", "qcow2", ...WRITES.flatMap(([o, n, b]) => ["-c", b < 0 ? `write -z ${o} ${n}` : `write -P ${b} ${o} ${n}`]), QCOW2]);
/** What the image holds, from what was written. */
const IMAGE = new Uint8Array(MiB);
for (const [o, n, b] of WRITES) IMAGE.fill(Math.max(b, 0), o, o + n);
const QEMU = ["qemu-nbd", "-r", "-f", "qcow2", "-x", "", QCOW2];

// ---- nbdkit pattern: one data chunk ---------------------------------------------------

test("pattern: one READ_DATA chunk for the whole buffer, a view of it; with and without DF (T28)", () => {
  const h = connected([...NBDKIT, "pattern", "size=512"], false);
  assert.is(h.canDf(), 1);
  for (const flags of [undefined, 0, CMD_FLAG_DF]) {
    const buf = new Uint8Array(512).fill(0xee);
    const rec = readChunks(h, buf, 0, flags);
    assert.is(rec.ret, 0, String(getError()));
    assert.equal(rec.seen, [[0, 512, READ_DATA, 0]], `flags ${flags}`);
    assert.is(rec.at[0], 0, "the subbuf is the caller's buffer");
    assert.equal(rec.bytes[0], pattern(0, 512), "the subbuf held the data during the callback");
    assert.equal(buf, pattern(0, 512));
  }
  // pread's flags are refused as pread refuses them.
  fails(h.preadStructured(new Uint8Array(512), 0, () => 0, CMD_FLAG_FUA), errno.EINVAL,
    "nbd_pread_structured: flags: invalid value for flag: 0x1: Invalid argument");
  assert.is(h.aioIsReady(), 1);
});

test("pattern: a read at an odd offset into a view of a larger buffer; offsets are absolute", () => {
  const size = 4 * MiB;
  const h = connected([...NBDKIT, "pattern", `size=${size}`], false);
  const backing = new Uint8Array(300 * KiB).fill(0x77);
  const view = backing.subarray(1000, 1000 + 256 * KiB + 3);
  const rec = readChunks(h, view, 1001, CMD_FLAG_DF);
  assert.is(rec.ret, 0, String(getError()));
  assert.equal(rec.seen, [[1001, view.byteLength, READ_DATA, 0]]);
  assert.is(rec.at[0], 0);
  assert.equal(view, pattern(1001, view.byteLength));
  assert.equal(backing.subarray(0, 1000), new Uint8Array(1000).fill(0x77), "bytes before the view untouched");
  assert.equal(backing.subarray(1000 + view.byteLength), new Uint8Array(backing.byteLength - 1000 - view.byteLength).fill(0x77));
  // The last bytes of the export, into shared memory.
  const shared = new Uint8Array(new SharedArrayBuffer(64), 8, 40);
  const rec2 = readChunks(h, shared, size - 40);
  assert.is(rec2.ret, 0);
  assert.equal(rec2.seen, [[size - 40, 40, READ_DATA, 0]]);
  assert.equal(new Uint8Array(shared), pattern(size - 40, 40));
  h.close();

  const spec: Spec = { argv: [...NBDKIT, "pattern", `size=${size}`], reads: [{ count: view.byteLength, offset: 1001, flags: CMD_FLAG_DF }, { count: 40, offset: size - 40 }] };
  assert.equal(ours(spec), python([spec])[0]);
});

// ---- qemu-nbd: data and holes ----------------------------------------------------------

test("qemu-nbd qcow2: READ_DATA and READ_HOLE chunks tile the buffer at absolute offsets, views of it", () => {
  const h = connected(QEMU, true);
  assert.is(h.getSize(), BigInt(MiB));
  const reads: [number, number][] = [[MiB, 0], [300000, 60000], [4 * KiB, 700 * KiB], [1, 65535], [100 * KiB, 900 * KiB + 7]];
  for (const [count, offset] of reads) {
    const buf = new Uint8Array(count).fill(0xaa); // holes must come back as zeroes
    const rec = readChunks(h, buf, offset);
    assert.is(rec.ret, 0, `${count}@${offset}: ${getError()}`);
    const expect = IMAGE.subarray(offset, offset + count);
    assert.ok(Buffer.from(buf).equals(Buffer.from(expect)), `${count}@${offset}: content`);
    // Chunks in order, contiguous, covering exactly [offset, offset+count).
    let next = offset;
    rec.seen.forEach(([off, len, status, err], i) => {
      assert.is(off, next, `${count}@${offset}: chunk ${i} starts where the last ended`);
      assert.ok(status === READ_DATA || status === READ_HOLE, `status ${status}`);
      assert.is(err, 0);
      assert.is(rec.at[i], off - offset, "the subbuf is the caller's buffer at the chunk's place");
      assert.equal(rec.bytes[i], expect.subarray(off - offset, off - offset + len), "the subbuf's content during the callback");
      if (status === READ_HOLE) assert.equal(rec.bytes[i], new Uint8Array(len), "a hole reads as zeroes");
      next += len;
    });
    assert.is(next, offset + count, `${count}@${offset}: chunks cover the request`);
  }
  // The whole image has both kinds of chunk, at the places qemu-io wrote.
  const whole = readChunks(h, new Uint8Array(MiB), 0);
  const kinds = new Set(whole.seen.map((s) => s[2]));
  assert.ok(kinds.has(READ_DATA) && kinds.has(READ_HOLE), `both kinds: ${JSON.stringify(whole.seen)}`);
  for (const [o, n, b] of WRITES) {
    if (b < 0) continue;
    const covering = whole.seen.find(([off, len]) => off <= o && o + n <= off + len);
    assert.ok(covering && covering[2] === READ_DATA, `data written at ${o} arrives in a READ_DATA chunk`);
  }
  // With DF the server sends the data unfragmented: one chunk.
  const df = readChunks(h, new Uint8Array(MiB), 0, CMD_FLAG_DF);
  assert.is(df.ret, 0);
  assert.is(df.seen.length, 1);
  h.close();

  // libnbd sees the same chunks, with the same errors in the box, and reads the same bytes.
  const spec: Spec = {
    argv: QEMU, sa: true,
    reads: [
      { count: MiB, offset: 0 }, { count: 300000, offset: 60000 }, { count: MiB, offset: 0, flags: CMD_FLAG_DF },
      { count: 4 * KiB, offset: 700 * KiB }, { count: 100 * KiB, offset: 900 * KiB + 7 },
    ],
  };
  const py = python([spec])[0]!;
  assert.equal(ours(spec), py);
  assert.equal((py[0] as { seen: Seen[] }).seen, whole.seen);
});

test("qemu-nbd qcow2: a callback's -1 fails the read with its errno; later chunks still come, seeing that error", () => {
  const spec: Spec = {
    argv: QEMU, sa: true,
    reads: [
      { count: MiB, offset: 0, failAt: 1, setErr: errno.ENOMEM },
      { count: MiB, offset: 0, failAt: 0 },
      { count: 300000, offset: 60000, failAt: 3, setErr: errno.EIO },
      { count: 512, offset: 0 },
    ],
  };
  const res = ours(spec);
  assert.equal(res[0], {
    err: "nbd_pread_structured: read: command failed: Cannot allocate memory", errno: errno.ENOMEM,
    seen: (res[0]!.seen).map((s, i) => [s[0], s[1], s[2], i < 2 ? 0 : errno.ENOMEM] as Seen),
  });
  assert.ok(res[0]!.seen.length > 2, "the chunks after the failure were still delivered");
  assert.is((res[1] as { errno: number }).errno, errno.EPROTO);
  assert.ok(res[1]!.seen.slice(1).every((s) => s[3] === errno.EPROTO), "later chunks see EPROTO");
  assert.is((res[2] as { errno: number }).errno, errno.EIO);
  assert.ok("sha" in res[3]!, "the handle reads on afterwards");
  assert.equal(res, python([spec])[0]);
});

// ---- simple replies: one call for the whole buffer --------------------------------------

test("structured replies off (qemu-nbd, nbdkit) and oldstyle: one READ_DATA call for the whole buffer", () => {
  const cases: [string, string[], boolean, boolean][] = [
    ["qemu-nbd, no structured replies", QEMU, true, false],
    ["nbdkit, no structured replies", [...NBDKIT, "pattern", "size=1M"], false, false],
    ["nbdkit oldstyle", [...NBDKIT, "-o", "pattern", "size=1M"], false, true],
  ];
  for (const [what, argv, sa, sr] of cases) {
    const h = connected(argv, sa, (h) => { if (!sr) assert.is(h.setRequestStructuredReplies(false), 0); });
    assert.is(h.getStructuredRepliesNegotiated(), 0, what);
    assert.is(h.canDf(), 0, what);
    const expect = argv === QEMU ? IMAGE : pattern(0, MiB);
    for (const [count, offset] of [[MiB, 0], [300000, 60000], [1, MiB - 1]] as const) {
      const buf = new Uint8Array(count).fill(0xaa);
      const rec = readChunks(h, buf, offset);
      assert.is(rec.ret, 0, `${what}: ${getError()}`);
      assert.equal(rec.seen, [[offset, count, READ_DATA, 0]], `${what}: ${count}@${offset}`);
      assert.is(rec.at[0], 0, `${what}: the subbuf is the whole buffer`);
      assert.ok(Buffer.from(buf).equals(Buffer.from(expect.subarray(offset, offset + count))), `${what}: content`);
    }
    // T19: the callback's errno fails the call.
    const rec = readChunks(h, new Uint8Array(512), 1024, undefined, 0, errno.ECONNREFUSED);
    fails(rec.ret, errno.ECONNREFUSED, "nbd_pread_structured: read: command failed: Connection refused");
    assert.equal(rec.seen, [[1024, 512, READ_DATA, 0]]);
    assert.is(h.aioIsReady(), 1, what);
    h.close();
  }
  const specs: Spec[] = [
    { argv: QEMU, sa: true, sr: false, reads: [{ count: MiB, offset: 0 }, { count: 300000, offset: 60000 }, { count: 512, offset: 0, failAt: 0 }] },
    { argv: [...NBDKIT, "-o", "pattern", "size=1M"], reads: [{ count: 4096, offset: 7 }, { count: 512, offset: 1024, failAt: 0, setErr: errno.ECONNREFUSED }] },
  ];
  const py = python(specs);
  specs.forEach((spec, i) => assert.equal(ours(spec), py[i]));
});

// ---- the callback's failures -----------------------------------------------------------

test("pattern: a callback returning -1 fails with EPROTO, or with the errno it put in the box (same as libnbd)", () => {
  const h = connected([...NBDKIT, "pattern", "size=1M"], false);
  const buf = new Uint8Array(512);
  let rec = readChunks(h, buf, 512, undefined, 0);
  fails(rec.ret, errno.EPROTO, "nbd_pread_structured: read: command failed: Protocol error");
  assert.equal(rec.seen, [[512, 512, READ_DATA, 0]], "called once, error 0");
  assert.equal(buf, pattern(512, 512), "the data had arrived in the buffer all the same");
  rec = readChunks(h, new Uint8Array(512), 0, CMD_FLAG_DF, 0, errno.ENOSPC);
  fails(rec.ret, errno.ENOSPC, "nbd_pread_structured: read: command failed: No space left on device");
  // Any value other than -1 is success.
  for (const value of [1, 2, -2]) {
    const b = new Uint8Array(64);
    assert.is(h.preadStructured(b, 64, () => value), 0, `callback returning ${value}`);
    assert.equal(b, pattern(64, 64));
  }
  assert.is(h.aioIsReady(), 1);
  h.close();

  const spec: Spec = {
    argv: [...NBDKIT, "pattern", "size=1M"],
    reads: [{ count: 512, offset: 512, failAt: 0 }, { count: 512, offset: 0, flags: CMD_FLAG_DF, failAt: 0, setErr: errno.ENOSPC }, { count: 512, offset: 0 }],
  };
  assert.equal(ours(spec), python([spec])[0]);
});

test("a throwing callback: the call fails with its message, nothing throws, the handle reads on", () => {
  const h = connected(QEMU, true);
  const seen: number[] = [];
  let ret: number | undefined;
  assert.not.throws(() => {
    ret = h.preadStructured(new Uint8Array(MiB), 0, (_sub, off) => {
      seen.push(Number(off));
      if (seen.length === 1) throw new Error("chunk callback exploded");
      return 0;
    });
  });
  fails(ret!, errno.EPROTO, "nbd_pread_structured: chunk callback exploded");
  assert.ok(seen.length > 1, "later chunks were still delivered");
  assert.is(seen[0], 0);
  // Something thrown that is not an Error.
  assert.not.throws(() => { ret = h.preadStructured(new Uint8Array(512), 0, () => { throw "a string"; }); });
  fails(ret!, errno.EPROTO, "nbd_pread_structured: a string");
  assert.is(h.aioIsReady(), 1);
  const buf = new Uint8Array(64 * KiB);
  assert.is(h.preadStructured(buf, 0, () => 0), 0);
  assert.equal(buf, IMAGE.subarray(0, 64 * KiB));
});

test("DF without can_df is EINVAL before anything is sent; without STRICT_COMMANDS the server decides", () => {
  const h = connected([...NBDKIT, "pattern", "size=1M"], false, (h) => assert.is(h.setRequestStructuredReplies(false), 0));
  assert.is(h.canDf(), 0);
  let called = 0;
  const buf = new Uint8Array(512).fill(1);
  fails(h.preadStructured(buf, 0, () => { called++; return 0; }, CMD_FLAG_DF), errno.EINVAL,
    "nbd_pread_structured: server does not support the DF flag: Invalid argument");
  assert.is(called, 0);
  assert.equal(buf, new Uint8Array(512), "pread_initialize zeroed the buffer all the same");
  // Without STRICT_COMMANDS the flag goes out and nbdkit refuses it.
  assert.is(h.setStrictMode(STRICT_MASK & ~STRICT_COMMANDS), 0);
  fails(h.preadStructured(buf, 0, () => { called++; return 0; }, CMD_FLAG_DF), errno.EINVAL,
    "nbd_pread_structured: read: command failed: Invalid argument");
  assert.is(called, 0);
  assert.is(h.aioIsReady(), 1);
  h.close();
  const spec: Spec = { argv: [...NBDKIT, "pattern", "size=1M"], sr: false, reads: [{ count: 512, offset: 0, flags: CMD_FLAG_DF }] };
  const py = python([spec])[0]!;
  assert.equal(py, [{ err: "nbd_pread_structured: server does not support the DF flag: Invalid argument", errno: errno.EINVAL, seen: [] }]);
  assert.equal(ours(spec), py);
});


// ---- READ_ERROR: an error chunk with an offset ----------------------------------------

test("an NBD_REPLY_TYPE_ERROR_OFFSET chunk reaches the callback as READ_ERROR, then fails the read", () => {
  // The server sends the first half as data, then an EIO at the second half's start.
  const h = newHandle();
  const argv = fakeServer({
    onRequest: (req, R) => {
      if (req.type !== 0) return undefined;
      const half = req.count / 2;
      return [
        R.data(req, req.offset, R.read(req.offset, half), { flags: 0 }),
        R.error(req, 5, "injected", { offset: req.offset + BigInt(half), flags: 1 }),
      ];
    },
  });
  assert.is(h.connectCommand(argv), 0, String(getError()));
  const seen: [number, bigint, number, number][] = [];
  const buf = new Uint8Array(1024);
  const ret = h.preadStructured(buf, 4096, (sub, off, status, err) => {
    seen.push([sub.length, off, status, err.value]);
    return 0;
  });
  fails(ret, errno.EIO, "nbd_pread_structured: read: command failed: Input/output error");
  assert.equal(seen, [[512, 4096n, READ_DATA, 0], [0, 4608n, READ_ERROR, errno.EIO]]);
  assert.is(h.aioIsReady(), 1, "an error chunk fails the command, not the connection");
});

// ---- a read whose chunks leave part of it uncovered -----------------------------------

test("a reply that covers half a read: the completion callback sees 0, the command retires with EPROTO (as libnbd decides it)", () => {
  const h = newHandle();
  const argv = fakeServer({
    onRequest: (req, R) => (req.type === 0 ? [R.hole(req, req.offset, req.count / 2, { flags: 1 })] : undefined),
  });
  assert.is(h.connectCommand(argv), 0, String(getError()));
  fails(h.pread(new Uint8Array(1024), 0), errno.EPROTO, "nbd_pread: read: command failed: Protocol error");
  const seenByCompletion: number[] = [];
  const cookie = h.aioPread(new Uint8Array(1024), 0, (err) => { seenByCompletion.push(err.value); return 0; });
  assert.ok(typeof cookie === "bigint" && cookie > 0n, `aioPread: ${getError()}`);
  waitFor(() => { h.poll(100); return h.aioPeekCommandCompleted() === cookie; }, 3000, "the aio read to complete");
  assert.equal(seenByCompletion, [0]);
  fails(h.aioCommandCompleted(cookie as bigint), errno.EPROTO, "nbd_aio_command_completed: read: command failed: Protocol error");
  assert.is(h.aioIsReady(), 1, "a short read fails the command, not the connection");
});

test.run();
