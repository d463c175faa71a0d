/**
 * Short-lived handles leave nothing behind in the process: open file
 * descriptors and RSS stay flat over thousands of create/pread/close cycles
 * (bench/soak.ts does the same with a server for each handle, 10,000 times).
 */
import { readdirSync, readFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { create, getErrno } from "nbd-ts";
import { errno } from "../src/errno.js";

const fds = (): number => readdirSync("/proc/self/fd").length;
const rssMiB = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) / 1024;

function cycles(n: number): void {
  for (let i = 0; i < n; i++) {
    const h = create()!;
    // Fails (no connection), but only after the 4 KiB buffer went through the handle's shared memory.
    assert.is(h.pread(new Uint8Array(4096), 0), -1);
    h.close();
  }
}

test("3000 handles, each with a pread's shared buffer: RSS and fds stay flat", () => {
  cycles(500);
  assert.is(getErrno(), errno.ENOTCONN);
  const before = { fds: fds(), rss: rssMiB() };
  cycles(3000);
  const after = { fds: fds(), rss: rssMiB() };
  assert.ok(after.fds <= before.fds + 2, `fds ${before.fds} → ${after.fds}`);
  // Each handle's 64 KiB buffer used to stay until some garbage collection that never came: +190 MiB.
  assert.ok(after.rss < before.rss + 64, `RSS ${before.rss.toFixed(1)} → ${after.rss.toFixed(1)} MiB`);
});

test.run();
