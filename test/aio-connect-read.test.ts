/**
 * examples/aio-connect-read.ts, run as its header says (nbdkit -U - pattern
 * --run '... $unixsocket'): every one of its 32 sectors is printed once, as
 * `hexdump -C` prints the bytes the pattern plugin serves there (in whatever
 * order the reads complete), and its failures print getError() or perror's
 * line and exit 1.
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { pattern, scratchPath } from "./helpers.js";

const example = fileURLToPath(new URL("../examples/aio-connect-read.js", import.meta.url));

/** `nbdkit -U - ARGS --run 'node aio-connect-read.js $unixsocket'`. */
const underNbdkit = (...args: string[]) => spawnSync("nbdkit", [
  "-U", "-", ...args, "--run", `'${process.execPath}' '${example}' "$unixsocket"`,
], { encoding: "utf8", timeout: 30_000 });

const hexdumpC = (bytes: Uint8Array): string => spawnSync("hexdump", ["-C"], { input: bytes, encoding: "utf8" }).stdout;

test("pattern size=1M: each of the first 32 sectors once, as hexdump -C shows the pattern there", () => {
  const r = underNbdkit("pattern", "size=1M");
  assert.is(r.status, 0, r.stderr);
  const sections = r.stdout.split(/^sector at offset 0x([0-9a-f]+):\n/m).slice(1);
  const dumps = new Map<number, string>();
  for (let i = 0; i < sections.length; i += 2) {
    const offset = parseInt(sections[i]!, 16);
    assert.not.ok(dumps.has(offset), `sector 0x${offset.toString(16)} printed twice`);
    dumps.set(offset, sections[i + 1]!);
  }
  assert.equal([...dumps.keys()].sort((a, b) => a - b), Array.from({ length: 32 }, (_, i) => i * 512));
  for (const [offset, dump] of dumps) {
    assert.is(dump, `${hexdumpC(pattern(offset, 512))}\n`, `sector at 0x${offset.toString(16)}`);
  }
  assert.match(dumps.get(0x200)!, /^00000000 {2}00 00 00 00 00 00 02 00 {2}00 00 00 00 00 00 02 08 {2}\|\.{16}\|$/m);
});

test("a read that fails: the completion callback's error, perror-style, and exit status 1", () => {
  const r = underNbdkit("--log=null", "--filter=error", "pattern", "size=1M", "error=EIO", "error-pread-rate=100%");
  assert.is(r.status, 1);
  assert.not.match(r.stdout, /^sector at offset/m);
  assert.match(r.stderr, /^failed to read: i\/o error$/m);
});

test("no server, a disk too small, no argument: getError(), an assertion, the usage line; exit status 1", () => {
  const none = spawnSync(process.execPath, [example, scratchPath("nobody.sock")], { encoding: "utf8", timeout: 30_000 });
  assert.is(none.status, 1);
  assert.match(none.stderr, /^nbd_aio_connect_unix: connect: No such file or directory$/m);
  const small = underNbdkit("pattern", "size=8K");
  assert.not.equal(small.status, 0);
  assert.match(small.stderr, /AssertionError/);
  const usage = spawnSync(process.execPath, [example], { encoding: "utf8", timeout: 30_000 });
  assert.is(usage.status, 1);
  assert.is(usage.stderr, "aio-connect-read.js socket\n");
});

test.run();
