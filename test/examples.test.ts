/**
 * The ports of libnbd's examples (examples/*.ts), each run as its own
 * process against real servers, as a user would run it after the build. What
 * they print is checked against what nbdinfo or python3-libnbd (libnbd 1.14)
 * say about the same server; strict-structured-reads also meets the fake
 * server, to show it tells compliant replies from non-compliant ones.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { TFlag } from "../src/protocol/constants.js";
import { DEFAULT_EFLAGS, fakeServer, type Script } from "./fake-server.js";
import { nbdkitTcp, nbdkitUnix, qemuNbdUnix, run, scratchFile, scratchPath, serveUnix } from "./helpers.js";
import { python } from "./libnbd.js";

const EXAMPLES = new URL("../examples/", import.meta.url);
const path = (name: string): string => fileURLToPath(new URL(`${name}.js`, EXAMPLES));

/** Runs examples/NAME.js with `args` (and `input` on its stdin). */
function example(name: string, args: string[], input = "") {
  const r = spawnSync(process.execPath, [path(name), ...args], { input, encoding: "utf8", timeout: 60_000 });
  assert.is(r.error, undefined, `${name}: ${r.error}`);
  return r;
}

/** The example ran and succeeded, with nothing on stderr; its stdout. */
function succeeds(name: string, args: string[], input = ""): string {
  const r = example(name, args, input);
  assert.is(r.status, 0, `${name} ${args.join(" ")}: ${r.stderr}`);
  assert.is(r.stderr, "");
  return r.stdout;
}

/** The example failed as C's exit(EXIT_FAILURE) does; its stderr. */
function failsWith(name: string, args: string[], input = ""): string {
  const r = example(name, args, input);
  assert.is(r.status, 1, `${name} ${args.join(" ")} exited ${r.status}: ${r.stdout}${r.stderr}`);
  return r.stderr;
}

const uri = (socket: string): string => `nbd+unix:///?socket=${socket}`;

/** python3-libnbd connected to `socket` runs `body` (with h), which prints one JSON value. */
function libnbd<T>(socket: string, body: string, before = ""): T {
  return python<T>(`
import json, nbd
h = nbd.NBD()
${before}
h.connect_unix(${JSON.stringify(socket)})
${body}
`);
}

/** `nbdkit --filter=stats` writes its file when it exits. */
function stats(file: string): string {
  return readFileSync(file, "utf8");
}

// ---- fetch-first-sector ---------------------------------------------------------------

test("fetch-first-sector: nbdkit floppy's MBR through hexdump -C, the bytes libnbd reads", () => {
  const dir = scratchPath("floppy");
  mkdirSync(dir);
  writeFileSync(`${dir}/hello.txt`, "hello from nbd-ts\n");
  const srv = nbdkitUnix("-r", "floppy", dir);
  const out = succeeds("fetch-first-sector", [srv.socket]);
  const sector = Buffer.from(libnbd<string>(srv.socket, "print(json.dumps(h.pread(512, 0).hex()))"), "hex");
  assert.is(out, spawnSync("hexdump", ["-C"], { input: sector, encoding: "utf8" }).stdout);
  assert.match(out, /^000001f0  .* 55 aa  \|.*U\.\|$/m, "the MBR's boot signature");
  assert.match(out, /^00000200$/m);
  srv.stop();
});

test("fetch-first-sector: nbdkit pattern's first words; usage and connect errors as C prints them", () => {
  const srv = nbdkitUnix("pattern", "size=1M");
  const out = succeeds("fetch-first-sector", [srv.socket]);
  assert.ok(out.startsWith("00000000  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 08  |................|\n"), out);
  assert.match(out, /^000001f0  00 00 00 00 00 00 01 f0  00 00 00 00 00 00 01 f8  \|\.{16}\|$/m);
  srv.stop();
  assert.is(failsWith("fetch-first-sector", []), `${path("fetch-first-sector")} socket\n`);
  assert.match(failsWith("fetch-first-sector", [scratchPath("nobody.sock")]), /^nbd_connect_unix: connect: .*No such file or directory\n$/);
});

// ---- get-size ----------------------------------------------------------------------------

test("get-size: nbdkit memory, nbdkit null of an odd size and qemu-nbd on a raw file: the size nbdinfo gives", () => {
  const raw = scratchFile("get-size.raw", 100_000);
  const servers = [
    nbdkitUnix("memory", "1M"),
    nbdkitUnix("null", "size=123457"),
    qemuNbdUnix("-f", "raw", "-x", "", raw),
  ];
  for (const srv of servers) {
    const size = run("nbdinfo", ["--size", uri(srv.socket)]).trim();
    assert.ok(/^\d+$/.test(size) && Number(size) > 0, size);
    assert.is(succeeds("get-size", [srv.socket]), `${srv.socket}: size = ${size} bytes\n`);
    srv.stop();
  }
  assert.is(failsWith("get-size", ["a", "b"]), `${path("get-size")} socket\n`);
});

// ---- list-exports --------------------------------------------------------------------------

interface NbdinfoList { exports: { "export-name": string; description?: string; "export-size": number }[] }

/** Three exports whose content is their own name; two with descriptions (nbdkit's eval plugin). */
const EVAL_EXPORTS = [
  "eval",
  `list_exports=printf 'INTERLEAVED\\nfoo\\nthe foo disk\\nfoobar\\n\\nbaz qux\\nlast one\\n'`,
  `open=echo "$3"`,
  `get_size=echo "$2" | wc -c`,
  `pread=echo "$2" | dd bs=1 skip=$4 count=$3 status=none`,
];

/** What list-exports prints before the prompt, from nbdinfo's list of the same server. */
function listing(list: NbdinfoList): string {
  return list.exports.map((e, i) => `[${i}] ${e["export-name"]}\n` + (e.description ? `  (${e.description})\n` : "")).join("");
}

test("list-exports: nbdkit eval's three exports, as nbdinfo --list sees them; each choice connects to that export", () => {
  const srv = nbdkitUnix(...EVAL_EXPORTS);
  const list = JSON.parse(run("nbdinfo", ["--list", "--json", uri(srv.socket)])) as NbdinfoList;
  assert.equal(list.exports.map((e) => e["export-name"]), ["foo", "foobar", "baz qux"]);
  for (const [i, e] of list.exports.entries()) {
    const out = succeeds("list-exports", [srv.socket], `${i}\n`);
    assert.is(out, listing(list) + `Which export to connect to? Connecting to ${e["export-name"]} ...\n`
      + `${srv.socket}: ${e["export-name"]}: size = ${e["export-size"]} bytes\n`);
  }
  srv.stop();
});

test("list-exports: -1 aborts; out of range, not a number and EOF fail without connecting", () => {
  const srv = nbdkitUnix(...EVAL_EXPORTS);
  const prompt = "Which export to connect to? ";
  assert.ok(succeeds("list-exports", [srv.socket], "-1\n").endsWith(`[2] baz qux\n  (last one)\n${prompt}`));
  for (const input of ["3\n", "-2\n", "x\n", ""]) {
    const r = example("list-exports", [srv.socket], input);
    assert.is(r.status, 1, input);
    assert.ok(r.stdout.endsWith(prompt), r.stdout);
    assert.is(r.stderr, /^-?\d/.test(input) ? `index ${input.trim()} out of range\n` : "");
  }
  srv.stop();
});

test("list-exports: qemu-nbd's one export and its description (the C example's own session); an oldstyle server cannot list", () => {
  const disk = scratchFile("hello.img", 2048);
  const srv = qemuNbdUnix("-f", "raw", "-x", "hello", "-D", "a disk", disk);
  const list = JSON.parse(run("nbdinfo", ["--list", "--json", uri(srv.socket)])) as NbdinfoList;
  assert.is(succeeds("list-exports", [srv.socket], "0\n"), listing(list)
    + `Which export to connect to? Connecting to hello ...\n${srv.socket}: hello: size = 2048 bytes\n`);
  assert.is(listing(list), "[0] hello\n  (a disk)\n");
  srv.stop();
  const old = nbdkitUnix("-o", "memory", "1M");
  assert.is(failsWith("list-exports", [old.socket]), "Server does not support listing exports.\n");
  old.stop();
});

// ---- reads-and-writes --------------------------------------------------------------------------

test("reads-and-writes: 2000 writes and 1000 reads of 512 bytes reach nbdkit (stats filter); the disk is no longer blank", () => {
  const file = scratchPath("rw.stats");
  const srv = nbdkitUnix("--filter=stats", "memory", "1M", `statsfile=${file}`);
  assert.is(succeeds("reads-and-writes", [srv.socket]), "");
  const nonzero = libnbd<number>(srv.socket, "print(json.dumps(sum(1 for b in h.pread(1 << 20, 0) if b)))");
  assert.ok(nonzero > 0, "what was written is there");
  srv.stop();
  // 512-byte requests are the "9 bits" ones; python's check added one read of 1 MiB.
  const s = stats(file);
  assert.match(s, /^read: 1001 ops,.*\n.*breakdown:\n\s+9 bits: [\d.]+% \(1000 reqs, 500\.00 KiB total\)/m, s);
  assert.match(s, /^write: 2000 ops,.*\n.*breakdown:\n\s+9 bits: 100\.0% \(2000 reqs, 1000\.00 KiB total\)/m, s);
  assert.match(s, /^total: 3001 ops,/m, "and nothing else");
});

test("reads-and-writes: a read-only export is refused before any write", () => {
  const srv = nbdkitUnix("-r", "memory", "1M");
  assert.is(failsWith("reads-and-writes", [srv.socket]), `${path("reads-and-writes")}: error: this NBD export is read-only\n`);
  srv.stop();
});

// ---- server-flags --------------------------------------------------------------------------------

/** server-flags' output as python3-libnbd would print it. */
const FLAGS_PY = `
out = ""
for key, fn in [("canonical_name", h.get_canonical_export_name), ("description", h.get_export_description)]:
    try:
        out += "%s = %s\\n" % (key, fn())
    except nbd.Error:
        pass
for f in ["can_cache", "can_df", "can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero", "can_fast_zero",
          "is_read_only", "is_rotational"]:
    out += "nbd_%s = %s\\n" % (f, "true" if getattr(h, f)() else "false")
print(json.dumps(out))
`;

test("server-flags: name, description and flags as libnbd reads them, from nbdkit (three setups) and qemu-nbd", () => {
  const raw = scratchFile("flags.raw", 1 << 20);
  const servers = [
    nbdkitUnix("memory", "1M"),
    nbdkitUnix("-r", "--filter=nozero", "pattern", "1M"),
    nbdkitUnix("--filter=exportname", "memory", "1M", "default-export=main", "exportdesc=fixed:a RAM disk"),
    qemuNbdUnix("-f", "raw", "-x", "", "-D", "a raw file", raw),
  ];
  const outs = servers.map((srv) => {
    const out = succeeds("server-flags", [srv.socket]);
    assert.is(out, libnbd<string>(srv.socket, FLAGS_PY, "h.set_full_info(True)"));
    srv.stop();
    return out;
  });
  assert.match(outs[0]!, /^nbd_is_read_only = false$/m);
  assert.match(outs[1]!, /^nbd_is_read_only = true\nnbd_is_rotational = false\n$/m);
  assert.match(outs[1]!, /^nbd_can_zero = false$/m);
  assert.ok(outs[2]!.startsWith("canonical_name = main\ndescription = a RAM disk\n"), outs[2]);
  assert.match(outs[3]!, /^description = a raw file$/m);
  assert.match(outs[3]!, /^nbd_can_multi_conn = false$/m);
});

// ---- strict-structured-reads ---------------------------------------------------------------------------

/** The "totals:" and "traffic:" figures strict-structured-reads prints, by name. */
function totals(out: string): Record<string, number> {
  const t: Record<string, number> = {};
  for (const m of out.matchAll(/^ ([a-z ]+): +(\d+)$/gm)) t[m[1]!.trim()] = Number(m[2]);
  assert.is(Object.keys(t).length, 13, out);
  return t;
}

/** A run's figures that hold for any server: 1000 reads, every chunk counted once. */
function consistent(t: Record<string, number>): void {
  assert.is(t["reads"], 1000);
  assert.is(t["all chunks"], t["data chunks"]! + t["hole chunks"]!);
  assert.ok(t["df reads"]! > 0 && t["df reads"]! < 1000, `df reads ${t["df reads"]}: about half the reads`);
  assert.ok(t["bytes received"]! >= t["data bytes"]!);
}

test("strict-structured-reads: qemu-nbd on a sparse image sends data and holes, all compliant", () => {
  const size = 256 * 1024;
  const image = scratchFile("sparse.raw", size);
  for (const at of [0, 64 * 1024, 200 * 1024]) run("qemu-io", ["-f", "raw", "-c", `write -q -P 0x5a ${at} 4096`, image]);
  const srv = qemuNbdUnix("-r", "-f", "raw", "-x", "", image);
  const t = totals(succeeds("strict-structured-reads", [srv.socket]));
  srv.stop();
  consistent(t);
  assert.is(t["compliant"], 1000);
  assert.is(t["bytes read"], 1000 * (size - 1), "each read is size - 1 bytes");
  assert.is(t["data bytes"]! + t["hole bytes"]!, t["bytes read"]);
  assert.ok(t["hole chunks"]! > 0 && t["data chunks"]! > 0);
  assert.ok(t["all chunks"]! > 1000, "reads without DF come in several chunks");
});

test("strict-structured-reads: nbdkit sparse-random by URI sends data chunks only, one per read", () => {
  const srv = nbdkitUnix("sparse-random", "256K");
  const t = totals(succeeds("strict-structured-reads", [uri(srv.socket)]));
  srv.stop();
  consistent(t);
  assert.is(t["compliant"], 1000);
  assert.is(t["hole chunks"], 0);
  assert.is(t["data chunks"], 1000);
  assert.is(t["data bytes"], 1000 * (256 * 1024 - 1));
  assert.ok(t["chunks sent"]! > 1000, "the 1000 reads (and NBD_CMD_DISC) went out");
  assert.is(failsWith("strict-structured-reads", []), `${path("strict-structured-reads")} socket|uri\n`);
});

// Fake servers (DF allowed) that answer reads with hole chunks only, which cost the fake little.
// Hooks run in the fake's process: literals only (NBD_CMD_READ 0, DF 4).
const fakeReads = (size: bigint, onRequest: Script["onRequest"]): string => serveUnix(fakeServer({
  size, eflags: DEFAULT_EFLAGS | TFlag.SEND_DF, onRequest,
})).socket;

test("strict-structured-reads: a server that sends a read's chunks out of order is compliant (the C example calls it buggy)", () => {
  // Over 2 MiB, so that reads (of 2 MiB) start at random offsets: at 0, C's slip does not show.
  const socket = fakeReads(4n << 20n, (req, R) => {
    if (req.type !== 0) return undefined;
    if (req.flags & 4) return [R.hole(req, req.offset, req.count)];
    const o = req.offset, a = Math.floor(req.count / 3), b = Math.floor((2 * req.count) / 3);
    return [R.hole(req, o + BigInt(a), b - a, { flags: 0 }), R.hole(req, o, a, { flags: 0 }), R.hole(req, o + BigInt(b), req.count - b)];
  });
  const t = totals(succeeds("strict-structured-reads", [socket]));
  consistent(t);
  assert.is(t["compliant"], 1000);
  assert.is(t["all chunks"], t["df reads"]! + 3 * (1000 - t["df reads"]!));
  assert.is(t["hole bytes"], 1000 * 2 * 1024 * 1024);
});

test("strict-structured-reads: overlapping chunks, and several chunks for a DF read, are caught", () => {
  const overlap = fakeReads(64n * 1024n, (req, R) => {
    if (req.type !== 0) return undefined;
    const o = req.offset, h = Math.floor(req.count / 2), q = Math.floor(req.count / 4);
    return [R.hole(req, o, h, { flags: 0 }), R.hole(req, o + BigInt(q), req.count - q)];
  });
  let r = example("strict-structured-reads", [overlap]);
  assert.is(r.status, 0, r.stderr);
  let t = totals(r.stdout);
  assert.is(r.stderr, "buggy server: chunk with overlapping range\n".repeat(1000));
  assert.is(t["compliant"], 0);
  assert.is(t["bytes read"], 0);

  const split = fakeReads(64n * 1024n, (req, R) => {
    if (req.type !== 0) return undefined;
    const h = Math.floor(req.count / 2);
    return [R.hole(req, req.offset, h, { flags: 0 }), R.hole(req, req.offset + BigInt(h), req.count - h)];
  });
  r = example("strict-structured-reads", [split]);
  assert.is(r.status, 0, r.stderr);
  t = totals(r.stdout);
  consistent(t);
  assert.is(r.stderr, "buggy server: too many chunks for DF flag\n".repeat(t["df reads"]!));
  assert.is(t["compliant"], 1000 - t["df reads"]!);
  assert.is(t["all chunks"], 2000);
});

// ---- batched-read-write ----------------------------------------------------------------------------------

/** A writable disk whose bytes are not all alike, so that a write of the wrong bytes would show. */
const DATA = ["data", `( "nbd-ts " 0x01 0x02 )*1000000`];

/** The whole disk, hashed, as python3-libnbd reads it. */
const digest = (socket: string): string =>
  libnbd<string>(socket, "import hashlib\nprint(json.dumps(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest()))");

test("batched-read-write: nbdkit one request at a time (noparallel): finished OK; the disk unchanged; the requests the stats filter saw", () => {
  for (const [size, packet] of [["2M", "1.00 MiB"], ["8M", "2.00 MiB"]] as const) {
    const file = scratchPath(`batched-${size}.stats`);
    const srv = nbdkitUnix("--filter=noparallel", "--filter=stats", ...DATA, `size=${size}`, `statsfile=${file}`);
    const before = digest(srv.socket);
    assert.is(succeeds("batched-read-write", [srv.socket]), "finished OK\n");
    assert.is(digest(srv.socket), before, "it writes back what it read");
    srv.stop();
    const s = stats(file);
    // The example's sync read and aio read, its aio write; then the two digests' reads of the whole disk.
    assert.match(s, new RegExp(`^write: 1 ops, [\\d.]+ s, ${packet.replace(".", "\\.")},`, "m"));
    assert.match(s, /^read: 4 ops,/m);
  }
});

test("batched-read-write: by hostname and port, and by URI; read-only and usage errors", () => {
  const tcp = nbdkitTcp("--filter=noparallel", "memory", "2M");
  assert.is(succeeds("batched-read-write", ["127.0.0.1", String(tcp.port)]), "finished OK\n");
  assert.is(succeeds("batched-read-write", [`nbd://127.0.0.1:${tcp.port}`]), "finished OK\n");
  tcp.stop();
  const ro = nbdkitUnix("-r", "memory", "2M");
  assert.is(failsWith("batched-read-write", [uri(ro.socket)]), `${path("batched-read-write")}: error: this NBD export is read-only\n`);
  ro.stop();
  const usage = `${path("batched-read-write")} uri | socket | hostname port\n`;
  assert.is(failsWith("batched-read-write", []), usage);
  assert.is(failsWith("batched-read-write", ["a", "b", "c"]), usage);
});

test.run();
