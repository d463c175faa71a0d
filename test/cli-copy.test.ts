/**
 * nbd-ts copy against real servers: NBD with holes to a new file, over an
 * old file, to another server (by URI and as a subprocess), files to NBD,
 * qcow2 through qemu-nbd, stdout and null:; every result compared byte for
 * byte with the source. Sparseness, requests in flight (seen in nbdkit's
 * log), progress output, failures and usage.
 */
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { create, getError } from "nbd-ts";
import { MAIN, libnbd, tool, unixUri } from "./cli.js";
import { alive, nbdkitUnix, pattern, run, scratchPath, waitFor } from "./helpers.js";

const MiB = 1024 * 1024;
/** nbdkit data: three runs of data in 4 MiB, the rest unallocated (holes that read as zeroes). */
const DATA = ["nbdkit", "data", "(0x55)*65536 @2097152 (0xaa)*131072 @3670016 1 2 3", "size=4M"];
function expected(): Uint8Array {
  const b = new Uint8Array(4 * MiB);
  b.fill(0x55, 0, 65536);
  b.fill(0xaa, 2 * MiB, 2 * MiB + 131072);
  b.set([1, 2, 3], 3670016);
  return b;
}
const src = (argv: string[]) => ["[", ...argv, "]"];
const allocated = (path: string) => statSync(path).blocks * 512;

/** All of an export's bytes, read with nbd-ts's blocking API. */
function readAll(uri: string): Uint8Array {
  const h = create()!;
  assert.is(h.connectUri(uri), 0, getError() ?? "");
  const out = new Uint8Array(Number(h.getSize()));
  for (let o = 0; o < out.length; o += MiB) assert.is(h.pread(out.subarray(o, Math.min(o + MiB, out.length)), o), 0, getError() ?? "");
  h.close();
  return out;
}

const same = (a: Uint8Array, b: Uint8Array, what: string) => {
  assert.is(a.length, b.length, `${what}: length`);
  assert.ok(Buffer.compare(a, b) === 0, `${what}: bytes differ`);
};

test("NBD with holes to a new file: the source's bytes; holes stay holes", () => {
  const out = scratchPath("holes.img");
  const r = tool(["copy", "--", ...src(DATA), out]);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, "");
  same(readFileSync(out), expected(), "file");
  assert.ok(allocated(out) <= 512 * 1024, `allocated ${allocated(out)} bytes of a 4 MiB file with 192 KiB of data`);
});

test("sparse-random to a file: the bytes nbdcopy copies, and no more allocated than nbdcopy's copy", () => {
  const server = ["nbdkit", "sparse-random", "32M", "seed=7", "percent=20", "runlength=65536"];
  const ours = scratchPath("sr-ours.img");
  const theirs = scratchPath("sr-nbdcopy.img");
  const r = tool(["copy", "--", ...src(server), ours]);
  assert.is(r.status, 0, r.stderr);
  assert.is(libnbd("nbdcopy", ["--", ...src(server), theirs]).status, 0);
  same(readFileSync(ours), readFileSync(theirs), "sparse-random");
  assert.ok(allocated(ours) <= allocated(theirs), `ours ${allocated(ours)}, nbdcopy's ${allocated(theirs)}`);
  assert.ok(allocated(ours) < 16 * MiB);
});

test("over an existing, larger file: cut to the source's size; its old bytes are gone, holes included", () => {
  const out = scratchPath("old.img");
  writeFileSync(out, new Uint8Array(8 * MiB).fill(0xff));
  const r = tool(["copy", "--", ...src(DATA), out]);
  assert.is(r.status, 0, r.stderr);
  same(readFileSync(out), expected(), "overwritten file");
});

test("to another server by URI: byte for byte; zero runs sent as zero requests, not data", () => {
  const dst = nbdkitUnix("memory", "4M");
  const uri = unixUri(dst.socket);
  // Fill it first, so that what must become zeroes is not zeroes already.
  assert.is(tool(["copy", "--", ...src(["nbdkit", "pattern", "4M"]), uri]).status, 0);
  same(readAll(uri), pattern(0, 4 * MiB), "pattern first");
  const r = tool(["copy", "--", ...src(DATA), uri]);
  assert.is(r.status, 0, r.stderr);
  same(readAll(uri), expected(), "destination");
  // nbdkit memory turns a zero request into a hole; written zeroes would be data.
  const map = libnbd("nbdinfo", ["--map", uri]).stdout;
  assert.match(map, /^\s+65536\s+2031616\s+3\s+hole,zero$/m);
  dst.stop();
});

test("a file to NBD, and NBD to a server run as a subprocess (qemu-nbd on a raw file)", () => {
  const input = scratchPath("input.bin");
  const bytes = new Uint8Array(3 * MiB + 4096);
  for (let i = 0; i < bytes.length; i += 4096) bytes[i] = (i / 4096) & 0xff || 1;
  writeFileSync(input, bytes);
  const dst = nbdkitUnix("memory", String(bytes.length));
  const r = tool(["copy", input, unixUri(dst.socket)]);
  assert.is(r.status, 0, r.stderr);
  same(readAll(unixUri(dst.socket)), bytes, "file to NBD");
  dst.stop();

  const raw = scratchPath("target.raw");
  writeFileSync(raw, new Uint8Array(4 * MiB));
  const q = tool(["copy", "--", ...src(DATA), ...src(["qemu-nbd", "-f", "raw", raw])]);
  assert.is(q.status, 0, q.stderr);
  same(readFileSync(raw), expected(), "qemu-nbd's file");
});

test("qcow2 through qemu-nbd to a file: the bytes qemu-img convert gives", () => {
  const disk = scratchPath("disk.qcow2");
  run("qemu-img", ["create", "-q", "-f", "qcow2", disk, "8M"]);
  run("qemu-io", ["-f", "qcow2", "-c", "write -q -P 0x61 4096 1M", "-c", "write -q -P 0x62 5M 64K", disk]);
  const ours = scratchPath("disk-ours.raw");
  const theirs = scratchPath("disk-qemu.raw");
  const r = tool(["copy", "--", ...src(["qemu-nbd", "-r", "-f", "qcow2", disk]), ours]);
  assert.is(r.status, 0, r.stderr);
  run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", disk, theirs]);
  same(readFileSync(ours), readFileSync(theirs), "qcow2");
  assert.ok(allocated(ours) < 2 * MiB);
});

test("stdout (-) gets the bytes in order; null: takes everything", () => {
  const r = spawnSync(process.execPath, [MAIN, "copy", "--", ...src(DATA), "-"], { timeout: 30_000, maxBuffer: 64 * MiB });
  assert.is(r.status, 0, String(r.stderr));
  same(new Uint8Array(r.stdout), expected(), "stdout");
  const n = tool(["copy", "--", ...src(["nbdkit", "pattern", "64M"]), "null:"]);
  assert.is(n.status, 0, n.stderr);
  assert.is(n.stdout + n.stderr, "");
});

test("requests in flight: several at once (nbdkit's log), one at a time with --synchronous", () => {
  const maxOutstanding = (args: string[]) => {
    const log = scratchPath(`log-${args.length}.txt`);
    const r = tool(["copy", ...args, "--", ...src(["nbdkit", "--filter=log", "--filter=delay", "pattern", "2M", `logfile=${log}`, "delay-read=50ms"]), "null:"]);
    assert.is(r.status, 0, r.stderr);
    let now = 0;
    let max = 0;
    for (const line of readFileSync(log, "utf8").split("\n")) {
      if (/ Read id=\d+ .*\.\.\.$/.test(line)) max = Math.max(max, ++now);
      if (/ \.\.\.Read id=/.test(line)) now--;
    }
    return max;
  };
  assert.is(maxOutstanding([]), 8); // 2 MiB in 256 KiB requests: all of them
  assert.is(maxOutstanding(["--requests=3"]), 3);
  assert.is(maxOutstanding(["--synchronous"]), 1);
});

test("--allocated writes every byte; --no-extents and -S 0 still copy exactly", () => {
  const out = scratchPath("allocated.img");
  const r = tool(["copy", "--allocated", "--", ...src(DATA), out]);
  assert.is(r.status, 0, r.stderr);
  same(readFileSync(out), expected(), "--allocated");
  assert.ok(allocated(out) >= 4 * MiB, `only ${allocated(out)} bytes allocated`);
  const plain = scratchPath("no-extents.img");
  const p = tool(["copy", "--no-extents", "-S", "0", "--", ...src(DATA), plain]);
  assert.is(p.status, 0, p.stderr);
  same(readFileSync(plain), expected(), "--no-extents -S 0");
});

test("--progress: N% lines when not on a terminal, N/100 on --progress=FD, a bar on a terminal", () => {
  const r = tool(["copy", "-p", "--", ...src(["nbdkit", "pattern", "8M"]), "null:"]);
  assert.is(r.status, 0, r.stderr);
  const lines = r.stderr.trimEnd().split("\n");
  assert.ok(lines.length >= 3, r.stderr);
  for (const l of lines) assert.match(l, /^copy: \d+%$/);
  const numbers = lines.map((l) => Number(l.slice(6, -1)));
  assert.is(numbers[0], 0);
  assert.is(numbers.at(-1), 100);
  assert.equal(numbers, [...numbers].sort((a, b) => a - b));

  const fd = spawnSync(process.execPath, [MAIN, "copy", "--progress=3", "--", ...src(["nbdkit", "pattern", "8M"]), "null:"],
    { encoding: "utf8", stdio: ["ignore", "pipe", "pipe", "pipe"], timeout: 30_000 });
  assert.is(fd.status, 0, fd.stderr);
  const fdLines = String(fd.output[3]).trimEnd().split("\n");
  assert.is(fdLines[0], "0/100");
  assert.is(fdLines.at(-1), "100/100");
  assert.is(fd.stderr, "");

  const tty = spawnSync("script", ["-qec", `${process.execPath} ${MAIN} copy -p -- [ nbdkit pattern 8M ] null:`, "/dev/null"], { encoding: "utf8", timeout: 30_000 });
  assert.is(tty.status, 0, tty.stdout);
  assert.match(tty.stdout, /^. {3}0% \[-{40}\]\r/);
  assert.match(tty.stdout, /\r. {2}\d\d% \[\**-+\]\r/);
  assert.match(tty.stdout, /█ 100% \[\*{40}\]\r?\n/);
});

test("failures: status 1 and the reason on stderr; servers stopped", () => {
  const cases: [string[], RegExp][] = [
    [["nbd://127.0.0.1:1", "null:"], /^nbd-ts copy: nbd:\/\/127\.0\.0\.1:1: nbd_connect_uri: connect: 127\.0\.0\.1:1: could not connect to remote host: Connection refused\n$/],
    [["--", ...src(["nbdkit", "pattern", "2M"]), ...src(["nbdkit", "memory", "1M"])], /^nbd-ts copy: error: destination size is smaller than source size\n$/],
    [["--", ...src(["nbdkit", "pattern", "1M"]), ...src(["nbdkit", "-r", "memory", "1M"])], /^nbd-ts copy: nbdkit: the destination is read-only, cannot write to it\n$/],
    [["--", ...src(["nbdkit", "--filter=error", "pattern", "1M", "error-pread-rate=1"]), "null:"], /^nbd-ts copy: nbdkit: nbd_pread: read: command failed: Input\/output error\n$/m],
    [[scratchPath("missing.img"), "null:"], /^nbd-ts copy: \S+missing\.img: No such file or directory\n$/],
    [["--", ...src(["nbdkit", "pattern", "1M"]), scratchPath("no/such/dir.img")], /: No such file or directory\n$/],
  ];
  for (const [args, message] of cases) {
    const r = tool(["copy", ...args]);
    assert.is(r.status, 1, `copy ${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
  // A file copied onto itself would be truncated first: refused.
  const self = scratchPath("self.img");
  writeFileSync(self, new Uint8Array(4096).fill(7));
  const r = tool(["copy", self, self]);
  assert.is(r.status, 1);
  assert.match(r.stderr, /the source and the destination are the same file/);
  assert.is(readFileSync(self)[0], 7);
});

test("killed mid-copy (SIGTERM): exits 143 and stops the server it started", async () => {
  const marker = `delay-read=${1000 + (process.pid % 1000)}ms`; // finds our nbdkit among others
  const child = spawn(process.execPath, [MAIN, "copy", "-p", "--", ...src(["nbdkit", "--filter=delay", "pattern", "8M", marker]), "null:"], { stdio: ["ignore", "ignore", "pipe"] });
  const ours = () => readdirSync("/proc").filter((p) => /^\d+$/.test(p) && alive(Number(p))).filter((p) => {
    try { return readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").includes(marker) && readFileSync(`/proc/${p}/comm`, "utf8").trim() === "nbdkit"; } catch { return false; }
  });
  // Killed once copying (progress at 0%), not while connecting: see the report on exits during a connect call.
  let stderr = "";
  await new Promise<void>((resolve) => child.stderr.on("data", (d: Buffer) => { stderr += d; if (stderr.includes("copy: 0%")) resolve(); }));
  assert.is(ours().length, 1);
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  assert.equal(await exited, [143, null]);
  waitFor(() => ours().length === 0, 5_000, "its nbdkit to stop");
});

test("usage: --help (0); mistakes (2)", () => {
  const help = tool(["copy", "--help"]);
  assert.is(help.status, 0);
  assert.match(help.stdout, /SOURCE DESTINATION/);
  for (const args of [[], ["only-one"], ["a", "b", "c"], ["--request-size=1000", "a", "b"], ["--sparse=100", "a", "b"], ["-R", "0", "a", "b"], ["--bogus", "a", "b"]]) {
    const r = tool(["copy", ...args]);
    assert.is(r.status, 2, `copy ${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /^nbd-ts copy: .+\n\nCopy to and from an NBD server:/);
  }
});

test.run();
