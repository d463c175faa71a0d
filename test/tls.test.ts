/**
 * TLS (NBD_OPT_STARTTLS) against nbdkit and qemu-nbd: X.509 and PSK, every
 * transport, the plaintext fallback of ALLOW, the failures of REQUIRE and of
 * bad credentials (each DEAD, with libnbd's errno: python3-libnbd on the same
 * servers is the oracle), nbds URIs, and opt_starttls (after libnbd's
 * opt-starttls.c). The keys are made once, here, with certtool and psktool,
 * in a /tmp/nbd-ts-tls-* dir that goes at exit.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { once } from "node:events";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { TLS_ALLOW, TLS_DISABLE, TLS_REQUIRE, create, getErrno, getError, type Handle } from "nbd-ts";
import { errno } from "../src/errno.js";
import { nbdkitTcp, nbdkitUnix, qemuNbdTcp, run, scratchFile } from "./helpers.js";
import { NBDKIT, newHandle } from "./handles.js";
import { camel, python } from "./libnbd.js";

// ---- keys and certificates -----------------------------------------------------------

const dir = mkdtempSync("/tmp/nbd-ts-tls-");
process.once("exit", () => rmSync(dir, { recursive: true, force: true }));

function certtool(args: string[], template: string): void {
  writeFileSync(`${dir}/template`, template);
  run("certtool", [...args, "--template", `${dir}/template`]);
}
function privkey(path: string): void {
  run("certtool", ["--generate-privkey", "--key-type=ecdsa", "--outfile", path]);
}

/** ca-cert.pem signed by ca-key.pem in `d`. */
function ca(d: string): void {
  mkdirSync(d, { recursive: true });
  privkey(`${d}/ca-key.pem`);
  certtool(["--generate-self-signed", "--load-privkey", `${d}/ca-key.pem`, "--outfile", `${d}/ca-cert.pem`],
    "cn = nbd-ts test CA\nca\ncert_signing_key\nexpiration_days = 2\n");
}

/** `name`-cert.pem and `name`-key.pem in `d`, signed by the CA in `d`. */
function signed(d: string, name: string, template: string): void {
  privkey(`${d}/${name}-key.pem`);
  certtool(["--generate-certificate", "--load-ca-certificate", `${d}/ca-cert.pem`, "--load-ca-privkey", `${d}/ca-key.pem`,
    "--load-privkey", `${d}/${name}-key.pem`, "--outfile", `${d}/${name}-cert.pem`], `${template}expiration_days = 2\n`);
}

// One directory for the servers and the client, as libnbd's tests have it. The
// server is "localhost" only: 127.0.0.1 is a wrong hostname for it.
const PKI = `${dir}/pki`;
ca(PKI);
signed(PKI, "server", "cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\n");
signed(PKI, "client", "cn = client\ntls_www_client\nencryption_key\nsigning_key\n");
/** Another CA, which signed nothing the servers have. */
const WRONG_CA = `${dir}/wrong-ca`;
ca(WRONG_CA);
/** The CA and the client's certificate, but no client-key.pem. */
const NO_KEY = `${dir}/no-key`;
mkdirSync(NO_KEY);
run("cp", [`${PKI}/ca-cert.pem`, `${PKI}/client-cert.pem`, NO_KEY]);

/** qemu-nbd's tls-creds-psk wants a directory holding keys.psk. */
const PSK_DIR = `${dir}/psk`;
mkdirSync(PSK_DIR);
const PSK = `${PSK_DIR}/keys.psk`;
run("psktool", ["-u", "alice", "-p", PSK]);
/** alice again, with another key. */
const WRONG_PSK = `${dir}/wrong.psk`;
run("psktool", ["-u", "alice", "-p", WRONG_PSK]);

// ---- servers ---------------------------------------------------------------------------

const MiB = 1024 * 1024;
const disk = () => scratchFile(`disk-${Math.random().toString(36).slice(2)}`, MiB);
const qemuCreds = (object: string) => ["--object", `${object},id=tls0,endpoint=server`, "--tls-creds", "tls0"];
const qemuX509 = qemuCreds(`tls-creds-x509,dir=${PKI}`);
const qemuPsk = qemuCreds(`tls-creds-psk,dir=${PSK_DIR}`);
/** GnuTLS's priority without TLS 1.3: PSK must use a TLS 1.2 PSK suite. */
const TLS12 = "priority=NORMAL:-VERS-TLS1.3";

const servers = {
  nbdkitX509: nbdkitTcp("--log=null", "--tls=require", `--tls-certificates=${PKI}`, "memory", "size=1M"),
  nbdkitX509Verify: nbdkitTcp("--log=null", "--tls=require", `--tls-certificates=${PKI}`, "--tls-verify-peer", "memory", "size=1M"),
  nbdkitPsk: nbdkitTcp("--log=null", "--tls=require", `--tls-psk=${PSK}`, "memory", "size=1M"),
  nbdkitPlain: nbdkitTcp("--log=null", "memory", "size=1M"),
  qemuX509: qemuNbdTcp(...qemuX509, "-f", "raw", disk()),
  qemuPsk: qemuNbdTcp(...qemuPsk, "-f", "raw", disk()),
  qemuX509Tls12: qemuNbdTcp(...qemuCreds(`tls-creds-x509,dir=${PKI},${TLS12}`), "-f", "raw", disk()),
  qemuPskTls12: qemuNbdTcp(...qemuCreds(`tls-creds-psk,dir=${PSK_DIR},${TLS12}`), "-f", "raw", disk()),
};
const port = (name: keyof typeof servers) => String(servers[name].port);
const pskUnix = nbdkitUnix("--log=null", "--tls=require", `--tls-psk=${PSK}`, "memory", "size=1M");

// ---- what a connection did --------------------------------------------------------------

const x509 = (h: Handle, certs = PKI) => { h.setTls(TLS_REQUIRE); h.setTlsCertificates(certs); };
const psk = (h: Handle, file = PSK) => { h.setTls(TLS_REQUIRE); h.setTlsPskFile(file); h.setTlsUsername("alice"); };

/** A write at a fresh offset reads back through the TLS session. */
function roundTrip(h: Handle, what: string): void {
  const data = new Uint8Array(4096).map((_, i) => (i * 7 + 1) & 0xff);
  const offset = BigInt(Math.floor(Math.random() * 255) * 4096);
  assert.is(h.pwrite(data, offset, 0), 0, `${what}: pwrite: ${getError()}`);
  const back = new Uint8Array(4096);
  assert.is(h.pread(back, offset, 0), 0, `${what}: pread: ${getError()}`);
  assert.equal(back, data, `${what}: read back`);
}

function connectedTls(h: Handle, r: number, what: string): void {
  assert.is(r, 0, `${what}: ${getError()}`);
  assert.is(h.getTlsNegotiated(), 1, `${what}: TLS negotiated`);
  roundTrip(h, what);
}

/** The call failed, the handle is DEAD, and the error is `errnum` with a message that matches. */
function diedWith(h: Handle, r: number, errnum: number, message: RegExp | string): void {
  assert.is(r, -1, `expected failure, got ${r}`);
  const text = getError() ?? "";
  if (typeof message === "string") assert.is(text, message);
  else assert.match(text, message);
  assert.is(getErrno(), errnum, text);
  assert.is(h.aioIsDead(), 1, `DEAD after: ${text}`);
}

// ---- the oracle: python3-libnbd on the same servers -------------------------------------

type Op = [string, ...(string | number | boolean)[]];
interface Outcome { ok?: number; errno?: number; err?: string; state?: string }

const ORACLE = String.raw`
import errno, json, sys, nbd
out = []
for ops in json.load(sys.stdin):
    h = nbd.NBD()
    try:
        for name, *args in ops:
            getattr(h, name)(*args)
        out.append({"ok": int(h.get_tls_negotiated())})
    except nbd.Error as e:
        out.append({"err": e.string, "errno": getattr(errno, e.errno) if e.errno else 0, "state": h.connection_state().split(":")[0]})
json.dump(out, sys.stdout)
`;

/** The same calls on an nbd-ts handle, in the oracle's shape. */
function ours(ops: Op[]): Outcome {
  const h = newHandle();
  for (const [name, ...args] of ops) {
    const r = (h as unknown as Record<string, (...a: unknown[]) => unknown>)[camel(name)]!(...args);
    if (r === -1) return { err: getError() ?? "", errno: getErrno(), state: (h.connectionState() ?? "").split(":")[0] };
  }
  return { ok: h.getTlsNegotiated() as number };
}

test("supports_tls is true; get_tls_negotiated is false before TLS", () => {
  const h = newHandle();
  assert.is(h.supportsTls(), 1);
  assert.is(h.connectCommand([...NBDKIT, "--log=null", "memory", "size=1M"]), 0, String(getError()));
  assert.is(h.getTlsNegotiated(), 0);
});

// ---- X.509 and PSK against both servers ----------------------------------------------------

test("X.509 and PSK against nbdkit and qemu-nbd (TLS 1.3, and TLS 1.2 only): TLS negotiated, writes read back, nbds URI", () => {
  const cases = [
    ["nbdkit X.509", "nbdkitX509", x509, `nbds://localhost:${port("nbdkitX509")}/?tls-certificates=${PKI}`],
    ["qemu-nbd X.509", "qemuX509", x509, `nbds://localhost:${port("qemuX509")}/?tls-certificates=${PKI}`],
    ["qemu-nbd X.509, TLS 1.2", "qemuX509Tls12", x509, `nbds://localhost:${port("qemuX509Tls12")}/?tls-certificates=${PKI}`],
    ["nbdkit PSK", "nbdkitPsk", psk, `nbds://alice@localhost:${port("nbdkitPsk")}/?tls-psk-file=${PSK}`],
    ["qemu-nbd PSK", "qemuPsk", psk, `nbds://alice@localhost:${port("qemuPsk")}/?tls-psk-file=${PSK}`],
    ["qemu-nbd PSK, TLS 1.2", "qemuPskTls12", psk, `nbds://alice@localhost:${port("qemuPskTls12")}/?tls-psk-file=${PSK}`],
  ] as const;
  for (const [what, server, creds, uri] of cases) {
    const h = newHandle();
    creds(h);
    connectedTls(h, h.connectTcp("localhost", port(server)), what);
    assert.is(h.getSize(), BigInt(MiB), what);
    assert.is(h.getUri(), uri, what);
    assert.is(h.shutdown(0), 0, `${what}: shutdown: ${getError()}`);
    assert.is(h.aioIsClosed(), 1, `${what}: CLOSED after shutdown`);
  }
});

test("stats count the plaintext protocol: TLS adds only the STARTTLS option and its reply", () => {
  const server = nbdkitTcp("--log=null", "--tls=on", `--tls-psk=${PSK}`, "memory", "size=1M");
  const stats = (tls: boolean) => {
    const h = newHandle();
    if (tls) psk(h);
    assert.is(h.connectTcp("127.0.0.1", String(server.port)), 0, String(getError()));
    assert.is(h.getTlsNegotiated(), tls ? 1 : 0);
    assert.is(h.pread(new Uint8Array(64 * 1024), 0n, 0), 0, String(getError()));
    return [h.statsBytesSent(), h.statsBytesReceived(), h.statsChunksSent(), h.statsChunksReceived()].map(Number);
  };
  const plain = stats(false);
  const tls = stats(true);
  // 16 bytes of option, 20 of reply, a chunk each way; TLS records would add dozens of bytes per message.
  assert.equal(tls.map((n, i) => n - plain[i]!), [16, 20, 1, 1], `plaintext ${plain}, TLS ${tls}`);
});

// ---- every transport ---------------------------------------------------------------------

/** A connected socket's fd, handed over as a caller would (never read here; the handle closes it). */
async function connectedFd(options: { path: string }): Promise<number> {
  const socket: Socket = connect(options);
  socket.pause();
  await once(socket, "connect");
  socket.unref();
  return (socket as unknown as { _handle: { fd: number } })._handle.fd;
}

test("TLS over a Unix socket, connect_command, socket activation and connect_socket", async () => {
  let h = newHandle();
  psk(h);
  connectedTls(h, h.connectUnix(pskUnix.socket), "unix");
  assert.is(h.getUri(), `nbds+unix://alice@/?socket=${pskUnix.socket}&tls-psk-file=${PSK}`);

  h = newHandle();
  psk(h);
  connectedTls(h, h.connectCommand([...NBDKIT, "--log=null", "--tls=require", `--tls-psk=${PSK}`, "memory", "size=1M"]), "connect_command");

  h = newHandle();
  psk(h);
  connectedTls(h, h.connectSystemdSocketActivation(["qemu-nbd", ...qemuPsk, "-f", "raw", disk()]), "socket activation");
  assert.is(h.shutdown(0), 0, String(getError()));

  const fd = await connectedFd({ path: pskUnix.socket });
  h = newHandle();
  psk(h);
  connectedTls(h, h.connectSocket(fd), "connect_socket");
});

// ---- ALLOW and REQUIRE -------------------------------------------------------------------

test("ALLOW: plaintext with a server that refuses STARTTLS, TLS with one that takes it", () => {
  let h = newHandle();
  psk(h);
  h.setTls(TLS_ALLOW);
  assert.is(h.connectTcp("localhost", port("nbdkitPlain")), 0, String(getError()));
  assert.is(h.getTlsNegotiated(), 0);
  assert.is(h.getUri(), `nbd://alice@localhost:${port("nbdkitPlain")}/?tls-psk-file=${PSK}`);
  roundTrip(h, "ALLOW, plaintext");

  h = newHandle();
  psk(h);
  h.setTls(TLS_ALLOW);
  connectedTls(h, h.connectTcp("localhost", port("nbdkitPsk")), "ALLOW, TLS");
  assert.match(h.getUri() ?? "", /^nbds:/);
});

test("REQUIRE against a plaintext server: ENOTSUP and DEAD; in opt mode CLOSED, as libnbd", () => {
  const connect: Op = ["connect_tcp", "localhost", port("nbdkitPlain")];
  const cases: Op[][] = [
    [["set_tls", TLS_REQUIRE], connect],
    [["set_tls", TLS_REQUIRE], ["set_opt_mode", true], connect],
    [["set_tls", TLS_ALLOW], ["set_opt_mode", true], connect],
  ];
  const want = python<Outcome[]>(ORACLE, cases);
  assert.equal(want[0], {
    err: "nbd_connect_tcp: handshake: server refused TLS, but handle TLS setting is 'require' (2): Operation not supported",
    errno: errno.ENOTSUP, state: "DEAD",
  });
  assert.equal(want[1], { err: "nbd_connect_tcp: connection is closed", errno: 0, state: "CLOSED" });
  assert.equal(cases.map(ours), want);
});

// ---- bad credentials and verification ------------------------------------------------------

test("wrong CA, wrong hostname, missing client key, wrong PSK: each DEAD with libnbd's errno (0), like libnbd", () => {
  const tcp = (server: keyof typeof servers, host = "localhost"): Op => ["connect_tcp", host, port(server)];
  const certs = (d: string): Op[] => [["set_tls", TLS_REQUIRE], ["set_tls_certificates", d]];
  const keys = (f: string): Op[] => [["set_tls", TLS_REQUIRE], ["set_tls_psk_file", f], ["set_tls_username", "alice"]];
  const cases: [string, Op[], RegExp][] = [
    ["wrong CA", [...certs(WRONG_CA), tcp("nbdkitX509")], /^nbd_connect_tcp: TLS handshake: unable to verify the first certificate$/],
    ["wrong CA, qemu-nbd", [...certs(WRONG_CA), tcp("qemuX509")], /^nbd_connect_tcp: TLS handshake: unable to verify the first certificate$/],
    ["wrong hostname", [...certs(PKI), tcp("nbdkitX509", "127.0.0.1")], /^nbd_connect_tcp: TLS handshake: Hostname\/IP does not match certificate's altnames: IP: 127\.0\.0\.1 is not in the cert's list/],
    ["no client key, qemu-nbd", [...certs(NO_KEY), tcp("qemuX509")], /^nbd_connect_tcp: (recv|TLS handshake)\b/],
    ["no client key, nbdkit --tls-verify-peer", [...certs(NO_KEY), tcp("nbdkitX509Verify")], /^nbd_connect_tcp: (recv|TLS handshake)\b/],
    ["wrong PSK", [...keys(WRONG_PSK), tcp("nbdkitPsk")], /^nbd_connect_tcp: TLS handshake: /],
    ["wrong PSK, qemu-nbd", [...keys(WRONG_PSK), tcp("qemuPsk")], /^nbd_connect_tcp: TLS handshake: /],
    ["PSK against an X.509 server", [...keys(PSK), tcp("nbdkitX509")], /^nbd_connect_tcp: TLS handshake: /],
  ];
  const want = python<Outcome[]>(ORACLE, cases.map(([, ops]) => ops));
  cases.forEach(([what, ops, message], i) => {
    assert.equal({ errno: want[i]!.errno, state: want[i]!.state }, { errno: 0, state: "DEAD" }, `libnbd, ${what}: ${want[i]!.err}`);
    const got = ours(ops);
    assert.equal({ errno: got.errno, state: got.state }, { errno: 0, state: "DEAD" }, `${what}: ${got.err}`);
    assert.match(got.err ?? "", message, what);
  });
});

test("PSK file errors come before the handshake, with libnbd's errno and message: a missing file, an unknown user", () => {
  const connect: Op = ["connect_tcp", "localhost", port("nbdkitPsk")];
  const cases: Op[][] = [
    [["set_tls", TLS_REQUIRE], ["set_tls_psk_file", `${dir}/none.psk`], ["set_tls_username", "alice"], connect],
    [["set_tls", TLS_REQUIRE], ["set_tls_psk_file", PSK], ["set_tls_username", "bob"], connect],
  ];
  const want = python<Outcome[]>(ORACLE, cases);
  assert.equal(want, [
    { err: `nbd_connect_tcp: open: ${dir}/none.psk: No such file or directory`, errno: errno.ENOENT, state: "DEAD" },
    { err: `nbd_connect_tcp: ${PSK}: username bob was not found in PSK file: Invalid argument`, errno: errno.EINVAL, state: "DEAD" },
  ]);
  assert.equal(cases.map(ours), want);
});

test("what is not verified, as libnbd: verify-peer off, a Unix socket without tls-hostname, no client key for plain nbdkit", () => {
  const unix = nbdkitUnix("--log=null", "--tls=require", `--tls-certificates=${PKI}`, "memory", "size=1M");
  const cases: Op[][] = [
    [["set_tls", TLS_REQUIRE], ["set_tls_certificates", WRONG_CA], ["set_tls_verify_peer", false], ["connect_tcp", "localhost", port("nbdkitX509")]],
    [["set_tls", TLS_REQUIRE], ["set_tls_certificates", PKI], ["set_tls_verify_peer", false], ["connect_tcp", "127.0.0.1", port("nbdkitX509")]],
    [["set_tls", TLS_REQUIRE], ["set_tls_certificates", WRONG_CA], ["connect_unix", unix.socket]],
    [["set_tls", TLS_REQUIRE], ["set_tls_certificates", NO_KEY], ["connect_tcp", "localhost", port("nbdkitX509")]],
  ];
  const want = python<Outcome[]>(ORACLE, cases);
  assert.equal(want, cases.map(() => ({ ok: 1 })));
  assert.equal(cases.map(ours), want);
});

test("set_tls_hostname (libnbd 1.22): it is what the certificate must name, over TCP and Unix sockets", () => {
  const unix = nbdkitUnix("--log=null", "--tls=require", `--tls-certificates=${PKI}`, "memory", "size=1M");
  let h = newHandle();
  x509(h);
  h.setTlsHostname("localhost");
  connectedTls(h, h.connectTcp("127.0.0.1", port("nbdkitX509")), "127.0.0.1 as localhost");
  assert.is(h.getTlsHostname(), "localhost");

  h = newHandle();
  x509(h);
  h.setTlsHostname("elsewhere.example");
  diedWith(h, h.connectTcp("localhost", port("nbdkitX509")), 0, /^nbd_connect_tcp: TLS handshake: Hostname\/IP does not match certificate's altnames: Host: elsewhere\.example\. is not in the cert's altnames: DNS:localhost$/);

  h = newHandle();
  x509(h, WRONG_CA);
  h.setTlsHostname("localhost");
  diedWith(h, h.connectUnix(unix.socket), 0, "nbd_connect_unix: TLS handshake: unable to verify the first certificate");

  h = newHandle();
  x509(h);
  h.setTlsHostname("localhost");
  connectedTls(h, h.connectUnix(unix.socket), "unix as localhost");
});

test("a certificates directory without ca-cert.pem means the system's CAs, which do not know the test CA", () => {
  const h = newHandle();
  x509(h, `${dir}/psk`);
  diedWith(h, h.connectTcp("localhost", port("nbdkitX509")), 0, /^nbd_connect_tcp: TLS handshake: /);
});

test("a client key that does not parse fails before the handshake, naming the files", () => {
  const bad = `${dir}/bad-key`;
  mkdirSync(bad);
  run("cp", [`${PKI}/ca-cert.pem`, `${PKI}/client-cert.pem`, bad]);
  writeFileSync(`${bad}/client-key.pem`, "not a key\n");
  const h = newHandle();
  x509(h, bad);
  diedWith(h, h.connectTcp("localhost", port("nbdkitX509")), 0,
    new RegExp(`^nbd_connect_tcp: ${bad}/client-cert\\.pem, ${bad}/client-key\\.pem: `));
});

// ---- URIs --------------------------------------------------------------------------------

test("nbds:// and nbds+unix:// URIs with tls-certificates and tls-psk-file connect, and get_uri gives them back", () => {
  const uris = [
    `nbds://localhost:${port("nbdkitX509")}/?tls-certificates=${PKI}`,
    `nbds://alice@localhost:${port("qemuPsk")}/?tls-psk-file=${PSK}`,
    `nbds+unix://alice@/?socket=${pskUnix.socket}&tls-psk-file=${PSK}`,
  ];
  for (const uri of uris) {
    const h = newHandle();
    h.setUriAllowLocalFile(true);
    connectedTls(h, h.connectUri(uri), uri);
    assert.is(h.getTls(), TLS_REQUIRE);
    assert.is(h.getUri(), uri);
  }
});

// ---- opt mode: opt_starttls (libnbd's opt-starttls.c) --------------------------------------

/** Opt mode on nbdkit -s with `tls` (--tls=off/on/require), the handle's TLS left DISABLE. */
function optHandle(tls: string, keys = PSK): Handle {
  const h = newHandle();
  h.setOptMode(true);
  h.setTlsPskFile(keys);
  h.setTlsUsername("alice");
  assert.is(h.connectCommand([...NBDKIT, "--log=null", tls, `--tls-psk=${PSK}`, "memory", "size=1M"]), 0, String(getError()));
  assert.is(h.getTls(), TLS_DISABLE);
  assert.is(h.getTlsNegotiated(), 0);
  return h;
}

test("opt_starttls: false from a server without TLS; true from one with it, wiping what plaintext negotiated", () => {
  let h = optHandle("--tls=off");
  assert.is(h.optStructuredReply(), 1);
  assert.is(h.optStarttls(), 0, "the server lacks TLS; the connection stays up");
  assert.is(h.getStructuredRepliesNegotiated(), 1);
  assert.is(h.getTlsNegotiated(), 0);
  assert.is(h.optGo(), 0, String(getError()));
  roundTrip(h, "plaintext after a refused opt_starttls");

  for (const tls of ["--tls=on", "--tls=require"]) {
    h = optHandle(tls);
    if (tls === "--tls=on") {
      assert.is(h.optStructuredReply(), 1);
      assert.is(h.optInfo(), 0, String(getError()));
      assert.is(h.getSize(), BigInt(MiB));
    } else {
      assert.is(h.optStructuredReply(), 0, "nbdkit --tls=require refuses options before TLS");
    }
    assert.is(h.optStarttls(), 1, `${tls}: ${getError()}`);
    assert.is(h.getTlsNegotiated(), 1);
    assert.is(h.getStructuredRepliesNegotiated(), 0, "structured replies are renegotiated under TLS");
    assert.is(h.getSize(), -1n, "what opt_info said in plaintext is gone");
    assert.is(h.optStarttls(), 0, "a second STARTTLS is refused; TLS stays");
    assert.is(h.getTlsNegotiated(), 1);
    assert.is(h.optStructuredReply(), 1);
    assert.is(h.optGo(), 0, String(getError()));
    assert.is(h.getSize(), BigInt(MiB));
    roundTrip(h, `opt_starttls, ${tls}`);
  }
});

test("opt_starttls fails and kills the handle when the TLS handshake fails; under REQUIRE a refusal closes it", () => {
  let h = optHandle("--tls=on", WRONG_PSK);
  diedWith(h, h.optStarttls(), 0, /^nbd_opt_starttls: TLS handshake: /);

  h = newHandle();
  psk(h);
  h.setOptMode(true);
  assert.is(h.connectCommand([...NBDKIT, "--log=null", "--tls=require", `--tls-psk=${PSK}`, "memory", "size=1M"]), 0, String(getError()));
  assert.is(h.getTlsNegotiated(), 1, "TLS came first, before opt mode took over");
  assert.is(h.optStarttls(), -1);
  assert.is(getError(), "nbd_opt_starttls: handshake: server refused TLS, but handle TLS setting is 'require' (2): Operation not supported");
  assert.is(getErrno(), errno.ENOTSUP);
  assert.is(h.aioIsClosed(), 1);

  const plain = create()!;
  assert.is(plain.optStarttls(), -1, "only in opt mode's negotiating state");
  plain.close();
});

test.run();
