/**
 * python3-libnbd (libnbd 1.14) as the oracle: the plumbing the test files
 * share. A file writes its Python script (which reads JSON on stdin and
 * writes JSON on stdout) and the nbd-ts side of the same calls; this module
 * runs the script, names calls the same way on both sides, and runs a spec
 * (settings, connect, ops) on an nbd-ts handle in the shape the script
 * answers in.
 */
import { spawnSync } from "node:child_process";
import { getErrno, getError, type Handle } from "nbd-ts";

/** One call: [python name, ...args]. */
export type Op = [string, ...unknown[]];
export type Result = { ok: unknown } | { err: string | null; errno: number };

/** Runs `script` in /usr/bin/python3 with `input` (if any) as JSON on stdin; its stdout, parsed. Throws if it fails. */
export function python<T>(script: string, input?: unknown): T {
  const r = spawnSync("/usr/bin/python3", ["-c", script], { input: JSON.stringify(input), encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) throw new Error(`python3-libnbd failed: ${r.stderr || r.error}`);
  return JSON.parse(r.stdout) as T;
}

/** A Python function for scripts: res(f) is f()'s result in the shape of Result (booleans as 0/1). */
export const PY_RES = String.raw`
def res(f):
    try:
        r = f()
        return {"ok": 0 if r is None else int(r) if isinstance(r, bool) else r}
    except nbd.Error as e:
        return {"err": e.string, "errno": e.errnum}
`;

/** python3-libnbd's method name to nbd-ts's: opt_list → optList. */
export const camel = (s: string): string => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** Calls `name` on `h` with `args` as they are, in python's shape: -1, -1n or null is an error. */
export function call(h: Handle, [name, ...args]: Op): Result {
  const ret = (h as unknown as Record<string, (...a: unknown[]) => unknown>)[camel(name)]!(...args);
  if (ret === -1 || ret === -1n || ret === null) return { err: getError(), errno: getErrno() };
  return { ok: typeof ret === "bigint" ? Number(ret) : ret };
}

/**
 * A spec oracle's script. `defs` is the file's own `call(h, op)`; it may
 * use `norm`, which puts a python answer in the shape of `call` here (None
 * → 0, bool → int, bytes → hex). The script reads specs on stdin and, for
 * each, makes a fresh handle, applies its settings, connects (when it has
 * an argv; else the ops run on a handle that never connects), and runs its
 * ops if the connect worked; it writes a Run per spec.
 */
export const specScript = (defs: string): string => String.raw`
import json, sys, nbd
def norm(v):
    if v is None: return 0
    if isinstance(v, bool): return int(v)
    if isinstance(v, (bytes, bytearray)): return bytes(v).hex()
    return v
` + defs.replace(/^\n/, "") + String.raw`
out = []
for spec in json.load(sys.stdin):
    h = nbd.NBD()
    res = {"settings": [call(h, op) for op in spec.get("settings", [])]}
    if "argv" in spec:
        res["connect"] = call(h, ["connect_systemd_socket_activation" if spec.get("sa") else "connect_command", spec["argv"]])
    res["ops"] = [call(h, op) for op in spec["ops"]] if "ok" in res.get("connect", {"ok": 0}) else []
    del h
    out.append(res)
json.dump(out, sys.stdout)
`;

/** `argv` omitted: the ops run on a handle that never connects. */
export interface Spec { argv?: string[]; sa?: boolean; settings?: Op[]; ops: Op[] }
export interface Run<R = Result> { settings: R[]; connect?: R; ops: R[] }

/** The nbd-ts side of PY_SPECS on `h`: the same steps, the same shape (no `connect` key without an argv). */
export function runSpec<R extends Result>(h: Handle, spec: Spec, callOn: (h: Handle, op: Op) => R): Run<R> {
  const settings = (spec.settings ?? []).map((op) => callOn(h, op));
  const run: Run<R> = { settings, ops: [] };
  if (spec.argv) run.connect = callOn(h, [spec.sa ? "connect_systemd_socket_activation" : "connect_command", spec.argv]);
  run.ops = !run.connect || "ok" in run.connect ? spec.ops.map((op) => callOn(h, op)) : [];
  return run;
}
