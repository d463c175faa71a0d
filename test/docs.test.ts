/**
 * The API documentation: the generated files are what the table renders
 * today; every method, function and constant a user can import carries
 * TSDoc in the declarations their editor reads (dist/src/*.d.ts); and the
 * errnos each call's docs promise include the ones it really fails with.
 */
import { readFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { METHODS_FILE, PAGE_FILE, ROOT, apiPage, constantDocs, methodsSource } from "../src/api/gen-docs.js";
import { describe } from "../src/api/describe.js";
import { API, HANDWRITTEN, type CallName } from "../src/api/table.js";
import type { Arg, Call } from "../src/api/types.js";
import { errnoName } from "../src/errno.js";
import { setError } from "../src/errors.js";
import * as nbd from "nbd-ts";
import * as nbdAsync from "nbd-ts/async";
import { newHandle, nbdkit } from "./handles.js";

const read = (path: string): string => readFileSync(`${ROOT}${path}`, "utf8");
const calls = Object.entries(API) as [CallName, Call][];

/**
 * The doc comments of a .d.ts as tsc emits it: "Scope.member" for members of
 * a top-level class or interface, "name" for top-level declarations.
 */
function docsOf(dts: string): Map<string, string> {
  const docs = new Map<string, string>();
  const lines = dts.split("\n");
  let scope = "";
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const opens = line.match(/^export (?:declare )?(?:class|interface) (\w+)/);
    if (opens) scope = opens[1]!;
    if (line === "}") scope = "";
    if (!line.trimStart().startsWith("/**")) continue;
    let doc = line;
    while (!lines[i]!.includes("*/")) doc += "\n" + lines[++i];
    const decl = lines[i + 1] ?? "";
    const name = decl.match(/^\s*(?:export\s+)?(?:declare\s+)?(?:(?:function|class|interface|const|let|type|readonly|async)\s+)*(\[[^\]]+\]|[\w$]+)/)?.[1];
    if (!name) continue;
    const top = !/^\s/.test(decl);
    if (top && /^export (?:declare )?(?:class|interface) /.test(decl)) scope = name;
    docs.set(top ? name : `${scope}.${name}`, doc.replace(/^\s*\/?\*+\/?/gm, "").trim());
  }
  return docs;
}

const dts = (module: string) => docsOf(read(`dist/src/${module}.d.ts`));

/** The top-level docs of a module and of the modules it re-exports from. */
function exportedDocs(module: string): Map<string, string> {
  const docs = dts(module);
  for (const m of read(`dist/src/${module}.d.ts`).matchAll(/^export (?:\*|\{[^}]*\}) from "\.\/(.+)\.js";$/gm)) {
    for (const [k, v] of dts(m[1]!)) if (!k.includes(".")) docs.set(k, v);
  }
  return docs;
}

test("src/api/handle-methods.ts and docs/api.md are what the table renders (else: npm run docs)", () => {
  assert.fixture(read(METHODS_FILE), methodsSource(), `${METHODS_FILE} is stale: run npm run docs`);
  assert.fixture(read(PAGE_FILE), apiPage(), `${PAGE_FILE} is stale: run npm run docs`);
});

test("each call's TSDoc has its summary, C name, version, states, arguments, return value and manual page", () => {
  const methods = dts("api/handle-methods");
  for (const [key, call] of calls) {
    for (const [scope, mode] of [["HandleMethods", "sync"], ["AsyncMethods", "async"]] as const) {
      const doc = methods.get(`${scope}.${key}`);
      assert.ok(doc, `${scope}.${key} has no TSDoc in the emitted declarations`);
      const d = describe(key, call, mode);
      assert.ok(doc!.startsWith(d.summary), `${key}: summary`);
      assert.ok(doc!.includes(`\`${d.c}\`, ${call.since === "nbd-ts" ? "nbd-ts" : `libnbd ${call.since}`}`), `${key}: C name and version`);
      assert.ok(doc!.includes(`Permitted ${d.states}.`), `${key}: states`);
      for (const arg of [...call.args, ...(call.optargs ?? [])] as Arg[]) assert.ok(doc!.includes(`@param ${arg.name} - `), `${key}: @param ${arg.name}`);
      assert.ok(doc!.includes(mode === "sync" ? "@returns " : "@returns a promise of "), `${key}: @returns`);
      if (call.since !== "nbd-ts") assert.ok(doc!.includes(`https://libguestfs.org/${d.c}.3.html`), `${key}: manual page`);
      for (const e of d.errors) assert.ok(doc!.includes(`\`${e.errno}\``), `${key}: ${e.errno}`);
    }
  }
  const page = read(PAGE_FILE);
  for (const [key, call] of calls) assert.ok(page.includes(`<a id="${describe(key, call, "sync").c}"></a>`), `${key} in ${PAGE_FILE}`);
  for (const c of Object.keys(HANDWRITTEN)) assert.ok(page.includes(`<a id="${c}"></a>`), `${c} in ${PAGE_FILE}`);
});

test("every method of Handle and AsyncHandle carries its call's name (a REPL shows h.pread as pread)", () => {
  for (const name of Object.keys(API)) {
    assert.is((nbd.Handle.prototype as unknown as Record<string, { name: string }>)[name]!.name, name);
    assert.is((nbdAsync.AsyncHandle.prototype as unknown as Record<string, { name: string }>)[name]!.name, name);
  }
});

test("every method of Handle and AsyncHandle is documented", () => {
  const sync = new Map([...dts("handle"), ...dts("api/handle-methods")]);
  const async = new Map([...dts("async"), ...dts("api/handle-methods")]);
  for (const [cls, docs, methods] of [
    ["Handle", sync, "HandleMethods"], ["AsyncHandle", async, "AsyncMethods"],
  ] as const) {
    const proto = (cls === "Handle" ? nbd.Handle : nbdAsync.AsyncHandle).prototype;
    const symbol = (s: symbol) => (s === Symbol.dispose ? "[Symbol.dispose]" : s === Symbol.asyncDispose ? "[Symbol.asyncDispose]" : String(s));
    const names = [...Object.getOwnPropertyNames(proto), ...Object.getOwnPropertySymbols(proto).map(symbol)]
      .filter((n) => n !== "constructor");
    assert.ok(names.length > calls.length, `${cls} has its calls`);
    for (const n of names) {
      assert.ok(docs.get(`${cls}.${n}`) || docs.get(`${methods}.${n}`), `${cls}.${n} has no TSDoc`);
    }
  }
});

test("every function and constant that nbd-ts and nbd-ts/async export is documented", () => {
  const constants = constantDocs();
  for (const [module, exports] of [["index", nbd], ["async", nbdAsync]] as const) {
    const docs = exportedDocs(module);
    for (const [name, value] of Object.entries(exports)) {
      if (typeof value === "function") assert.ok(docs.get(name), `${module}: ${name} has no TSDoc`);
      else {
        assert.ok(docs.get(name), `${module}: constant ${name} has no TSDoc`);
        assert.ok(constants.get(name), `${name} is missing from ${PAGE_FILE}'s constants`);
      }
    }
  }
});

const UNTOUCHED = "(no call has failed since)";

/** Runs every call listed on `h` with `args(arg)` for each argument; a failure's errno must be in its docs. */
function errnosAreDocumented(h: nbd.Handle, keys: CallName[], value: (arg: Arg) => unknown): Set<CallName> {
  const failed = new Set<CallName>();
  for (const key of keys) {
    const call: Call = API[key];
    const args = [...call.args, ...(call.optargs ?? [])].map(value);
    setError(UNTOUCHED, 0); // a call that succeeds leaves the last error alone
    (h as unknown as Record<string, (...a: unknown[]) => unknown>)[key]!(...args);
    if (nbd.getError() === UNTOUCHED) continue;
    failed.add(key);
    const documented = describe(key, call, "sync").errors.map((e) => e.errno as string);
    const got = errnoName(nbd.getErrno()) ?? String(nbd.getErrno());
    assert.ok(documented.includes(got), `${key} failed with ${got} (${nbd.getError()}), which its docs do not list: ${documented.join(", ")}`);
  }
  return failed;
}

test("the errnos calls fail with on a new handle, given nothing, are the ones their docs list", () => {
  const h = newHandle();
  const failed = errnosAreDocumented(h, calls.map(([k]) => k), () => undefined);
  // At least every call a new handle may not make, and every call with a required argument (flags default to 0).
  for (const [key, call] of calls) {
    const required = call.args.some((arg: Arg) => arg.kind !== "flags");
    if ((call.states && !call.states.includes("created")) || required) assert.ok(failed.has(key), `${key} failed`);
  }
});

test("the errnos calls fail with when connected, given wrong types, are the ones their docs list", () => {
  const h = nbdkit(["memory", "1M"]);
  const keep = (k: CallName) => k !== "shutdown" && k !== "aioDisconnect"; // they would end the connection
  const failed = errnosAreDocumented(h, calls.map(([k]) => k).filter(keep), () => "x");
  // At least every call that a connected handle may not make, and every call with an argument "x" cannot be.
  const stringy = new Set(["string", "path", "port"]);
  for (const [key, call] of calls.filter(([k]) => keep(k))) {
    const wrong = [...call.args, ...(call.optargs ?? [])].some((a: Arg) => !stringy.has(a.kind));
    if ((call.states && !call.states.includes("connected")) || wrong) assert.ok(failed.has(key), `${key} failed`);
  }
});

test("the errnos commands fail with past the end of a connected export are the ones their docs list", () => {
  const h = nbdkit(["memory", "1M"]);
  // The connected-only calls that take a range.
  const commands = calls.filter(([, c]) => c.states?.join() === "connected" && c.args.some((a: Arg) => a.name === "offset")).map(([k]) => k);
  const value = (arg: Arg): unknown => {
    switch (arg.kind) {
      case "uint64": return 1n << 40n; // far past the end
      case "bytesIn": case "bytesOut": case "bytesPersistIn": case "bytesPersistOut": return new Uint8Array(512);
      case "closure": return () => 0;
      case "stringList": return ["base:allocation"];
      default: return undefined;
    }
  };
  const failed = errnosAreDocumented(h, commands, value);
  assert.equal([...failed], commands, "every command refuses a range past the end");
});

test.run();
