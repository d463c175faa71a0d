/**
 * nbd-ts info beside nbdinfo (libnbd 1.14) on the same servers: the text
 * byte for byte, the --json fields and values, --list, --size, --is/--can
 * exit statuses, --map and --totals; errors and usage as nbdinfo reports
 * them (usage mistakes exit 2).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { libnbd, qemuNbdUnix, tool, unixUri, type Ran } from "./cli.js";
import { nbdkitUnix, run, scratchPath } from "./helpers.js";

/** Runs `nbd-ts info ARGS` and `nbdinfo ARGS`. */
function both(...args: string[]): { ours: Ran; theirs: Ran } {
  return { ours: tool(["info", ...args]), theirs: libnbd("nbdinfo", args) };
}

/** Same stdout and status as nbdinfo. */
function same(...args: string[]): Ran {
  const { ours, theirs } = both(...args);
  assert.is(theirs.status, theirs.status === 2 ? 2 : theirs.status, theirs.stderr);
  assert.is(ours.stdout, theirs.stdout, `stdout of info ${args.join(" ")}\n${ours.stderr}`);
  assert.is(ours.status, theirs.status, `status of info ${args.join(" ")}: ${ours.stderr}`);
  return ours;
}

const qcow2 = scratchPath("disk.qcow2");
run("qemu-img", ["create", "-q", "-f", "qcow2", qcow2, "4M"]);
run("qemu-io", ["-f", "qcow2", "-c", "write -q -P 0x11 0 64K", "-c", "write -q -P 0x22 1M 512K", "-c", "write -q -z 2M 64K", qcow2]);

test("text: nbdinfo's output byte for byte (nbdkit memory, nbdkit null, qemu-nbd qcow2, as subprocesses)", () => {
  const ours = same("--", "[", "nbdkit", "memory", "1M", "]");
  assert.match(ours.stdout, /^protocol: newstyle-fixed without TLS, using structured packets\nexport="":\n\texport-size: 1048576 \(1M\)\n/);
  assert.match(ours.stdout, /\tcan_zero: true\n/);
  same("[", "nbdkit", "null", "]");
  same("--", "[", "nbdkit", "-r", "pattern", "3000", "]"); // read-only; a size with no unit
  const q = same("--", "[", "qemu-nbd", "-f", "qcow2", "-D", "a \"quoted\" description", qcow2, "]");
  assert.match(q.stdout, /^export="":\n\tdescription: a "quoted" description\n/m);
  assert.match(q.stdout, /\tblock_size_preferred: 4096\n/);
});

test("--json: the same keys and values as nbdinfo's, uri included (qemu-nbd over a Unix socket)", () => {
  const server = qemuNbdUnix("-f", "qcow2", "-x", "disk", "-D", "tab\there", qcow2);
  const uri = unixUri(server.socket, "disk");
  const { ours, theirs } = both("--json", uri);
  assert.is(ours.status, 0, ours.stderr);
  assert.is(theirs.status, 0, theirs.stderr);
  const a = JSON.parse(ours.stdout);
  const b = JSON.parse(theirs.stdout);
  assert.equal(Object.keys(a), Object.keys(b));
  assert.equal(Object.keys(a.exports[0]), Object.keys(b.exports[0]));
  assert.equal(a, b);
  assert.is(a.exports[0]["export-name"], "disk");
  assert.is(a.exports[0].description, "tab\there");
  assert.is(a.exports[0].uri, uri);
  assert.is(a.exports[0]["export-size"], 4 * 1024 * 1024);
  assert.is(a.exports[0]["export-size-str"], "4M");
  assert.is(ours.stdout, theirs.stdout); // the layout too
  server.stop();
});

test("--list: every export, in text and JSON, with and without --content (nbdkit file dir=)", () => {
  const dir = scratchPath("exports");
  mkdirSync(dir);
  writeFileSync(`${dir}/one.img`, new Uint8Array(1024 * 1024).fill(0x41));
  writeFileSync(`${dir}/two.img`, new Uint8Array(3 * 512));
  const server = nbdkitUnix("file", `dir=${dir}`);
  const uri = unixUri(server.socket);
  const text = same("--list", uri);
  assert.match(text.stdout, /^export="one.img":$/m);
  assert.match(text.stdout, /^export="two.img":$/m);
  assert.match(text.stdout, /^\turi: nbd\+unix:\/\/\/two.img\?socket=/m);
  const json = same("--list", "--json", uri);
  const names = JSON.parse(json.stdout).exports.map((e: { "export-name": string }) => e["export-name"]).sort();
  assert.equal(names, ["one.img", "two.img"]);
  same("--list", "--content", "--json", uri);
  same("-L", "[", "nbdkit", "file", `dir=${dir}`, "]");
  server.stop();
});

test("--size, --is and --can: nbdinfo's output and exit statuses (0 true, 2 false)", () => {
  assert.is(same("--size", "[", "nbdkit", "null", "12345", "]").stdout, "12345\n");
  const rw = ["[", "nbdkit", "memory", "1M", "]"];
  const ro = ["--", "[", "nbdkit", "-r", "--filter=nozero", "memory", "1M", "]"];
  for (const [flag, value] of [["--can", "zero"], ["--can", "write"], ["--is", "read-only"], ["--can", "fast-zero"], ["--is", "tls"]]) {
    const a = same(flag!, value!, ...rw);
    const b = same(flag!, value!, ...ro);
    assert.is(a.stdout, "");
    assert.ok([0, 2].includes(a.status!) && [0, 2].includes(b.status!));
  }
  assert.is(tool(["info", "--can", "write", ...rw]).status, 0);
  assert.is(tool(["info", "--can", "write", ...ro]).status, 2);
  assert.is(tool(["info", "--is", "read-only", ...ro]).status, 0);
  const bad = tool(["info", "--can", "bogus", ...rw]);
  assert.is(bad.status, 1);
  assert.is(bad.stderr, "nbd-ts info: unknown --can or --is option: bogus\n");
});

test("--map and --totals, text and JSON, as nbdinfo prints them", () => {
  const random = ["--", "[", "nbdkit", "sparse-random", "16M", "seed=42", "percent=30", "runlength=65536", "]"];
  assert.ok(same("--map", ...random).stdout.split("\n").length > 100);
  same("--map", "--json", ...random);
  same("--map", "--totals", "--json", ...random);
  const disk = ["--", "[", "qemu-nbd", "-r", "-f", "qcow2", qcow2, "]"];
  same("--map", "--totals", ...disk);
  same("--map", "--json", ...disk);
  // qcow2: what qemu-io wrote is data, the rest reads as zero.
  const map = tool(["info", "--map", "--", "[", "qemu-nbd", "-r", "-f", "qcow2", qcow2, "]"]).stdout;
  assert.match(map, /^\s+0\s+65536\s+0\s+data$/m);
  assert.match(map, /^\s+1048576\s+524288\s+0\s+data$/m);
  // Another context by name: qemu's allocation depth.
  const depth = same("--map=qemu:allocation-depth", "--", "[", "qemu-nbd", "-r", "-A", "-f", "qcow2", qcow2, "]");
  assert.match(depth.stdout, /\s1\s+local$/m);
  assert.match(depth.stdout, /\s0\s+absent$/m);
  const none = tool(["info", "--map=no:such", "[", "nbdkit", "memory", "1M", "]"]);
  assert.is(none.status, 1);
  assert.is(none.stderr, 'nbd-ts info: --map: server does not support metadata context "no:such"\n');
});

test("a server after -- without brackets is the same as [ CMD ARGS ]", () => {
  const a = tool(["info", "--json", "--", "nbdkit", "memory", "2M"]);
  const b = tool(["info", "--json", "[", "nbdkit", "memory", "2M", "]"]);
  assert.is(a.status, 0, a.stderr);
  assert.is(a.stdout, b.stdout);
  assert.is(JSON.parse(a.stdout).exports[0]["export-size"], 2 * 1024 * 1024);
});

test("failures: libnbd's message on stderr, status 1, nothing on stdout", () => {
  const socket = scratchPath("nobody.sock");
  const { ours, theirs } = both(unixUri(socket));
  assert.is(ours.status, 1);
  assert.is(ours.stdout, "");
  assert.is(ours.stderr.replace(/^nbd-ts info: /gm, "nbdinfo: "), theirs.stderr);
  // An export the server does not have: nbdinfo's wording and its suggestion.
  const missing = both("--", "[", "qemu-nbd", "-f", "qcow2", "-x", "other", qcow2, "]");
  assert.is(missing.ours.status, 1);
  assert.is(missing.ours.stdout, missing.theirs.stdout);
  assert.is(missing.ours.stderr.replace(/^nbd-ts info: /gm, "nbdinfo: "), missing.theirs.stderr);
  assert.match(missing.ours.stderr, /for the default export\nnbd-ts info: suggestion: to list all exports on the server, use --list\n$/);
  // A server that cannot start.
  const dead = tool(["info", "[", "nbdkit", "no-such-plugin", "]"]);
  assert.is(dead.status, 1);
  assert.match(dead.stderr, /^nbd-ts info: nbd_connect_systemd_socket_activation: /m);
});

test("usage: --help on stdout (0); mistakes on stderr with the usage (2)", () => {
  const help = tool(["info", "--help"]);
  assert.is(help.status, 0);
  assert.match(help.stdout, /nbd-ts info --map\[=CONTEXT\] \[--totals\] \[--json\]/);
  assert.is(help.stderr, "");
  for (const [args, msg] of [
    [[], "missing NBD URI or [ CMD ... ]"],
    [["--bogus", "nbd://x"], "unrecognized option '--bogus'"],
    [["--can"], "option '--can' requires an argument"],
    [["--list", "--map", "nbd://x"], "you cannot use --list, --map and --size together."],
    [["--totals", "nbd://x"], "you must use --totals only with --map option."],
    [["nbd://x", "nbd://y"], "give one NBD URI or one [ CMD ... ]"],
    [["[", "nbdkit"], "'[' without a matching ']'"],
  ] as [string[], string][]) {
    const r = tool(["info", ...args]);
    assert.is(r.status, 2, `info ${args.join(" ")}`);
    assert.is(r.stdout, "");
    assert.ok(r.stderr.startsWith(`nbd-ts info: ${msg}\n`), r.stderr);
    assert.match(r.stderr, /Display information and metadata about NBD servers/);
  }
});

test.run();
