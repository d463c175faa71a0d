/**
 * Connecting, against real servers: systemd socket activation (nbdkit,
 * qemu-nbd on qcow2 and raw), the environment and fds an activated server
 * gets, connect_unix, connect_tcp, connect_command (nbdkit -s, nbd-server in
 * inetd mode), the ways a connect fails, kill_subprocess, and what close()
 * does to the processes and temp dirs a handle started. Expected values are
 * libnbd's (1.14 measured with python3-libnbd, or its source where newer).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { existsSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { getErrno, getError, type Handle } from "nbd-ts";
import { errno } from "../src/errno.js";
import {
  alive, freePort, nbdkitTcp, nbdkitUnix, pattern, run, scratchFile, scratchPath, timed, waitFor,
} from "./helpers.js";
import { newHandle } from "./handles.js";
import { socketDirs } from "./leaks.js";

const MiB = 1024 * 1024;

// ---- small probes (handles made by newHandle are closed after each test) ---------------

/** The program a pid runs now (after any exec). */
const comm = (pid: number): string => readFileSync(`/proc/${pid}/comm`, "utf8").trim();

/** The server's pid, checked to be a live process. */
function serverPid(h: Handle): number {
  const pid = h.getSubprocessPid();
  assert.is(typeof pid, "bigint");
  assert.ok(pid > 0n, `getSubprocessPid: ${pid} (${getError()})`);
  assert.ok(alive(Number(pid)), `pid ${pid} is not a live process`);
  return Number(pid);
}

/**
 * Where the listening socket fd 3 of an activated server was bound, from
 * /proc/net/unix: this is the handle's own temp dir, found without guessing.
 */
function activationDir(pid: number): string {
  const link = readlinkSync(`/proc/${pid}/fd/3`);
  const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
  assert.ok(inode, `fd 3 of ${pid} is ${link}, not a socket`);
  const line = readFileSync("/proc/net/unix", "utf8").split("\n").find((l) => l.split(/\s+/)[6] === inode);
  const path = line?.split(/\s+/)[7];
  assert.ok(path, `socket ${inode} has no path in /proc/net/unix`);
  return dirname(path!);
}

/**
 * Our socket dirs that exist now and did not exist in `before`. Other test
 * processes may make some of their own meanwhile, so this is only used
 * across short windows; a handle's own dir is found with activationDir().
 */
const newDirs = (before: Set<string>): string[] => [...socketDirs()].filter((d) => !before.has(d));

/** Live (not zombie) processes whose parent is this process: the servers our handles started. */
function children(): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(ppid) === process.pid && state !== "Z") found.push(Number(entry));
    } catch { /* gone meanwhile */ }
  }
  return found;
}

/**
 * Watches a failing connect: `made()` lists the socket dirs that appeared
 * since (call it right after the connect), `clean()` checks, after close(),
 * that those dirs and any process this one started meanwhile are gone.
 */
function watchLeftovers(): { made(): void; clean(): void } {
  const kids = children();
  const dirs = socketDirs();
  let made: string[] = [];
  return {
    made() { made = newDirs(dirs); },
    clean() {
      assert.equal(children(), kids, "a server process outlived close()");
      for (const d of made) assert.not.ok(existsSync(`/tmp/${d}`), `/tmp/${d} outlived close()`);
    },
  };
}

/** A failed call: its return value, errno and the message's C name. */
function failed(ret: unknown, errnum: number, cname: string): string {
  assert.ok(ret === -1 || ret === -1n, `expected a failure, got ${String(ret)}`);
  const msg = getError();
  assert.ok(msg, "getError() is null after a failure");
  assert.is(getErrno(), errnum, `errno ${getErrno()}, message: ${msg}`);
  assert.ok(msg!.startsWith(`${cname}: `), `message does not start with "${cname}: ": ${msg}`);
  return msg!;
}

/** A pwrite and a pread of the same random bytes at `offset`. */
function roundTrip(h: Handle, offset: number, length = 4096): void {
  const data = randomFillSync(new Uint8Array(length));
  assert.is(h.pwrite(data, offset), 0, `pwrite: ${getError()}`);
  const back = new Uint8Array(length);
  assert.is(h.pread(back, offset), 0, `pread: ${getError()}`);
  assert.equal(back, data);
}

// ---- systemd socket activation ---------------------------------------------------

test("socket activation: nbdkit serves, its pid is live, close kills it and removes the socket dir", () => {
  const h = newHandle();
  const before = socketDirs();
  const kids = children();
  const { value, ms } = timed(() => h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]));
  assert.is(value, 0, `connect: ${getError()}`);
  assert.ok(ms < 5000, `connect took ${ms} ms`);
  const pid = serverPid(h);
  assert.is(comm(pid), "nbdkit"); // the sh that set LISTEN_PID exec'd into the server
  const dir = activationDir(pid);
  assert.match(dir, /^\/tmp\/nbd-ts-[^/]+$/);
  assert.ok(existsSync(`${dir}/sock`), `${dir}/sock is missing while connected`);
  assert.ok(newDirs(before).includes(dir.slice("/tmp/".length)), `${dir} is not new`);
  assert.equal(children(), [...kids, pid]);
  assert.is(h.getSize(), 1n * BigInt(MiB));
  assert.is(h.connectionState()?.startsWith("READY"), true);
  roundTrip(h, 65536);
  // The name can only be set before connecting.
  failed(h.setSocketActivationName("late"), errno.EINVAL, "nbd_set_socket_activation_name");

  const closing = timed(() => h.close());
  assert.ok(closing.ms < 2000, `close took ${closing.ms} ms`);
  assert.not.ok(alive(pid), `server ${pid} survived close()`);
  assert.not.ok(existsSync(dir), `${dir} survived close()`);
  assert.equal(children(), kids);
});

/** The children of `pid` (a wrapper's server), from /proc. */
const childrenOf = (pid: number): number[] =>
  readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);

/**
 * An activated nbdkit behind a shell that stays its parent (so that the pid
 * close() signals is the shell's): `trap` says what the shell does on
 * SIGTERM; the inner sh points LISTEN_PID at itself and execs nbdkit, which
 * exits when the shell does (--exit-with-parent).
 */
function wrappedNbdkit(trap: string): string[] {
  const inner = 'LISTEN_PID=$$ exec nbdkit -f --exit-with-parent memory size=1M';
  return ["sh", "-c", `trap ${trap} TERM; sh -c '${inner}' & wait; exit 0`];
}

test("close of an activated server: SIGTERM, reaped, its socket dir removed even with a stray file in it", () => {
  const h = newHandle();
  const kids = children();
  const flag = scratchPath("got-sigterm");
  assert.is(h.connectSystemdSocketActivation(wrappedNbdkit(`"echo TERM > ${flag}; exit 0"`)), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  const [nbdkitPid] = childrenOf(pid);
  assert.ok(nbdkitPid && comm(nbdkitPid) === "nbdkit", `the wrapper's child is ${nbdkitPid}`);
  const dir = activationDir(nbdkitPid);
  assert.is(h.getSize(), BigInt(MiB));
  writeFileSync(`${dir}/stray`, "not the socket");

  const closing = timed(() => h.close());
  assert.ok(closing.ms < 2000, `close took ${closing.ms} ms`);
  assert.is(readFileSync(flag, "utf8"), "TERM\n"); // the signal was SIGTERM, and close waited for its handler
  assert.not.ok(alive(pid), `server ${pid} survived close()`);
  assert.equal(children(), kids, "the server was not reaped");
  assert.not.ok(existsSync(dir), `${dir} survived close()`);
  waitFor(() => !alive(nbdkitPid), 5000, "nbdkit to follow its parent");
});

test("close of an activated server that ignores SIGTERM: SIGKILL after the 5 s bound, nothing left", () => {
  const h = newHandle();
  const kids = children();
  assert.is(h.connectSystemdSocketActivation(wrappedNbdkit("''")), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  const [nbdkitPid] = childrenOf(pid);
  const dir = activationDir(nbdkitPid!);
  assert.is(h.getSize(), BigInt(MiB));

  const closing = timed(() => h.close());
  assert.ok(closing.ms >= 4900 && closing.ms < 8000, `close took ${closing.ms} ms`);
  assert.not.ok(alive(pid), `server ${pid} survived close()`);
  assert.equal(children(), kids, "the server was not reaped");
  assert.not.ok(existsSync(dir), `${dir} survived close()`);
  waitFor(() => !alive(nbdkitPid!), 5000, "nbdkit to follow its parent");
});

/**
 * A socket activation whose server cannot start: it fails within seconds with
 * the connection's errno and libnbd's message, and leaves nothing behind.
 * `check` looks at the handle and message before the handle closes.
 */
function failedActivation(argv: string[], check: (h: Handle, msg: string) => void): void {
  const h = newHandle();
  const watch = watchLeftovers();
  const { value, ms } = timed(() => h.connectSystemdSocketActivation(argv));
  watch.made();
  assert.is(value, -1);
  assert.ok(ms < 5000, `took ${ms} ms`);
  assert.ok([errno.ECONNRESET, errno.ECONNREFUSED].includes(getErrno() as 104 | 111), `errno ${getErrno()}: ${getError()}`);
  const msg = getError()!;
  assert.ok(msg.startsWith("nbd_connect_systemd_socket_activation: "), msg);
  check(h, msg);
  h.close();
  watch.clean();
}

test("socket activation of an nbdkit that refuses its arguments: getError ends with nbdkit's own error", () => {
  failedActivation(["nbdkit", "-f", "memory", "size=nonsense"], (_, msg) => {
    assert.ok(msg.endsWith("server stderr: nbdkit: error: could not parse size string (nonsense)"), msg);
  });
});

test("socket activation: qemu-nbd on a qcow2 image reads back what qemu-io wrote", () => {
  const disk = scratchPath("sa.qcow2");
  run("qemu-img", ["create", "-q", "-f", "qcow2", disk, "1M"]);
  run("qemu-io", ["-f", "qcow2", "-c", "write -q -P 0xab 0 512", disk]);
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["qemu-nbd", "-f", "qcow2", disk]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  assert.is(comm(pid), "qemu-nbd");
  const dir = activationDir(pid);
  assert.is(h.getSize(), BigInt(MiB));
  const buf = new Uint8Array(1024);
  assert.is(h.pread(buf, 0), 0, `pread: ${getError()}`);
  assert.equal(buf.subarray(0, 512), new Uint8Array(512).fill(0xab));
  assert.equal(buf.subarray(512), new Uint8Array(512));
  h.close();
  assert.not.ok(alive(pid), `qemu-nbd ${pid} survived close()`);
  assert.not.ok(existsSync(dir), `${dir} survived close()`);
});

test("socket activation: qemu-nbd on a raw file reads the file and writes reach it", () => {
  const content = randomFillSync(new Uint8Array(256 * 1024));
  const file = scratchFile("sa.raw", content.length, content);
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["qemu-nbd", "-f", "raw", file]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  assert.is(comm(pid), "qemu-nbd");
  const dir = activationDir(pid);
  assert.is(h.getSize(), BigInt(content.length));
  const buf = new Uint8Array(1000);
  assert.is(h.pread(buf, 4097), 0, `pread: ${getError()}`);
  assert.equal(buf, content.subarray(4097, 5097));
  const data = new Uint8Array(512).fill(0x5a);
  assert.is(h.pwrite(data, 8192), 0, `pwrite: ${getError()}`);
  h.close();
  assert.not.ok(alive(pid), `qemu-nbd ${pid} survived close()`);
  assert.not.ok(existsSync(dir), `${dir} survived close()`);
  const after = new Uint8Array(readFileSync(file));
  assert.equal(after.subarray(8192, 8704), data);
  assert.equal(after.subarray(0, 8192), content.subarray(0, 8192));
  assert.equal(after.subarray(8704), content.subarray(8704));
});

/** Runs the env-dumping server under socket activation, returns its env (as a map) and its fd listing. */
function activatedEnvironment(name: string | undefined): { pid: number; env: Map<string, string[]>; fds: string } {
  const envFile = scratchPath(`env-${name ?? "default"}.txt`);
  const fdFile = scratchPath(`fds-${name ?? "default"}.txt`);
  rmSync(envFile, { force: true });
  rmSync(fdFile, { force: true });
  const h = newHandle();
  assert.is(h.getSocketActivationName(), "");
  if (name !== undefined) {
    assert.is(h.setSocketActivationName(name), 0, `set name: ${getError()}`);
    assert.is(h.getSocketActivationName(), name);
  }
  const saved = { ...process.env };
  Object.assign(process.env, { LISTEN_PID: "1", LISTEN_FDNAMES: "inherited", FOO: "42" });
  let r: number;
  try {
    r = h.connectSystemdSocketActivation(
      ["sh", "-c", `env > '${envFile}'; ls -l /proc/$$/fd > '${fdFile}'; exec nbdkit -f memory 1M`]);
  } finally {
    for (const k of ["LISTEN_PID", "LISTEN_FDNAMES", "FOO"]) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
  assert.is(r, 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  assert.is(comm(pid), "nbdkit");
  // nbdkit took fd 3 as its listening socket only if LISTEN_PID was its own pid.
  assert.is(h.getSize(), BigInt(MiB));
  const env = new Map<string, string[]>();
  for (const line of readFileSync(envFile, "utf8").split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) env.set(line.slice(0, eq), [...(env.get(line.slice(0, eq)) ?? []), line.slice(eq + 1)]);
  }
  const fds = readFileSync(fdFile, "utf8");
  h.close();
  assert.not.ok(alive(pid), `server ${pid} survived close()`);
  return { pid, env, fds };
}

test("socket activation: the server's environment (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES=unknown) and fd 3", () => {
  const { pid, env, fds } = activatedEnvironment(undefined);
  assert.equal(env.get("LISTEN_PID"), [String(pid)]);
  assert.equal(env.get("LISTEN_FDS"), ["1"]);
  assert.equal(env.get("LISTEN_FDNAMES"), ["unknown"]);
  assert.equal(env.get("FOO"), ["42"]);
  assert.match(fds, /\s3 -> socket:\[\d+\]\s*$/m);
});

test("socket activation: setSocketActivationName('hello') gives LISTEN_FDNAMES=hello", () => {
  const { pid, env, fds } = activatedEnvironment("hello");
  assert.equal(env.get("LISTEN_PID"), [String(pid)]);
  assert.equal(env.get("LISTEN_FDS"), ["1"]);
  assert.equal(env.get("LISTEN_FDNAMES"), ["hello"]);
  assert.equal(env.get("FOO"), ["42"]);
  assert.match(fds, /\s3 -> socket:\[\d+\]\s*$/m);
});

test("setSocketActivationName: 32 characters at most, alphanumeric only, '' clears", () => {
  const h = newHandle();
  assert.is(h.getSocketActivationName(), "");
  const long = failed(h.setSocketActivationName("a".repeat(33)), errno.ENAMETOOLONG, "nbd_set_socket_activation_name");
  assert.is(long, "nbd_set_socket_activation_name: socket activation name should be <= 32 characters: File name too long");
  assert.is(h.getSocketActivationName(), "");
  assert.is(h.setSocketActivationName("A1".repeat(16)), 0);
  assert.is(h.getSocketActivationName(), "A1".repeat(16));
  const bad = failed(h.setSocketActivationName("a-b"), errno.EINVAL, "nbd_set_socket_activation_name");
  assert.match(bad, /only alphanumeric ASCII characters: Invalid argument$/);
  failed(h.setSocketActivationName("é"), errno.EINVAL, "nbd_set_socket_activation_name");
  assert.is(h.getSocketActivationName(), "A1".repeat(16));
  assert.is(h.setSocketActivationName(""), 0);
  assert.is(h.getSocketActivationName(), "");
});

// ---- unix, tcp, command ---------------------------------------------------------------

test("connectUnix to nbdkit; no subprocess; close leaves the server running", () => {
  const server = nbdkitUnix("memory", "size=1M");
  const h = newHandle();
  assert.is(h.connectUnix(server.socket), 0, `connect: ${getError()}`);
  assert.is(h.getSize(), BigInt(MiB));
  roundTrip(h, 12345, 777);
  failed(h.getSubprocessPid(), errno.ESRCH, "nbd_get_subprocess_pid");
  failed(h.killSubprocess(0), errno.ESRCH, "nbd_kill_subprocess");
  h.close();
  assert.ok(alive(server.pid), "close() stopped a server it did not start");
  server.stop();
});

test("connectTcp: the port as a string, as a number, and the host as a name", () => {
  const server = nbdkitTcp("pattern", "size=1M");
  for (const [host, port] of [["127.0.0.1", String(server.port)], ["127.0.0.1", server.port], ["localhost", String(server.port)]] as const) {
    const h = newHandle();
    assert.is(h.connectTcp(host, port), 0, `connectTcp(${host}, ${JSON.stringify(port)}): ${getError()}`);
    assert.is(h.getSize(), BigInt(MiB));
    const buf = new Uint8Array(100);
    assert.is(h.pread(buf, 5001), 0, `pread: ${getError()}`);
    assert.equal(buf, pattern(5001, 100));
    failed(h.getSubprocessPid(), errno.ESRCH, "nbd_get_subprocess_pid");
    h.close();
  }
  assert.ok(alive(server.pid), "close() stopped a server it did not start");
  server.stop();
});

test("connectTcp: the port may be a service name (nbd = 10809), as getaddrinfo allows", () => {
  const pidfile = scratchPath("nbdkit-10809.pid");
  const child = spawn("nbdkit", ["-f", "-P", pidfile, "-i", "127.0.0.1", "-p", "10809", "pattern", "size=64K"],
    { stdio: ["ignore", "inherit", "inherit"] });
  try {
    waitFor(() => existsSync(pidfile) && readFileSync(pidfile, "utf8").trim() !== "", 10_000, "nbdkit on port 10809");
    const h = newHandle();
    assert.is(h.connectTcp("127.0.0.1", "nbd"), 0, `connectTcp(127.0.0.1, nbd): ${getError()}`);
    assert.is(h.getSize(), 65536n);
    const buf = new Uint8Array(64);
    assert.is(h.pread(buf, 800), 0);
    assert.equal(buf, pattern(800, 64));
    h.close(); // nbdkit ends on SIGTERM only once its clients are gone
  } finally {
    child.kill("SIGTERM");
    waitFor(() => !alive(child.pid!), 5000, "nbdkit on 10809 to exit");
  }
});

test("connectCommand: nbdkit -s; the pid is live and close reaps it", () => {
  const h = newHandle();
  const { value, ms } = timed(() => h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "memory", "size=1M"]));
  assert.is(value, 0, `connect: ${getError()}`);
  assert.ok(ms < 5000, `connect took ${ms} ms`);
  const pid = serverPid(h);
  assert.is(comm(pid), "nbdkit");
  assert.is(h.getSize(), BigInt(MiB));
  assert.is(h.getProtocol(), "newstyle-fixed");
  roundTrip(h, MiB - 4096);
  const closing = timed(() => h.close());
  assert.ok(closing.ms < 3000, `close took ${closing.ms} ms`);
  assert.not.ok(alive(pid), `nbdkit ${pid} survived close()`);
});

test("connectCommand: nbd-server in inetd mode (port 0, -d to stay in the foreground)", () => {
  const content = randomFillSync(new Uint8Array(MiB));
  const file = scratchFile("nbd-server.img", MiB, content);
  const h = newHandle();
  const r = h.connectCommand(["nbd-server", "-C", "/dev/null", "-d", "0", file]);
  assert.is(r, 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  assert.is(comm(pid), "nbd-server");
  assert.is(h.getSize(), BigInt(MiB));
  const buf = new Uint8Array(4096);
  assert.is(h.pread(buf, 65536), 0, `pread: ${getError()}`);
  assert.equal(buf, content.subarray(65536, 65536 + 4096));
  const data = new Uint8Array(4096).fill(0xc3);
  assert.is(h.pwrite(data, 0), 0, `pwrite: ${getError()}`);
  assert.is(h.shutdown(), 0, `shutdown: ${getError()}`);
  h.close();
  assert.not.ok(alive(pid), `nbd-server ${pid} survived close()`);
  const after = new Uint8Array(readFileSync(file));
  assert.equal(after.subarray(0, 4096), data);
  assert.equal(after.subarray(4096), content.subarray(4096));
});

// ---- failures ----------------------------------------------------------------------------

test("connectUnix to a missing path: ENOENT, DEAD, a second connect is EINVAL", () => {
  const h = newHandle();
  const path = scratchPath("no-such.sock");
  const { value, ms } = timed(() => h.connectUnix(path));
  const msg = failed(value, errno.ENOENT, "nbd_connect_unix");
  assert.ok(ms < 5000, `took ${ms} ms`);
  assert.is(msg, "nbd_connect_unix: connect: No such file or directory");
  assert.is(h.aioIsDead(), 1);
  const again = failed(h.connectUnix(path), errno.EINVAL, "nbd_connect_unix");
  assert.is(again, "nbd_connect_unix: invalid state: DEAD: the handle must be newly created: Invalid argument");
  failed(h.connectCommand(["nbdkit", "-s", "memory", "1M"]), errno.EINVAL, "nbd_connect_command");
});

test("connectTcp to a closed port: ECONNREFUSED, and the handle is back in START (libnbd's CONNECT_TCP)", () => {
  const port = freePort();
  const h = newHandle();
  const { value, ms } = timed(() => h.connectTcp("127.0.0.1", String(port)));
  const msg = failed(value, errno.ECONNREFUSED, "nbd_connect_tcp");
  assert.ok(ms < 5000, `took ${ms} ms`);
  assert.is(msg, `nbd_connect_tcp: connect: 127.0.0.1:${port}: could not connect to remote host: Connection refused`);
  // libnbd 1.14 (measured) and upstream: no address answered → START, not DEAD.
  assert.is(h.aioIsDead(), 0);
  assert.is(h.aioIsCreated(), 1);
  failed(h.connectTcp("localhost", port), errno.ECONNREFUSED, "nbd_connect_tcp");
  assert.is(h.aioIsCreated(), 1);
  // ... so the same handle can then connect.
  const server = nbdkitTcp("memory", "size=1M");
  assert.is(h.connectTcp("127.0.0.1", server.port), 0, `connect: ${getError()}`);
  assert.is(h.getSize(), BigInt(MiB));
  const twice = failed(h.connectTcp("127.0.0.1", server.port), errno.EINVAL, "nbd_connect_tcp");
  assert.is(twice, "nbd_connect_tcp: invalid state: READY: the handle must be newly created: Invalid argument");
  h.close();
  server.stop();
});

test("connectTcp: an unknown host or service fails as getaddrinfo does (errno 0) and the handle stays created", () => {
  const h = newHandle();
  const host = failed(h.connectTcp("nosuchhost.invalid", "10809"), 0, "nbd_connect_tcp");
  assert.is(host, 'nbd_connect_tcp: getaddrinfo: hostname "nosuchhost.invalid" port "10809": Name or service not known');
  assert.is(h.aioIsCreated(), 1);
  const service = failed(h.connectTcp("127.0.0.1", "nosuchservice"), 0, "nbd_connect_tcp");
  assert.is(service, 'nbd_connect_tcp: getaddrinfo: hostname "127.0.0.1" port "nosuchservice": Servname not supported for ai_socktype');
  assert.is(h.aioIsCreated(), 1);
});

test("connectCommand of a missing program: errno 0, 'recv: server disconnected unexpectedly', DEAD", () => {
  for (const argv of [["/nonexistent/prog"], ["false"]]) {
    const h = newHandle();
    const watch = watchLeftovers();
    const { value, ms } = timed(() => h.connectCommand(argv));
    watch.made();
    const msg = failed(value, 0, "nbd_connect_command");
    assert.ok(ms < 5000, `took ${ms} ms`);
    assert.ok(msg.startsWith("nbd_connect_command: recv: server disconnected unexpectedly"), msg);
    assert.is(h.aioIsDead(), 1);
    failed(h.connectCommand(argv), errno.EINVAL, "nbd_connect_command");
    h.close();
    watch.clean();
  }
});

test("socket activation of a missing program fails within seconds and quotes the server's stderr", () => {
  failedActivation(["/nonexistent/prog"], (h, msg) => {
    assert.match(msg, /\/nonexistent\/prog: not found$/);
    assert.is(h.aioIsDead(), 1);
  });
});

test("a server that exits at once: the message ends with what it wrote to stderr", () => {
  const argv = ["sh", "-c", "echo boom >&2; exit 1"];
  const sa = newHandle();
  const watch = watchLeftovers();
  const r1 = timed(() => sa.connectSystemdSocketActivation(argv));
  watch.made();
  assert.is(r1.value, -1);
  assert.ok(r1.ms < 5000, `took ${r1.ms} ms`);
  assert.ok([errno.ECONNRESET, errno.ECONNREFUSED].includes(getErrno() as 104 | 111), `errno ${getErrno()}: ${getError()}`);
  assert.ok(getError()!.startsWith("nbd_connect_systemd_socket_activation: "), getError()!);
  assert.ok(getError()!.endsWith("boom"), getError()!);
  assert.is(sa.aioIsDead(), 1);
  sa.close();
  watch.clean();

  const cmd = newHandle();
  const watch2 = watchLeftovers();
  const r2 = timed(() => cmd.connectCommand(argv));
  const msg = failed(r2.value, 0, "nbd_connect_command");
  assert.ok(r2.ms < 5000, `took ${r2.ms} ms`);
  assert.ok(msg.startsWith("nbd_connect_command: recv: server disconnected unexpectedly"), msg);
  assert.ok(msg.endsWith("boom"), msg);
  cmd.close();
  watch2.clean();
});

test("an empty argv is EINVAL before anything runs, and the handle stays created", () => {
  const h = newHandle();
  const cmd = failed(h.connectCommand([]), errno.EINVAL, "nbd_connect_command");
  assert.is(cmd, "nbd_connect_command: missing command name in argv list: Invalid argument");
  assert.is(h.aioIsCreated(), 1);
  const sa = failed(h.connectSystemdSocketActivation([]), errno.EINVAL, "nbd_connect_systemd_socket_activation");
  assert.is(sa, "nbd_connect_systemd_socket_activation: missing command name in argv list: Invalid argument");
  assert.is(h.aioIsCreated(), 1);
  // Still usable.
  assert.is(h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "memory", "size=1M"]), 0, `connect: ${getError()}`);
  assert.is(h.getSize(), BigInt(MiB));
});

test("connectUnix with a 200-byte path: ENAMETOOLONG, and the handle stays created", () => {
  const h = newHandle();
  const path = `/tmp/${"x".repeat(195)}`;
  assert.is(path.length, 200);
  const msg = failed(h.connectUnix(path), errno.ENAMETOOLONG, "nbd_connect_unix");
  assert.is(msg, `nbd_connect_unix: socket name too long: ${path}: File name too long`);
  assert.is(h.aioIsCreated(), 1);
  const server = nbdkitUnix("memory", "size=1M");
  assert.is(h.connectUnix(server.socket), 0, `connect: ${getError()}`);
  h.close();
  server.stop();
});

test("connecting a connected handle again is EINVAL and leaves the connection working", () => {
  const server = nbdkitUnix("memory", "size=1M");
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  const kids = children();
  const attempts: [string, () => number][] = [
    ["nbd_connect_command", () => h.connectCommand(["nbdkit", "-s", "memory", "1M"])],
    ["nbd_connect_systemd_socket_activation", () => h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "1M"])],
    ["nbd_connect_unix", () => h.connectUnix(server.socket)],
    ["nbd_connect_tcp", () => h.connectTcp("127.0.0.1", "1")],
  ];
  for (const [cname, attempt] of attempts) {
    const msg = failed(attempt(), errno.EINVAL, cname);
    assert.is(msg, `${cname}: invalid state: READY: the handle must be newly created: Invalid argument`);
  }
  assert.equal(children(), kids); // no second server was started
  assert.is(Number(h.getSubprocessPid()), pid);
  roundTrip(h, 0);
  h.close();
  assert.not.ok(alive(pid));
  server.stop();
});

// ---- kill_subprocess -------------------------------------------------------------------------

test("killSubprocess: ESRCH without a subprocess, EINVAL for a negative signal, kill() errors pass through", () => {
  const fresh = newHandle();
  const none = failed(fresh.killSubprocess(0), errno.ESRCH, "nbd_kill_subprocess");
  assert.is(none, "nbd_kill_subprocess: no subprocess exists: No such process");
  failed(fresh.killSubprocess(-1), errno.ESRCH, "nbd_kill_subprocess"); // no subprocess is checked first

  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  const neg = failed(h.killSubprocess(-1), errno.EINVAL, "nbd_kill_subprocess");
  assert.is(neg, "nbd_kill_subprocess: invalid signal number: -1: Invalid argument");
  const big = failed(h.killSubprocess(65), errno.EINVAL, "nbd_kill_subprocess");
  assert.is(big, "nbd_kill_subprocess: kill: Invalid argument");
  assert.ok(alive(pid), "a refused kill still hit the server");
  roundTrip(h, 0, 512);
});

test("killSubprocess(0) sends SIGTERM to an activated nbdkit: it refuses new requests and exits on disconnect", () => {
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  assert.is(h.killSubprocess(0), 0, `kill: ${getError()}`);
  // nbdkit answers requests after SIGTERM with NBD_ESHUTDOWN, and keeps
  // serving its client until it disconnects; on a loaded machine its
  // shutdown may win the race and drop the connection first (a reset).
  const buf = new Uint8Array(512);
  waitFor(() => h.pread(buf, 0) === -1, 3000, "nbdkit to see SIGTERM");
  if (getErrno() === errno.ESHUTDOWN) {
    assert.ok(alive(pid), "nbdkit keeps serving its client until it disconnects");
    assert.is(h.shutdown(), 0, `shutdown: ${getError()}`);
  } else {
    assert.ok(([errno.ECONNRESET, errno.ENOTCONN] as number[]).includes(getErrno()), `${getErrno()}: ${getError()}`);
    assert.is(h.aioIsDead(), 1);
  }
  waitFor(() => !alive(pid), 5000, `nbdkit ${pid} to exit after SIGTERM + disconnect`);
  h.close();
});

test("killSubprocess(SIGKILL) on a connectCommand server; killing it again still succeeds, as on libnbd's zombie", () => {
  const h = newHandle();
  assert.is(h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "memory", "size=1M"]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  assert.is(h.killSubprocess(9), 0, `kill: ${getError()}`);
  waitFor(() => !alive(pid), 5000, `nbdkit ${pid} to die`);
  assert.is(h.pread(new Uint8Array(512), 0), -1);
  assert.ok(h.aioIsDead() === 1 || h.aioIsClosed() === 1, h.connectionState() ?? "");
  // libnbd's child stays a zombie until nbd_close, so kill() on it returns 0.
  assert.is(h.killSubprocess(0), 0, `kill after death: ${getError()}`);
  assert.is(Number(h.getSubprocessPid()), pid);
  h.close();
});

test("a server that dies between calls: still READY, then the next command fails ENOTCONN and the handle is DEAD (as libnbd)", () => {
  for (const connect of [
    (h: Handle) => h.connectCommand(["nbdkit", "-s", "--exit-with-parent", "memory", "size=1M"]),
    (h: Handle) => h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]),
  ]) {
    const h = newHandle();
    assert.is(connect(h), 0, `connect: ${getError()}`);
    const pid = serverPid(h);
    assert.is(h.killSubprocess(9), 0);
    waitFor(() => !alive(pid), 5000, `nbdkit ${pid} to die`);
    // libnbd has not looked at the socket yet: nothing was in flight.
    assert.is(h.aioIsReady(), 1, h.connectionState() ?? "");
    assert.is(h.pwrite(new Uint8Array(512), 0), -1);
    // libnbd: ENOTCONN. When the worker has not yet read the server's EOF, the
    // request goes out and the kernel may answer with a reset first: then the
    // call reports it, as libnbd does when its recv sees the reset.
    if (getErrno() === errno.ECONNRESET) {
      assert.is(getError(), "nbd_pwrite: recv: Connection reset by peer");
    } else {
      assert.is(getErrno(), errno.ENOTCONN);
      assert.is(getError(), "nbd_pwrite: write: command failed: Transport endpoint is not connected");
    }
    // DEAD as libnbd; CLOSED if the worker read the EOF only after sending.
    assert.ok(h.aioIsDead() === 1 || h.aioIsClosed() === 1, h.connectionState() ?? "");
    assert.is(h.pread(new Uint8Array(512), 0), -1);
    assert.is(getErrno(), errno.EINVAL);
    assert.match(getError()!, /^nbd_pread: invalid state: (DEAD|CLOSED): /);
  }
  // shutdown() on such a handle succeeds and leaves it DEAD, as libnbd's does.
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  h.killSubprocess(9);
  waitFor(() => !alive(pid), 5000, `nbdkit ${pid} to die`);
  assert.is(h.shutdown(), 0, `shutdown: ${getError()}`);
  assert.is(h.aioIsDead(), 1);
});

// ---- close semantics ------------------------------------------------------------------------

test("close() of a connectCommand child waits for it to exit, without a signal", () => {
  const h = newHandle();
  assert.is(h.connectCommand(["sh", "-c", "nbdkit -s memory 1M; sleep 2"]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  assert.is(comm(pid), "sh");
  const { ms } = timed(() => h.close());
  assert.ok(ms >= 1900, `close returned after ${ms} ms, before the child's sleep 2 ended`);
  assert.ok(ms < 10_000, `close took ${ms} ms`);
  assert.not.ok(alive(pid), `sh ${pid} survived close()`);
});

test("close() of an activated server that traps TERM returns at once and reaps it", () => {
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["sh", "-c", "trap 'exit 0' TERM; exec nbdkit -f memory 1M"]), 0,
    `connect: ${getError()}`);
  const pid = serverPid(h);
  const dir = activationDir(pid);
  const { ms } = timed(() => h.close());
  assert.ok(ms < 1000, `close took ${ms} ms`);
  assert.not.ok(alive(pid), `server ${pid} survived close()`);
  assert.not.ok(existsSync(dir), `${dir} survived close()`);
});

test("close() twice is harmless, and calls on a closed handle fail without throwing", () => {
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "size=1M"]), 0, `connect: ${getError()}`);
  const pid = serverPid(h);
  h.close();
  h.close();
  assert.not.ok(alive(pid));
  failed(h.getSubprocessPid(), errno.EINVAL, "nbd_get_subprocess_pid");
  failed(h.killSubprocess(0), errno.EINVAL, "nbd_kill_subprocess");
  failed(h.connectUnix("/nonexistent"), errno.EINVAL, "nbd_connect_unix");
});

test.run();
