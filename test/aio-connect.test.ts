/**
 * The aio_connect_* calls against real servers (nbdkit on a Unix socket, TCP,
 * connect_command, socket activation, URIs, a caller's socket): each returns
 * 0 once the transport is up, the handle is connecting, and poll drives it to
 * READY (or NEGOTIATING in opt mode); a handshake that fails shows as a
 * failing poll and a DEAD handle. What python3-libnbd (libnbd 1.14) does with
 * the same calls against the same servers is the expected outcome.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { once } from "node:events";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { getErrno, getError, type Handle } from "nbd-ts";
import { create as createAsync } from "nbd-ts/async";
import { errno } from "../src/errno.js";
import { alive, freePort, nbdkitTcp, nbdkitUnix, pattern, scratchPath, timed, waitFor } from "./helpers.js";
import { NBDKIT, fails, newHandle } from "./handles.js";
import { python, type Result } from "./libnbd.js";

const MiB = 1024 * 1024;
/** nbdkit's delay filter holds the reply to NBD_OPT_GO this long: the handshake is still going when the call returns. */
const DELAY_MS = 300;
const DELAYED = ["--filter=delay", "pattern", "size=1M", `delay-open=${DELAY_MS}ms`];

// ---- driving a connect as libnbd's examples do -------------------------------------

/** What an aio connect came to: the call, the first poll that failed (if one did), and the state once not connecting. */
interface Outcome { call: Result; poll: Result | null; state: string }

const result = (ret: number): Result => (ret === -1 ? { err: getError(), errno: getErrno() } : { ok: ret });

/** Polls while connecting (at most `max` times), as libnbd's wait_until_connected does. */
function drive(h: Handle, call: () => number, max = 100): Outcome & { polls: number } {
  const first = result(call());
  let poll: Result | null = null;
  let polls = 0;
  while (h.aioIsConnecting()) {
    assert.ok(++polls <= max, "still connecting after 100 polls");
    const r = h.poll(-1);
    if (r === -1) {
      poll = result(r);
      break;
    }
  }
  // The worker runs the handshake between calls: if it died before a poll
  // saw it, the next poll reports it (as libnbd's poll found it).
  if (poll === null && "ok" in first && h.aioIsDead()) poll = result(h.poll(-1));
  return { call: first, poll, state: h.connectionState()!.split(":")[0]!, polls };
}

/** An Outcome without the poll count (which libnbd's and ours need not share). */
const outcome = ({ call, poll, state }: Outcome): Outcome => ({ call, poll, state });

/** The same, in python3-libnbd: `settings` are [name, ...args] calls made first. */
function pyDrive(name: string, args: unknown[], settings: unknown[][] = []): Outcome {
  return python<Outcome>(String.raw`
import json, sys, nbd
name, args, settings = json.load(sys.stdin)
h = nbd.NBD()
for s in settings: getattr(h, s[0])(*s[1:])
def res(f):
    try:
        f()
        return {"ok": 0}
    except nbd.Error as e:
        return {"err": e.string, "errno": e.errnum}
call = res(lambda: getattr(h, name)(*args))
poll = None
while h.aio_is_connecting():
    r = res(lambda: h.poll(-1))
    if "err" in r:
        poll = r
        break
print(json.dumps({"call": call, "poll": poll, "state": h.connection_state().split(":")[0]}))
`, [name, args, settings]);
}

/** Reads the first 4 KiB and checks them against nbdkit's pattern plugin. */
function readsPattern(h: Handle): void {
  const buf = new Uint8Array(4096);
  assert.is(h.pread(buf, 8192), 0, String(getError()));
  assert.equal(buf, pattern(8192, 4096));
}

// ---- each transport ---------------------------------------------------------------------

test("aio_connect_unix: 0 at once while the server holds its GO reply; CONNECTING until poll brings READY", () => {
  const srv = nbdkitUnix(...DELAYED);
  const h = newHandle();
  const { value, ms } = timed(() => h.aioConnectUnix(srv.socket));
  assert.is(value, 0, String(getError()));
  assert.ok(ms < DELAY_MS / 2, `aio_connect_unix took ${ms} ms`);
  assert.is(h.aioIsConnecting(), 1);
  assert.match(h.connectionState()!, /^CONNECTING: /);
  assert.is(h.aioIsReady(), 0);
  fails(h.getSize(), errno.EINVAL, "nbd_get_size: invalid state: CONNECTING: the handle must be negotiating, or connected with the server, or shut down: Invalid argument");
  const t = Date.now();
  let polls = 0;
  while (!h.aioIsReady()) {
    assert.is(h.poll(-1), 1, String(getError()));
    polls++;
  }
  assert.ok(polls >= 1 && Date.now() - t >= DELAY_MS / 2, `${polls} polls in ${Date.now() - t} ms`);
  assert.is(h.getSize(), BigInt(MiB));
  readsPattern(h);
  assert.equal(pyDrive("aio_connect_unix", [srv.socket]), { call: { ok: 0 }, poll: null, state: "READY" });
});

test("aio_connect_tcp: READY through poll; a refused port is -1 and START (retryable), a bad host -1 with errno 0", () => {
  const srv = nbdkitTcp(...DELAYED);
  const h = newHandle();
  const out = drive(h, () => h.aioConnectTcp("127.0.0.1", String(srv.port)));
  assert.equal(out, { call: { ok: 0 }, poll: null, state: "READY", polls: out.polls });
  assert.ok(out.polls >= 1);
  readsPattern(h);
  assert.equal(pyDrive("aio_connect_tcp", ["127.0.0.1", String(srv.port)]), { call: { ok: 0 }, poll: null, state: "READY" });

  const port = String(freePort());
  const refused = newHandle();
  const r = drive(refused, () => refused.aioConnectTcp("localhost", port));
  assert.equal(outcome(r), pyDrive("aio_connect_tcp", ["localhost", port]));
  assert.is(r.state, "START");
  // From START the handle can try again, and this time reach a server.
  const again = drive(refused, () => refused.aioConnectTcp("127.0.0.1", String(srv.port)));
  assert.equal(again.state, "READY", String(getError()));

  const nohost = newHandle();
  const n = drive(nohost, () => nohost.aioConnectTcp("no-such-host.invalid", "10809"));
  assert.equal(outcome(n), pyDrive("aio_connect_tcp", ["no-such-host.invalid", "10809"]));
  assert.is((n.call as { errno: number }).errno, 0);
});

test("aio_connect_command: READY through poll; a server that exits shows as a failing poll and DEAD", () => {
  const argv = [...NBDKIT, ...DELAYED];
  const h = newHandle();
  const { value, ms } = timed(() => h.aioConnectCommand(argv));
  assert.is(value, 0, String(getError()));
  assert.ok(ms < DELAY_MS / 2, `aio_connect_command took ${ms} ms`);
  const pid = Number(h.getSubprocessPid());
  assert.ok(alive(pid), "the server runs once the call returns");
  assert.is(h.aioIsConnecting(), 1);
  const out = drive(h, () => 0);
  assert.equal(out.state, "READY");
  readsPattern(h);
  assert.equal(pyDrive("aio_connect_command", [argv]), { call: { ok: 0 }, poll: null, state: "READY" });

  for (const bad of [["false"], ["/nonexistent/prog"]]) {
    const d = newHandle();
    const o = drive(d, () => d.aioConnectCommand(bad));
    assert.equal(o.call, { ok: 0 }, bad[0]);
    // nbd-ts adds what the server last said on stderr, if it said anything.
    assert.match((o.poll as { err: string }).err, /^nbd_poll: recv: server disconnected unexpectedly(: server stderr: .*)?$/);
    assert.is((o.poll as { errno: number }).errno, 0);
    assert.is(o.state, "DEAD");
    // libnbd reads the greeting right after the fork: a server that is gone by then fails the call instead.
    const py = pyDrive("aio_connect_command", [bad]);
    const failed = "ok" in py.call ? py.poll : py.call;
    assert.equal(failed, { err: `nbd_${"ok" in py.call ? "poll" : "aio_connect_command"}: recv: server disconnected unexpectedly`, errno: 0 });
    assert.is(py.state, "DEAD");
    fails(d.poll(0), errno.EINVAL, "nbd_poll: nothing to poll for in state DEAD: Invalid argument");
  }
});

test("a handshake that fails while nobody polls: state queries do not hide it, the next poll reports it", () => {
  const h = newHandle();
  assert.is(h.aioConnectCommand(["false"]), 0);
  waitFor(() => h.aioIsDead() === 1, 5_000, "the handle to die");
  assert.is(h.aioIsConnecting(), 0);
  assert.match(h.connectionState()!, /^DEAD: /);
  fails(h.poll(-1), 0, "nbd_poll: recv: server disconnected unexpectedly");
  fails(h.poll(-1), errno.EINVAL, "nbd_poll: nothing to poll for in state DEAD: Invalid argument");
});

test("aio_connect_systemd_socket_activation: READY through poll, LISTEN_FDNAMES from set_socket_activation_name, close stops the server", () => {
  for (const name of [undefined, "hello"]) {
    const seen = scratchPath(`fdnames-${name ?? "default"}.txt`);
    rmSync(seen, { force: true });
    const h = newHandle();
    if (name) assert.is(h.setSocketActivationName(name), 0);
    const out = drive(h, () => h.aioConnectSystemdSocketActivation(
      ["sh", "-c", `printf %s "$LISTEN_FDNAMES" > '${seen}'; exec nbdkit -f ${DELAYED.join(" ")}`]));
    assert.equal(out, { call: { ok: 0 }, poll: null, state: "READY", polls: out.polls });
    assert.is(readFileSync(seen, "utf8"), name ?? "unknown");
    readsPattern(h);
    const pid = Number(h.getSubprocessPid());
    const sock = /[?&]socket=([^&]+)/.exec(h.getUri()!)?.[1];
    assert.ok(sock && existsSync(decodeURIComponent(sock)), `socket of ${h.getUri()}`);
    h.close();
    assert.not.ok(alive(pid), `server ${pid} survived close()`);
    assert.not.ok(existsSync(decodeURIComponent(sock!)), "close() removed the socket");
  }
  const sa = ["nbdkit", "-f", "--exit-with-parent", "pattern", "size=1M"];
  assert.equal(pyDrive("aio_connect_systemd_socket_activation", [sa]), { call: { ok: 0 }, poll: null, state: "READY" });

  // A program that cannot start: DEAD, found by a poll (recv) or, if the
  // server was gone before the connect (libnbd has the same race), by the call.
  // (python3-libnbd is no oracle here: now and then its poll fails with
  // "external event 0 is invalid in state CONNECT.START" and stays there.)
  const d = newHandle();
  const o = outcome(drive(d, () => d.aioConnectSystemdSocketActivation(["/nonexistent/prog"])));
  assert.is(o.state, "DEAD");
  const failure = "ok" in o.call ? (o.poll as { err: string }).err : (o.call as { err: string }).err;
  assert.match(failure, "ok" in o.call ? /^nbd_poll: recv: / : /^nbd_aio_connect_systemd_socket_activation: connect: Connection (refused|reset by peer)/);
});

test("aio_connect_uri: READY (and NEGOTIATING in opt mode) through poll; a bad URI fails at once and leaves START", () => {
  const srv = nbdkitUnix(...DELAYED);
  const uri = `nbd+unix:///?socket=${srv.socket}`;
  const h = newHandle();
  const out = drive(h, () => h.aioConnectUri(uri));
  assert.equal(out, { call: { ok: 0 }, poll: null, state: "READY", polls: out.polls });
  assert.is(h.getUri(), uri);
  readsPattern(h);

  const o = newHandle();
  assert.is(o.setOptMode(true), 0);
  const neg = drive(o, () => o.aioConnectUri(uri));
  assert.equal(neg.state, "NEGOTIATING");
  assert.is(o.aioIsNegotiating(), 1);
  assert.is(o.optGo(), 0, String(getError()));
  readsPattern(o);

  assert.equal(pyDrive("aio_connect_uri", [uri]), { call: { ok: 0 }, poll: null, state: "READY" });
  assert.equal(pyDrive("aio_connect_uri", [uri], [["set_opt_mode", true]]), { call: { ok: 0 }, poll: null, state: "NEGOTIATING" });
  const b = newHandle();
  const r = drive(b, () => b.aioConnectUri("foo:bar"));
  assert.equal(outcome(r), pyDrive("aio_connect_uri", ["foo:bar"]));
  assert.is(b.aioIsCreated(), 1);
  // nbd-ts also names the part that is wrong.
  const p = newHandle();
  fails(p.aioConnectUri("nbd://x:y:z"), errno.EINVAL,
    "nbd_aio_connect_uri: unable to parse URI: nbd://x:y:z (invalid character \"y\" in the port): Invalid argument");
  assert.is(p.aioIsCreated(), 1);
});

test("aio_connect_socket: a caller's connected socket, READY through poll; a bad fd fails at once and leaves START", async () => {
  const srv = nbdkitUnix(...DELAYED);
  const socket = connect({ path: srv.socket });
  socket.pause();
  await once(socket, "connect");
  socket.unref();
  const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
  const h = newHandle();
  const out = drive(h, () => h.aioConnectSocket(fd));
  assert.equal(out, { call: { ok: 0 }, poll: null, state: "READY", polls: out.polls });
  readsPattern(h);

  const b = newHandle();
  const r = drive(b, () => b.aioConnectSocket(9999));
  assert.equal(outcome(r), pyDrive("aio_connect_socket", [9999]));
  assert.is(r.state, "START");
});

// ---- failures up front, and the wrong state -------------------------------------------------

test("failures the call finds itself: a missing socket is -1 and DEAD, empty argv -1 and START, a second connect EINVAL", () => {
  const missing = scratchPath("nobody.sock");
  const h = newHandle();
  const out = drive(h, () => h.aioConnectUnix(missing));
  assert.equal(outcome(out), pyDrive("aio_connect_unix", [missing]));
  assert.is(out.state, "DEAD");
  assert.is((out.call as { errno: number }).errno, errno.ENOENT);
  fails(h.poll(0), errno.EINVAL, "nbd_poll: nothing to poll for in state DEAD: Invalid argument");

  for (const name of ["aio_connect_command", "aio_connect_systemd_socket_activation"] as const) {
    const e = newHandle();
    const r = drive(e, () => (name === "aio_connect_command" ? e.aioConnectCommand([]) : e.aioConnectSystemdSocketActivation([])));
    assert.equal(outcome(r), pyDrive(name, [[]]), name);
    assert.is(r.state, "START");
  }

  const c = newHandle();
  assert.is(c.aioConnectCommand([...NBDKIT, ...DELAYED]), 0);
  fails(c.aioConnectCommand([...NBDKIT, ...DELAYED]), errno.EINVAL,
    "nbd_aio_connect_command: invalid state: CONNECTING: the handle must be newly created: Invalid argument");
  fails(c.connectUnix(missing), errno.EINVAL,
    "nbd_connect_unix: invalid state: CONNECTING: the handle must be newly created: Invalid argument");
  while (c.aioIsConnecting()) assert.is(c.poll(-1), 1, String(getError()));
  fails(c.aioConnectUri(`nbd+unix:///?socket=${missing}`), errno.EINVAL,
    "nbd_aio_connect_uri: invalid state: READY: the handle must be newly created: Invalid argument");
});

test("close() while the handshake is still going: no wait for it, the server stopped, its socket dir removed", () => {
  const h = newHandle();
  assert.is(h.aioConnectSystemdSocketActivation(["nbdkit", "-f", ...DELAYED.map((a) => a.replace(`${DELAY_MS}ms`, "30"))]), 0);
  const pid = Number(h.getSubprocessPid());
  assert.is(h.aioIsConnecting(), 1);
  const sock = decodeURIComponent(/[?&]socket=([^&]+)/.exec(h.getUri()!)![1]!);
  assert.ok(existsSync(sock), `${sock} while connecting`);
  const { ms } = timed(() => h.close());
  assert.ok(ms < 6_000, `close took ${ms} ms`);
  assert.not.ok(alive(pid), `server ${pid} survived close()`);
  assert.not.ok(existsSync(dirname(sock)), `${dirname(sock)} outlived close()`);
});

// ---- the Promise API ------------------------------------------------------------------------

test("nbd-ts/async: await aioConnectUnix, then poll while connecting; a failed handshake rejects the poll", async () => {
  const srv = nbdkitUnix(...DELAYED);
  const h = createAsync();
  try {
    assert.is(await h.aioConnectUnix(srv.socket), 0);
    assert.is(await h.aioIsConnecting(), 1);
    let polls = 0;
    while (await h.aioIsConnecting()) polls += await h.poll(-1);
    assert.ok(polls >= 1);
    assert.is(await h.aioIsReady(), 1);
    const buf = new Uint8Array(512);
    await h.pread(buf, 1024);
    assert.equal(buf, pattern(1024, 512));
  } finally {
    await h.close();
  }
  const d = createAsync();
  try {
    assert.is(await d.aioConnectCommand(["false"]), 0);
    let err: unknown;
    try {
      while (await d.aioIsConnecting()) await d.poll(-1);
    } catch (e) {
      err = e;
    }
    assert.instance(err, Error);
    assert.match((err as Error).message, /^nbd_poll: recv: server disconnected unexpectedly/);
    assert.is(await d.aioIsDead(), 1);
  } finally {
    await d.close();
  }
});

test.run();
