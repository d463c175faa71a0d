/**
 * NBD URIs and connect_socket: the pure parser and formatter (src/client/uri.ts)
 * on good and bad URIs, the policies, connect_uri against nbdkit and qemu-nbd
 * (TCP, Unix, an export name, an abstract socket), get_uri after every kind of
 * connect, and connect_socket on sockets the caller connected. Expected values
 * are libnbd's: python3-libnbd (1.14) runs the same calls where 1.14 and newer
 * libnbd agree; elsewhere they come from libnbd's source and manual (1.22).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, existsSync, fstatSync, openSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import {
  ALLOW_TRANSPORT_MASK, ALLOW_TRANSPORT_TCP, ALLOW_TRANSPORT_UNIX, ALLOW_TRANSPORT_VSOCK,
  TLS_ALLOW, TLS_DISABLE, TLS_REQUIRE, create, getErrno, getError, type Handle,
} from "nbd-ts";
import { errno } from "../src/errno.js";
import { NbdError } from "../src/client/error.js";
import { type UriPlan, type UriPolicy, formatUri, isUri, parseUri } from "../src/client/uri.js";
import { alive, freePort, nbdkitTcp, nbdkitUnix, scratchFile, scratchPath, waitFor } from "./helpers.js";
import { newHandle } from "./handles.js";
import { call, python, type Op, type Result } from "./libnbd.js";

const MiB = 1024 * 1024;

// ---- python3-libnbd (libnbd 1.14) as the oracle ----------------------------------

/** A list of calls ([python name, ...args]) runs on one fresh handle. */
const PY = String.raw`
import json, sys, nbd
def call(h, op):
    try:
        v = getattr(h, op[0])(*op[1:])
        return {"ok": 0 if v is None else int(v) if isinstance(v, bool) else v}
    except nbd.Error as e: return {"err": e.string, "errno": e.errnum}
out = []
for ops in json.load(sys.stdin):
    h = nbd.NBD()
    out.append([call(h, op) for op in ops])
    del h
json.dump(out, sys.stdout)
`;

/** The same calls on a fresh nbd-ts handle (closed afterwards, so that a server sees one client at a time). */
function ours(ops: Op[]): Result[] {
  const h = create()!;
  const out = ops.map((op) => call(h, op));
  h.close();
  return out;
}

/** Our parse errors say what is wrong after libnbd's text: "unable to parse URI: X (why)". */
const libnbdText = (r: Result): Result =>
  "err" in r && r.err ? { ...r, err: r.err.replace(/^(nbd_connect_uri: unable to parse URI: .*) \([^()]*\)(: Invalid argument)$/s, "$1$2") } : r;

/** Runs each list of calls on nbd-ts and on libnbd 1.14 and asserts the same results. */
function sameAsLibnbd(runs: Op[][]): Result[][] {
  const mine = runs.map((ops) => ours(ops).map(libnbdText));
  const theirs = python<Result[][]>(PY, runs);
  runs.forEach((ops, i) => assert.equal(mine[i], theirs[i], `nbd-ts vs libnbd 1.14: ${JSON.stringify(ops)}`));
  return mine;
}

// ---- the parser ----------------------------------------------------------------------

const open: UriPolicy = { transports: ALLOW_TRANSPORT_MASK, tls: TLS_ALLOW, localFile: true };

/** The plan for a URI that parses (its settings by setter name, then the endpoint). */
function planOf(uri: string, policy = open): UriPlan {
  try {
    return parseUri(uri, policy);
  } catch (e) {
    assert.unreachable(`${uri}: ${(e as Error).message}`);
    throw e;
  }
}

/** The error a URI is refused with before anything is set. */
function refusal(uri: string, policy = open): NbdError {
  try {
    parseUri(uri, policy);
  } catch (e) {
    assert.instance(e, NbdError, `${uri}: ${String(e)}`);
    return e as NbdError;
  }
  assert.unreachable(`${uri} parsed`);
  throw new Error("unreachable");
}

const tcp = (host: string, port = "10809") => ({ kind: "tcp", host, port });
const unix = (path: string) => ({ kind: "unix", path });

test("parser: export names, hosts, ports and users (the NBD URI spec's examples and RFC 3986)", () => {
  const cases: [string, string, unknown, string?][] = [
    ["nbd://example.com", "", tcp("example.com")],
    ["nbd://example.com/", "", tcp("example.com")],
    ["nbd://example.com:10810/disk", "disk", tcp("example.com", "10810")],
    ["nbd://example.com//disk", "/disk", tcp("example.com")],
    ["nbd://h/hello%20world", "hello world", tcp("h")],
    ["nbd://h/a%2Fb/%C3%A9+x", "a/b/é+x", tcp("h")],
    ["nbd://h/a?b/c#frag", "a", tcp("h")],
    ["nbd://[::1]:10810/", "", tcp("::1", "10810")],
    ["nbd://[fe80::1%25eth0]/", "", tcp("fe80::1%eth0")],
    ["nbd://127.0.0.1:01/", "", tcp("127.0.0.1", "1")],
    ["nbd://h:0/", "", tcp("h")],
    ["nbd://h:/", "", tcp("h")],
    ["nbd:///x", "x", tcp("localhost")],
    ["nbd://h%41:1/", "", tcp("hA", "1")],
    ["nbd://alice@h/", "", tcp("h"), "alice"],
    ["nbd://al%40ice:pw@h/", "", tcp("h"), "al@ice:pw"],
    ["nbd+unix:///foo?socket=/tmp/nbd.sock", "foo", unix("/tmp/nbd.sock")],
    ["nbd+unix://alice@/?socket=/tmp/a%20b%26c", "", unix("/tmp/a b&c"), "alice"],
    ["nbd+unix://ignored:9/?socket=/s", "", unix("/s")],
  ];
  for (const [uri, exportName, endpoint, user] of cases) {
    const plan = planOf(uri);
    assert.equal(plan.target, endpoint, `${uri}: endpoint`);
    assert.equal(plan.settings, [
      ...(user !== undefined ? [{ call: "setTlsUsername", value: user }] : []),
      { call: "setExportName", value: exportName },
    ], `${uri}: settings`);
  }
});

test("parser: the query (socket last wins, & or ;, names case-insensitive as 1.22, unknown ones ignored)", () => {
  assert.equal(planOf("nbd+unix:///?socket=/a&socket=/b").target, unix("/b"));
  assert.equal(planOf("nbd+unix:///?x=1;socket=/s;y").target, unix("/s"));
  assert.equal(planOf("nbd+unix:///?SOCKET=/s").target, unix("/s"));
  assert.equal(planOf("nbd+unix:///?=ignored&x-unknown=1&flag&&socket=/s").target, unix("/s"));
  assert.equal(planOf("nbd+unix:///?socket").target, unix(""), "a name alone is an empty value");
  // The NBD URI spec's abstract sockets: a leading NUL (libnbd cannot connect to them; Node can).
  assert.equal(planOf("nbd+unix:///?socket=%00/abstract").target, unix("\0/abstract"));
  const plan = planOf("nbds://h/?tls-certificates=/c&tls-psk-file=/k%3Dv&TLS-Hostname=srv&tls-verify-peer=off");
  assert.equal(plan.settings, [
    { call: "setTls", value: TLS_REQUIRE },
    { call: "setTlsCertificates", value: "/c" },
    { call: "setTlsPskFile", value: "/k=v" },
    { call: "setTlsHostname", value: "srv" },
    { call: "setTlsVerifyPeer", value: false },
    { call: "setExportName", value: "" },
  ]);
  for (const [v, want] of [["1", true], ["TRUE", true], ["yes", true], ["0", false], ["false", false], ["No", false]] as const) {
    assert.equal(planOf(`nbd://h/?tls-verify-peer=${v}`).settings[0], { call: "setTlsVerifyPeer", value: want }, v);
  }
});

test("parser: URIs that do not parse are EINVAL naming what is wrong, with libnbd's text first", () => {
  const cases: [string, string][] = [
    ["nbd://a b/", `invalid character " " in the host`],
    ["nbd://h/a b", `invalid character " " in the path`],
    ["nbd://h/é", `invalid character "é" in the path`],
    ["nbd://h/[x]", `invalid character "[" in the path`],
    ["nbd://h/?x=a b", `invalid character " " in the query`],
    ["nbd://h/%zz", "invalid percent-encoding '%zz' in the path"],
    ["nbd://h/a%4", "invalid percent-encoding '%4' in the path"],
    ["nbd://%zz/", "invalid percent-encoding '%zz' in the host"],
    ["nbd://a@b@c/", `invalid character "@" in the host`],
    ["nbd://a%2@h/", "invalid percent-encoding '%2' in the user name"],
    ["nbd://[::1/", "missing ']' after the IPv6 address"],
    ["nbd://[::1]x/", `unexpected "x" after the IPv6 address`],
    ["nbd://[::g]/", "invalid IPv6 address '::g'"],
    ["nbd://h:port/", `invalid character "p" in the port`],
    ["nbd://h:4294967297/", "port 4294967297 is out of range"],
    ["1nbd://h/", "invalid scheme '1nbd'"],
    ["nbd://h/%FF", "the path is not valid UTF-8"],
    ["nbd://h/a%00b", "NUL byte in the path"],
    ["nbd+unix:///?socket=/a%00b", "NUL byte in the socket parameter"],
  ];
  for (const [uri, why] of cases) {
    const e = refusal(uri);
    assert.is(e.errno, errno.EINVAL, uri);
    assert.is(e.message, `unable to parse URI: ${uri} (${why})`);
  }
});

test("parser: schemes, the scheme:// form and the socket parameter (libnbd's texts)", () => {
  const noScheme = "NBD URI does not have a scheme: valid NBD URIs should start with a scheme like nbd://, nbds:// or nbd+unix://";
  const cases: [string, number, string][] = [
    ["", errno.EINVAL, noScheme],
    ["/path/to/sock", errno.EINVAL, `${noScheme}: to open a local socket use "nbd+unix://?socket=PATH"`],
    ["localhost", errno.EINVAL, `${noScheme}: to open a local port use "nbd://localhost" or "nbd://localhost:PORT"`],
    ["localhost:10809", errno.EINVAL, "unknown NBD URI scheme: localhost"],
    ["http://x/", errno.EINVAL, "unknown NBD URI scheme: http"],
    ["NBD://h/", errno.EINVAL, "unknown NBD URI scheme: NBD"],
    ["nbd:localhost", errno.EINVAL, "URI must begin with 'nbd://'"],
    ["nbd+unix:/?socket=/x", errno.EINVAL, "URI must begin with 'nbd+unix://'"],
    ["nbd+unix:///", errno.EINVAL, `cannot parse socket parameter from NBD URI (did you mean to use "nbd+unix:///?socket=..."?)`],
    ["nbds+unix:///?sock=/x", errno.EINVAL, `cannot parse socket parameter from NBD URI (did you mean to use "nbds+unix:///?socket=..."?)`],
    ["nbd://h/?socket=/x", errno.EINVAL, `socket parameter is incompatible with "nbd:" (did you mean to use "nbd+unix:///?socket=..."?)`],
    ["nbds://h/?socket=/x", errno.EINVAL, `socket parameter is incompatible with "nbds:" (did you mean to use "nbds+unix:///?socket=..."?)`],
    ["nbd+vsock:///?socket=/x", errno.EINVAL, `socket parameter is incompatible with "nbd+vsock:" (did you mean to use "nbd+unix:///?socket=..."?)`],
    ["nbd+ssh://h/", errno.ENOTSUP, "URI transport nbd+ssh is not supported: nbd-ts cannot tunnel through ssh"],
    ["nbds+ssh://h/", errno.ENOTSUP, "URI transport nbds+ssh is not supported: nbd-ts cannot tunnel through ssh"],
  ];
  for (const [uri, errnum, message] of cases) {
    const e = refusal(uri);
    assert.is(e.message, message, uri);
    assert.is(e.errno, errnum, uri);
  }
});

test("parser: vsock parses its CID, then is ENOTSUP (Node has no AF_VSOCK); its settings still apply", () => {
  for (const uri of ["nbd+vsock:///", "nbd+vsock://2:10809/x", "nbds+vsock://3/"]) {
    const plan = planOf(uri);
    assert.instance(plan.target, NbdError);
    const e = plan.target as NbdError;
    assert.is(e.errno, errno.ENOTSUP, uri);
    assert.is(e.message, "AF_VSOCK protocol is not supported: Node.js has no AF_VSOCK sockets");
    assert.is(plan.settings.at(-1)?.call, "setExportName", `${uri}: the export name is set first, as libnbd does`);
  }
  const bad = planOf("nbd+vsock://abc/").target as NbdError;
  assert.is(bad.errno, errno.EINVAL);
  assert.is(bad.message, "cannot parse vsock CID from NBD URI: abc");
});

test("parser: the transport and TLS policies (EPERM), in libnbd's order", () => {
  const only = (transports: number): UriPolicy => ({ ...open, transports });
  const cases: [string, UriPolicy, string][] = [
    ["nbd+unix:///?socket=/x", only(ALLOW_TRANSPORT_TCP), "URI transport nbd+unix is not permitted"],
    ["nbd://h/", only(ALLOW_TRANSPORT_UNIX), "URI transport nbd is not permitted"],
    ["nbds://h/", only(ALLOW_TRANSPORT_VSOCK), "URI transport nbds is not permitted"],
    ["nbd+vsock:///", only(ALLOW_TRANSPORT_TCP | ALLOW_TRANSPORT_UNIX), "URI transport nbd+vsock is not permitted"],
    ["nbds://h/", { ...open, tls: TLS_DISABLE }, "URI TLS setting nbds is not permitted"],
    ["nbds+unix:///?socket=/x", { ...open, tls: TLS_DISABLE }, "URI TLS setting nbds+unix is not permitted"],
    ["nbd://h/", { ...open, tls: TLS_REQUIRE }, "URI TLS setting nbd is not permitted"],
    // The policies come before the socket parameter.
    ["nbd+unix:///", only(ALLOW_TRANSPORT_TCP), "URI transport nbd+unix is not permitted"],
  ];
  for (const [uri, policy, message] of cases) {
    const e = refusal(uri, policy);
    assert.is(e.message, message, uri);
    assert.is(e.errno, errno.EPERM, uri);
  }
  assert.equal(planOf("nbds://h/", { ...open, tls: TLS_REQUIRE }).settings[0], { call: "setTls", value: TLS_REQUIRE });
  // Without the transport, the no-scheme hints are not given.
  const noScheme = "NBD URI does not have a scheme: valid NBD URIs should start with a scheme like nbd://, nbds:// or nbd+unix://";
  assert.is(refusal("/sock", only(ALLOW_TRANSPORT_TCP)).message, noScheme);
  assert.is(refusal("localhost", only(ALLOW_TRANSPORT_UNIX)).message, noScheme);
});

test("parser: a local file without set_uri_allow_local_file is EPERM after TLS was required (libnbd keeps that)", () => {
  for (const name of ["tls-certificates", "tls-psk-file", "TLS-PSK-FILE"]) {
    const plan = planOf(`nbds://h/?tls-hostname=a&${name}=/x`, { ...open, localFile: false });
    assert.equal(plan.settings, [{ call: "setTls", value: TLS_REQUIRE }, { call: "setTlsHostname", value: "a" }]);
    const e = plan.target as NbdError;
    assert.is(e.errno, errno.EPERM);
    assert.is(e.message, `local file access (${name.toLowerCase()}) is not allowed, call nbd_set_uri_allow_local_file to enable this`);
  }
  const verify = planOf("nbd://h/?tls-verify-peer=maybe").target as NbdError;
  assert.is(verify.errno, errno.EINVAL);
  assert.is(verify.message, "cannot parse tls-verify-peer parameter from NBD URI: maybe");
});

test("formatter: get_uri's URIs, escaped as libnbd's (libxml2's) where it escapes, and parsed back", () => {
  const base = { tls: false, exportName: "", tlsVerifyPeer: true };
  const cases: [Parameters<typeof formatUri>[0], string][] = [
    [{ ...base, endpoint: { kind: "tcp", host: "localhost", port: "10809" } }, "nbd://localhost:10809/"],
    [{ ...base, endpoint: { kind: "tcp", host: "::1", port: "10809" } }, "nbd://[::1]:10809/"],
    [{ ...base, endpoint: { kind: "tcp", host: "fe80::1%eth0", port: "1" } }, "nbd://[fe80::1%25eth0]:1/"],
    [{ ...base, tls: true, endpoint: { kind: "unix", path: "/s" } }, "nbds+unix:///?socket=/s"],
    [{ ...base, exportName: "/", endpoint: { kind: "unix", path: "/s" } }, "nbd+unix:////?socket=/s"],
    // libnbd 1.14 gives these two exactly (measured with python3-libnbd).
    [{ ...base, exportName: "a b/?#%&=;+é:@!$'()*,~", endpoint: { kind: "unix", path: "/x" } },
      "nbd+unix:///a%20b/%3F%23%25&=;+%C3%A9%3A@!$'()*,~?socket=/x"],
    [{ ...base, username: "al@ice:pw /é", endpoint: { kind: "unix", path: "/x" } },
      "nbd+unix://al%40ice:pw%20%2F%C3%A9@/?socket=/x"],
    // libnbd writes query values raw; ours are escaped where they would change the URI.
    [{ ...base, tlsCertificates: "/c&d=e f", tlsPskFile: "/p;q#", endpoint: { kind: "unix", path: "/a b%" } },
      "nbd+unix:///?socket=/a%20b%25&tls-certificates=/c%26d%3De%20f&tls-psk-file=/p%3Bq%23"],
    [{ ...base, tlsHostname: "srv", tlsVerifyPeer: false, endpoint: { kind: "tcp", host: "h", port: "1" } },
      "nbd://h:1/?tls-hostname=srv&tls-verify-peer=false"],
    [{ ...base, endpoint: { kind: "unix", path: "\0abstract" } }, "nbd+unix:///?socket=%00abstract"],
  ];
  for (const [src, uri] of cases) {
    assert.is(formatUri(src), uri);
    const plan = planOf(uri);
    assert.equal(plan.target, src.endpoint, `${uri} parses back to its endpoint`);
    assert.equal(plan.settings.find((s) => s.call === "setExportName")?.value, src.exportName, `${uri}: export name`);
    assert.equal(plan.settings.find((s) => s.call === "setTlsUsername")?.value, src.username, `${uri}: user`);
    assert.equal(plan.settings.find((s) => s.call === "setTlsPskFile")?.value, src.tlsPskFile, `${uri}: psk file`);
  }
});

test("isUri: the scheme prefix (libnbd 1.22's heuristic); never fails, in any state", () => {
  for (const s of ["nbd:", "nbd://h", "nbds://h", "nbd+unix:///?socket=/s", "nbds+unix:x", "nbd+vsock:///", "nbds+vsock://2", "nbd+ssh://h", "nbds+ssh://h"]) {
    assert.ok(isUri(s), s);
  }
  for (const s of ["", "nbd", "/dev/nbd0", "disk.qcow2", "NBD://h", "http://h/", "localhost:10809", " nbd://h", "nbd+tcp://h"]) {
    assert.not.ok(isUri(s), s);
  }
  const h = newHandle();
  assert.is(h.isUri("nbd://h/"), 1);
  assert.is(h.isUri("file.img"), 0);
  assert.is(h.supportsUri(), 1);
  h.setExportName("x");
  assert.is(h.connectUri("nbd:nope"), -1);
  assert.is(h.isUri("nbd://h"), 1);
  assert.is(getError(), "nbd_connect_uri: URI must begin with 'nbd://': Invalid argument", "isUri leaves the last error alone");
});

// ---- connect_uri without a server ----------------------------------------------------

test("connect_uri refusals read as libnbd 1.14's, and the handle stays START, its settings untouched", () => {
  const uris = [
    "/path/to/sock", "localhost:10809", "localhost", "http://x/", "nbd+unix:///", "nbd://localhost/?socket=/x",
    "nbds://localhost/?socket=/x", "nbd:localhost", "nbd:/x", "nbd+unix:/?socket=/x", "", "NBD://localhost:1/",
    "nbd://a b/", "nbd://[::1/", "nbd://host:port/", "nbd://%zz/", "nbd://h/%zz", "nbd://h/a|b", "nbd://h/é",
    "nbd://h/?x=a b", "nbd://127.0.0.1:4294967297/", "nbd://h/ ", " nbd://h/",
  ];
  const runs: Op[][] = uris.map((u) => [["connect_uri", u], ["aio_is_created"], ["get_export_name"], ["get_tls"]]);
  const results = sameAsLibnbd(runs);
  for (const [i, r] of results.entries()) {
    assert.is((r[0] as { errno: number }).errno, errno.EINVAL, uris[i]);
    assert.equal(r.slice(1), [{ ok: 1 }, { ok: "" }, { ok: TLS_DISABLE }], `${uris[i]}: still START, nothing set`);
  }
});

test("connect_uri policies and local files, as libnbd 1.14 (EPERM; a refused local file keeps tls=REQUIRE)", () => {
  sameAsLibnbd([
    [["set_uri_allow_transports", ALLOW_TRANSPORT_TCP], ["connect_uri", "nbd+unix:///?socket=/x"], ["aio_is_created"]],
    [["set_uri_allow_transports", ALLOW_TRANSPORT_UNIX], ["connect_uri", "nbd://h/"], ["aio_is_created"]],
    [["set_uri_allow_transports", ALLOW_TRANSPORT_VSOCK], ["connect_uri", "nbds://h/"]],
    [["set_uri_allow_transports", 0], ["connect_uri", "/x"]],
    [["set_uri_allow_transports", ALLOW_TRANSPORT_UNIX], ["connect_uri", "localhost"]],
    [["set_uri_allow_tls", TLS_DISABLE], ["connect_uri", "nbds://h/"], ["get_tls"]],
    [["set_uri_allow_tls", TLS_DISABLE], ["connect_uri", "nbds+unix:///?socket=/x"]],
    [["set_uri_allow_tls", TLS_REQUIRE], ["connect_uri", "nbd://h/"]],
    [["connect_uri", "nbds://localhost/?tls-certificates=/x"], ["get_tls"], ["aio_is_created"]],
    [["connect_uri", "nbds+unix:///e?socket=/s&tls-psk-file=/x"], ["get_tls"], ["get_export_name"]],
    [["set_uri_allow_transports", 8]],
    [["set_uri_allow_tls", 3]],
  ]);
});

test("connect_uri: what the TCP and Unix connects do with the URI's settings, as libnbd 1.14", () => {
  const nobody = scratchPath("nobody.sock");
  const port = freePort(); // nothing listens: refused
  const results = sameAsLibnbd([
    // A refused TCP connect goes back to START and keeps the export name, user, TLS.
    [["connect_uri", `nbd://127.0.0.1:${port}/foo%20bar`], ["aio_is_created"], ["get_export_name"]],
    [["connect_uri", `nbds://alice@127.0.0.1:${port}`], ["aio_is_created"], ["get_tls_username"], ["get_tls"]],
    [["connect_uri", `nbd://[::1]:${port}//x`], ["get_export_name"]],
    // A failed Unix connect is DEAD, and get_uri still says where it went.
    [["connect_uri", `nbd+unix:///e?socket=${nobody}`], ["aio_is_dead"], ["get_uri"]],
    [["connect_uri", `nbds+unix://bob@/?socket=${nobody}`], ["get_uri"]],
    [["set_uri_allow_local_file", true], ["connect_uri", `nbd+unix:///?socket=${nobody}&tls-certificates=/c&tls-psk-file=/k`], ["get_uri"]],
    [["connect_uri", "nbd+unix:///?socket="], ["aio_is_dead"]],
    [["connect_uri", `nbd://127.0.0.1:${port}/${"x".repeat(4097)}`], ["aio_is_created"], ["get_export_name"]],
  ]);
  assert.is((results[0]![0] as { errno: number }).errno, errno.ECONNREFUSED);
  assert.equal(results[3]![2], { ok: `nbd+unix:///e?socket=${nobody}` });
});

test("connect_uri: vsock is ENOTSUP and nbd+ssh ENOTSUP, the handle still START and usable", () => {
  const h = newHandle();
  assert.is(h.connectUri("nbd+vsock:///disk"), -1);
  assert.is(getErrno(), errno.ENOTSUP);
  assert.is(getError(), "nbd_connect_uri: AF_VSOCK protocol is not supported: Node.js has no AF_VSOCK sockets: Operation not supported");
  assert.is(h.aioIsCreated(), 1);
  assert.is(h.getExportName(), "disk", "the export name was set before the connect, as libnbd does");
  assert.is(h.connectUri("nbds+ssh://host/"), -1);
  assert.is(getErrno(), errno.ENOTSUP);
  assert.is(h.getTls(), TLS_DISABLE, "refused before any setting");
  const server = nbdkitUnix("memory", "size=1M");
  assert.is(h.connectUri(`nbd+unix:///?socket=${server.socket}`), 0, String(getError()));
  assert.is(h.getSize(), BigInt(MiB));
});

test("set_uri_allow_*: start-only settings, EINVAL outside their range", () => {
  const h = newHandle();
  assert.is(h.setUriAllowTransports(ALLOW_TRANSPORT_MASK), 0);
  assert.is(h.setUriAllowTransports(ALLOW_TRANSPORT_MASK + 1), -1);
  assert.is(getError(), "nbd_set_uri_allow_transports: mask: invalid value for flag: 0x8: Invalid argument");
  assert.is(h.setUriAllowTls(TLS_REQUIRE), 0);
  assert.is(h.setUriAllowTls(3), -1);
  assert.is(getError(), "nbd_set_uri_allow_tls: tls: invalid value for parameter: 3: Invalid argument");
  assert.is(h.setUriAllowLocalFile(true), 0);
  assert.is(h.getUri(), null);
  assert.is(getErrno(), errno.ENOTCONN);
  const server = nbdkitUnix("null", "size=1M");
  assert.is(h.connectUri(`nbd+unix:///?socket=${server.socket}`), -1, "TLS is required by the policy");
  assert.is(getErrno(), errno.EPERM);
  assert.is(h.connectUnix(server.socket), 0, String(getError()));
  for (const ret of [h.setUriAllowTransports(1), h.setUriAllowTls(TLS_ALLOW), h.setUriAllowLocalFile(false)]) {
    assert.is(ret, -1);
    assert.is(getErrno(), errno.EINVAL);
    assert.match(getError()!, /^nbd_set_uri_allow_\w+: invalid state: READY: the handle must be newly created: /);
  }
});

// ---- real servers ----------------------------------------------------------------------

/** Writes a marker through `h` and reads it back. */
function roundTrip(h: Handle, what: string): void {
  const data = Buffer.from(`nbd-ts ${what}`.padEnd(512, "."));
  assert.is(h.pwrite(data, 4096), 0, `${what}: pwrite: ${getError()}`);
  const back = new Uint8Array(512);
  assert.is(h.pread(back, 4096), 0, `${what}: pread: ${getError()}`);
  assert.equal(Buffer.from(back), data, `${what}: read back what was written`);
}

test("nbd://127.0.0.1:PORT/ and nbd+unix:///?socket=SOCK against nbdkit; get_uri as libnbd's", () => {
  const byTcp = nbdkitTcp("memory", "size=1M");
  const byUnix = nbdkitUnix("memory", "size=1M");
  const uris = [`nbd://127.0.0.1:${byTcp.port}/`, `nbd://localhost:${byTcp.port}`, `nbd+unix:///?socket=${byUnix.socket}`];
  for (const uri of uris) {
    const h = newHandle();
    assert.is(h.connectUri(uri), 0, `${uri}: ${getError()}`);
    assert.is(h.getSize(), BigInt(MiB));
    roundTrip(h, uri);
  }
  const runs = uris.map((u): Op[] => [["connect_uri", u], ["get_uri"], ["get_size"], ["get_export_name"]]);
  runs.push([["connect_tcp", "127.0.0.1", String(byTcp.port)], ["get_uri"]]);
  runs.push([["connect_tcp", "localhost", `0${byTcp.port}`], ["get_uri"]]);
  runs.push([["connect_unix", byUnix.socket], ["get_uri"]]);
  runs.push([["set_tls_username", "u@x"], ["set_export_name", "a b"], ["connect_unix", byUnix.socket], ["get_uri"]]);
  runs.push([["set_tls_certificates", "/c"], ["set_tls_psk_file", "/k"], ["connect_unix", byUnix.socket], ["get_uri"]]);
  const results = sameAsLibnbd(runs);
  assert.equal(results.slice(0, 3).map((r) => r[1]), [
    { ok: `nbd://127.0.0.1:${byTcp.port}/` }, { ok: `nbd://localhost:${byTcp.port}/` }, { ok: `nbd+unix:///?socket=${byUnix.socket}` },
  ]);
  assert.equal(results[4]![1], { ok: `nbd://localhost:0${byTcp.port}/` }, "connect_tcp's port string, as given");
});

/** qemu-nbd serving `file` as export `name` on a Unix socket, for several clients in turn. */
function qemuNbd(file: string, name: string): { socket: string; stop(): void } {
  const socket = scratchPath(`qemu-${Date.now()}.sock`);
  const child = spawn("qemu-nbd", ["-f", "raw", "-t", "-k", socket, "-x", name, file], { stdio: ["ignore", "inherit", "inherit"] });
  waitFor(() => existsSync(socket), 10_000, "qemu-nbd's socket");
  const pid = child.pid!;
  return {
    socket,
    stop: () => {
      if (!alive(pid)) return;
      process.kill(pid, "SIGTERM");
      waitFor(() => !alive(pid), 5_000, "qemu-nbd to exit");
    },
  };
}

test("an export name through the URI path: qemu-nbd -x 'my disk/1'", () => {
  const content = Buffer.alloc(MiB, 0x5a);
  const qemu = qemuNbd(scratchFile("named.img", MiB, content), "my disk/1");
  try {
    const uri = `nbd+unix:///my%20disk/1?socket=${qemu.socket}`;
    const h = newHandle();
    assert.is(h.connectUri(uri), 0, String(getError()));
    assert.is(h.getExportName(), "my disk/1");
    const buf = new Uint8Array(512);
    assert.is(h.pread(buf, MiB - 512), 0, String(getError()));
    assert.ok(buf.every((b) => b === 0x5a), "the file's bytes");
    roundTrip(h, "qemu-nbd");
    assert.is(h.getUri(), uri);
    h.close();
    const results = sameAsLibnbd([
      [["connect_uri", uri], ["get_uri"], ["get_export_name"], ["get_size"]],
      [["connect_uri", `nbd+unix:///other?socket=${qemu.socket}`], ["aio_is_dead"]],
      [["connect_uri", `nbd+unix:///?socket=${qemu.socket}`]],
    ]);
    assert.equal(results[0], [{ ok: 0 }, { ok: uri }, { ok: "my disk/1" }, { ok: MiB }]);
    assert.equal((results[1]![0] as { errno: number }).errno, errno.ENOENT, "no export 'other'");
  } finally {
    qemu.stop();
  }
});

test("nbds:// requires TLS of the handle (set before connecting, as libnbd), and get_uri says nbds", () => {
  const server = nbdkitUnix("memory", "size=1M");
  const h = newHandle();
  const nobody = scratchPath("nobody-tls.sock");
  assert.is(h.connectUri(`nbds+unix:///?socket=${nobody}`), -1);
  assert.is(h.getTls(), TLS_REQUIRE);
  assert.is(h.getUri(), `nbds+unix:///?socket=${nobody}`);
  const other = newHandle();
  other.setTls(TLS_REQUIRE);
  const refusedAlike = other.connectUnix(server.socket);
  const h2 = newHandle();
  // Whatever a TLS-required connect does to this plain server today, nbds:// does the same.
  assert.is(h2.connectUri(`nbds+unix:///?socket=${server.socket}`), refusedAlike);
  assert.is(h2.getTls(), TLS_REQUIRE);
  assert.is(h2.connectionState()!.split(":")[0], other.connectionState()!.split(":")[0]);
});

test("get_uri after each kind of connect: tcp, unix, socket activation; EINVAL for a command", () => {
  const h = newHandle();
  assert.is(h.connectSystemdSocketActivation(["nbdkit", "-f", "memory", "1M"]), 0, String(getError()));
  assert.match(h.getUri()!, /^nbd\+unix:\/\/\/\?socket=\/tmp\/nbd-ts-[A-Za-z0-9]{6}\/sock$/);
  const c = newHandle();
  assert.is(c.setExportName("x"), 0);
  assert.is(c.connectCommand(["nbdkit", "-s", "--exit-with-parent", "null", "size=1M"]), 0, String(getError()));
  const results = sameAsLibnbd([
    [["connect_command", ["nbdkit", "-s", "--exit-with-parent", "null", "size=1M"]], ["get_uri"]],
  ]);
  assert.equal(results[0]![1], { err: "nbd_get_uri: cannot construct a URI for this connection type: Invalid argument", errno: errno.EINVAL });
  // In opt mode the export name can still change; get_uri follows it.
  const server = nbdkitUnix("memory", "size=1M");
  const o = newHandle();
  o.setOptMode(true);
  assert.is(o.connectUri(`nbd+unix:///a?socket=${server.socket}`), 0, String(getError()));
  assert.is(o.getUri(), `nbd+unix:///a?socket=${server.socket}`);
  assert.is(o.setExportName("b"), 0);
  assert.is(o.getUri(), `nbd+unix:///b?socket=${server.socket}`);
  assert.is(o.setTlsVerifyPeer(false), -1, "TLS settings are start-only");
});

test("get_uri with libnbd 1.22's tls-hostname and tls-verify-peer, and connect_uri taking them back", () => {
  const server = nbdkitUnix("memory", "size=1M");
  const h = newHandle();
  h.setTlsHostname("srv.example");
  h.setTlsVerifyPeer(false);
  assert.is(h.connectUnix(server.socket), 0, String(getError()));
  const uri = h.getUri()!;
  assert.is(uri, `nbd+unix:///?socket=${server.socket}&tls-hostname=srv.example&tls-verify-peer=false`);
  const back = newHandle();
  assert.is(back.connectUri(uri), 0, String(getError()));
  assert.is(back.getTlsHostname(), "srv.example");
  assert.is(back.getTlsVerifyPeer(), 0);
  assert.is(back.getUri(), uri);
});

test("an abstract Unix socket (socket=%00name): connect_uri reaches it, get_uri writes it back", () => {
  const server = nbdkitUnix("memory", "size=1M");
  const name = `nbd-ts-test-${process.pid}-${Date.now()}`;
  const ready = scratchPath("proxy.ready");
  // A proxy in another process: this one blocks in each call, so it could not forward anything.
  const proxy = spawn(process.execPath, ["-e", `
    const net = require("net");
    net.createServer((c) => {
      const u = net.connect(${JSON.stringify(server.socket)});
      c.pipe(u); u.pipe(c);
      c.on("error", () => {}); u.on("error", () => {});
    }).listen("\\0" + ${JSON.stringify(name)}, () => require("fs").writeFileSync(${JSON.stringify(ready)}, ""));
  `], { stdio: "inherit" });
  try {
    waitFor(() => existsSync(ready), 10_000, "the abstract socket proxy");
    const uri = `nbd+unix:///?socket=%00${name}`;
    const h = newHandle();
    assert.is(h.connectUri(uri), 0, String(getError()));
    roundTrip(h, "abstract socket");
    assert.is(h.getUri(), uri);
  } finally {
    proxy.kill();
  }
});

// ---- connect_socket ----------------------------------------------------------------------

/**
 * A connected socket's fd, as a caller would hand it over: paused before it
 * connects (so that this thread never reads from it), unref'd, and never
 * destroyed here (the handle owns and closes the fd).
 */
async function connectedFd(options: { path: string } | { host: string; port: number }): Promise<{ fd: number; socket: Socket }> {
  const socket = connect(options);
  socket.pause();
  await once(socket, "connect");
  socket.unref();
  return { fd: (socket as unknown as { _handle: { fd: number } })._handle.fd, socket };
}

test("connect_socket on a connected Unix and TCP socket: reads, writes, no URI, closed with the handle", async () => {
  const byUnix = nbdkitUnix("memory", "size=1M");
  const byTcp = nbdkitTcp("memory", "size=2M");
  for (const [options, size] of [[{ path: byUnix.socket }, MiB], [{ host: "127.0.0.1", port: byTcp.port }, 2 * MiB]] as const) {
    const { fd } = await connectedFd(options);
    const h = create()!;
    assert.is(h.connectSocket(fd), 0, String(getError()));
    assert.is(h.getSize(), BigInt(size));
    roundTrip(h, `connect_socket ${JSON.stringify(options)}`);
    assert.is(h.getUri(), null);
    assert.is(getError(), "nbd_get_uri: cannot construct a URI for this connection type: Invalid argument");
    assert.is(h.connectSocket(fd), -1);
    assert.is(getError(), "nbd_connect_socket: invalid state: READY: the handle must be newly created: Invalid argument");
    h.close();
    assert.throws(() => fstatSync(fd), /EBADF/, "close() closed the fd");
  }
});

test("connect_socket on a socketpair-like pair with nbdkit -s on the other end", async () => {
  // Node has no socketpair(): an abstract socket connected to itself, as connect_command does it.
  const name = `\0nbd-ts-test-pair-${process.pid}`;
  const listener = createServer({ pauseOnConnect: true }).listen(name);
  await once(listener, "listening");
  const accepted = once(listener, "connection");
  const { fd } = await connectedFd({ path: name });
  const [theirs] = (await accepted) as [Socket];
  const server = spawn("nbdkit", ["-s", "--exit-with-parent", "memory", "size=1M"], { stdio: [theirs, theirs, "inherit"] });
  theirs.destroy();
  listener.close();
  try {
    const h = newHandle();
    assert.is(h.connectSocket(fd), 0, String(getError()));
    roundTrip(h, "socketpair");
    assert.is(h.getProtocol(), "newstyle-fixed");
  } finally {
    server.kill();
  }
});

test("connect_socket failures, as libnbd 1.14: a bad fd leaves START, a file or a dead peer DEAD", async () => {
  sameAsLibnbd([
    [["connect_socket", -1], ["aio_is_created"]],
    [["connect_socket", 9999], ["aio_is_created"]],
  ]);
  const h = newHandle();
  const file = openSync(scratchFile("not-a-socket", 512), "r");
  assert.is(h.connectSocket(file), -1);
  assert.is(getError(), "nbd_connect_socket: recv: Socket operation on non-socket");
  assert.is(getErrno(), errno.ENOTSOCK);
  assert.is(h.aioIsDead(), 1);
  closeSync(file);

  // A peer that is gone: libnbd's "recv: server disconnected unexpectedly", errno 0.
  const path = scratchPath("hangup.sock");
  const listener = createServer((c) => c.destroy()).listen(path);
  await once(listener, "listening");
  const { fd } = await connectedFd({ path });
  await new Promise((r) => setTimeout(r, 100)); // let the listener accept and hang up
  const d = newHandle();
  assert.is(d.connectSocket(fd), -1);
  assert.is(getError(), "nbd_connect_socket: recv: server disconnected unexpectedly");
  assert.is(getErrno(), 0);
  assert.is(d.aioIsDead(), 1);
  listener.close();
});

test.run();
