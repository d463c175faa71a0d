/**
 * src/client/bytes.ts: copy and zero give exactly what TypedArray.set and
 * fill(0) give, on ordinary and shared memory, at every size around the
 * point where they switch method, and never touch a byte outside the range.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { copy, zero } from "../src/client/bytes.js";

const SIZES = [0, 1, 511, 512, 513, 4096, 65_537, 2 * 1024 * 1024 + 3];
const memory = (shared: boolean, n: number) => new Uint8Array(shared ? new SharedArrayBuffer(n) : new ArrayBuffer(n));
const pattern = (buf: Uint8Array, seed: number) => { for (let i = 0; i < buf.length; i++) buf[i] = (i * 31 + seed) & 255; return buf; };

for (const toShared of [false, true]) {
  for (const fromShared of [false, true]) {
    test(`copy: ${fromShared ? "shared" : "ordinary"} to ${toShared ? "shared" : "ordinary"} memory, as set() does`, () => {
      for (const n of SIZES) {
        for (const at of [0, 7]) {
          // The source and the target are views that start inside their buffers, with bytes around them that must not change.
          const from = pattern(memory(fromShared, n + 5), 3).subarray(2, 2 + n);
          const to = pattern(memory(toShared, n + at + 9), 11);
          const want = pattern(new Uint8Array(n + at + 9), 11);
          want.set(from, 1 + at);
          copy(to.subarray(1, 1 + at + n + 1), from, at);
          assert.ok(Buffer.compare(to, want) === 0, `n=${n} at=${at}`);
        }
      }
    });
  }
  test(`zero: ${toShared ? "shared" : "ordinary"} memory, only the range`, () => {
    for (const n of SIZES) {
      const buf = pattern(memory(toShared, n + 10), 5);
      const want = pattern(new Uint8Array(n + 10), 5).fill(0, 4, 4 + n);
      zero(buf, 4, 4 + n);
      assert.ok(Buffer.compare(buf, want) === 0, `n=${n}`);
    }
  });
}

test.run();
