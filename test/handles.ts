/**
 * The handles a test file makes: every handle made through `newHandle` (or
 * the connect helpers built on it) is closed after each test. Importing this
 * module registers that `test.after.each` hook on uvu's default suite.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { create, getErrno, getError, type Handle } from "nbd-ts";

/** `nbdkit -s --exit-with-parent`: a server on the handle's own socketpair (connect_command). */
export const NBDKIT = ["nbdkit", "-s", "--exit-with-parent"];

const handles: Handle[] = [];
test.after.each(() => {
  for (const h of handles.splice(0)) h.close();
});

/** A new handle, closed after the test. */
export function newHandle(): Handle {
  const h = create();
  assert.ok(h, `create: ${getError()}`);
  handles.push(h!);
  return h!;
}

/** A handle connected to `nbdkit -s --exit-with-parent ARGS` (connect_command). */
export function nbdkit(args: string[], before?: (h: Handle) => void): Handle {
  const h = newHandle();
  before?.(h);
  assert.is(h.connectCommand([...NBDKIT, ...args]), 0, `connect nbdkit ${args.join(" ")}: ${getError()}`);
  return h;
}

/** A handle connected to `argv` by socket activation (`sa`) or connect_command. */
export function connected(argv: string[], sa: boolean, before?: (h: Handle) => void): Handle {
  const h = newHandle();
  before?.(h);
  const r = sa ? h.connectSystemdSocketActivation(argv) : h.connectCommand(argv);
  assert.is(r, 0, `connect ${argv.join(" ")}: ${getError()}`);
  return h;
}

/** The call failed with `err` and exactly libnbd's message. */
export function fails(ret: number | bigint | string | null, err: number, message: string): void {
  assert.ok(ret === -1 || ret === -1n || ret === null, `expected failure, got ${String(ret)}`);
  assert.is(getError(), message);
  assert.is(getErrno(), err);
}
