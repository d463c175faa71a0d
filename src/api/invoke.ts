/**
 * Runs one call of the API table on a Connection the way libnbd's generated
 * wrappers do (generator/C.ml): check the handle state, then each argument in
 * order, then the optional flags, then call the implementation; turn any
 * failure into the call's error value, an errno and libnbd's message. Never
 * throws. The worker's dispatcher and any direct user of the client share it.
 */
import { errno, errnoOf } from "../errno.js";
import { STRICT_FLAGS } from "../constants.js";
import type { Connection } from "../client/connection.js";
import { NbdError, asNbdError } from "../client/error.js";
import { type Event, recorders, span } from "../client/events.js";
import { API, type CallName } from "./table.js";
import { cName, type Arg, type Call, type Ret, type State } from "./types.js";

/** A callback that records its calls for the caller's thread (which holds the real one). */
export function recorder(conn: Connection, id: number) {
  const fn = (...args: unknown[]): number => {
    conn.emit({ id, args: args.map((a) => (a instanceof Uint8Array ? span(a) : a)) });
    return 0;
  };
  recorders.add(fn);
  return fn;
}

/** A call's outcome as plain data: it crosses the thread boundary as is. */
export interface Outcome {
  ret: number | bigint | string | null;
  errno?: number;
  msg?: string;
  events?: Event[];
}

// Every table entry must have an implementation of the same name.
type Implementations = { [K in CallName]: (...args: never[]) => unknown };
const _everyCallImplemented = (c: Connection): Implementations => c;

const stateText: Record<State, string> = {
  created: "newly created",
  connecting: "connecting",
  negotiating: "negotiating",
  connected: "connected with the server",
  closed: "shut down",
  dead: "dead",
};

export function errorValue(ret: Ret): number | bigint | null {
  return ret === "int64" || ret === "cookie" ? -1n : ret === "string" || ret === "staticString" ? null : -1;
}

function success(ret: Ret, value: unknown): Outcome["ret"] {
  switch (ret) {
    case "err": return 0;
    case "bool": return value ? 1 : 0;
    default: return value as Outcome["ret"];
  }
}

const TWO64 = 1n << 64n;

/** A value for a message; a function or symbol crossed the bridge as a stand-in (handle.ts). */
const shown = (v: unknown): string =>
  v !== null && typeof v === "object" && "notCloneable" in v ? `a ${String(v.notCloneable)}` : String(v);

/** The value an argument has once checked: what the implementation receives. */
function check(arg: Arg, v: unknown, conn: Connection, optional: boolean): unknown {
  const bad = (text: string) => new NbdError(errno.EINVAL, `${arg.name}: ${text}`);
  const nullPointer = () => new NbdError(errno.EFAULT, `${arg.name} cannot be NULL`);
  const string = (s: unknown) => {
    if (typeof s !== "string") throw bad("expected a string");
    if (s.includes("\0")) throw bad("string contains a NUL byte");
    return s;
  };
  switch (arg.kind) {
    case "bool":
      if (typeof v === "boolean" || typeof v === "number") return Boolean(v);
      throw bad("expected a boolean");
    case "int":
      if (Number.isInteger(v) && (v as number) >= -0x80000000 && (v as number) <= 0x7fffffff) return v;
      throw bad("expected an integer");
    case "uint64":
      if (typeof v === "bigint" && v >= 0n && v < TWO64) return v;
      if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** 64) return BigInt(v);
      throw bad(`expected an integer from 0 to 2^64-1, got ${shown(v)}`);
    case "string":
    case "path":
      if (v == null) throw nullPointer();
      return string(v);
    case "stringList":
      if (v == null) throw nullPointer();
      if (!Array.isArray(v)) throw bad("expected an array of strings");
      return v.map(string);
    case "bytesIn":
    case "bytesOut":
    case "bytesPersistIn":
    case "bytesPersistOut":
      if (v == null) throw nullPointer();
      if (v instanceof Uint8Array) return v;
      throw bad("expected a Uint8Array");
    case "port":
      if (v == null) throw nullPointer(); // a char * in C, NULL-checked like any string
      if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 65535) return String(v);
      return string(v);
    case "closure":
      // A function is called directly; a number stands for one that lives on
      // the caller's thread, whose calls are recorded and replayed there.
      if (typeof v === "function") return v;
      if (typeof v === "number") return recorder(conn, v);
      if (v == null) {
        if (optional) return undefined; // completion callbacks may be left out
        throw nullPointer();
      }
      throw bad("expected a function");
    case "enum":
      if (typeof v === "number" && arg.values.includes(v)) return v;
      throw new NbdError(errno.EINVAL, `${arg.name}: invalid value for parameter: ${shown(v)}`);
    case "flags": {
      const flags = v ?? 0;
      if (typeof flags !== "number" || !Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) {
        throw new NbdError(errno.EINVAL, `${arg.name}: invalid value for flag: ${shown(flags)}`);
      }
      // Command flags the call does not take are refused in strict mode, and
      // always when they do not fit the 16 bits of the wire.
      const unknown = flags & ~arg.allowed;
      if (unknown && (!arg.set.commandFlags || conn.strict & STRICT_FLAGS || flags > 0xffff)) {
        throw new NbdError(errno.EINVAL, `${arg.name}: invalid value for flag: 0x${flags.toString(16)}`);
      }
      return flags;
    }
  }
}

function checkState(conn: Connection, call: Call): void {
  if (!call.states || call.states.includes(conn.state)) return;
  throw new NbdError(
    conn.state === "created" ? errno.ENOTCONN : errno.EINVAL,
    `invalid state: ${conn.stateName}: the handle must be ${call.states.map((s) => stateText[s]).join(", or ")}`,
  );
}

/** What every call needs, worked out once rather than on each call: its C name and all its arguments. */
const entries = new Map(Object.entries(API).map(([name, call]: [string, Call]) =>
  [name, { call, context: cName(name, call), all: [...call.args, ...(call.optargs ?? [])] }]));

/**
 * Runs a call: its outcome at once when the implementation returns at once
 * (a setting, a query, an aio command), else a Promise of it (a call that
 * waits for the server). No async function: a blocking call's reply is
 * built in the same turn of the event loop as the server's answer.
 */
export function invoke(
  conn: Connection, name: CallName, args: readonly unknown[], env: NodeJS.ProcessEnv = process.env,
): Outcome | Promise<Outcome> {
  const entry = entries.get(name)!;
  const { call, context, all } = entry;
  if (conn.debug) conn.log(context, `enter:${trace(call, args)}`);
  let result: unknown;
  try {
    checkState(conn, call);
    const values = all.map((arg, i) => check(arg, args[i], conn, i >= call.args.length));
    if (call.spawns) values.push(env);
    const impl = conn[name] as (...a: unknown[]) => unknown;
    result = withTimeout(conn, impl.apply(conn, values));
  } catch (e) {
    return failed(conn, name, entry, e);
  }
  if (result instanceof Promise) return result.then((v) => succeeded(conn, name, entry, v, true), (e) => failed(conn, name, entry, e));
  return succeeded(conn, name, entry, result, false);
}

type Entry = { call: Call; context: string };

function succeeded(conn: Connection, name: CallName, { call, context }: Entry, value: unknown, waited: boolean): Outcome {
  const ret = success(call.ret, value);
  // A string that the caller owns is quoted, a static one is not (libnbd's RString, RStaticString).
  if (conn.debug) conn.log(context, `leave: ret=${call.ret === "string" ? `"${String(ret)}"` : String(ret)}`);
  return ended(conn, name, { ret }, waited);
}

function failed(conn: Connection, name: CallName, { call, context }: Entry, e: unknown): Outcome {
  const err = asNbdError(e, errnoOf(e, errno.EIO));
  const msg = err.format(context);
  if (conn.debug) conn.log(context, `leave: error="${msg}"`);
  return ended(conn, name, { ret: errorValue(call.ret), errno: err.errno, msg }, true);
}

/**
 * The call has returned. Only a call that failed or waited on the server has
 * seen the connection end; one that answered at once (a query, an aio call)
 * runs no state machine in libnbd, and the next poll still reports the end it
 * missed. Poll reports it itself.
 */
function ended(conn: Connection, name: CallName, out: Outcome, seen: boolean): Outcome {
  withEvents(conn, out);
  if (seen && name !== "poll" && name !== "poll2") conn.endSeen();
  return out;
}

/**
 * Beyond libnbd (its TODO asks for it): with set_timeout, a call that waits
 * on the server longer than that fails with ETIMEDOUT and the handle dies,
 * since what the server does next can no longer be matched to a call.
 */
function withTimeout(conn: Connection, result: unknown): unknown {
  const ms = conn.timeout;
  if (!ms || !(result instanceof Promise)) return result;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(conn.expire(ms)), ms);
  });
  result.catch(() => { /* after a timeout, the call's own failure is moot */ });
  return Promise.race([result, expired]).finally(() => clearTimeout(timer));
}

/** The arguments of a call as libnbd's debug trace shows them (" count=512 offset=0 flags=0x0"; "" for none). */
function trace(call: Call, args: readonly unknown[]): string {
  return [...call.args, ...(call.optargs ?? [])].map((arg, i) => {
    const v = args[i];
    if (arg.kind.startsWith("bytes")) return `${arg.name}=<buf> count=${v instanceof Uint8Array ? v.byteLength : "?"}`;
    if (arg.kind === "closure") return `${arg.name}=<fun>`;
    if (arg.kind === "flags") return `${arg.name}=0x${typeof v === "number" ? v.toString(16) : "0"}`;
    if (arg.kind === "bool") return `${arg.name}=${v ? "true" : "false"}`;
    return `${arg.name}=${typeof v === "string" ? `"${v}"` : Array.isArray(v) ? `[${v.map((x) => `"${x}"`).join(", ")}]` : String(v)}`;
  }).map((item) => " " + item).join("");
}

/** Callback calls made since the last call (this one's, or completions of earlier ones) go back with it. */
function withEvents(conn: Connection, out: Outcome): Outcome {
  const events = conn.drainEvents();
  if (events.length) out.events = events;
  return out;
}
