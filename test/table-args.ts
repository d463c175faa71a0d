/**
 * Shared by errors.test.ts and states.test.ts: the API table as a list,
 * plausible arguments for each argument kind, and libnbd's expectations
 * (C names, error values, the "the handle must be ..." text) written out
 * here from libnbd's generator rather than taken from src/, so that the
 * tests check the implementation instead of repeating it.
 */
import * as assert from "uvu/assert";
import { getErrno, getError, type Handle } from "nbd-ts";
import { API, type CallName } from "../src/api/table.js";
import type { Arg, Call, State } from "../src/api/types.js";
import { strerror } from "../src/errno.js";

export const calls = Object.entries(API) as [CallName, Call][];

/** `connectSystemdSocketActivation` → `nbd_connect_systemd_socket_activation`. */
export const cName = (name: string, call: Call): string =>
  "nbd_" + (call.c ?? name.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase()));

/** The error value of a call (API.md's table): -1n for 64-bit results, null for strings, else -1. */
export function errorValue(call: Call): number | bigint | null {
  if (call.ret === "int64" || call.ret === "cookie") return -1n;
  if (call.ret === "string" || call.ret === "staticString") return null;
  return -1;
}

/** libnbd's generator/C.ml, permitted_state_text. */
const stateText: Record<State, string> = {
  created: "newly created",
  connecting: "connecting",
  negotiating: "negotiating",
  connected: "connected with the server",
  closed: "shut down",
  dead: "dead",
};

/** "the handle must be negotiating, or connected with the server, or shut down". */
export const mustBe = (call: Call): string =>
  "the handle must be " + call.states!.map((s) => stateText[s]).join(", or ");

/** The full libnbd message for a call made in the wrong state. */
export function stateError(name: CallName, stateName: string, errnum: number): string {
  const call = API[name] as Call;
  return `${cName(name, call)}: invalid state: ${stateName}: ${mustBe(call)}: ${strerror(errnum)}`;
}

/** A value an argument of this kind would plausibly take (valid, but harmless). */
export function plausible(arg: Arg): unknown {
  switch (arg.kind) {
    case "bool": return true;
    case "int": return 0;
    case "uint64": return arg.name === "count" ? 512 : 0;
    case "string": return arg.name === "metacontext" ? "base:allocation" : "x";
    case "path": return "/nonexistent/nbd-ts-test.sock";
    case "stringList": return ["false"];
    case "bytesIn":
    case "bytesOut":
    case "bytesPersistIn":
    case "bytesPersistOut": return new Uint8Array(512);
    case "port": return "10809";
    case "enum": return arg.values[0];
    case "flags": return 0;
    case "closure": return () => 0;
  }
}

export const plausibleArgs = (call: Call): unknown[] => call.args.map(plausible);

/** All arguments of a call, optional ones included. */
export const allArgs = (call: Call): readonly Arg[] => [...call.args, ...(call.optargs ?? [])];

/** Calls a table entry by name; a throw fails the test (a call never throws). */
export function callByName(h: Handle, name: string, args: readonly unknown[]): unknown {
  const fn = (h as unknown as Record<string, (...a: unknown[]) => unknown>)[name];
  assert.type(fn, "function", `h.${name} exists`);
  try {
    return fn!.apply(h, args as unknown[]);
  } catch (e) {
    assert.unreachable(`h.${name}(${args.map(show).join(", ")}) threw ${String(e)}`);
    return undefined;
  }
}

/** A short printable form of an argument for failure messages. */
export function show(v: unknown): string {
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v);
  if (v instanceof Uint8Array) return `Uint8Array(${v.length})`;
  if (Array.isArray(v)) return `[${v.map(show).join(", ")}]`;
  if (v instanceof ArrayBuffer) return `ArrayBuffer(${v.byteLength})`;
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${v.byteLength})`;
  return String(v);
}

/**
 * Asserts a failed call: the error value for its return kind, this errno,
 * and a message equal to `message` (a string), matching it (a RegExp), or
 * starting with `nbd_<name>: ` when omitted.
 */
export function assertFailed(
  name: CallName, ret: unknown, errnum: number, message?: string | RegExp, what = name as string,
): void {
  const call = API[name] as Call;
  const msg = getError();
  assert.is(ret, errorValue(call), `${what}: returns the error value ${show(errorValue(call))}, got ${show(ret)} (${msg})`);
  assert.is(getErrno(), errnum, `${what}: errno ${getErrno()} should be ${errnum} (${msg})`);
  assert.type(msg, "string", `${what}: getError() is set`);
  if (message === undefined) {
    assert.ok(msg!.startsWith(`${cName(name, call)}: `), `${what}: message "${msg}" names ${cName(name, call)}`);
  } else if (typeof message === "string") {
    assert.is(msg, message, `${what}: message`);
  } else {
    assert.match(msg!, message, `${what}: message`);
  }
}

/** Asserts that a call did not fail on its state (whatever else it did). */
export function assertNoStateError(name: CallName, ret: unknown, what = name as string): void {
  if (ret !== errorValue(API[name] as Call)) return;
  assert.not.match(getError() ?? "", /invalid state/, `${what} failed on its state: ${getError()}`);
}

/** Escapes a string for use in a RegExp. */
export const literal = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
