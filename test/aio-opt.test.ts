/**
 * The aio_opt_* calls against real servers (nbdkit: the exportname, delay
 * and pattern plugins; --no-sr; plain newstyle with --mask-handshake 0):
 * each sends its option and returns 0; the handle is connecting until the
 * reply is in, poll drives it, and the completion callback hears the errno
 * (libnbd 1.16+ semantics, lib/opt.c). Where python3-libnbd (libnbd 1.14)
 * has the call, the same steps against the same server must give the same
 * calls, callbacks and states; the 1.16 calls (aio_opt_structured_reply,
 * aio_opt_set_meta_context*, aio_opt_list_meta_context_queries,
 * aio_opt_starttls) and 1.18's aio_opt_extended_headers follow libnbd's
 * source.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { CONTEXT_BASE_ALLOCATION, getErrno, getError, type Handle } from "nbd-ts";
import { create as createAsync } from "nbd-ts/async";
import { errno } from "../src/errno.js";
import { fakeServer, patternAt } from "./fake-server.js";
import { pattern, run, scratchPath, timed } from "./helpers.js";
import { NBDKIT, fails, newHandle } from "./handles.js";
import { camel, PY_RES, python } from "./libnbd.js";

const BASE = CONTEXT_BASE_ALLOCATION;
/** Exports "a" and "b" (described), no other name (not even ""); NBD_OPT_LIST per `list`. */
const exports = (list = "explicit", ...filters: string[]) => [
  ...NBDKIT, "--log=null", "--filter=exportname", ...filters, "pattern", "size=1M",
  "exportname=a", "exportname=b", "exportname-strict=true", `exportname-list=${list}`, "exportdesc=fixed:pattern",
];
const DELAY_MS = 300;
const DELAYED = exports("explicit", "--filter=delay").concat(`delay-open=${DELAY_MS}ms`);
const PLAIN = [...NBDKIT, "--mask-handshake", "0", "pattern", "size=1M"];

// ---- one script of steps, run here and in python3-libnbd ----------------------------

/**
 * A step: a call ([name, ...args]; an aio_opt_* call gets its callbacks
 * added), or ["drive"]: poll while connecting, then log what the callbacks
 * heard (libnbd may call them inside the aio call or a poll, nbd-ts at any
 * call after it: the log does not tell which), the first poll that failed
 * and the state after.
 */
type Step = [string, ...unknown[]];
type Log = unknown[][];

const WITH_LIST = new Set(["aio_opt_list"]);
const WITH_CONTEXT = new Set([
  "aio_opt_list_meta_context", "aio_opt_list_meta_context_queries", "aio_opt_set_meta_context", "aio_opt_set_meta_context_queries",
]);
const WITH_COMPLETION = new Set([
  ...WITH_LIST, ...WITH_CONTEXT, "aio_opt_go", "aio_opt_info", "aio_opt_structured_reply", "aio_opt_starttls", "aio_opt_extended_headers",
]);

const PY_STEPS = String.raw`
import json, sys, nbd
settings, argv, steps = json.load(sys.stdin)
h = nbd.NBD()
for s in settings: getattr(h, s[0])(*s[1:])
h.connect_command(argv)
log = []
${PY_RES}
heard = []
def done(err):
    heard.append(["done", err.value])
    return 0
for step in steps:
    name, args = step[0], step[1:]
    if name == "drive":
        p = None
        while h.aio_is_connecting():
            r = res(lambda: h.poll(-1))
            if "err" in r:
                p = r
                break
        log.extend(heard)
        heard.clear()
        log.append(["drive", p, h.connection_state().split(":")[0]])
        continue
    if name == "aio_opt_list": args = [lambda n, d: (heard.append(["list", n, d]), 0)[1]]
    if name.startswith("aio_opt_") and "meta_context" in name: args = args + [lambda n: (heard.append(["context", n]), 0)[1]]
    if name in (${[...WITH_COMPLETION].map((n) => `"${n}"`).join(", ")}): args = args + [done]
    log.append([name, res(lambda: getattr(h, name)(*args))])
print(json.dumps(log + heard))
`;

function pySteps(argv: string[], steps: Step[], settings: Step[] = [["set_opt_mode", true], ["set_export_name", "a"]]): Log {
  return python<Log>(PY_STEPS, [settings, argv, steps]);
}

const res = (ret: unknown): unknown =>
  ret === -1 || ret === -1n || ret === null ? { err: getError(), errno: getErrno() } : { ok: typeof ret === "bigint" ? Number(ret) : ret };

/** The same steps on an nbd-ts handle. */
function steps(h: Handle, list: Step[]): Log {
  const log: Log = [];
  const heard: Log = [];
  const done = (err: { value: number }) => (heard.push(["done", err.value]), 0);
  for (const [name, ...args] of list) {
    if (name === "drive") {
      let p: unknown = null;
      while (h.aioIsConnecting()) {
        const r = h.poll(-1);
        if (r === -1) {
          p = res(r);
          break;
        }
      }
      // The worker reads replies between calls: a death no poll saw yet is the next poll's to report.
      if (p === null && h.aioIsDead()) p = res(h.poll(-1));
      log.push(...heard.splice(0), ["drive", p, h.connectionState()!.split(":")[0]]);
      continue;
    }
    if (WITH_LIST.has(name)) args.push((n: string, d: string) => (heard.push(["list", n, d]), 0));
    if (WITH_CONTEXT.has(name)) args.push((n: string) => (heard.push(["context", n]), 0));
    if (WITH_COMPLETION.has(name)) args.push(done);
    const fn = (h as unknown as Record<string, (...a: unknown[]) => unknown>)[camel(name)]!;
    log.push([name, res(fn.apply(h, args))]);
  }
  return [...log, ...heard];
}

/** Step logs compared one step a line, so that a difference reads at a glance. */
function sameLog(ours: Log, theirs: Log, what = "python3-libnbd"): void {
  const lines = (log: Log) => log.map((entry) => JSON.stringify(entry)).join("\n");
  assert.fixture(lines(ours), lines(theirs), what);
}

/** A handle in opt mode, negotiating with `argv` (connect_command), its export name "a". */
function negotiating(argv: string[], before?: (h: Handle) => void): Handle {
  const h = newHandle();
  assert.is(h.setOptMode(true), 0);
  assert.is(h.setExportName("a"), 0);
  before?.(h);
  assert.is(h.connectCommand(argv), 0, String(getError()));
  assert.is(h.aioIsNegotiating(), 1);
  return h;
}

// ---- each option, against python3-libnbd 1.14 where it has the call ----------------------

test("aio_opt_list: each export to the list callback, then completion 0 and NEGOTIATING; an error reply is ENOTSUP", () => {
  const script: Step[] = [["aio_opt_list"], ["drive"], ["aio_opt_list"], ["drive"], ["aio_is_negotiating"]];
  const ours = steps(negotiating(exports()), script);
  // nbdkit answers a second NBD_OPT_LIST on the same connection with an error.
  sameLog(ours, [
    ["aio_opt_list", { ok: 0 }], ["list", "a", "pattern"], ["list", "b", "pattern"], ["done", 0], ["drive", null, "NEGOTIATING"],
    ["aio_opt_list", { ok: 0 }], ["done", errno.ENOTSUP], ["drive", null, "NEGOTIATING"],
    ["aio_is_negotiating", { ok: 1 }],
  ]);
  sameLog(ours, pySteps(exports(), script));

  const refused = steps(negotiating(exports("error")), script.slice(0, 2));
  assert.equal(refused, [["aio_opt_list", { ok: 0 }], ["done", errno.ENOTSUP], ["drive", null, "NEGOTIATING"]]);
  sameLog(refused, pySteps(exports("error"), script.slice(0, 2)));
});

test("aio_opt_info, aio_opt_go: an unknown export is ENOENT and stays NEGOTIATING; a known one gives its size, then READY", () => {
  const script: Step[] = [
    ["set_export_name", "nope"], ["aio_opt_info"], ["drive"], ["get_size"],
    ["aio_opt_go"], ["drive"], ["is_read_only"],
    ["set_export_name", "b"], ["aio_opt_info"], ["drive"], ["get_size"], ["get_export_name"],
    ["aio_opt_go"], ["drive"], ["get_size"], ["aio_is_ready"],
  ];
  const h = negotiating(exports());
  const ours = steps(h, script);
  sameLog(ours.slice(0, 4), [
    ["set_export_name", { ok: 0 }], ["aio_opt_info", { ok: 0 }], ["done", errno.ENOENT], ["drive", null, "NEGOTIATING"],
  ]);
  sameLog(ours.slice(-5), [
    ["aio_opt_go", { ok: 0 }], ["done", 0], ["drive", null, "READY"], ["get_size", { ok: 1024 * 1024 }], ["aio_is_ready", { ok: 1 }],
  ]);
  sameLog(ours, pySteps(exports(), script));
  const buf = new Uint8Array(512);
  assert.is(h.pread(buf, 4096), 0, String(getError()));
  assert.equal(buf, pattern(4096, 512));
});

test("aio_opt_list_meta_context: each context to the context callback, then completion 0", () => {
  const script: Step[] = [
    ["aio_opt_list_meta_context"], ["drive"],
    ["add_meta_context", "qemu:nothing"], ["aio_opt_list_meta_context"], ["drive"],
    ["add_meta_context", BASE], ["aio_opt_list_meta_context"], ["drive"],
  ];
  const ours = steps(negotiating(exports()), script);
  sameLog(ours, [
    ["aio_opt_list_meta_context", { ok: 0 }], ["context", BASE], ["done", 0], ["drive", null, "NEGOTIATING"],
    ["add_meta_context", { ok: 0 }], ["aio_opt_list_meta_context", { ok: 0 }], ["done", 0], ["drive", null, "NEGOTIATING"],
    ["add_meta_context", { ok: 0 }], ["aio_opt_list_meta_context", { ok: 0 }], ["context", BASE], ["done", 0], ["drive", null, "NEGOTIATING"],
  ]);
  sameLog(ours, pySteps(exports(), script));
});

test("the 1.16 calls: aio_opt_list_meta_context_queries, aio_opt_set_meta_context(_queries), aio_opt_structured_reply", () => {
  const h = negotiating(exports(), (h) => assert.is(h.setRequestStructuredReplies(false), 0));
  assert.is(h.getStructuredRepliesNegotiated(), 0);
  // Without structured replies the server refuses SET_META_CONTEXT (libnbd 1.18 still asks).
  sameLog(steps(h, [["aio_opt_set_meta_context_queries", [BASE]], ["drive"]]), [
    ["aio_opt_set_meta_context_queries", { ok: 0 }], ["done", errno.ENOTSUP], ["drive", null, "NEGOTIATING"],
  ]);
  sameLog(steps(h, [["aio_opt_structured_reply"], ["drive"], ["get_structured_replies_negotiated"]]), [
    ["aio_opt_structured_reply", { ok: 0 }], ["done", 0], ["drive", null, "NEGOTIATING"], ["get_structured_replies_negotiated", { ok: 1 }],
  ]);
  sameLog(steps(h, [
    ["aio_opt_list_meta_context_queries", ["base:", "x-none:"]], ["drive"],
    ["add_meta_context", BASE], ["aio_opt_set_meta_context"], ["drive"],
    ["aio_opt_set_meta_context_queries", ["x-none:thing", BASE]], ["drive"],
    ["aio_opt_go"], ["drive"], ["can_meta_context", BASE],
  ]), [
    ["aio_opt_list_meta_context_queries", { ok: 0 }], ["context", BASE], ["done", 0], ["drive", null, "NEGOTIATING"],
    ["add_meta_context", { ok: 0 }], ["aio_opt_set_meta_context", { ok: 0 }], ["context", BASE], ["done", 0], ["drive", null, "NEGOTIATING"],
    ["aio_opt_set_meta_context_queries", { ok: 0 }], ["context", BASE], ["done", 0], ["drive", null, "NEGOTIATING"],
    ["aio_opt_go", { ok: 0 }], ["done", 0], ["drive", null, "READY"], ["can_meta_context", { ok: 1 }],
  ]);
  let extents = 0;
  assert.is(h.blockStatus(65536, 0, () => (extents++, 0)), 0, String(getError()));
  assert.is(extents, 1);

  // A server without structured replies refuses them: ENOTSUP, as libnbd's OPT_STRUCTURED_REPLY.CHECK_REPLY.
  const n = negotiating([...NBDKIT, "--no-sr", "pattern", "size=1M"], (h) => assert.is(h.setRequestStructuredReplies(false), 0));
  sameLog(steps(n, [["aio_opt_structured_reply"], ["drive"], ["get_structured_replies_negotiated"]]), [
    ["aio_opt_structured_reply", { ok: 0 }], ["done", errno.ENOTSUP], ["drive", null, "NEGOTIATING"], ["get_structured_replies_negotiated", { ok: 0 }],
  ]);
});

test("aio_opt_abort: 0, and CLOSED at once; nothing is left to poll", () => {
  const script: Step[] = [["aio_opt_abort"], ["aio_is_closed"], ["poll", 0], ["aio_opt_list"]];
  const ours = steps(negotiating(exports()), script);
  sameLog(ours, [
    ["aio_opt_abort", { ok: 0 }], ["aio_is_closed", { ok: 1 }],
    ["poll", { err: "nbd_poll: nothing to poll for in state CLOSED: Invalid argument", errno: errno.EINVAL }],
    ["aio_opt_list", { err: "nbd_aio_opt_list: invalid state: CLOSED: the handle must be negotiating: Invalid argument", errno: errno.EINVAL }],
  ]);
  sameLog(ours, pySteps(exports(), script));
});

test("a plain newstyle server: the options it cannot take fail at once with ENOTSUP; aio_opt_go still reaches READY", () => {
  const script: Step[] = [
    ["get_protocol"], ["aio_opt_list"], ["aio_opt_info"], ["aio_opt_list_meta_context"], ["aio_is_negotiating"],
    ["aio_opt_go"], ["drive"], ["get_size"],
  ];
  const ours = steps(negotiating(PLAIN), script);
  const unsupported = (call: string) => [call, {
    err: `nbd_${call}: server is not using fixed newstyle protocol: Operation not supported`, errno: errno.ENOTSUP,
  }];
  sameLog(ours, [
    ["get_protocol", { ok: "newstyle" }], unsupported("aio_opt_list"), unsupported("aio_opt_info"),
    unsupported("aio_opt_list_meta_context"), ["aio_is_negotiating", { ok: 1 }],
    ["aio_opt_go", { ok: 0 }], ["done", 0], ["drive", null, "READY"], ["get_size", { ok: 1024 * 1024 }],
  ]);
  sameLog(ours, pySteps(PLAIN, script));
  const h = negotiating(PLAIN);
  fails(h.aioOptStructuredReply(), errno.ENOTSUP,
    "nbd_aio_opt_structured_reply: server is not using fixed newstyle protocol: Operation not supported");
  fails(h.aioOptSetMetaContextQueries([BASE], () => 0), errno.ENOTSUP,
    "nbd_aio_opt_set_meta_context_queries: server is not using fixed newstyle protocol: Operation not supported");
  assert.is(h.aioIsNegotiating(), 1);
});

test("the server dies while an option waits: the poll fails, DEAD, and the completion hears why (ENOTCONN for an EOF)", () => {
  const script: Step[] = [["aio_opt_go"], ["kill_subprocess", 9], ["drive"], ["aio_is_dead"]];
  for (const log of [steps(negotiating(DELAYED), script), pySteps(DELAYED, script)]) {
    // The kernel reports the killed peer as EOF or, now and then, as a reset.
    const [, , done, drive, dead] = log as [unknown, unknown, [string, number], [string, { err: string; errno: number }, string], unknown];
    assert.equal(log.slice(0, 2), [["aio_opt_go", { ok: 0 }], ["kill_subprocess", { ok: 0 }]]);
    assert.match(drive[1].err, /^nbd_poll: recv: (server disconnected unexpectedly|Connection reset by peer)$/);
    assert.is(drive[2], "DEAD");
    assert.equal(done, ["done", drive[1].errno || errno.ENOTCONN]);
    assert.equal(dead, ["aio_is_dead", { ok: 1 }]);
  }
});

test("aio_opt_starttls (1.16) and aio_opt_extended_headers (1.18): the completion says whether the server agreed", () => {
  // STARTTLS, against nbdkit with and without TLS (a PSK key made here).
  const psk = scratchPath("keys.psk");
  run("psktool", ["-u", "alice", "-p", psk]);
  const tls = (on: boolean) => negotiating([...NBDKIT, "--log=null", `--tls=${on ? "on" : "off"}`, `--tls-psk=${psk}`, "pattern", "size=1M"], (h) => {
    assert.is(h.setTlsPskFile(psk), 0);
    assert.is(h.setTlsUsername("alice"), 0);
  });
  sameLog(steps(tls(false), [["aio_opt_starttls"], ["drive"], ["get_tls_negotiated"]]), [
    ["aio_opt_starttls", { ok: 0 }], ["done", errno.ENOTSUP], ["drive", null, "NEGOTIATING"], ["get_tls_negotiated", { ok: 0 }],
  ]);
  const t = tls(true);
  sameLog(steps(t, [["aio_opt_starttls"], ["drive"], ["get_tls_negotiated"], ["aio_opt_go"], ["drive"]]), [
    ["aio_opt_starttls", { ok: 0 }], ["done", 0], ["drive", null, "NEGOTIATING"], ["get_tls_negotiated", { ok: 1 }],
    ["aio_opt_go", { ok: 0 }], ["done", 0], ["drive", null, "READY"],
  ]);
  const buf = new Uint8Array(512);
  assert.is(t.pread(buf, 512), 0, String(getError()));
  assert.equal(buf, pattern(512, 512));

  // Extended headers: nbdkit 1.32 does not know the option; the fake server (the codec's) takes it.
  const refused = negotiating(exports(), (h) => assert.is(h.setRequestExtendedHeaders(false), 0));
  sameLog(steps(refused, [["aio_opt_extended_headers"], ["drive"], ["get_extended_headers_negotiated"]]), [
    ["aio_opt_extended_headers", { ok: 0 }], ["done", errno.ENOTSUP], ["drive", null, "NEGOTIATING"], ["get_extended_headers_negotiated", { ok: 0 }],
  ]);
  const agreed = negotiating(fakeServer({ extendedHeaders: true }), (h) => assert.is(h.setRequestExtendedHeaders(false), 0));
  sameLog(steps(agreed, [["aio_opt_extended_headers"], ["drive"], ["get_extended_headers_negotiated"], ["aio_opt_go"], ["drive"]]), [
    ["aio_opt_extended_headers", { ok: 0 }], ["done", 0], ["drive", null, "NEGOTIATING"], ["get_extended_headers_negotiated", { ok: 1 }],
    ["aio_opt_go", { ok: 0 }], ["done", 0], ["drive", null, "READY"],
  ]);
  assert.is(agreed.pread(buf, 4096), 0, String(getError()));
  assert.equal(buf, patternAt(4096n, 512));
});

// ---- in flight -------------------------------------------------------------------------------

test("while the server holds its reply: the call returns at once, CONNECTING, a second option is EINVAL, poll brings the completion", () => {
  const h = negotiating(DELAYED);
  const seen: number[] = [];
  const { value, ms } = timed(() => h.aioOptInfo((err) => (seen.push(err.value), 0)));
  assert.is(value, 0, String(getError()));
  assert.ok(ms < DELAY_MS / 2, `aio_opt_info took ${ms} ms`);
  assert.is(h.aioIsConnecting(), 1);
  assert.is(h.aioIsNegotiating(), 0);
  assert.match(h.connectionState()!, /^CONNECTING: /);
  fails(h.aioOptList(() => 0), errno.EINVAL,
    "nbd_aio_opt_list: invalid state: CONNECTING: the handle must be negotiating: Invalid argument");
  fails(h.optGo(), errno.EINVAL, "nbd_opt_go: invalid state: CONNECTING: the handle must be negotiating: Invalid argument");
  assert.equal(seen, []);
  const t = Date.now();
  while (h.aioIsConnecting()) assert.is(h.poll(-1), 1, String(getError()));
  assert.ok(Date.now() - t >= DELAY_MS / 2, "poll waited for the reply");
  assert.equal(seen, [0]);
  assert.is(h.aioIsNegotiating(), 1);
  assert.is(h.getSize(), 1024n * 1024n);
  // The completion callback is optional.
  assert.is(h.aioOptGo(), 0);
  while (!h.aioIsReady()) assert.is(h.poll(-1), 1, String(getError()));
  assert.equal(seen, [0]);
});

test("callbacks that throw fail nothing: libnbd ignores what an option's callbacks return", () => {
  const h = negotiating(exports());
  const seen: string[] = [];
  assert.is(h.aioOptList((name) => { seen.push(name); throw new Error("list"); }, () => { throw new Error("done"); }), 0);
  while (h.aioIsConnecting()) assert.is(h.poll(-1), 1, String(getError()));
  assert.equal(seen, ["a", "b"]);
  assert.is(h.aioIsNegotiating(), 1);
  assert.is(h.optInfo(), 0, `the next option works: ${getError()}`);
});

test("the wrong state: aio_opt_* need NEGOTIATING", () => {
  const fresh = newHandle();
  fails(fresh.aioOptGo(), errno.ENOTCONN, "nbd_aio_opt_go: invalid state: START: the handle must be negotiating: Transport endpoint is not connected");
  const ready = newHandle();
  assert.is(ready.setExportName("a"), 0);
  assert.is(ready.connectCommand(exports()), 0, String(getError()));
  for (const [call, run] of [
    ["aio_opt_go", () => ready.aioOptGo()], ["aio_opt_info", () => ready.aioOptInfo()], ["aio_opt_abort", () => ready.aioOptAbort()],
    ["aio_opt_list", () => ready.aioOptList(() => 0)], ["aio_opt_structured_reply", () => ready.aioOptStructuredReply()],
    ["aio_opt_list_meta_context", () => ready.aioOptListMetaContext(() => 0)],
  ] as const) {
    fails(run(), errno.EINVAL, `nbd_${call}: invalid state: READY: the handle must be negotiating: Invalid argument`);
  }
});

// ---- the Promise API ----------------------------------------------------------------------

test("nbd-ts/async: aio options with callbacks called directly; a blocking option shows CONNECTING while it waits", async () => {
  const h = createAsync();
  try {
    await h.setOptMode(true);
    await h.setExportName("a");
    await h.connectCommand(DELAYED);
    const log: unknown[] = [];
    assert.is(await h.aioOptList((n, d) => (log.push([n, d]), 0), (err) => (log.push(err.value), 0)), 0);
    while (await h.aioIsConnecting()) await h.poll(-1);
    assert.equal(log, [["a", "pattern"], ["b", "pattern"], 0]);
    // Here the callbacks are called directly: one that throws still fails nothing.
    assert.is(await h.aioOptListMetaContext(() => { throw new Error("context"); }, (err) => (log.push(err.value), 0)), 0);
    while (await h.aioIsConnecting()) await h.poll(-1);
    assert.equal(log.slice(3), [0]);
    log.splice(3);
    const info = h.optInfo();
    assert.is(await h.aioIsConnecting(), 1);
    await info;
    assert.is(await h.aioIsNegotiating(), 1);
    assert.is(await h.aioOptGo((err) => (log.push(err.value), 0)), 0);
    while (await h.aioIsConnecting()) await h.poll(-1);
    assert.equal(log.slice(3), [0]);
    const buf = new Uint8Array(512);
    await h.pread(buf, 0);
    assert.equal(buf, pattern(0, 512));
  } finally {
    await h.close();
  }
});

test.run();
