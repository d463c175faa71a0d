/**
 * NBD URIs (the NBD project's doc/uri.md, with libnbd's extensions): parsing
 * one, per RFC 3986, into what nbd_connect_uri does to a handle, and building
 * one back for nbd_get_uri. Pure: no I/O and no handle; the handle's URI
 * policies come in as an argument and its settings go out as a list.
 */
import { isIPv6 } from "node:net";
import {
  ALLOW_TRANSPORT_TCP, ALLOW_TRANSPORT_UNIX, ALLOW_TRANSPORT_VSOCK, TLS_DISABLE, TLS_REQUIRE,
} from "../constants.js";
import { errno } from "../errno.js";
import { NbdError } from "./error.js";

/** set_uri_allow_transports, set_uri_allow_tls, set_uri_allow_local_file. */
export interface UriPolicy {
  transports: number;
  tls: number;
  localFile: boolean;
}

/** Where a URI points, or where get_uri says a connection went. */
export type Endpoint =
  | { kind: "tcp"; host: string; port: string }
  | { kind: "unix"; path: string };

/** One setter connect_uri calls on the handle (the Connection method of that name). */
export type Setting =
  | { call: "setTls"; value: number }
  | { call: "setTlsVerifyPeer"; value: boolean }
  | {
    call: "setTlsCertificates" | "setTlsPskFile" | "setTlsHostname" | "setTlsUsername" | "setExportName";
    value: string;
  };

/**
 * What connect_uri does with a URI that parsed: the settings, in libnbd's
 * order, then the connect. Some failures come only after some settings (a
 * forbidden tls-psk-file after nbds has required TLS); libnbd leaves those
 * settings made, so the error takes the connect's place and they still apply.
 */
export interface UriPlan {
  settings: Setting[];
  target: Endpoint | NbdError;
}

const DEFAULT_PORT = "10809";
const INT_MAX = 0x7fffffff;

// RFC 3986 §2-3: what each component may hold besides percent-encodings.
const UNRESERVED = "A-Za-z0-9\\-._~";
const SUB_DELIMS = "!$&'()*+,;=";
const PCHAR = `${UNRESERVED}${SUB_DELIMS}:@`;
const allowed: Record<string, RegExp> = {
  userinfo: new RegExp(`[^${UNRESERVED}${SUB_DELIMS}:%]`),
  host: new RegExp(`[^${UNRESERVED}${SUB_DELIMS}%]`),
  port: /[^0-9]/,
  path: new RegExp(`[^${PCHAR}/%]`),
  query: new RegExp(`[^${PCHAR}/?%]`),
  fragment: new RegExp(`[^${PCHAR}/?%]`),
};

/** Schemes: their transport and whether they require TLS. */
const schemes: Record<string, { transport: "tcp" | "unix" | "vsock" | "ssh"; tls: boolean }> = {
  "nbd": { transport: "tcp", tls: false },
  "nbds": { transport: "tcp", tls: true },
  "nbd+unix": { transport: "unix", tls: false },
  "nbds+unix": { transport: "unix", tls: true },
  "nbd+vsock": { transport: "vsock", tls: false },
  "nbds+vsock": { transport: "vsock", tls: true },
  "nbd+ssh": { transport: "ssh", tls: false },
  "nbds+ssh": { transport: "ssh", tls: true },
};

const transportBit = { tcp: ALLOW_TRANSPORT_TCP, unix: ALLOW_TRANSPORT_UNIX, vsock: ALLOW_TRANSPORT_VSOCK };

/**
 * nbd_is_uri (libnbd 1.22): a heuristic, the scheme prefix only, as nbdcopy
 * uses it to tell a URI from a file name. It promises nothing about
 * connect_uri.
 */
export function isUri(uri: string): boolean {
  return Object.keys(schemes).some((s) => uri.startsWith(`${s}:`));
}

// ---- RFC 3986 --------------------------------------------------------------------

interface Parts {
  scheme?: string;
  authority?: { userinfo?: string; host: string; port: string };
  path: string;
  query?: string;
}

/** Splits and checks a URI-reference; components stay percent-encoded. */
function split(raw: string): Parts {
  const bad = (why: string) => new NbdError(errno.EINVAL, `unable to parse URI: ${raw} (${why})`);
  // RFC 3986 appendix B: the regular expression that splits any URI-reference.
  const m = /^(?:([^:/?#]+):)?(?:\/\/([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$/s.exec(raw)!;
  const [, scheme, authority, path = "", query, fragment] = m;
  if (scheme !== undefined && !/^[A-Za-z][A-Za-z0-9+.-]*$/.test(scheme)) throw bad(`invalid scheme '${scheme}'`);
  const check = (what: keyof typeof allowed, value: string | undefined, name: string = what) => {
    if (value === undefined) return;
    const c = allowed[what]!.exec(value)?.[0];
    if (c !== undefined) throw bad(`invalid character ${JSON.stringify(c)} in the ${name}`);
    const pct = /%(?![0-9A-Fa-f]{2})/.exec(value);
    if (pct) throw bad(`invalid percent-encoding '${value.slice(pct.index, pct.index + 3)}' in the ${name}`);
  };
  check("path", path);
  check("query", query);
  check("fragment", fragment);
  if (authority === undefined) return { scheme, path, query };

  const at = authority.indexOf("@");
  const userinfo = at < 0 ? undefined : authority.slice(0, at);
  const hostport = authority.slice(at + 1);
  check("userinfo", userinfo, "user name");
  let host: string;
  let port: string;
  if (hostport.startsWith("[")) {
    // IP-literal: an IPv6 address (with an RFC 6874 zone, "%25eth0") or IPvFuture.
    const close = hostport.indexOf("]");
    if (close < 0) throw bad("missing ']' after the IPv6 address");
    host = hostport.slice(0, close + 1);
    port = hostport.slice(close + 1);
    if (port !== "" && !port.startsWith(":")) throw bad(`unexpected ${JSON.stringify(port)} after the IPv6 address`);
    port = port.slice(1);
    const literal = host.slice(1, -1);
    const [address = "", zone] = literal.split("%25", 2);
    if (!/^v[0-9A-Fa-f]+\./i.test(literal) && !(isIPv6(address) && (zone === undefined || /^[A-Za-z0-9\-._~%]+$/.test(zone)))) {
      throw bad(`invalid IPv6 address '${literal}'`);
    }
  } else {
    const colon = hostport.indexOf(":");
    host = colon < 0 ? hostport : hostport.slice(0, colon);
    port = colon < 0 ? "" : hostport.slice(colon + 1);
    check("host", host);
  }
  check("port", port);
  if (port !== "" && Number(port) > INT_MAX) throw bad(`port ${port} is out of range`);
  return { scheme, authority: { userinfo, host, port }, path, query };
}

/** Percent-decoding into UTF-8 text (the URI was checked: every % has two hex digits). */
function decode(s: string, what: string, raw: string): string {
  const bytes = Buffer.from(s.replace(/%([0-9A-Fa-f]{2})|[^%]+/g, (m, hex: string | undefined) =>
    hex ? String.fromCharCode(parseInt(hex, 16)) : m), "latin1");
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new NbdError(errno.EINVAL, `unable to parse URI: ${raw} (the ${what} is not valid UTF-8)`);
  }
}

/**
 * The query as name=value pairs, in order: split on & or ;, "name" alone is
 * an empty value, "=value" is ignored, names and values are percent-decoded
 * (a + stays a +), as libnbd does.
 */
function queryParams(query: string | undefined, raw: string): [string, string][] {
  const out: [string, string][] = [];
  for (const part of (query ?? "").split(/[&;]/)) {
    const eq = part.indexOf("=");
    if (part === "" || eq === 0) continue;
    const name = decode(eq < 0 ? part : part.slice(0, eq), "query", raw);
    out.push([name.toLowerCase(), eq < 0 ? "" : decode(part.slice(eq + 1), "query", raw)]);
  }
  return out;
}

/** The C strings libnbd passes on end at a NUL; a NUL inside one is refused rather than cut. */
function noNul(value: string, what: string, raw: string): string {
  if (value.includes("\0")) throw new NbdError(errno.EINVAL, `unable to parse URI: ${raw} (NUL byte in the ${what})`);
  return value;
}

/** libnbd 1.22's tls-verify-peer values. */
function parseBool(value: string): boolean | undefined {
  const v = value.toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  return undefined;
}

// ---- connect_uri ---------------------------------------------------------------------

/**
 * Parses `raw` the way nbd_connect_uri does, in libnbd's order of checks:
 * syntax, scheme, the scheme:// form, the transport and TLS policies, the
 * socket parameter (all thrown: the handle is untouched), then the settings
 * and the endpoint. Texts are libnbd's; parse errors add what is wrong.
 */
export function parseUri(raw: string, policy: UriPolicy): UriPlan {
  const fail = (errnum: number, msg: string) => new NbdError(errnum, msg);
  const parts = split(raw);
  if (parts.scheme === undefined) {
    let hint = "";
    if (raw.startsWith("/") && policy.transports & ALLOW_TRANSPORT_UNIX) {
      hint = ': to open a local socket use "nbd+unix://?socket=PATH"';
    } else if (raw.slice(0, 9).toLowerCase() === "localhost" && policy.transports & ALLOW_TRANSPORT_TCP) {
      hint = ': to open a local port use "nbd://localhost" or "nbd://localhost:PORT"';
    }
    throw fail(errno.EINVAL, "NBD URI does not have a scheme: valid NBD URIs should start with a scheme " +
      `like nbd://, nbds:// or nbd+unix://${hint}`);
  }
  const scheme = parts.scheme;
  const kind = Object.hasOwn(schemes, scheme) ? schemes[scheme]! : undefined;
  if (!kind) throw fail(errno.EINVAL, `unknown NBD URI scheme: ${scheme}`);
  if (!parts.authority) throw fail(errno.EINVAL, `URI must begin with '${scheme}://'`);
  if (kind.transport === "ssh") {
    throw fail(errno.ENOTSUP, `URI transport ${scheme} is not supported: nbd-ts cannot tunnel through ssh`);
  }
  if (!(policy.transports & transportBit[kind.transport])) {
    throw fail(errno.EPERM, `URI transport ${scheme} is not permitted`);
  }
  if ((kind.tls && policy.tls === TLS_DISABLE) || (!kind.tls && policy.tls === TLS_REQUIRE)) {
    throw fail(errno.EPERM, `URI TLS setting ${scheme} is not permitted`);
  }

  const params = queryParams(parts.query, raw);
  const socket = params.findLast(([name]) => name === "socket")?.[1];
  if (kind.transport === "unix" && socket === undefined) {
    throw fail(errno.EINVAL, `cannot parse socket parameter from NBD URI (did you mean to use "${scheme}:///?socket=..."?)`);
  }
  if (kind.transport !== "unix" && socket !== undefined) {
    throw fail(errno.EINVAL, `socket parameter is incompatible with "${scheme}:" ` +
      `(did you mean to use "${kind.tls ? "nbds" : "nbd"}+unix:///?socket=..."?)`);
  }
  // Checked before any setting, so that a bad one leaves the handle untouched.
  const { userinfo, host, port } = parts.authority;
  const user = userinfo ? noNul(decode(userinfo, "user name", raw), "user name", raw) : undefined;
  const exportName = noNul(decode(parts.path.slice(1), "path", raw), "path", raw);
  const hostname = noNul(decode(host.replace(/^\[(.*)\]$/s, "$1"), "host", raw), "host", raw);
  // A leading NUL names a Linux abstract socket (the NBD URI spec allows it; Node connects to it).
  const path = socket?.startsWith("\0") ? socket : socket && noNul(socket, "socket parameter", raw);

  const settings: Setting[] = [];
  const plan = (target: Endpoint | NbdError): UriPlan => ({ settings, target });
  if (kind.tls) settings.push({ call: "setTls", value: TLS_REQUIRE });
  for (const [name, value] of params) {
    switch (name) {
      case "tls-certificates":
      case "tls-psk-file":
        if (!policy.localFile) {
          return plan(fail(errno.EPERM,
            `local file access (${name}) is not allowed, call nbd_set_uri_allow_local_file to enable this`));
        }
        settings.push({ call: name === "tls-psk-file" ? "setTlsPskFile" : "setTlsCertificates", value: noNul(value, name, raw) });
        break;
      case "tls-hostname":
        settings.push({ call: "setTlsHostname", value: noNul(value, name, raw) });
        break;
      case "tls-verify-peer": {
        const verify = parseBool(value);
        if (verify === undefined) {
          return plan(fail(errno.EINVAL, `cannot parse tls-verify-peer parameter from NBD URI: ${value}`));
        }
        settings.push({ call: "setTlsVerifyPeer", value: verify });
        break;
      }
      default: // unknown parameters are ignored, as libnbd does
    }
  }
  if (user !== undefined) settings.push({ call: "setTlsUsername", value: user });
  settings.push({ call: "setExportName", value: exportName });

  switch (kind.transport) {
    case "tcp":
      // A port of 0 or none is the default (libxml2 reports both as "no port").
      return plan({ kind: "tcp", host: hostname || "localhost", port: Number(port) > 0 ? String(Number(port)) : DEFAULT_PORT });
    case "unix":
      return plan({ kind: "unix", path: path! });
    case "vsock": {
      // The host, if any, is the CID (absent: 2, the hypervisor), read as sscanf("%u") does.
      if (hostname !== "" && !/^[+-]?\d/.test(hostname)) {
        return plan(fail(errno.EINVAL, `cannot parse vsock CID from NBD URI: ${hostname}`));
      }
      return plan(fail(errno.ENOTSUP, "AF_VSOCK protocol is not supported: Node.js has no AF_VSOCK sockets"));
    }
  }
}

// ---- get_uri ---------------------------------------------------------------------------

/** What get_uri puts in a URI: the endpoint and the handle's settings. */
export interface UriSource {
  endpoint: Endpoint;
  /** TLS required, or negotiated: an nbds scheme. */
  tls: boolean;
  /** Only a user name set explicitly (not the login name get_tls_username falls back to). */
  username?: string;
  exportName: string;
  tlsCertificates?: string;
  tlsPskFile?: string;
  tlsHostname?: string;
  tlsVerifyPeer: boolean;
}

/** Percent-encodes (as UTF-8) every character not matched by `keep`. */
function encode(s: string, keep: RegExp): string {
  let out = "";
  for (const ch of s) {
    if (keep.test(ch)) out += ch;
    else for (const b of Buffer.from(ch)) out += `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

// What libxml2's xmlSaveUri leaves alone, so that our URIs read as libnbd's.
const PATH_KEEP = /^[A-Za-z0-9\-_.!~*'()/;@&=+$,]$/;
const USER_KEEP = /^[A-Za-z0-9\-_.!~*'();:&=+$,]$/;
// libnbd writes query values raw; we encode what would change their meaning.
const QUERY_KEEP = /^[A-Za-z0-9\-_.~/:@!$'()*,+?]$/;
const HOST_KEEP = /^[A-Za-z0-9\-_.~!$&'()*+,;=:]$/;

/**
 * nbd_get_uri's URI: scheme, [user@], host:port exactly as connect_tcp got
 * them (an address with ':' in brackets) or nothing for a Unix socket, "/"
 * and the export name, then socket, tls-certificates, tls-psk-file,
 * tls-hostname and tls-verify-peer=false (libnbd 1.22) as set.
 */
export function formatUri(src: UriSource): string {
  const { endpoint } = src;
  const scheme = (src.tls ? "nbds" : "nbd") + (endpoint.kind === "unix" ? "+unix" : "");
  const user = src.username !== undefined ? `${encode(src.username, USER_KEEP)}@` : "";
  let server = "";
  if (endpoint.kind === "tcp") {
    const host = encode(endpoint.host, HOST_KEEP);
    server = `${host.includes(":") ? `[${host}]` : host}:${endpoint.port}`;
  }
  const query: [string, string][] = [];
  if (endpoint.kind === "unix") query.push(["socket", endpoint.path]);
  if (src.tlsCertificates !== undefined) query.push(["tls-certificates", src.tlsCertificates]);
  if (src.tlsPskFile !== undefined) query.push(["tls-psk-file", src.tlsPskFile]);
  if (src.tlsHostname !== undefined) query.push(["tls-hostname", src.tlsHostname]);
  if (!src.tlsVerifyPeer) query.push(["tls-verify-peer", "false"]);
  const q = query.map(([k, v]) => `${k}=${encode(v, QUERY_KEEP)}`).join("&");
  return `${scheme}://${user}${server}/${encode(src.exportName, PATH_KEEP)}${q ? `?${q}` : ""}`;
}
