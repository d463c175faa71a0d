/**
 * Faults that real servers produce (faults.test.ts has the hostile fake
 * server, a SIGKILL during a 32 MiB pread and nbdkit's error filter at
 * random rates): errors at chosen offsets from nbdkit's error filter and
 * from qemu-nbd's blkdebug driver, a server killed with 100 aio commands in
 * flight, read-only exports that the server itself refuses to write, and
 * FUA and flush proven to reach the file by a write-back cache in between.
 * Where libnbd 1.14 can run the same sequence, python3-libnbd must agree.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomFillSync } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { CMD_FLAG_FUA, getErrno, getError, type Handle } from "nbd-ts";
import { errno } from "../src/errno.js";
import { alive, nbdkitUnix, scratchFile, scratchPath, timed, waitFor } from "./helpers.js";
import { NBDKIT, newHandle } from "./handles.js";
import { python } from "./libnbd.js";

const KiB = 1024;
const SIGKILL = 9;

// ---- one sequence, run on nbd-ts and on python3-libnbd ---------------------------------

/**
 * A step: a call with python's name and arguments (pread: count, offset; pwrite:
 * byte, count, offset, flags), or ["touch" | "rm", file] to arm or disarm an
 * nbdkit error trigger, or ["file", path, offset, count] to read the disk image
 * itself. Every step answers with a string, the same on both sides.
 */
type Step = [string, ...(string | number)[]];

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

function tsStep(h: Handle, [op, ...a]: Step): string {
  const n = a as number[];
  const result = (ret: number, data = "") => (ret === 0 ? `ok${data && " " + data}` : `errno ${getErrno()}`);
  switch (op) {
    case "touch": writeFileSync(a[0] as string, ""); return "";
    case "rm": rmSync(a[0] as string, { force: true }); return "";
    case "file": return hex(readFileSync(a[0] as string).subarray(n[1]!, n[1]! + n[2]!));
    case "pread": { const buf = new Uint8Array(n[0]!); const r = h.pread(buf, n[1]!); return result(r, r === 0 ? hex(buf.subarray(0, 8)) : ""); }
    case "pwrite": return result(h.pwrite(new Uint8Array(n[1]!).fill(n[0]!), n[2]!, n[3] ?? 0));
    case "trim": return result(h.trim(n[0]!, n[1]!, n[2] ?? 0));
    case "zero": return result(h.zero(n[0]!, n[1]!, n[2] ?? 0));
    case "flush": return result(h.flush());
    case "state": return h.aioIsReady() ? "READY" : h.aioIsClosed() ? "CLOSED" : h.aioIsDead() ? "DEAD" : "?";
    default: throw new Error(`unknown step ${op}`);
  }
}

const PY = String.raw`
import json, os, sys, nbd
def step(h, s):
    op, a = s[0], s[1:]
    def call(f):
        try:
            r = f()
            return "ok" + (" " + bytes(r[:8]).hex() if isinstance(r, (bytes, bytearray)) else "")
        except nbd.Error as e:
            return "errno %d" % e.errnum
    if op == "touch": open(a[0], "w").close(); return ""
    if op == "rm":
        if os.path.exists(a[0]): os.remove(a[0])
        return ""
    if op == "file":
        with open(a[0], "rb") as f: return f.read()[a[1]:a[1] + a[2]].hex()
    if op == "pread": return call(lambda: h.pread(a[0], a[1]))
    if op == "pwrite": return call(lambda: h.pwrite(bytes([a[0]]) * a[1], a[2], a[3] if len(a) > 3 else 0))
    if op == "trim": return call(lambda: h.trim(a[0], a[1], a[2] if len(a) > 2 else 0))
    if op == "zero": return call(lambda: h.zero(a[0], a[1], a[2] if len(a) > 2 else 0))
    if op == "flush": return call(lambda: h.flush())
    if op == "state": return "READY" if h.aio_is_ready() else "CLOSED" if h.aio_is_closed() else "DEAD" if h.aio_is_dead() else "?"
spec = json.load(sys.stdin)
h = nbd.NBD()
if spec["strict"] is not None: h.set_strict_mode(spec["strict"])
(h.connect_systemd_socket_activation if spec["sa"] else h.connect_command)(spec["argv"])
json.dump([step(h, s) for s in spec["steps"]], sys.stdout)
`;

interface Sequence { argv: string[]; sa?: boolean; strict?: number; steps: Step[]; before?: () => void }

/** Runs the steps on nbd-ts, then (after `before` again) on python3-libnbd; both answers. */
function both(seq: Sequence): { ts: string[]; py: string[] } {
  seq.before?.();
  const h = newHandle();
  if (seq.strict !== undefined) assert.is(h.setStrictMode(seq.strict), 0);
  assert.is(seq.sa ? h.connectSystemdSocketActivation(seq.argv) : h.connectCommand(seq.argv), 0, String(getError()));
  const ts = seq.steps.map((s) => tsStep(h, s));
  h.close();
  seq.before?.();
  const py = python<string[]>(PY, { argv: seq.argv, sa: !!seq.sa, strict: seq.strict ?? null, steps: seq.steps });
  return { ts, py };
}

// ---- errors at chosen offsets -------------------------------------------------------------

test("nbdkit's error filter armed for chosen commands: EIO, ENOSPC, EPERM exactly there, the handle stays READY, data intact (as libnbd)", () => {
  const armed = (what: string) => scratchPath(`error-${what}`);
  const argv = [...NBDKIT, "--filter=error", "memory", "size=1M",
    ...["pread:EIO", "pwrite:ENOSPC", "trim:EPERM", "zero:EPERM"].flatMap((spec) => {
      const [what, err] = spec.split(":");
      return [`error-${what}=${err}`, `error-${what}-rate=100%`, `error-${what}-file=${armed(what!)}`];
    })];
  const steps: Step[] = [
    ["pwrite", 0x11, 8 * KiB, 0],
    ["touch", armed("pwrite")], ["pwrite", 0x22, 4 * KiB, 4 * KiB], ["pwrite", 0x22, 512, 0], ["rm", armed("pwrite")],
    ["pread", 8 * KiB, 0],
    ["touch", armed("pread")], ["pread", 512, 64 * KiB], ["pread", 512, 4 * KiB], ["rm", armed("pread")],
    ["pread", 512, 4 * KiB],
    ["touch", armed("trim")], ["trim", 4 * KiB, 0], ["rm", armed("trim")], ["pread", 512, 0],
    ["touch", armed("zero")], ["zero", 4 * KiB, 0], ["rm", armed("zero")], ["pread", 512, 0],
    ["pwrite", 0x33, 512, 0], ["pread", 512, 0], ["state"],
  ];
  const { ts, py } = both({ argv, steps, before: () => ["pread", "pwrite", "trim", "zero"].forEach((w) => rmSync(armed(w), { force: true })) });
  const ok11 = "ok 1111111111111111";
  const at = (i: number) => ts[i];
  assert.is(at(0), "ok");
  assert.equal([at(2), at(3)], [`errno ${errno.ENOSPC}`, `errno ${errno.ENOSPC}`], "armed writes fail with ENOSPC");
  assert.is(at(5), ok11, "and changed nothing");
  assert.equal([at(7), at(8)], [`errno ${errno.EIO}`, `errno ${errno.EIO}`], "armed reads fail with EIO");
  assert.is(at(10), ok11, "disarmed, the same read works");
  assert.is(at(12), `errno ${errno.EPERM}`, "armed trim: EPERM");
  assert.is(at(14), ok11, "the failed trim changed nothing");
  assert.is(at(16), `errno ${errno.EPERM}`, "armed zero: EPERM");
  assert.is(at(18), ok11, "the failed zero changed nothing");
  assert.equal(ts.slice(19), ["ok", "ok 3333333333333333", "READY"]);
  assert.equal(ts, py, "libnbd 1.14 answers the same");
});

test("nbdkit's error filter: aio commands armed to fail complete with EIO through their callbacks; the handle stays READY", () => {
  const trigger = scratchPath("aio-pread");
  rmSync(trigger, { force: true });
  const server = nbdkitUnix("--filter=error", "memory", "size=1M", "error-pread=EIO", "error-pread-rate=100%", `error-pread-file=${trigger}`);
  const h = newHandle();
  assert.is(h.connectUnix(server.socket), 0, String(getError()));
  writeFileSync(trigger, "");
  const seen: number[] = [];
  for (let i = 0; i < 16; i++) {
    assert.ok(h.aioPread(new Uint8Array(512), i * 4096, (err) => { seen.push(err.value); return 1; }) > 0n);
  }
  waitFor(() => { h.poll(100); return h.aioInFlight() === 0; }, 5000, "the armed reads to complete");
  assert.equal(seen, new Array(16).fill(errno.EIO), "every completion saw EIO");
  rmSync(trigger);
  const buf = new Uint8Array(512).fill(1);
  assert.is(h.pread(buf, 0), 0, String(getError()));
  assert.equal(buf, new Uint8Array(512));
  assert.is(h.aioIsReady(), 1);
});

/** A qemu blkdebug rule: an errno for I/O of one type touching one 512-byte sector (active after the first write). */
const rule = (iotype: string, errnum: number, sector: number) =>
  `[inject-error]\nevent = "write_aio"\niotype = "${iotype}"\nerrno = "${errnum}"\nsector = "${sector}"\n`;

test("qemu-nbd over blkdebug, errors at chosen sectors: writes ENOSPC and EPERM, trim EPERM, the file unchanged there; a read error makes qemu-nbd hang up (as libnbd)", () => {
  const original = new Uint8Array(1024 * KiB);
  randomFillSync(original); // not sparse: qemu-nbd answers a hole without reading it
  const disk = scratchFile("blkdebug.raw", original.length, original);
  const config = scratchPath("blkdebug.conf");
  writeFileSync(config, [rule("write", errno.ENOSPC, 256), rule("write", errno.EPERM, 384), rule("discard", errno.EPERM, 512),
    rule("read", errno.EIO, 128)].join("\n"));
  const argv = ["qemu-nbd", "-f", "raw", "--discard=unmap", `blkdebug:${config}:${disk}`];
  const steps: Step[] = [
    ["pwrite", 0x44, 512, 0], // the first write arms the rules
    ["pwrite", 0x55, 1024, 127 * KiB], // sectors 254-255: no rule
    ["pwrite", 0x66, 512, 128 * KiB], ["pwrite", 0x66, 2048, 127 * KiB], ["pwrite", 0x66, 512, 192 * KiB],
    ["trim", 512, 256 * KiB], ["pread", 512, 0], ["state"],
    ["file", disk, 127 * KiB, 2 * KiB], ["file", disk, 192 * KiB, 8], ["file", disk, 256 * KiB, 8],
    ["pread", 512, 64 * KiB], ["state"],
  ];
  const { ts, py } = both({ argv, sa: true, steps, before: () => writeFileSync(disk, original) });
  const fileHex = (offset: number, n: number) => hex(original.subarray(offset, offset + n));
  assert.equal(ts.slice(0, 8), [
    "ok", "ok", `errno ${errno.ENOSPC}`, `errno ${errno.ENOSPC}`, `errno ${errno.EPERM}`, `errno ${errno.EPERM}`,
    "ok 4444444444444444", "READY",
  ]);
  assert.equal(ts.slice(8, 11), ["55".repeat(1024) + fileHex(128 * KiB, 1024), fileHex(192 * KiB, 8), fileHex(256 * KiB, 8)],
    "the refused writes and trim left the file as it was; the write before them is there");
  assert.equal(ts.slice(11), [`errno ${errno.ENOTCONN}`, "CLOSED"], "qemu-nbd disconnects after a read error in a structured reply");
  assert.equal(ts, py, "libnbd 1.14 answers the same");
});

// ---- a server killed with 100 aio commands in flight ---------------------------------------

test("nbdkit SIGKILLed with 100 aio commands in flight: every one completes once with ENOTCONN, poll returns, nothing hangs", () => {
  const server = nbdkitUnix("--filter=delay", "memory", "size=4M", "delay-read=10", "delay-write=10", "delay-trim=10", "delay-zero=10");
  const h = newHandle();
  assert.is(h.connectUnix(server.socket), 0, String(getError()));
  const calls: number[][] = Array.from({ length: 100 }, () => []);
  const cookies: bigint[] = [];
  const reads: Uint8Array[] = [];
  for (let i = 0; i < 100; i++) {
    // Even commands retire in their callback, odd ones wait for aio_command_completed.
    const done = (err: { value: number }) => { calls[i]!.push(err.value); return i % 2 ? 0 : 1; };
    const offset = i * 4096;
    let cookie: bigint;
    switch (i % 4) {
      case 0: { const buf = new Uint8Array(4096).fill(0xaa); reads.push(buf); cookie = h.aioPread(buf, offset, done); break; }
      case 1: cookie = h.aioPwrite(new Uint8Array(4096).fill(7), offset, done); break;
      case 2: cookie = h.aioTrim(4096, offset, done); break;
      default: cookie = h.aioZero(4096, offset, done); break;
    }
    assert.ok(cookie > 0n, `command ${i}: ${getError()}`);
    cookies.push(cookie);
  }
  assert.is(h.aioInFlight(), 100);
  process.kill(server.pid, SIGKILL);
  const { ms } = timed(() => {
    for (let polls = 0; h.aioInFlight() > 0; polls++) {
      assert.ok(polls < 20, "poll keeps returning until everything completed");
      // A request the server never read makes the kernel reset the connection: poll reports that
      // (-1, ECONNRESET, the handle DEAD), as libnbd's does.
      const r = h.poll(1000);
      assert.ok(r === 0 || r === 1 || (r === -1 && getErrno() === errno.ECONNRESET), `poll: ${r} ${getError()}`);
    }
  });
  assert.ok(ms < 2000, `everything completed ${ms} ms after the kill`);
  assert.equal(calls, calls.map(() => [errno.ENOTCONN]), "each callback ran once, with ENOTCONN");
  cookies.forEach((cookie, i) => {
    if (i % 2 === 0) return;
    assert.is(h.aioCommandCompleted(cookie), -1, `command ${i} is reported failed`);
    assert.is(getErrno(), errno.ENOTCONN);
  });
  assert.ok(reads.every((b) => b.every((x) => x === 0)), "failed reads leave zeroes");
  assert.ok(h.aioIsDead() === 1 || h.aioIsClosed() === 1, String(h.connectionState()));
  assert.is(h.pread(new Uint8Array(1), 0), -1);
  assert.is(h.poll(0), -1, "nothing left to poll for");
  waitFor(() => !alive(server.pid), 5000, "nbdkit to be gone");
  // A new handle, a new server: at once.
  const fresh = newHandle();
  const { value, ms: connectMs } = timed(() => fresh.connectCommand([...NBDKIT, "memory", "size=1M"]));
  assert.is(value, 0, String(getError()));
  assert.ok(connectMs < 2000, `${connectMs} ms`);
  assert.is(fresh.pread(new Uint8Array(512), 0), 0);
});

// ---- read-only exports, the server deciding --------------------------------------------------

test("read-only exports with strict mode 0, so that the server decides: nbdkit -r says EPERM, qemu-nbd -r EINVAL, the file unchanged (as libnbd)", () => {
  const original = new Uint8Array(64 * KiB);
  randomFillSync(original);
  const file = scratchFile("ro-server.img", original.length, original);
  const steps: Step[] = [
    ["pwrite", 1, 512, 0], ["pwrite", 1, 512, 0, CMD_FLAG_FUA], ["trim", 512, 0], ["zero", 512, 4096], ["flush"],
    ["pread", 512, 0], ["state"],
  ];
  for (const [argv, sa, err] of [
    [[...NBDKIT, "-r", "file", file], false, errno.EPERM],
    [["qemu-nbd", "-r", "-f", "raw", file], true, errno.EINVAL],
  ] as const) {
    const { ts, py } = both({ argv: [...argv], sa, strict: 0, steps });
    assert.equal(ts, [...new Array(4).fill(`errno ${err}`), "ok", `ok ${hex(original.subarray(0, 8))}`, "READY"], argv[0]);
    assert.equal(ts, py, `${argv[0]}: libnbd 1.14 answers the same`);
    assert.equal(new Uint8Array(readFileSync(file)), original, `${argv[0]}: the file is unchanged`);
  }
});

// ---- FUA and flush reach the file ---------------------------------------------------------------

test("FUA and flush reach the file: through nbdkit's write-back cache, only they put the data on disk (as libnbd)", () => {
  const file = scratchFile("writeback.img", 64 * KiB);
  const argv = [...NBDKIT, "--filter=cache", "file", file, "cache=writeback"];
  const word = (offset: number): Step => ["file", file, offset, 4];
  const steps: Step[] = [
    ["pwrite", 0x11, 512, 0], word(0), // cached only
    ["pwrite", 0x22, 512, 4096, CMD_FLAG_FUA], word(4096), // on disk
    ["pwrite", 0x33, 512, 8192], word(8192), ["flush"], word(8192), // on disk after the flush
    ["pwrite", 0x44, 512, 12288], ["zero", 512, 4096, CMD_FLAG_FUA], word(4096), ["pread", 512, 4096],
  ];
  const { ts, py } = both({ argv, steps, before: () => writeFileSync(file, new Uint8Array(64 * KiB)) });
  assert.equal(ts, [
    "ok", "00000000",
    "ok", "22222222",
    "ok", "00000000", "ok", "33333333",
    "ok", "ok", "00000000", "ok 0000000000000000",
  ]);
  assert.equal(ts, py, "libnbd 1.14 answers the same");
  const disk = readFileSync(file);
  assert.is(disk.readUInt32BE(0), 0x11111111, "what the FUA write and the flush flushed is on disk");
  assert.is(disk.readUInt32BE(12288), 0x44444444, "the FUA zero flushed the write before it too");
});

test.run();
