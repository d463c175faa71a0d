/**
 * Short-lived handles and aio commands leave nothing behind in the process:
 * open file descriptors and RSS stay flat over thousands of create/pread/close
 * cycles and of aio reads and writes on plain buffers, each of which goes
 * through shared staging memory of its own (src/shared-pool.ts). bench/soak.ts
 * does the first with a server for each handle, 10,000 times.
 */
import { readdirSync, readFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { create, getErrno, getError } from "nbd-ts";
import { errno } from "../src/errno.js";
import { nbdkit } from "./handles.js";

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

test("10,000 aio reads of 64 KiB into plain buffers, 8 in flight: RSS and fds stay flat, every byte right", () => {
  const h = nbdkit(["pattern", "size=64M"]);
  let good = 0;
  const read = (n: number) => {
    for (let i = 0; i < n; i++) {
      const buf = new Uint8Array(65536);
      const offset = (i % 1024) * 65536;
      const cookie = h.aioPread(buf, offset, (err) => {
        if (err.value === 0 && new DataView(buf.buffer).getBigUint64(65528) === BigInt(offset + 65528)) good++;
        return 1;
      });
      assert.ok(cookie > 0n, String(getError()));
      while (h.aioInFlight() >= 8) h.poll(-1);
    }
    while (h.aioInFlight() > 0) h.poll(-1);
  };
  read(1000);
  const before = { fds: fds(), rss: rssMiB() };
  read(10_000);
  const after = { fds: fds(), rss: rssMiB() };
  assert.ok(after.fds <= before.fds + 2, `fds ${before.fds} → ${after.fds}`);
  assert.ok(after.rss < before.rss + 64, `RSS ${before.rss.toFixed(1)} → ${after.rss.toFixed(1)} MiB (640 MiB of staging went through)`);
  assert.is(good, 11_000, "every read completed with the pattern's bytes");
});

test("10,000 aio writes of 64 KiB from plain buffers, 8 in flight: RSS and fds stay flat, the data arrives", () => {
  const h = nbdkit(["memory", "size=64M"]);
  const write = (n: number) => {
    for (let i = 0; i < n; i++) {
      const cookie = h.aioPwrite(new Uint8Array(65536).fill(i & 0xff), (i % 1024) * 65536, () => 1);
      assert.ok(cookie > 0n, String(getError()));
      while (h.aioInFlight() >= 8) h.poll(-1);
    }
    while (h.aioInFlight() > 0) h.poll(-1);
  };
  write(1000);
  const before = { fds: fds(), rss: rssMiB() };
  write(10_000);
  const after = { fds: fds(), rss: rssMiB() };
  assert.ok(after.fds <= before.fds + 2, `fds ${before.fds} → ${after.fds}`);
  assert.ok(after.rss < before.rss + 64, `RSS ${before.rss.toFixed(1)} → ${after.rss.toFixed(1)} MiB`);
  // The last write to block 5 was number 9 * 1024 + 5 of the second round.
  const buf = new Uint8Array(65536);
  assert.is(h.pread(buf, 5 * 65536), 0);
  assert.ok(buf.every((b) => b === ((9 * 1024 + 5) & 0xff)), `block 5 holds ${buf[0]}`);
});

test.run();
