/**
 * Bad input, driven by the API table (every entry, so a new call is covered
 * without a new line here): every argument of every call gets every hostile
 * value below, in every state the call is permitted in; and every call is
 * made in every state it is not permitted in. Each call returns a value of
 * its kind or its error value (-1, -1n or null) with an errno and a message
 * naming the call, never throws, and leaves the handle as libnbd would:
 *
 * - a value of the wrong type (the contract's, API.md) fails the argument
 *   check: EFAULT "<arg> cannot be NULL" for a missing pointer, else EINVAL
 *   naming the argument, and nothing changes: not the state, not the value
 *   a getter reads back;
 * - a value of the right type that libnbd refuses (a name over 4096 bytes,
 *   an offset of 2^64-1, unknown flags, 100,000 queries, a 65 MiB buffer),
 *   and every call in a wrong state, are also made on python3-libnbd (1.14)
 *   in the same state, and the errno and the state afterwards must agree
 *   (where python's binding cannot pass the value on, e.g. a NUL byte or a
 *   negative size_t, it refuses it itself and the case is nbd-ts's alone).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { getErrno, getError, type Handle } from "nbd-ts";
import { errno } from "../src/errno.js";
import { API, type CallName } from "../src/api/table.js";
import type { Arg, Call, State } from "../src/api/types.js";
import { newHandle } from "./handles.js";
import { python } from "./libnbd.js";
import { allArgs, callByName, calls, cName, errorValue, literal, show, stateError } from "./table-args.js";

const MiB = 1024 * 1024;
const SERVER = ["nbdkit", "-s", "--exit-with-parent", "memory", "size=1M"];
const NOWHERE = "/nonexistent/nbd-ts-bad-input.sock";

// ---- states, made the same way on both sides -----------------------------------------

const STATES = ["START", "NEGOTIATING", "READY", "CLOSED", "DEAD"] as const;
type StateName = (typeof STATES)[number];
const TABLE_STATE: Record<StateName, State> = {
  START: "created", NEGOTIATING: "negotiating", READY: "connected", CLOSED: "closed", DEAD: "dead",
};
const permitted = (call: Call, s: StateName): boolean => !call.states || call.states.includes(TABLE_STATE[s]);

function make(s: StateName): Handle {
  const h = newHandle();
  h.setDebugCallback(() => 0); // for when setDebug(true) (or 1.5) works: its lines go nowhere
  if (s === "START") return h;
  if (s === "DEAD") {
    assert.is(h.connectUnix(NOWHERE), -1);
    return h;
  }
  h.addMetaContext("base:allocation"); // so that block status gets past its own checks
  if (s === "NEGOTIATING") h.setOptMode(true);
  assert.is(h.connectCommand(SERVER), 0, String(getError()));
  if (s === "CLOSED") assert.is(h.shutdown(), 0);
  return h;
}

function stateOf(h: Handle): string {
  const s = h.connectionState();
  return s === null ? "CLOSED-HANDLE" : s.slice(0, s.indexOf(":"));
}

/** One handle per state, made again when a call moved it elsewhere. */
class Handles {
  #h = new Map<StateName, Handle>();
  get(s: StateName): Handle {
    let h = this.#h.get(s);
    if (!h || stateOf(h) !== s) this.#h.set(s, (h = make(s)));
    return h;
  }
}

// ---- the hostile values ----------------------------------------------------------------

/** A value, and how python3-libnbd spells the same value (absent: it has no such value). */
interface Hostile { label: string; v: unknown; py?: unknown; only?: (a: Arg) => boolean }
const big = (n: bigint) => ({ big: n.toString() });
const bytes = (a: Arg) => a.kind.startsWith("bytes");
const huge = new Array(1 << 16).fill(0);
const queries = new Array(100_000).fill("x");
const hugeBuffer = new Uint8Array(65 * MiB);

const HOSTILE: Hostile[] = [
  // wrong types
  { label: "a string", v: "str", py: "str" },
  { label: "an object", v: {} },
  { label: "an empty array", v: [], py: [] },
  { label: "true", v: true, py: true },
  { label: "a function", v: () => 0, py: { fn: 0 } },
  { label: "a symbol", v: Symbol("s") },
  { label: "a 1-element Uint16Array", v: new Uint16Array(1) },
  { label: "null", v: null, py: null },
  { label: "undefined", v: undefined },
  // numbers that are not what a C integer can be
  { label: "NaN", v: NaN, py: { float: "nan" } },
  { label: "Infinity", v: Infinity, py: { float: "inf" } },
  { label: "-1", v: -1, py: -1 },
  { label: "-2^31", v: -(2 ** 31), py: -(2 ** 31) },
  { label: "-2^31-1", v: -(2 ** 31) - 1, py: -(2 ** 31) - 1 },
  { label: "-0.5", v: -0.5, py: -0.5 },
  { label: "1.5", v: 1.5, py: 1.5 },
  { label: "2^31", v: 2 ** 31, py: 2 ** 31 },
  { label: "2^32", v: 2 ** 32, py: 2 ** 32 },
  // python wraps integers of 2^64 and over modulo 2^64 (PyArg "K"): not the same value there
  { label: "2^64 as a number", v: 2 ** 64 },
  { label: "-1n", v: -1n, py: -1 },
  { label: "2^63n", v: 2n ** 63n, py: big(2n ** 63n) },
  { label: "2^64-1n", v: 2n ** 64n - 1n, py: big(2n ** 64n - 1n) },
  { label: "2^64n", v: 2n ** 64n },
  { label: "2^200n", v: 2n ** 200n },
  // huge arrays and buffers
  { label: "an array of 65,536 numbers", v: huge },
  { label: "100,000 strings", v: queries, py: { rep: "x", n: queries.length }, only: (a) => a.kind === "stringList" },
  { label: "a 65 MiB buffer", v: hugeBuffer, py: { buf: hugeBuffer.length }, only: bytes },
  { label: "an empty buffer", v: new Uint8Array(0), py: { buf: 0 }, only: bytes },
  // strings
  { label: "a string with a NUL byte", v: "a\0b", py: "a\0b" },
  { label: "a list with a NUL byte", v: ["nbdkit", "a\0b"], py: ["nbdkit", "a\0b"] },
  { label: "an empty string", v: "", py: "" },
  { label: "a 4097-byte name", v: "n".repeat(4097), py: "n".repeat(4097) },
  { label: "a 4098-byte UTF-8 name", v: "é".repeat(2049), py: "é".repeat(2049) },
  { label: "a list of one 4097-byte name", v: ["n".repeat(4097)], py: ["n".repeat(4097)] },
];

/**
 * Whether `v` has the type the contract (API.md) gives an argument of this
 * kind, written here rather than taken from src/ so that the check is tested,
 * not repeated. What libnbd then makes of the value is another matter.
 */
function rightType(arg: Arg, v: unknown, optional: boolean): boolean {
  const str = (s: unknown) => typeof s === "string" && !s.includes("\0");
  const int = (n: unknown, lo: number, hi: number) => Number.isInteger(n) && (n as number) >= lo && (n as number) <= hi;
  switch (arg.kind) {
    case "bool": return typeof v === "boolean" || typeof v === "number"; // a C bool takes any int
    case "int":
    case "enum": return int(v, -(2 ** 31), 2 ** 31 - 1);
    case "uint64": return (typeof v === "bigint" && v >= 0n && v < 2n ** 64n) || (int(v, 0, 2 ** 64) && (v as number) < 2 ** 64);
    case "string":
    case "path": return str(v);
    case "stringList": return Array.isArray(v) && v.every(str);
    case "bytesIn":
    case "bytesOut":
    case "bytesPersistIn":
    case "bytesPersistOut": return v instanceof Uint8Array;
    case "port": return str(v) || int(v, 0, 65535);
    case "flags": return v == null || int(v, 0, 2 ** 32 - 1); // missing flags are 0
    case "closure": return typeof v === "function" || (optional && v == null);
  }
}

/** Kinds that are C pointers: leaving one out is NULL. */
const POINTER = new Set(["string", "path", "stringList", "bytesIn", "bytesOut", "bytesPersistIn", "bytesPersistOut", "port", "closure"]);

/** Harmless arguments of the right type (no DNS lookup, no server anywhere). */
function plausible(arg: Arg): unknown {
  switch (arg.kind) {
    case "bool": return true;
    case "int": return arg.name === "sock" ? -1 : 0;
    case "uint64": return arg.name === "count" ? 512 : 0;
    case "string":
      if (arg.name === "metacontext" || arg.name === "name") return "base:allocation";
      if (arg.name === "hostname") return "localhost";
      if (arg.name === "uri") return `nbd+unix:///?socket=${NOWHERE}`;
      return "x";
    case "path": return NOWHERE;
    case "stringList": return arg.name === "argv" ? ["false"] : ["base:allocation"];
    case "bytesIn":
    case "bytesOut":
    case "bytesPersistIn":
    case "bytesPersistOut": return new Uint8Array(512);
    case "port": return "1";
    case "enum": return arg.values[0];
    case "flags": return 0;
    case "closure": return () => 0;
  }
}

/** python3-libnbd's spelling of an argument (see PY's arg()); undefined: not expressible there. */
function pyArg(arg: Arg, v: unknown, h?: Hostile): unknown {
  if (h) return h.py === undefined ? undefined : bytes(arg) && typeof h.py === "object" && h.py && "buf" in h.py ? { ...h.py, as: bufferAs(arg) } : h.py;
  if (v instanceof Uint8Array) return { buf: v.length, as: bufferAs(arg) };
  if (typeof v === "function") return { fn: 0 };
  return v;
}
/** pread takes a count, pwrite bytes, aio calls an nbd.Buffer. */
const bufferAs = (arg: Arg) =>
  arg.kind.startsWith("bytesPersist") ? "buffer" : arg.kind === "bytesOut" ? "count" : "bytes";

// ---- python3-libnbd: the same cases -------------------------------------------------------

/** `fresh`: on a handle of its own, made for it and then dropped (the call may connect or disconnect). */
interface Case { state: StateName; call: string; args: unknown[]; fresh?: boolean }

/** Calls that may move a handle to another state when they succeed (aio options: once their reply comes). */
const movesState = (name: string): boolean => /connect|shutdown|^aioOpt/i.test(name);

/**
 * aio connects and options go on in the background: the state just after
 * the call is a matter of timing on both sides, and a server that cannot
 * start fails nbd-ts's call itself (DEAD) where libnbd's fails at the next
 * poll. What must agree is the call's own refusal.
 */
function inBackground(key: string, py: PyResult, ts: Outcome): boolean {
  if (!/^aio(Connect|Opt)/.test(key)) return false;
  if ("errno" in py) return ts.failed && ts.errno === py.errno;
  return !ts.failed || ts.after === "DEAD";
}
type PyResult = { ok: true; after: string } | { errno: number; msg: string; after: string } | { py: string; after: string } | { missing: true };

const PY = String.raw`
import json, sys, nbd
SERVER, NOWHERE = json.loads(sys.argv[1])
def make(state):
    h = nbd.NBD()
    if state == "START": return h
    if state == "DEAD":
        try: h.connect_unix(NOWHERE)
        except nbd.Error: pass
        return h
    h.add_meta_context("base:allocation")
    if state == "NEGOTIATING": h.set_opt_mode(True)
    h.connect_command(SERVER)
    if state == "CLOSED": h.shutdown()
    return h
def state_of(h):
    s = h.connection_state()
    return s[:s.index(":")]
def arg(v):
    if isinstance(v, dict):
        if "big" in v: return int(v["big"])
        if "float" in v: return float(v["float"])
        if "fn" in v: return lambda *a: 0
        if "rep" in v: return [v["rep"]] * v["n"]
        if "buf" in v:
            n = v["buf"]
            return n if v["as"] == "count" else bytes(n) if v["as"] == "bytes" else nbd.Buffer(n)
    if isinstance(v, list): return [arg(x) for x in v]
    return v
handles = {}
out = []
for case in json.load(sys.stdin):
    st = case["state"]
    if not hasattr(nbd.NBD, case["call"]):
        out.append({"missing": True})
        continue
    h = handles.get(st)
    if case.get("fresh"):
        h = make(st)
    elif h is None or state_of(h) != st:
        h = handles[st] = make(st)
    res = {}
    try:
        getattr(h, case["call"])(*[arg(a) for a in case["args"]])
        res["ok"] = True
    except nbd.Error as e:
        res.update(errno=e.errnum, msg=e.string)
    except Exception as e:
        res["py"] = type(e).__name__
    res["after"] = state_of(h)
    out.append(res)
json.dump(out, sys.stdout)
`;

const runPython = (cases: Case[]): PyResult[] => python<PyResult[]>(PY.replace("sys.argv[1]", JSON.stringify(JSON.stringify([SERVER, NOWHERE]))), cases);

/**
 * Where nbd-ts cannot give libnbd 1.14's answer: a socket-activated server
 * that dies at once (no such program: "x", a 4097-byte name). libnbd
 * connects within microseconds of fork() and sees its queued connection
 * reset (ECONNRESET); nbd-ts connects after spawn(), by when the socket may
 * be gone (ECONNREFUSED). Both end DEAD, quoting the server's stderr
 * (connect.test.ts accepts both too).
 */
function notAs114(key: string, py: PyResult, ts: Outcome): boolean {
  return key.startsWith("connectSystemdSocketActivation(") && "errno" in py && py.errno === errno.ECONNRESET &&
    ts.failed && [errno.ECONNRESET, errno.ECONNREFUSED].includes(ts.errno as 104 | 111) && ts.after === "DEAD" && py.after === "DEAD";
}

/** The calls python3-libnbd 1.14 has. */
const PY_CALLS = new Set(python<string[]>(
  "import json, sys, nbd\njson.dump([m for m in dir(nbd.NBD) if not m.startswith('_')], sys.stdout)"));

// ---- the sweeps ------------------------------------------------------------------------

interface Outcome { label: string; ret: unknown; errno: number; msg: string | null; before: string; after: string; failed: boolean }

/** Calls `name` on `h` with `args`; what happened, and the state before and after. */
function attempt(h: Handle, name: CallName, args: unknown[], label: string): Outcome {
  const before = stateOf(h);
  const call = API[name] as Call;
  const ret = callByName(h, name, args);
  const failed = ret === errorValue(call);
  const out = { label, ret, errno: failed ? getErrno() : 0, msg: failed ? getError() : null, before, after: stateOf(h), failed };
  if (failed) {
    assert.type(out.errno, "number", `${label}: errno`);
    assert.ok(out.msg?.startsWith(`${cName(name, call)}: `), `${label}: the message "${out.msg}" names ${cName(name, call)}`);
  } else {
    const kind = call.ret === "int64" || call.ret === "cookie" ? "bigint" : call.ret === "string" || call.ret === "staticString" ? "string" : "number";
    assert.is(typeof ret, kind, `${label}: returns a ${kind}`);
  }
  return out;
}

/** The getter paired with a setter (setExportName → getExportName), if it takes no arguments. */
function getterOf(name: CallName): CallName | undefined {
  const get = name.replace(/^set/, "get") as CallName;
  return name.startsWith("set") && get in API && (API[get] as Call).args.length === 0 ? get : undefined;
}

const figures: string[] = [];

test("every argument of every call, every hostile value, every permitted state: a wrong type is EINVAL or EFAULT and changes nothing; the rest agrees with libnbd", () => {
  const handles = new Handles();
  const alone = new Handles();
  const pyCases: Case[] = [];
  const pyOutcomes: { key: string; ts: Outcome }[] = [];
  let wrongType = 0;
  for (const [name, call] of calls) {
    const all = allArgs(call);
    if (!all.length) continue;
    // A call permitted everywhere is tried on a new handle (where nothing can block: poll(-1) on a
    // READY handle waits forever, in libnbd too) and, with values of the wrong type only, when READY.
    const states = STATES.filter((s) => permitted(call, s) && (call.states || s === "START" || s === "READY"));
    for (const state of states) {
      all.forEach((arg, i) => {
        for (const hostile of HOSTILE) {
          if (hostile.only && !hostile.only(arg)) continue;
          const optional = i >= call.args.length;
          const ok = rightType(arg, hostile.v, optional);
          if (ok && !call.states && state !== "START") continue;
          const args = all.map(plausible);
          args[i] = hostile.v;
          // Right-type values python cannot pass (or calls it lacks) run on handles of their own, so that
          // the handles both sides share see the same history.
          const py = all.map((a, j) => pyArg(a, args[j], j === i ? hostile : undefined));
          const compared = ok && PY_CALLS.has(cName(name, call).slice(4)) && !py.includes(undefined);
          const fresh = ok && movesState(name);
          const h = fresh ? make(state) : ok && !compared ? alone.get(state) : handles.get(state);
          const getter = getterOf(name);
          const kept = getter && callByName(h, getter, []);
          const label = `${name}(${arg.name} = ${hostile.label}) in ${state}`;
          const out = attempt(h, name, args, label);
          if (ok && call.mayFail === false) assert.not.ok(out.failed, `${label}: a call that cannot fail failed: ${out.msg}`);
          if (!ok) {
            wrongType++;
            const c = cName(name, call);
            assert.ok(out.failed, `${label}: fails (got ${show(out.ret)})`);
            if (hostile.v == null && POINTER.has(arg.kind)) {
              assert.is(out.errno, errno.EFAULT, `${label}: ${out.msg}`);
              assert.is(out.msg, `${c}: ${arg.name} cannot be NULL: Bad address`);
            } else {
              assert.is(out.errno, errno.EINVAL, `${label}: ${out.msg}`);
              assert.match(out.msg!, new RegExp(`^${literal(c)}: ${arg.name}: `), `${label}: ${out.msg}`);
            }
            assert.is(out.after, out.before, `${label}: the state is unchanged`);
            if (getter) assert.equal(callByName(h, getter, []), kept, `${label}: ${getter}() is unchanged`);
            continue;
          }
          // Of the right type: libnbd decides what it means; ask it.
          if (out.failed && new RegExp(`^${literal(cName(name, call))}: ${arg.name}: `).test(out.msg!)) {
            assert.is(out.after, out.before, `${label}: an argument refused, the state is unchanged`);
          }
          if (!compared) continue;
          pyCases.push({ state, call: cName(name, call).slice(4), args: py, fresh });
          pyOutcomes.push({ key: label, ts: out });
        }
      });
    }
  }
  const results = runPython(pyCases);
  let compared = 0;
  const disagree: string[] = [];
  results.forEach((py, k) => {
    const { key, ts } = pyOutcomes[k]!;
    if ("missing" in py || "py" in py) return; // python's binding refused the value itself
    compared++;
    const want = "errno" in py ? `errno ${py.errno} (${py.msg}), then ${py.after}` : `success, then ${py.after}`;
    const got = ts.failed ? `errno ${ts.errno} (${ts.msg}), then ${ts.after}` : `success, then ${ts.after}`;
    const same = ("errno" in py) === ts.failed && (!ts.failed || ts.errno === (py as { errno: number }).errno) && ts.after === py.after;
    if (!same && !notAs114(key, py, ts) && !inBackground(key, py, ts)) disagree.push(`${key}: libnbd ${want}; nbd-ts ${got}`);
  });
  assert.equal(disagree, [], "the same errno and state as libnbd 1.14");
  assert.ok(wrongType > 2000, `${wrongType} wrong-type cases`);
  assert.ok(compared > 300, `${compared} cases compared with libnbd`);
  figures.push(`values: ${wrongType} wrong-type cases, ${pyCases.length} right-type cases of which ${compared} compared with libnbd 1.14, which lacks ${calls.filter(([n, c]) => !PY_CALLS.has(cName(n, c).slice(4))).length} of the ${calls.length} calls`);
});

test("every call in every state it is not permitted in: libnbd's state error, the state unchanged, the same errno as libnbd", () => {
  const handles = new Handles();
  const pyCases: Case[] = [];
  const keys: string[] = [];
  const ours: Outcome[] = [];
  let checked = 0;
  const perState = new Map<StateName, number>();
  for (const state of STATES) {
    for (const [name, call] of calls) {
      if (permitted(call, state)) continue;
      const h = handles.get(state);
      const args = allArgs(call).map(plausible);
      const label = `${name} in ${state}`;
      const errnum = state === "START" ? errno.ENOTCONN : errno.EINVAL;
      const out = attempt(h, name, args, label);
      assert.ok(out.failed, `${label} fails`);
      assert.is(out.errno, errnum, `${label}: ${out.msg}`);
      assert.is(out.msg, stateError(name, state, errnum));
      assert.is(out.after, state, `${label}: the state is unchanged`);
      checked++;
      perState.set(state, (perState.get(state) ?? 0) + 1);
      const py = allArgs(call).map((a, j) => pyArg(a, args[j]));
      pyCases.push({ state, call: cName(name, call).slice(4), args: py });
      keys.push(label);
      ours.push(out);
    }
  }
  const results = runPython(pyCases);
  const disagree: string[] = [];
  let compared = 0;
  results.forEach((py, k) => {
    if ("missing" in py || "py" in py) return;
    compared++;
    const ts = ours[k]!;
    if (!("errno" in py) || py.errno !== ts.errno || py.after !== ts.after) {
      if (!notAs114(keys[k]!, py, ts)) {
        disagree.push(`${keys[k]}: libnbd ${"errno" in py ? `errno ${py.errno} (${py.msg})` : "succeeds"}, then ${py.after}`);
      }
    }
  });
  assert.equal(disagree, [], "libnbd 1.14 refuses the same calls with the same errno");
  for (const s of STATES) assert.ok((perState.get(s) ?? 0) >= 10, `${s}: ${perState.get(s)} calls refused`);
  assert.ok(compared > 200, `${compared} compared`);
  figures.push(`states: ${checked} wrong-state calls (${[...perState].map(([s, n]) => `${s} ${n}`).join(", ")}), ${compared} compared with libnbd 1.14`);
});

test.after(() => {
  if (process.env.FAULT_FIGURES) console.log(`\n# bad input: ${figures.join("; ")}`);
});

test.run();
