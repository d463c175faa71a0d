/**
 * The debug flag, LIBNBD_DEBUG and the debug callback (T08: libnbd's
 * debug.c, debug-environment.c, python 600-debug-callback and
 * 140-explicit-close). Where libnbd 1.14 (python3-libnbd) can say what the
 * messages are for the same calls, on stderr or through a callback, its
 * words are the expected ones. Child scripts import the built package by
 * absolute path.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { create, getErrno, getError, STRICT_MASK, TLS_DISABLE } from "nbd-ts";
import * as nbdAsync from "nbd-ts/async";
import { errno } from "../src/errno.js";
import { scratchPath } from "./helpers.js";

delete process.env.LIBNBD_DEBUG; // this file decides where debugging is on

const INDEX = new URL("../src/index.js", import.meta.url).href;
const ASYNC = new URL("../src/async.js", import.meta.url).href;
const NBDKIT = ["nbdkit", "-s", "--exit-with-parent", "memory", "1M"];

type Msg = [string, string];

/** Runs a script (an .mjs in the scratch dir) with LIBNBD_DEBUG as given (undefined: unset). */
function child(name: string, source: string, debug: string | undefined, interpreter = process.execPath) {
  const path = scratchPath(name);
  writeFileSync(path, source);
  const env = { ...process.env };
  delete env.LIBNBD_DEBUG;
  if (debug !== undefined) env.LIBNBD_DEBUG = debug;
  const r = spawnSync(interpreter, [path], { env, encoding: "utf8", timeout: 30_000 });
  assert.is(r.status, 0, `${name} (LIBNBD_DEBUG=${String(debug)}) failed: ${r.stderr} ${String(r.error ?? "")}`);
  return r;
}

/** libnbd's debug lines on stderr: [handle name, context, message]. */
function debugLines(stderr: string): [string, string, string][] {
  return stderr.split("\n").flatMap((line) => {
    const m = /^libnbd: debug: ([^:]+): ([^:]+): (.*)$/.exec(line);
    return m ? [[m[1]!, m[2]!, m[3]!] as [string, string, string]] : [];
  });
}

/** What nbd-ts says in every case: call traces, and the handle opening and closing. */
const traced = (msg: string) => /^(enter:|leave: |opening handle$|closing handle$)/.test(msg);

// ---- the flag --------------------------------------------------------------------

test("set_debug / get_debug round trip (debug.c); off on a new handle", () => {
  const h = create()!;
  assert.is(h.setDebugCallback(() => 0), 0); // keeps the traces off this file's stderr
  assert.is(h.getDebug(), 0);
  assert.is(h.setDebug(true), 0);
  assert.is(h.getDebug(), 1);
  assert.is(h.setDebug(false), 0);
  assert.is(h.getDebug(), 0);
  // Each handle has its own flag.
  const other = create()!;
  assert.is(h.setDebug(true), 0);
  assert.is(other.getDebug(), 0);
  other.close();
  h.close();
  // A closed handle answers with the error value and EINVAL (API.md).
  assert.is(h.getDebug(), -1);
  assert.is(getErrno(), errno.EINVAL);
  assert.is(getError(), "nbd_get_debug: invalid state: the handle has been closed: Invalid argument");
  assert.is(h.setDebug(true), -1);
});

test("LIBNBD_DEBUG=1 at create turns debugging on; \"0\", \"\", \"true\" and unset do not (debug-environment.c)", () => {
  const script = `
import { create } from ${JSON.stringify(INDEX)};
import { create as createAsync } from ${JSON.stringify(ASYNC)};
const h = create();
const a = createAsync();
console.log(JSON.stringify({ sync: h.getDebug(), async: await a.getDebug() }));
h.close();
await a.close();
`;
  const py = "import nbd\nprint(nbd.NBD().get_debug())\n";
  for (const [value, on] of [["1", true], ["0", false], ["", false], ["true", false], [undefined, false]] as const) {
    const r = child("env.mjs", script, value);
    assert.equal(JSON.parse(r.stdout), { sync: on ? 1 : 0, async: on ? 1 : 0 }, `LIBNBD_DEBUG=${String(value)}`);
    // With it on and no callback, the messages go to stderr: two handles, each opened and closed.
    const lines = debugLines(r.stderr);
    if (!on) assert.equal(lines, [], `LIBNBD_DEBUG=${String(value)}: nothing on stderr`);
    else {
      assert.equal(lines.filter(([, , m]) => /handle$/.test(m)).map(([, c, m]) => `${c}: ${m}`),
        ["nbd_create: opening handle", "nbd_create: opening handle", "nbd_close: closing handle", "nbd_close: closing handle"]);
    }
    // libnbd reads the variable the same way.
    const p = child("env.py", py, value, "/usr/bin/python3");
    assert.is(p.stdout.trim(), on ? "True" : "False", `python3-libnbd, LIBNBD_DEBUG=${String(value)}`);
  }
});

// ---- stderr: libnbd's format, libnbd's words --------------------------------------

test("with debugging on and no callback, stderr has libnbd's lines: the same as python3-libnbd's for the same calls", () => {
  const ours = child("stderr.mjs", `
import { create } from ${JSON.stringify(INDEX)};
const h = create();
const buf = new Uint8Array(512);
h.connectCommand(${JSON.stringify(NBDKIT)});
h.getSize();
h.isReadOnly();
h.pread(buf, 0);
h.pread(buf, 1048576);
h.flush();
h.zero(512, 0);
h.getExportName();
h.getProtocol();
h.setTls(${TLS_DISABLE});
h.shutdown();
h.close();
`, "1");
  const theirs = child("stderr.py", `
import nbd
h = nbd.NBD()
h.connect_command(${JSON.stringify(NBDKIT)})
h.get_size()
h.is_read_only()
h.pread(512, 0)
try:
    h.pread(512, 1048576)
except nbd.Error:
    pass
h.flush()
h.zero(512, 0)
h.get_export_name()
h.get_protocol()
try:
    h.set_tls(${TLS_DISABLE})
except nbd.Error:
    pass
h.shutdown()
del h
`, "1", "/usr/bin/python3");
  const mine = debugLines(ours.stderr);
  // Every line of nbd-ts is "libnbd: debug: nbd1: nbd_<call>: ...", the first one opens the handle.
  assert.equal(ours.stderr.split("\n").filter((l) => l !== "" && !l.startsWith("libnbd: debug: ")), [], "nothing else on stderr");
  assert.ok(mine.length > 20, `${mine.length} lines`);
  assert.equal(mine[0], ["nbd1", "nbd_create", "opening handle"]);
  assert.equal(mine.at(-1), ["nbd1", "nbd_close", "closing handle"]);
  for (const [name, context, msg] of mine) {
    assert.is(name, "nbd1");
    assert.match(context, /^nbd_[a-z0-9_]+$/);
    assert.ok(traced(msg), `an unexpected message: ${context}: ${msg}`);
  }
  assert.ok(mine.some(([, c, m]) => c === "nbd_pread" && m === 'leave: error="nbd_pread: request out of bounds: Invalid argument"'));
  // python3-libnbd made two handles of its own first; the one that connected is ours.
  const pyLines = debugLines(theirs.stderr);
  const handle = pyLines.find(([, c]) => c === "nbd_connect_command")![0];
  const expected = pyLines.filter(([n, , m]) => n === handle && traced(m)).map(([, c, m]) => [c, m]);
  assert.equal(mine.map(([, c, m]) => [c, m]), expected);
});

// ---- the debug callback -------------------------------------------------------------

/** The same calls through nbd-ts (`h`, blocking or async) and through python3-libnbd's callback. */
const CALLBACK_CALLS = `
h.set_export_name("x")
h.get_export_name()
h.set_full_info(True)
h.get_full_info()
h.add_meta_context("base:allocation")
h.get_meta_context(0)
h.get_nr_meta_contexts()
h.set_handshake_flags(1)
h.set_strict_mode(${STRICT_MASK & 0x1f})
h.get_tls()
try:
    h.set_tls(7)
except nbd.Error:
    pass
try:
    h.get_size()
except nbd.Error:
    pass
h.connect_command(${JSON.stringify(NBDKIT)})
h.pread(512, 0)
h.clear_debug_callback()
h.set_debug(False)
h.get_export_name()
`;

function pythonCallbackMessages(): Msg[] {
  const r = child("callback.py", `
import json, nbd
h = nbd.NBD()
h.set_debug(True)
msgs = []
h.set_debug_callback(lambda c, m: msgs.append([c, m]))
${CALLBACK_CALLS}
h.shutdown()
print(json.dumps(msgs))
`, undefined, "/usr/bin/python3");
  return (JSON.parse(r.stdout) as Msg[]).filter(([, m]) => traced(m));
}

test("the debug callback gets (context, message) in order, enter/leave traces included; clear stops it (py 600)", () => {
  const h = create()!;
  const quiet: Msg[] = [];
  assert.is(h.setDebugCallback((c, m) => (quiet.push([c, m]), 0)), 0);
  assert.is(h.setExportName("quiet"), 0);
  assert.equal(quiet, [], "nothing while the debug flag is off");
  assert.is(h.setDebug(true), 0);
  assert.equal(quiet, [["nbd_set_debug", "leave: ret=0"]], "set_debug(true) is heard from its leave on");
  const msgs: Msg[] = [];
  assert.is(h.setDebugCallback((c, m) => {
    assert.type(c, "string");
    assert.type(m, "string");
    msgs.push([c, m]);
    return 0;
  }), 0);
  // The calls of CALLBACK_CALLS.
  assert.is(h.setExportName("x"), 0);
  assert.is(h.getExportName(), "x");
  assert.is(h.setFullInfo(true), 0);
  assert.is(h.getFullInfo(), 1);
  assert.is(h.addMetaContext("base:allocation"), 0);
  assert.is(h.getMetaContext(0), "base:allocation");
  assert.is(h.getNrMetaContexts(), 1);
  assert.is(h.setHandshakeFlags(1), 0);
  assert.is(h.setStrictMode(STRICT_MASK & 0x1f), 0);
  assert.is(h.getTls(), 0);
  assert.is(h.setTls(7), -1);
  assert.is(h.getSize(), -1n);
  assert.is(h.connectCommand(NBDKIT), 0, String(getError()));
  assert.is(h.pread(new Uint8Array(512), 0), 0);
  assert.is(h.clearDebugCallback(), 0);
  assert.is(h.setDebug(false), 0); // (the clear's leave and this enter go to stderr, as in libnbd)
  assert.is(h.getExportName(), "x");
  assert.is(h.shutdown(), 0);
  assert.equal(quiet.at(-1), ["nbd_set_debug_callback", "enter: debug=<fun>"], "the replaced callback heard the enter");

  assert.equal(msgs[0], ["nbd_set_debug_callback", "leave: ret=0"], "the new callback hears its own call leave");
  assert.ok(msgs.some(([c, m]) => c === "nbd_set_tls" && m === 'leave: error="nbd_set_tls: tls: invalid value for parameter: 7: Invalid argument"'));
  assert.ok(msgs.some(([c, m]) => c === "nbd_connect_command" && m === `enter: argv=${JSON.stringify(NBDKIT).replace(/,/g, ", ")}`));
  assert.equal(msgs.at(-1), ["nbd_clear_debug_callback", "enter:"], "the last message is the clear's own enter");
  assert.equal(msgs, pythonCallbackMessages(), "the messages libnbd gives for the same calls");
  h.close();
  assert.ok(!msgs.some(([, m]) => /^closing/.test(m)), "cleared: not even the closing message");
});

test("closing the handle emits exactly one message matching /^closing/ (T08, py 140); none with debugging off", () => {
  for (const connect of [false, true]) {
    const h = create()!;
    const msgs: Msg[] = [];
    assert.is(h.setDebugCallback((c, m) => (msgs.push([c, m]), 0)), 0);
    assert.is(h.setDebug(true), 0);
    if (connect) assert.is(h.connectCommand(NBDKIT), 0, String(getError()));
    h.close();
    assert.equal(msgs.filter(([, m]) => /^closing/.test(m)), [["nbd_close", "closing handle"]], `connected: ${connect}`);
    assert.equal(msgs.at(-1), ["nbd_close", "closing handle"]);
    const n = msgs.length;
    assert.is(h.setExportName("y"), -1, "a closed handle");
    h.close();
    assert.is(msgs.length, n, "nothing after the close");
  }
  const h = create()!;
  const msgs: Msg[] = [];
  assert.is(h.setDebugCallback((c, m) => (msgs.push([c, m]), 0)), 0);
  h.close();
  assert.equal(msgs, [], "debug flag off: the callback hears nothing");
});

test("a debug callback that throws or returns -1 fails nothing", () => {
  for (const how of ["throw", "-1"] as const) {
    const h = create()!;
    let calls = 0;
    assert.is(h.setDebugCallback(() => {
      calls++;
      if (how === "throw") throw new Error("debug callback exploded");
      return -1;
    }), 0);
    assert.is(h.setDebug(true), 0, `${how}: ${getError()}`);
    assert.is(h.setExportName("x"), 0, `${how}: ${getError()}`);
    assert.is(h.getExportName(), "x");
    assert.is(h.connectCommand(NBDKIT), 0, `${how}: ${getError()}`);
    const buf = new Uint8Array(512).fill(1);
    assert.is(h.pread(buf, 0), 0, `${how}: ${getError()}`);
    assert.ok(buf.every((b) => b === 0));
    assert.is(h.getSize(), 1048576n);
    assert.ok(calls >= 10, `${how}: the callback ran (${calls} calls)`);
    // A real failure still reports its own error, not the callback's.
    assert.is(h.pread(buf, 1048576), -1);
    assert.is(getError(), "nbd_pread: request out of bounds: Invalid argument");
    assert.is(getErrno(), errno.EINVAL);
    h.close();
  }
});

// ---- the Promise API --------------------------------------------------------------

test("the Promise API calls the debug callback directly, with the same messages as the blocking API", async () => {
  const a = nbdAsync.create();
  const msgs: Msg[] = [];
  await a.setDebugCallback((c, m) => (msgs.push([c, m]), 0));
  await a.setDebug(true);
  // Called on this thread while the call runs: the enter message is there before the Promise settles.
  const pending = a.getExportName();
  assert.equal(msgs.findLast(([, m]) => m.startsWith("enter")), ["nbd_get_export_name", "enter:"], "called synchronously, before any await");
  assert.is(await pending, "");
  assert.equal(msgs.at(-1), ["nbd_get_export_name", 'leave: ret=""']);

  // The same sequence as through the blocking API.
  const run = async (h: {
    setExportName(n: string): unknown; getExportName(): unknown; setTls(t: number): unknown;
    connectCommand(argv: string[]): unknown; pread(b: Uint8Array, o: number): unknown;
  }) => {
    await h.setExportName("x");
    await h.getExportName();
    try { await h.setTls(7); } catch { /* rejects, as the blocking call returns -1 */ }
    await h.connectCommand(NBDKIT);
    try { await h.pread(new Uint8Array(512), 1048576); } catch { /* out of bounds */ }
    await h.pread(new Uint8Array(512), 0);
  };
  const from = msgs.length;
  await run(a);
  const asyncMsgs = msgs.slice(from);
  const h = create()!;
  const syncMsgs: Msg[] = [];
  assert.is(h.setDebugCallback((c, m) => (syncMsgs.push([c, m]), 0)), 0);
  assert.is(h.setDebug(true), 0);
  syncMsgs.length = 0;
  await run(h);
  assert.ok(asyncMsgs.length >= 12, `${asyncMsgs.length} messages`);
  assert.equal(asyncMsgs, syncMsgs);
  h.close();

  // A throwing callback rejects nothing; closing says so once.
  await a.setDebugCallback(() => { throw new Error("debug callback exploded"); });
  assert.is(await a.getSize(), 1048576n);
  const closing: Msg[] = [];
  await a.setDebugCallback((c, m) => (closing.push([c, m]), 0));
  await a.close();
  assert.equal(closing.filter(([, m]) => /^closing/.test(m)), [["nbd_close", "closing handle"]]);
  await a.close(); // twice is harmless
  try {
    await a.getDebug();
    assert.unreachable("a closed async handle rejects");
  } catch (e) {
    assert.instance(e, nbdAsync.NbdError);
    assert.is((e as nbdAsync.NbdError).errno, errno.EINVAL);
  }
});

test.run();
