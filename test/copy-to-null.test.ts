/**
 * examples/copy-to-null, run as a user runs it, against nbdkit exports with
 * holes: what it reads and skips matches nbdinfo --map's totals, and the
 * server's own log (nbdkit's log filter) shows it read exactly the data
 * extents, each byte once, and never a hole; several block status requests (an export over
 * 128 MiB), a server without block status (everything read), and failures
 * (exit 1, libnbd's error on stderr).
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { nbdkitUnix, run, scratchPath } from "./helpers.js";

const EXAMPLE = fileURLToPath(new URL("../examples/copy-to-null.js", import.meta.url));

const uri = (socket: string) => `nbd+unix:///?socket=${socket}`;

function copy(target: string) {
  const r = spawnSync(process.execPath, [EXAMPLE, target], { encoding: "utf8", timeout: 60_000 });
  assert.is(r.error, undefined);
  return r;
}

/** What the example printed: size, bytes read, bytes skipped. */
function copied(target: string): [number, number, number] {
  const r = copy(target);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stderr, "");
  const m = /^(\d+) bytes: (\d+) read, (\d+) skipped as zeroes\n$/.exec(r.stdout);
  assert.ok(m, `unexpected output: ${r.stdout}`);
  return [Number(m![1]), Number(m![2]), Number(m![3])];
}

/** nbdinfo --map --totals: bytes of data and of zero extents. */
function totals(target: string): { data: number; zero: number } {
  const out = { data: 0, zero: 0 };
  for (const line of run("nbdinfo", ["--map", "--totals", target]).trim().split("\n")) {
    const [bytes, , type] = line.trim().split(/\s+/);
    if (Number(type) & 2) out.zero += Number(bytes);
    else out.data += Number(bytes);
  }
  return out;
}

/** The reads the server served, from nbdkit's log file: [offset, count], in offset order. */
function reads(logfile: string): [number, number][] {
  return [...readFileSync(logfile, "utf8").matchAll(/ Read id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+) /g)]
    .map((m): [number, number] => [Number(m[1]), Number(m[2])])
    .sort((a, b) => a[0] - b[0]);
}

/** The data extents of nbdinfo --map: [offset, length]. */
function dataExtents(target: string): [number, number][] {
  return run("nbdinfo", ["--map", target]).trim().split("\n").map((line) => line.trim().split(/\s+/))
    .filter(([, , type]) => !(Number(type) & 2))
    .map(([offset, length]) => [Number(offset), Number(length)]);
}

/** Reads that cover `extents` exactly, in pieces of at most 1 MiB. */
function covering(extents: [number, number][]): [number, number][] {
  return extents.flatMap(([offset, length]) => Array.from({ length: Math.ceil(length / 1048576) },
    (_, i): [number, number] => [offset + i * 1048576, Math.min(1048576, length - i * 1048576)]));
}

const DATA = "1 2 3 @1048576 4 5 6 @^2097152 7 @7000000 8";

test("data and holes: reads the data extents, skips the holes, as nbdinfo --map counts them", () => {
  const logfile = scratchPath("small.log");
  const server = nbdkitUnix("--filter=log", "data", DATA, "size=8M", `logfile=${logfile}`);
  const [size, data, zero] = copied(uri(server.socket));
  const map = totals(uri(server.socket));
  assert.is(size, 8 * 1024 * 1024);
  assert.ok(data > 0 && zero > 0, `some of each: ${data} read, ${zero} skipped`);
  assert.is(data, map.data);
  assert.is(zero, map.zero);
  assert.is(data + zero, size);
  assert.equal(reads(logfile), covering(dataExtents(uri(server.socket))), "the server served the data extents, no more");
});

test("an export over 128 MiB: several block status requests, data found beyond each", () => {
  const logfile = scratchPath("big.log");
  const spots = [0, 100e6, 140e6, 260e6, 299e6].map((o) => `@${o} 1 2 3`).join(" ");
  const server = nbdkitUnix("--filter=log", "data", spots, "size=300M", `logfile=${logfile}`);
  const [size, data, zero] = copied(uri(server.socket));
  const asked = readFileSync(logfile, "utf8").match(/ Extents id=/g)?.length ?? 0;
  assert.is(asked, 3, "three block status requests of up to 128 MiB");
  const map = totals(uri(server.socket));
  assert.is(size, 300 * 1024 * 1024);
  assert.equal([data, zero], [map.data, map.zero]);
  assert.is(data, 5 * 32768, "five data pages of the sparse array");
  assert.equal(reads(logfile), covering(dataExtents(uri(server.socket))));
});

test("a server without structured replies (no block status): everything is read", () => {
  const server = nbdkitUnix("--no-sr", "data", DATA, "size=3M");
  assert.equal(copied(uri(server.socket)), [3 * 1024 * 1024, 3 * 1024 * 1024, 0]);
});

test("all data: the whole export is read in requests of 1 MiB, the last one short", () => {
  const server = nbdkitUnix("pattern", String(10 * 1024 * 1024 + 4096));
  assert.equal(copied(uri(server.socket)), [10 * 1024 * 1024 + 4096, 10 * 1024 * 1024 + 4096, 0]);
});

test("failures: exit 1 with libnbd's error on stderr", () => {
  const r = copy(uri(scratchPath("nothing-here.sock")));
  assert.is(r.status, 1);
  assert.is(r.stdout, "");
  assert.match(r.stderr, /^copy-to-null: connect_uri: nbd_connect_uri: connect: No such file or directory/);
  const usage = spawnSync(process.execPath, [EXAMPLE], { encoding: "utf8" });
  assert.is(usage.status, 1);
  assert.match(usage.stderr, /usage: copy-to-null URI/);
});

test.run();
