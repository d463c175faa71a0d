/**
 * set_timeout, an nbd-ts extension libnbd's TODO asks for: a blocking call
 * to a server that never answers returns -1 with ETIMEDOUT within about the
 * timeout and leaves that handle DEAD; other handles carry on. The default
 * is libnbd's: no timeout.
 */
import { createServer } from "node:net";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { create, getErrno, getError } from "nbd-ts";
import { errno } from "../src/errno.js";
import { fakeServer } from "./fake-server.js";
import { scratchPath, timed } from "./helpers.js";

test("no timeout by default; negative ones are refused", () => {
  const h = create()!;
  assert.is(h.getTimeout(), 0);
  assert.is(h.setTimeout(250), 0);
  assert.is(h.getTimeout(), 250);
  assert.is(h.setTimeout(-1), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(h.getTimeout(), 250);
  h.close();
});

test("a read the server never answers: ETIMEDOUT after the timeout, the handle DEAD, others unharmed", () => {
  const silent = fakeServer({ onRequest: (req) => (req.type === 0 ? [] : undefined) });
  const h = create()!;
  const other = create()!;
  assert.is(h.connectCommand(silent), 0, String(getError()));
  assert.is(other.connectCommand(fakeServer()), 0, String(getError()));
  assert.is(h.setTimeout(300), 0);
  assert.is(h.pwrite(new Uint8Array(512), 0), 0, "a write is answered: the timeout does not get in the way");
  const { value, ms } = timed(() => h.pread(new Uint8Array(512), 0));
  assert.is(value, -1);
  assert.is(getErrno(), errno.ETIMEDOUT);
  assert.is(getError(), "nbd_pread: timed out after 300 ms waiting for the server: Connection timed out");
  assert.ok(ms >= 290 && ms < 3000, `${ms} ms`);
  assert.is(h.aioIsDead(), 1);
  const buf = new Uint8Array(8);
  assert.is(other.pread(buf, 8), 0, "another handle still works");
  assert.is(new DataView(buf.buffer).getBigUint64(0), 8n);
  h.close();
  other.close();
});

test("a connect to a server that never greets: ETIMEDOUT, not a hang", () => {
  const path = scratchPath("mute.sock");
  const mute = createServer(() => { /* accepts, says nothing */ }).listen(path);
  const h = create()!;
  h.setTimeout(300);
  const { value, ms } = timed(() => h.connectUnix(path));
  assert.is(value, -1);
  assert.is(getErrno(), errno.ETIMEDOUT);
  assert.ok(ms < 3000, `${ms} ms`);
  assert.is(h.aioIsDead(), 1);
  h.close();
  mute.close();
});

test.run();
