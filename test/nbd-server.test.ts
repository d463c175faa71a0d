/**
 * Interop with nbd-server (Debian's, 3.24), started here as a daemon from a
 * config file this test writes: a Unix socket, allowlist = true, and two
 * exports, "rw" (a read-write file) and "ro" (readonly = true). Listing,
 * NBD_OPT_INFO, connecting by name (plain, opt mode, aio), writes that reach
 * the file, and writes to the read-only export that fail with EPERM and
 * change nothing. nbdinfo and python3-libnbd (libnbd 1.14) look at the same
 * server for comparison. (Its inetd mode, through connect_command, is in
 * connect.test.ts.)
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { getErrno, getError, type Handle } from "nbd-ts";
import { errno } from "../src/errno.js";
import { alive, run, waitFor } from "./helpers.js";
import { fails, newHandle } from "./handles.js";
import { PY_RES, python } from "./libnbd.js";

const MiB = 1024 * 1024;

// ---- the server: a config file, a daemon with a pid file, stopped at the end ----------

const dir = mkdtempSync("/tmp/nbd-ts-nbd-server-");
const sock = `${dir}/sock`;
const files = { rw: `${dir}/rw.img`, ro: `${dir}/ro.img` };
const content = { rw: randomFillSync(new Uint8Array(MiB)), ro: randomFillSync(new Uint8Array(MiB)) };
writeFileSync(files.rw, content.rw);
writeFileSync(files.ro, content.ro);
writeFileSync(`${dir}/config`, `[generic]
  unixsock = ${sock}
  allowlist = true
[rw]
  exportname = ${files.rw}
[ro]
  exportname = ${files.ro}
  readonly = true
`);

const pidfile = `${dir}/nbd-server.pid`;
// It daemonizes: the command returns once the daemon is on its own.
const started = spawnSync("nbd-server", ["-C", `${dir}/config`, "-p", pidfile], { stdio: ["ignore", "ignore", "inherit"] });
assert.is(started.status, 0, "nbd-server -C CONF -p PIDFILE");
waitFor(() => existsSync(pidfile) && readFileSync(pidfile, "utf8").trim() !== "" && existsSync(sock), 10_000, "nbd-server to listen");
const pid = Number(readFileSync(pidfile, "utf8"));

function stop(): void {
  if (alive(pid)) {
    process.kill(pid, "SIGTERM");
    waitFor(() => !alive(pid), 5_000, `nbd-server ${pid} to exit`);
  }
  rmSync(dir, { recursive: true, force: true });
}
test.after(stop);
process.once("exit", stop);

const uri = (name: string) => `nbd+unix:///${name}?socket=${sock}`;

// ---- helpers ------------------------------------------------------------------------------------

/** A handle connected to export `name` (connect_unix), or negotiating in opt mode. */
function connected(name: string, optMode = false): Handle {
  const h = newHandle();
  if (optMode) assert.is(h.setOptMode(true), 0);
  assert.is(h.setExportName(name), 0);
  assert.is(h.connectUnix(sock), 0, `connect to ${name}: ${getError()}`);
  return h;
}

/** What a failed call said, or its value. */
const res = (ret: unknown) =>
  ret === -1 || ret === -1n || ret === null ? { err: getError(), errno: getErrno() } : { ok: typeof ret === "bigint" ? Number(ret) : ret };

const file = (name: keyof typeof files) => new Uint8Array(readFileSync(files[name]));

// ---- listing and NBD_OPT_INFO --------------------------------------------------------------

test("NBD_OPT_LIST names both exports, as nbdinfo --list and python3-libnbd see them (opt_list and aio_opt_list)", () => {
  const h = connected("", true);
  assert.is(h.getProtocol(), "newstyle-fixed");
  const listed: string[][] = [];
  assert.is(h.optList((name, desc) => (listed.push([name, desc]), 0)), 2, String(getError()));
  assert.equal(listed, [["rw", ""], ["ro", ""]]);

  const nbdinfo = JSON.parse(run("nbdinfo", ["--list", "--json", `nbd+unix:///?socket=${sock}`])) as {
    exports: { "export-name": string; is_read_only: boolean }[];
  };
  assert.equal(nbdinfo.exports.map((e) => [e["export-name"], e.is_read_only]), [["rw", false], ["ro", true]]);
  assert.equal(python(`
import json, nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(${JSON.stringify(sock)})
seen = []
n = h.opt_list(lambda name, desc: seen.append([name, desc]) or 0)
print(json.dumps([n, seen]))
`), [2, listed]);

  const a = connected("", true);
  const aio: unknown[] = [];
  assert.is(a.aioOptList((name, desc) => (aio.push([name, desc]), 0), (err) => (aio.push(err.value), 0)), 0);
  while (a.aioIsConnecting()) assert.is(a.poll(-1), 1, String(getError()));
  assert.equal(aio, [["rw", ""], ["ro", ""], 0]);
});

test("NBD_OPT_INFO for each name, as python3-libnbd sees it: the read-only flag (nbd-server says size 0 here), ENOENT for a name it lacks", () => {
  const h = connected("", true);
  const ours = ["rw", "ro", "nope"].map((name) => {
    assert.is(h.setExportName(name), 0);
    const info = res(h.optInfo());
    if ("err" in info) return [name, info];
    return [name, res(h.getSize()), res(h.isReadOnly()), res(h.canZero()), res(h.canTrim())];
  });
  assert.equal(ours, python(`
import json, nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(${JSON.stringify(sock)})
${PY_RES}
out = []
for name in ["rw", "ro", "nope"]:
    h.set_export_name(name)
    info = res(h.opt_info)
    out.append([name, info] if "err" in info else [name, res(h.get_size), res(h.is_read_only), res(h.can_zero), res(h.can_trim)])
print(json.dumps(out))
`));
  // nbd-server 3.24 sends a zero size in its NBD_REP_INFO; NBD_OPT_GO (below) has the real one.
  assert.equal(ours[0], ["rw", { ok: 0 }, { ok: 0 }, { ok: 1 }, { ok: 0 }]);
  assert.equal(ours[1], ["ro", { ok: 0 }, { ok: 1 }, { ok: 1 }, { ok: 0 }]);
  assert.equal(ours[2], ["nope", { err: "nbd_opt_info: server replied with error to opt_info request: No such file or directory", errno: errno.ENOENT }]);
});

// ---- connecting by name ---------------------------------------------------------------------

test("each export by name (connect_unix, opt_go, aio_connect_uri): its size, its read-only flag, its file's bytes", () => {
  for (const name of ["rw", "ro"] as const) {
    const plain = connected(name);
    const opt = connected(name, true);
    assert.is(opt.optGo(), 0, String(getError()));
    const aio = newHandle();
    assert.is(aio.aioConnectUri(uri(name)), 0, String(getError()));
    while (!aio.aioIsReady()) assert.is(aio.poll(-1), 1, String(getError()));
    for (const h of [plain, opt, aio]) {
      assert.is(h.getSize(), BigInt(MiB));
      assert.is(h.isReadOnly(), name === "ro" ? 1 : 0);
      assert.is(h.getExportName(), name);
      const buf = new Uint8Array(8192);
      assert.is(h.pread(buf, 256 * 1024), 0, String(getError()));
      assert.equal(buf, content[name].subarray(256 * 1024, 256 * 1024 + 8192));
    }
  }
  const nope = newHandle();
  assert.is(nope.setExportName("nope"), 0);
  fails(nope.connectUnix(sock), errno.ENOENT, "nbd_connect_unix: handshake: server has no export named 'nope': No such file or directory");
});

// ---- writes ---------------------------------------------------------------------------------------

test("rw: pwrite and zero reach the file, and nothing else changes", () => {
  const h = connected("rw");
  const data = randomFillSync(new Uint8Array(16384));
  assert.is(h.pwrite(data, 128 * 1024), 0, String(getError()));
  assert.is(h.zero(4096, 0), 0, String(getError()));
  assert.is(h.shutdown(), 0, String(getError()));
  h.close();
  const expected = content.rw.slice();
  expected.set(data, 128 * 1024);
  expected.fill(0, 0, 4096);
  const now = file("rw");
  assert.equal(now.subarray(0, 4096), new Uint8Array(4096));
  assert.equal(now.subarray(128 * 1024, 128 * 1024 + data.length), data);
  assert.ok(Buffer.compare(now, expected) === 0, "the rest of the file is as it was");
  content.rw = expected;
});

test("ro: writes fail with EPERM (refused by nbd-ts in strict mode, by the server without it), the connection stays up, the file is unchanged", () => {
  const h = connected("ro");
  const data = new Uint8Array(512).fill(0x78);
  fails(h.pwrite(data, 0), errno.EPERM, "nbd_pwrite: server does not support write operations: Operation not permitted");
  assert.is(h.setStrictMode(0), 0);
  const ours = [res(h.pwrite(data, 0)), res(h.zero(512, 0)), res(h.trim(512, 0))];
  assert.equal(ours, [
    { err: "nbd_pwrite: write: command failed: Operation not permitted", errno: errno.EPERM },
    { err: "nbd_zero: write-zeroes: command failed: Operation not permitted", errno: errno.EPERM },
    { err: "nbd_trim: trim: command failed: Operation not permitted", errno: errno.EPERM },
  ]);
  const heard: number[] = [];
  const cookie = h.aioPwrite(data, 4096, (err) => (heard.push(err.value), 0));
  assert.ok(cookie > 0n, String(getError()));
  while (h.aioCommandCompleted(cookie) === 0) assert.is(h.poll(-1), 1, String(getError()));
  assert.is(getErrno(), errno.EPERM);
  assert.equal(heard, [errno.EPERM]);
  assert.is(h.aioIsReady(), 1);
  const buf = new Uint8Array(8192);
  assert.is(h.pread(buf, 0), 0, String(getError()));
  assert.equal(buf, content.ro.subarray(0, 8192));
  assert.equal(python(`
import json, nbd
h = nbd.NBD()
h.set_export_name("ro")
h.connect_unix(${JSON.stringify(sock)})
h.set_strict_mode(0)
out = []
for f in (lambda: h.pwrite(b"x" * 512, 0), lambda: h.zero(512, 0), lambda: h.trim(512, 0)):
    try:
        f()
        out.append({"ok": 0})
    except nbd.Error as e:
        out.append({"err": e.string, "errno": e.errnum})
print(json.dumps(out))
`), ours);
  h.close();
  assert.ok(Buffer.compare(file("ro"), content.ro) === 0, "the read-only file is unchanged");
});

test.run();
