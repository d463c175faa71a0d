import { test } from "uvu";
import * as assert from "uvu/assert";
import { create, getErrno } from "nbd-ts";
import { pattern } from "./helpers.js";

test("socket activation + pread against nbdkit pattern", () => {
  const h = create()!;
  assert.is(h.connectSystemdSocketActivation(["nbdkit", "-f", "pattern", "size=1M"]), 0);
  const buf = new Uint8Array(100);
  assert.is(h.pread(buf, 1001), 0);
  assert.equal(buf, pattern(1001, 100));
  assert.is(h.pread(buf, 1024 * 1024), -1);
  assert.is(getErrno(), 22);
  h.close();
});

test.run();
