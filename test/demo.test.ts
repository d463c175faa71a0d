import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { run, scratchPath } from "./helpers.js";

const example = fileURLToPath(new URL("../examples/open-qcow2.js", import.meta.url));
const demo = (...args: string[]) => spawnSync(process.execPath, [example, ...args], { encoding: "utf8", timeout: 30_000 });

test("with no argument it makes a qcow2 and prints its first sector", () => {
  const r = demo();
  assert.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assert.is(lines.length, 33); // 32 rows of 16 bytes, then the length
  assert.match(lines[0]!, /^00000000  48 65 6c 6c 6f 20 66 72  6f 6d 20 74 68 65 20 66  \|Hello from the f\|$/);
  assert.is(lines[32], "00000200");
});

test("with a file it opens that file", () => {
  const disk = scratchPath("user.qcow2");
  run("qemu-img", ["create", "-q", "-f", "qcow2", disk, "64K"]);
  run("qemu-io", ["-f", "qcow2", "-c", "write -q -P 0x5a 0 512", disk]);
  const r = demo(disk);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^00000000  5a 5a 5a 5a 5a 5a 5a 5a  5a 5a 5a 5a 5a 5a 5a 5a  \|ZZZZZZZZZZZZZZZZ\|$/m);
  assert.match(r.stdout, /^000001f0  5a 5a/m);
});

test("a failure prints getError() and exits 1", () => {
  const r = demo(scratchPath("missing.qcow2"));
  assert.is(r.status, 1);
  assert.match(r.stderr, /^nbd_connect_systemd_socket_activation: /m);
  assert.match(r.stderr, /missing\.qcow2/);
});

test.run();
