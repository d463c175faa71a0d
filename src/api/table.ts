/**
 * THE API table: one entry per libnbd call, after generator/API.ml. The sync
 * Handle's methods, the worker's dispatch and checks, and the README's
 * coverage table are all derived from it; a new call is one entry here plus
 * its implementation in the client's Connection. `npm run docs` then renders
 * its documentation (src/api/handle-methods.ts, docs/api.md).
 */
import {
  ALLOW_TRANSPORT_MASK, CMD_FLAG_DF, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_MASK, CMD_FLAG_NO_HOLE, CMD_FLAG_PAYLOAD_LEN, CMD_FLAG_REQ_ONE,
  HANDSHAKE_FLAG_MASK, SHUTDOWN_MASK, SIZE_MAXIMUM, SIZE_MINIMUM, SIZE_PAYLOAD, SIZE_PREFERRED, STRICT_MASK,
  TLS_ALLOW, TLS_DISABLE, TLS_REQUIRE,
} from "../constants.js";
import {
  Bool, BytesIn, BytesOut, BytesPersistIn, BytesPersistOut, Closure, Enum, Flags, Int, Path, Port, Str, StringList,
  UInt64,
  type Arg, type Call, type ErrnoName, type Errors, type FlagSet, type Method, type State,
} from "./types.js";

const cmdFlags: FlagSet = { prefix: "CMD_FLAG", mask: CMD_FLAG_MASK, commandFlags: true };
const strictFlags: FlagSet = { prefix: "STRICT", mask: STRICT_MASK };
const handshakeFlags: FlagSet = { prefix: "HANDSHAKE_FLAG", mask: HANDSHAKE_FLAG_MASK };
const shutdownFlags: FlagSet = { prefix: "SHUTDOWN", mask: SHUTDOWN_MASK };
const allowTransportFlags: FlagSet = { prefix: "ALLOW_TRANSPORT", mask: ALLOW_TRANSPORT_MASK };
const sizeTypes = [SIZE_MINIMUM, SIZE_PREFERRED, SIZE_MAXIMUM, SIZE_PAYLOAD];

// Permitted-state sets that recur.
const created: readonly State[] = ["created"];
const createdOrNegotiating: readonly State[] = ["created", "negotiating"];
const afterInfo: readonly State[] = ["negotiating", "connected", "closed"];
const connected: readonly State[] = ["connected"];
const negotiating: readonly State[] = ["negotiating"];

// Errnos particular to calls (the `errors` field), after libnbd's manual and
// lib/*.c, in our words; the errors of states, arguments and flags are derived.
const connecting: Errors = [
  ["ECONNREFUSED", "no server answers there (or the errno of whichever system call failed: ENOENT, ECONNRESET, …)"],
  ["ENOENT", "the server has no export by the name set_export_name gave"],
  ["ENOTSUP", "the server refused an option the handle needs, or TLS_REQUIRE is set and TLS cannot be had"],
  ["ETIMEDOUT", "the handshake took longer than set_timeout allows"],
];
const spawning: Errors = [["EINVAL", "argv is empty"], ["ECONNRESET", "the server exited during the handshake (its last lines of stderr end the message)"]];
const notYet: Errors = [["EINVAL", "the server has not described the export yet (in opt mode: before opt_info or opt_go)"]];
const optionRefused: Errors = [["ENOTSUP", "the server refused the option, or does not speak fixed newstyle"], ["ETIMEDOUT", "the server took longer than set_timeout allows"]];
const beforeSending: Errors = [["EINVAL", "a disconnect was already requested"], ["ENOTCONN", "the server has gone away"]];
const reply: Errors = [
  ["EIO", "the server failed the command (EIO, or the errno its NBD error stands for: EPERM, ENOSPC, ENOTSUP, …)"],
  ["ENOTCONN", "the connection ended before the reply came"],
  ["ETIMEDOUT", "no reply within set_timeout's limit (the handle is then dead)"],
];
const range = (pastEnd: ErrnoName): Errors => [
  ["EINVAL", "strict mode: the request is empty (STRICT_ZERO_SIZE) or not aligned to the server's minimum block size (STRICT_ALIGN)"],
  [pastEnd, "strict mode: the range reaches past the end of the export (STRICT_BOUNDS)"],
];
const unadvertised: Errors = [["EINVAL", "strict mode: the server did not advertise this command, or a flag given (STRICT_COMMANDS)"]];
const wide: Errors = [["ERANGE", "count is 2^32 or more and extended headers were not negotiated"]];
const readErrors: Errors = [...range("EINVAL"), ...unadvertised, ...beforeSending];
const writeErrors: Errors = [...range("ENOSPC"), ["EPERM", "strict mode: the export is read-only (STRICT_COMMANDS)"], ...unadvertised, ...beforeSending];
const payload: Errors = [["ERANGE", "buf is larger than the server's maximum payload (STRICT_PAYLOAD; get_block_size(SIZE_PAYLOAD))"]];
const shortRead: Errors = [["EPROTO", "the server sent less data than asked for, without an error"]];
const statusErrors: Errors = [...range("EINVAL"), ["ENOTSUP", "strict mode: no structured replies or no meta context negotiated (STRICT_COMMANDS)"], ...wide, ...beforeSending];
const filterErrors: Errors = [
  ["ENOTSUP", "strict mode: extended headers were not negotiated (STRICT_AUTO_FLAG)"],
  ["EINVAL", "strict mode: the server does not take the block status payload, or CMD_FLAG_PAYLOAD_LEN is missing (STRICT_COMMANDS)"],
  ["EINVAL", "a name in contexts was not negotiated"],
];
const payloadLen: Errors = [["EINVAL", "strict mode: CMD_FLAG_PAYLOAD_LEN disagrees with whether extended headers were negotiated (STRICT_COMMANDS, with STRICT_AUTO_FLAG off)"]];
const noSubprocess: Errors = [["ESRCH", "the handle did not start a server (connect_command, connect_systemd_socket_activation)"]];
const notHere: Errors = [["ENOTSUP", "always: the socket lives in nbd-ts's worker thread (use poll)"]];

const connectCall = <A extends Arg>(summary: string, arg: A, since: string, spawns?: true) =>
  ({ args: [arg], ret: "err", states: created, since, summary, ...(spawns && { spawns }), errors: spawns ? [...connecting, ...spawning] : connecting }) as const;

// An aio connect fails by itself only on the way to the server; the handshake's failures are poll's to report.
const reaching: Errors = [connecting[0]!];
// An aio option fails by itself only on what libnbd checks first; the server's answer goes to the completion callback.
const fixedOnly: Errors = [["ENOTSUP", "the server does not speak fixed newstyle (its answer to the option goes to the completion callback)"]];

/**
 * An aio_opt_* call: its callbacks outlive the call until the option's reply
 * is in. They are kept under "option", which the next option call replaces
 * (libnbd allows one option in flight).
 */
const aioOpt = <const A extends readonly Arg[]>(args: A, summary: string, since: string, ret: "err" | "int" = "err", errors = fixedOnly) =>
  ({ args, optargs: [Closure("completion", "completion")], ret, states: negotiating, keeps: "option", since, summary, errors }) as const;

const flagQuery = (summary: string) => ({ args: [], ret: "bool", states: afterInfo, since: "1.0", summary, errors: notYet }) as const;
const stateQuery = (summary: string, since = "1.0") =>
  ({ args: [], ret: "bool", mayFail: false, since, summary }) as const;

export const API = {
  // ---- handle identity, versions ----------------------------------------
  setHandleName: { args: [Str("handle_name")], ret: "err", since: "1.0", summary: "set the handle name" },
  getHandleName: { args: [], ret: "string", since: "1.0", summary: "get the handle name" },
  getVersion: { args: [], ret: "staticString", mayFail: false, since: "1.0", summary: "return the version of the library" },
  getPackageName: { args: [], ret: "staticString", mayFail: false, since: "1.0", summary: "return the name of the library" },
  setDebug: { args: [Bool("debug")], ret: "err", since: "1.0", summary: "set or clear the debug flag" },
  getDebug: { args: [], ret: "bool", mayFail: false, since: "1.0", summary: "return the state of the debug flag" },
  setDebugCallback: { args: [Closure("debug", "debug")], ret: "err", keeps: "debug", since: "1.0", summary: "set the debug callback" },
  clearDebugCallback: { args: [], ret: "err", releases: "debug", since: "1.0", summary: "clear the debug callback" },
  statsBytesSent: { args: [], ret: "int64", mayFail: false, since: "1.16", summary: "statistics of bytes sent over connection so far" },
  statsChunksSent: { args: [], ret: "int64", mayFail: false, since: "1.16", summary: "statistics of chunks sent over connection so far" },
  statsBytesReceived: { args: [], ret: "int64", mayFail: false, since: "1.16", summary: "statistics of bytes received over connection so far" },
  statsChunksReceived: { args: [], ret: "int64", mayFail: false, since: "1.16", summary: "statistics of chunks received over connection so far" },
  connectionState: { args: [], ret: "staticString", since: "1.0", summary: "return string describing the state of the connection" },

  // ---- settings before connecting -----------------------------------------
  setExportName: { args: [Str("export_name")], ret: "err", states: createdOrNegotiating, since: "1.0", summary: "set the export name", errors: [["ENAMETOOLONG", "export_name is longer than 4096 bytes"]] },
  getExportName: { args: [], ret: "string", since: "1.0", summary: "get the export name" },
  setFullInfo: { args: [Bool("request")], ret: "err", states: createdOrNegotiating, since: "1.4", summary: "control whether NBD_OPT_GO requests extra details" },
  getFullInfo: { args: [], ret: "bool", since: "1.4", summary: "see if NBD_OPT_GO requests extra details" },
  setRequestStructuredReplies: { args: [Bool("request")], ret: "err", states: created, since: "1.2", summary: "control use of structured replies" },
  getRequestStructuredReplies: { args: [], ret: "bool", mayFail: false, since: "1.2", summary: "see if structured replies are attempted" },
  setRequestExtendedHeaders: { args: [Bool("request")], ret: "err", states: created, since: "1.18", summary: "control use of extended headers" },
  getRequestExtendedHeaders: { args: [], ret: "bool", mayFail: false, since: "1.18", summary: "see if extended headers are attempted" },
  setHandshakeFlags: { args: [Flags("flags", handshakeFlags)], ret: "err", states: created, since: "1.2", summary: "control use of handshake flags" },
  getHandshakeFlags: { args: [], ret: "uint", mayFail: false, since: "1.2", summary: "see which handshake flags are supported" },
  setPreadInitialize: { args: [Bool("request")], ret: "err", since: "1.12", summary: "control whether libnbd pre-initializes read buffers" },
  getPreadInitialize: { args: [], ret: "bool", mayFail: false, since: "1.12", summary: "see whether libnbd pre-initializes read buffers" },
  setTimeout: { args: [Int("ms")], ret: "err", c: "set_timeout", since: "nbd-ts", summary: "nbd-ts extension: fail blocking calls that wait longer than ms milliseconds (0: wait forever, the default)", errors: [["EINVAL", "ms is negative"]] },
  getTimeout: { args: [], ret: "int", mayFail: false, c: "get_timeout", since: "nbd-ts", summary: "nbd-ts extension: the timeout set by set_timeout (0: none)" },
  setStrictMode: { args: [Flags("flags", strictFlags)], ret: "err", since: "1.6", summary: "control how strictly to follow NBD protocol" },
  getStrictMode: { args: [], ret: "uint", mayFail: false, since: "1.6", summary: "see which strictness flags are in effect" },
  setSocketActivationName: { args: [Str("socket_name")], ret: "err", states: created, since: "1.16", summary: "set the socket activation name", errors: [["ENAMETOOLONG", "socket_name is longer than 32 characters"], ["EINVAL", "socket_name has a character that is not an ASCII letter or digit"]] },
  getSocketActivationName: { args: [], ret: "string", since: "1.16", summary: "get the socket activation name" },

  // ---- TLS settings ------------------------------------------------------------
  setTls: { args: [Enum("tls", [TLS_DISABLE, TLS_ALLOW, TLS_REQUIRE])], ret: "err", states: created, since: "1.0", summary: "enable or require TLS (authentication and encryption)" },
  getTls: { args: [], ret: "int", mayFail: false, since: "1.0", summary: "get the TLS request setting" },
  supportsTls: { args: [], ret: "bool", mayFail: false, since: "1.0", summary: "true if libnbd was compiled with support for TLS" },
  setTlsCertificates: { args: [Path("dir")], ret: "err", states: created, since: "1.0", summary: "set the path to the TLS certificates directory" },
  setTlsVerifyPeer: { args: [Bool("verify")], ret: "err", states: created, since: "1.0", summary: "set whether we verify the identity of the server" },
  getTlsVerifyPeer: { args: [], ret: "bool", mayFail: false, since: "1.0", summary: "get whether we verify the identity of the server" },
  setTlsUsername: { args: [Str("username")], ret: "err", states: created, since: "1.0", summary: "set the TLS username" },
  getTlsUsername: { args: [], ret: "string", since: "1.0", summary: "get the current TLS username" },
  setTlsPskFile: { args: [Path("filename")], ret: "err", states: created, since: "1.0", summary: "set the TLS Pre-Shared Keys (PSK) filename" },
  setTlsHostname: { args: [Str("hostname")], ret: "err", states: created, since: "1.22", summary: "set the TLS hostname" },
  getTlsHostname: { args: [], ret: "string", since: "1.22", summary: "get the effective TLS hostname" },
  getTlsNegotiated: { args: [], ret: "bool", states: afterInfo, since: "1.2", summary: "find out if TLS was negotiated on a connection" },

  // ---- connecting ----------------------------------------------------------
  connectUnix: connectCall("connect to NBD server over a Unix domain socket", Path("unixsocket"), "1.0"),
  connectTcp: { args: [Str("hostname"), Port("port")], ret: "err", states: created, since: "1.0", summary: "connect to NBD server over a TCP port", errors: connecting },
  connectCommand: connectCall("connect to NBD server command", StringList("argv"), "1.0", true),
  connectSystemdSocketActivation: connectCall("connect using systemd socket activation", StringList("argv"), "1.2", true),
  getSubprocessPid: { args: [], ret: "int64", since: "1.22", summary: "get the process ID of the subprocess", errors: noSubprocess },
  killSubprocess: { args: [Int("signum")], ret: "err", since: "1.0", summary: "kill server running as a subprocess", errors: [...noSubprocess, ["EINVAL", "signum is negative"]] },

  // ---- URIs ----------------------------------------------------------------------
  setUriAllowTransports: { args: [Flags("mask", allowTransportFlags)], ret: "err", states: created, since: "1.2", summary: "set the allowed transports in NBD URIs" },
  setUriAllowTls: { args: [Enum("tls", [TLS_DISABLE, TLS_ALLOW, TLS_REQUIRE])], ret: "err", states: created, since: "1.2", summary: "set the allowed TLS settings in NBD URIs" },
  setUriAllowLocalFile: { args: [Bool("allow")], ret: "err", states: created, since: "1.2", summary: "allow NBD URIs to reference local files" },
  connectUri: { ...connectCall("connect to NBD URI", Str("uri"), "1.0"), errors: [["EINVAL", "uri does not parse as an NBD URI"], ["EPERM", "the URI asks for a transport, TLS setting or local file that set_uri_allow_* forbids"], ["ENOTSUP", "the URI is nbd+vsock:// or nbd+ssh://, which nbd-ts cannot reach"], ...connecting] },
  getUri: { args: [], ret: "string", states: ["connecting", "negotiating", "connected", "closed", "dead"], since: "1.8", summary: "construct an NBD URI for a connection", errors: [["EINVAL", "the connection has no URI (it came from connect_command or connect_socket)"]] },
  isUri: { args: [Str("uri")], ret: "bool", mayFail: false, since: "1.22", summary: "detect if a string could be an NBD URI" },
  supportsUri: { args: [], ret: "bool", mayFail: false, since: "1.0", summary: "true if libnbd was compiled with support for NBD URIs" },
  connectSocket: { ...connectCall("connect directly to a connected socket", Int("sock"), "1.2"), errors: [["EBADF", "sock is not an open file descriptor"], ["ENOTSOCK", "sock is not a socket"], ...connecting] },

  // ---- connecting, aio: the call returns once the transport is up; poll drives the handshake ----
  aioConnectUnix: { ...connectCall("connect to the NBD server over a Unix domain socket", Path("unixsocket"), "1.0"), errors: reaching },
  aioConnectTcp: { args: [Str("hostname"), Port("port")], ret: "err", states: created, since: "1.0", summary: "connect to the NBD server over a TCP port", errors: reaching },
  aioConnectCommand: { ...connectCall("connect to the NBD server", StringList("argv"), "1.0", true), errors: [spawning[0]!] },
  aioConnectSystemdSocketActivation: { ...connectCall("connect using systemd socket activation", StringList("argv"), "1.2", true), errors: [spawning[0]!, ...reaching] },
  aioConnectUri: { ...connectCall("connect to an NBD URI", Str("uri"), "1.0"), errors: [["EINVAL", "uri does not parse as an NBD URI"], ["EPERM", "the URI asks for a transport, TLS setting or local file that set_uri_allow_* forbids"], ["ENOTSUP", "the URI is nbd+vsock:// or nbd+ssh://, which nbd-ts cannot reach"], ...reaching] },
  aioConnectSocket: { ...connectCall("connect directly to a connected socket", Int("sock"), "1.2"), errors: [["EBADF", "sock is not an open file descriptor"], ["ENOTSOCK", "sock is not a socket"]] },

  // ---- option negotiation (opt mode) ---------------------------------------------
  setOptMode: { args: [Bool("enable")], ret: "err", states: created, since: "1.4", summary: "control option mode, for pausing during option negotiation" },
  getOptMode: { args: [], ret: "bool", mayFail: false, since: "1.4", summary: "return whether option mode was enabled" },
  optGo: { args: [], ret: "err", states: negotiating, since: "1.4", summary: "end negotiation and move on to using an export", errors: [["ENOENT", "the server has no export by the name set_export_name gave"], ...optionRefused] },
  optAbort: { args: [], ret: "err", states: negotiating, since: "1.4", summary: "end negotiation and close the connection" },
  optInfo: { args: [], ret: "err", states: negotiating, since: "1.4", summary: "request the server for information about an export", errors: [["ENOENT", "the server has no export by the name set_export_name gave"], ...optionRefused] },
  optList: { args: [Closure("list", "list")], ret: "int", states: negotiating, since: "1.4", summary: "request the server to list all exports during negotiation", errors: optionRefused },
  optListMetaContext: { args: [Closure("context", "context")], ret: "int", states: negotiating, since: "1.6", summary: "list available meta contexts, using implicit query list", errors: optionRefused },
  optListMetaContextQueries: { args: [StringList("queries"), Closure("context", "context")], ret: "int", states: negotiating, since: "1.16", summary: "list available meta contexts, using explicit query list", errors: optionRefused },
  optSetMetaContext: { args: [Closure("context", "context")], ret: "int", states: negotiating, since: "1.16", summary: "select specific meta contexts, using implicit query list", errors: optionRefused },
  optSetMetaContextQueries: { args: [StringList("queries"), Closure("context", "context")], ret: "int", states: negotiating, since: "1.16", summary: "select specific meta contexts, using explicit query list", errors: optionRefused },
  optStarttls: { args: [], ret: "bool", states: negotiating, since: "1.16", summary: "request the server to initiate TLS", errors: [["ENOTSUP", "the server does not speak fixed newstyle (a refusal is 0, not an error)"], ...optionRefused.slice(1)] },
  optStructuredReply: { args: [], ret: "bool", states: negotiating, since: "1.16", summary: "request the server to enable structured replies", errors: [["ENOTSUP", "the server does not speak fixed newstyle (a refusal is 0, not an error)"], ...optionRefused.slice(1)] },
  optExtendedHeaders: { args: [], ret: "bool", states: negotiating, since: "1.18", summary: "request the server to enable extended headers", errors: [["ENOTSUP", "the server does not speak fixed newstyle (a refusal is 0, not an error)"], ...optionRefused.slice(1)] },

  // ---- option negotiation, aio: poll until aio_is_connecting is false, or let the completion callback say ----
  aioOptGo: aioOpt([], "end negotiation and move on to using an export", "1.4", "err", []),
  aioOptAbort: { args: [], ret: "err", states: negotiating, since: "1.4", summary: "end negotiation and close the connection" },
  aioOptInfo: aioOpt([], "request the server for information about an export", "1.4"),
  aioOptList: aioOpt([Closure("list", "list")], "request the server to list all exports during negotiation", "1.4"),
  aioOptListMetaContext: aioOpt([Closure("context", "context")], "request list of available meta contexts, using implicit query", "1.6", "int"),
  aioOptListMetaContextQueries: aioOpt([StringList("queries"), Closure("context", "context")], "request list of available meta contexts, using explicit query", "1.16", "int"),
  aioOptSetMetaContext: aioOpt([Closure("context", "context")], "select specific meta contexts, with implicit query list", "1.16", "int"),
  aioOptSetMetaContextQueries: aioOpt([StringList("queries"), Closure("context", "context")], "select specific meta contexts, with explicit query list", "1.16", "int"),
  aioOptStarttls: aioOpt([], "request the server to initiate TLS", "1.16"),
  aioOptStructuredReply: aioOpt([], "request the server to enable structured replies", "1.16"),
  aioOptExtendedHeaders: aioOpt([], "request the server to enable extended headers", "1.18"),

  // ---- meta contexts and what to request ---------------------------------------
  addMetaContext: { args: [Str("name")], ret: "err", states: createdOrNegotiating, since: "1.0", summary: "ask server to negotiate metadata context", errors: [["ENAMETOOLONG", "name is longer than 4096 bytes"]] },
  getNrMetaContexts: { args: [], ret: "int", since: "1.6", summary: "return the current number of requested meta contexts" },
  getMetaContext: { args: [UInt64("i")], ret: "string", since: "1.6", summary: "return the i'th meta context request", errors: [["EINVAL", "i is not below get_nr_meta_contexts()"]] },
  clearMetaContexts: { args: [], ret: "err", states: createdOrNegotiating, since: "1.6", summary: "reset the list of requested meta contexts" },
  setRequestMetaContext: { args: [Bool("request")], ret: "err", states: createdOrNegotiating, since: "1.16", summary: "control whether connect automatically requests meta contexts" },
  getRequestMetaContext: { args: [], ret: "bool", since: "1.16", summary: "see if connect automatically requests meta contexts" },
  setRequestBlockSize: { args: [Bool("request")], ret: "err", states: createdOrNegotiating, since: "1.12", summary: "control whether NBD_OPT_GO requests block size" },
  getRequestBlockSize: { args: [], ret: "bool", since: "1.12", summary: "see if NBD_OPT_GO requests block size" },

  // ---- what the server said -------------------------------------------------
  getSize: { args: [], ret: "int64", states: afterInfo, since: "1.0", summary: "return the export size", errors: notYet },
  getBlockSize: { args: [Enum("size_type", sizeTypes)], ret: "int64", states: afterInfo, since: "1.4", summary: "return a specific server block size constraint", errors: notYet },
  getProtocol: { args: [], ret: "staticString", states: afterInfo, since: "1.2", summary: "return the NBD protocol variant" },
  getStructuredRepliesNegotiated: { args: [], ret: "bool", states: afterInfo, since: "1.2", summary: "see if structured replies are in use" },
  getExtendedHeadersNegotiated: { args: [], ret: "bool", states: afterInfo, since: "1.18", summary: "see if extended headers are in use" },
  getCanonicalExportName: { args: [], ret: "string", states: afterInfo, since: "1.4", summary: "return the canonical export name, if the server has one", errors: [...notYet, ["ENOTSUP", "the server did not send a canonical name (set_full_info asks for one)"]] },
  getExportDescription: { args: [], ret: "string", states: afterInfo, since: "1.4", summary: "return the export description, if the server has one", errors: [...notYet, ["ENOTSUP", "the server did not send a description (set_full_info asks for one)"]] },
  isReadOnly: flagQuery("is the NBD export read-only?"),
  canFlush: flagQuery("does the server support the flush command?"),
  canFua: flagQuery("does the server support the FUA flag?"),
  isRotational: flagQuery("is the NBD disk rotational (like a disk)?"),
  canTrim: flagQuery("does the server support the trim command?"),
  canZero: flagQuery("does the server support the zero command?"),
  canFastZero: { ...flagQuery("does the server support the fast zero flag?"), since: "1.2" },
  canDf: flagQuery("does the server support the don't fragment flag to pread?"),
  canMultiConn: flagQuery("does the server support multi-conn?"),
  canCache: flagQuery("does the server support the cache command?"),
  canBlockStatusPayload: { ...flagQuery("does the server support the block status payload flag?"), since: "1.18" },
  canMetaContext: { args: [Str("metacontext")], ret: "bool", states: afterInfo, since: "1.0", summary: "does the server support a specific meta context?", errors: [["EINVAL", "meta contexts were requested but not negotiated yet (in opt mode: before opt_go, opt_info or opt_set_meta_context)"]] },

  // ---- I/O ------------------------------------------------------------------
  pread: { args: [BytesOut("buf"), UInt64("offset")], optargs: [Flags("flags", cmdFlags, 0)], ret: "err", states: connected, since: "1.0", summary: "read from the NBD server", errors: [...readErrors, ...reply] },
  preadStructured: { args: [BytesOut("buf"), UInt64("offset"), Closure("chunk", "chunk")], optargs: [Flags("flags", cmdFlags, CMD_FLAG_DF)], ret: "err", states: connected, issues: "read", since: "1.0", summary: "read from the NBD server", errors: [...readErrors, ...shortRead, ...reply] },
  pwrite: { args: [BytesIn("buf"), UInt64("offset")], optargs: [Flags("flags", cmdFlags, CMD_FLAG_FUA | CMD_FLAG_PAYLOAD_LEN)], ret: "err", states: connected, since: "1.0", summary: "write to the NBD server", errors: [...writeErrors, ...payloadLen, ...payload, ...reply] },
  flush: { args: [], optargs: [Flags("flags", cmdFlags, 0)], ret: "err", states: connected, since: "1.0", summary: "send flush command to the NBD server", errors: [...unadvertised, ...beforeSending, ...reply] },
  trim: { args: [UInt64("count"), UInt64("offset")], optargs: [Flags("flags", cmdFlags, CMD_FLAG_FUA)], ret: "err", states: connected, since: "1.0", summary: "send trim command to the NBD server", errors: [...writeErrors, ...wide, ...reply] },
  cache: { args: [UInt64("count"), UInt64("offset")], optargs: [Flags("flags", cmdFlags, 0)], ret: "err", states: connected, since: "1.0", summary: "send cache (prefetch) command to the NBD server", errors: [...readErrors, ...wide, ...reply] },
  zero: { args: [UInt64("count"), UInt64("offset")], optargs: [Flags("flags", cmdFlags, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO)], ret: "err", states: connected, since: "1.0", summary: "send write zeroes command to the NBD server", errors: [...writeErrors, ...wide, ...reply] },
  blockStatus: { args: [UInt64("count"), UInt64("offset"), Closure("extent", "extent")], optargs: [Flags("flags", cmdFlags, CMD_FLAG_REQ_ONE)], ret: "err", states: connected, issues: "block-status", since: "1.0", summary: "send block status command, with 32 bit callback", errors: [...statusErrors, ...reply] },
  blockStatus64: { args: [UInt64("count"), UInt64("offset"), Closure("extent", "extent64")], optargs: [Flags("flags", cmdFlags, CMD_FLAG_REQ_ONE)], ret: "err", states: connected, issues: "block-status", c: "block_status_64", since: "1.18", summary: "send block status command, with 64 bit callback", errors: [...statusErrors, ...reply] },
  blockStatusFilter: { args: [UInt64("count"), UInt64("offset"), StringList("contexts"), Closure("extent64", "extent64")], optargs: [Flags("flags", cmdFlags, CMD_FLAG_REQ_ONE | CMD_FLAG_PAYLOAD_LEN)], ret: "err", states: connected, issues: "block-status", since: "1.18", summary: "send filtered block status command, with 64-bit callback", errors: [...statusErrors, ...filterErrors, ...reply] },
  shutdown: { args: [], optargs: [Flags("flags", shutdownFlags)], ret: "err", states: ["negotiating", "connected"], since: "1.0", summary: "disconnect from the NBD server" },

  // ---- aio: commands that return a cookie at once ----------------------------------
  aioPread: { args: [BytesPersistOut("buf"), UInt64("offset")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, 0)], ret: "cookie", states: connected, issues: "read", since: "1.0", summary: "read from the NBD server", errors: readErrors },
  aioPreadStructured: { args: [BytesPersistOut("buf"), UInt64("offset"), Closure("chunk", "chunk")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, CMD_FLAG_DF)], ret: "cookie", states: connected, issues: "read", since: "1.0", summary: "read from the NBD server", errors: readErrors },
  aioPwrite: { args: [BytesPersistIn("buf"), UInt64("offset")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, CMD_FLAG_FUA | CMD_FLAG_PAYLOAD_LEN)], ret: "cookie", states: connected, issues: "write", since: "1.0", summary: "write to the NBD server", errors: [...writeErrors, ...payloadLen, ...payload] },
  aioFlush: { args: [], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, 0)], ret: "cookie", states: connected, issues: "flush", since: "1.0", summary: "send flush command to the NBD server", errors: [...unadvertised, ...beforeSending] },
  aioTrim: { args: [UInt64("count"), UInt64("offset")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, CMD_FLAG_FUA)], ret: "cookie", states: connected, issues: "trim", since: "1.0", summary: "send trim command to the NBD server", errors: [...writeErrors, ...wide] },
  aioCache: { args: [UInt64("count"), UInt64("offset")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, 0)], ret: "cookie", states: connected, issues: "cache", since: "1.0", summary: "send cache (prefetch) command to the NBD server", errors: [...readErrors, ...wide] },
  aioZero: { args: [UInt64("count"), UInt64("offset")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO)], ret: "cookie", states: connected, issues: "write-zeroes", since: "1.0", summary: "send write zeroes command to the NBD server", errors: [...writeErrors, ...wide] },
  aioBlockStatus: { args: [UInt64("count"), UInt64("offset"), Closure("extent", "extent")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, CMD_FLAG_REQ_ONE)], ret: "cookie", states: connected, issues: "block-status", since: "1.0", summary: "send block status command, with 32 bit callback", errors: statusErrors },
  aioBlockStatus64: { args: [UInt64("count"), UInt64("offset"), Closure("extent", "extent64")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, CMD_FLAG_REQ_ONE)], ret: "cookie", states: connected, issues: "block-status", c: "aio_block_status_64", since: "1.18", summary: "send block status command, with 64 bit callback", errors: statusErrors },
  aioBlockStatusFilter: { args: [UInt64("count"), UInt64("offset"), StringList("contexts"), Closure("extent64", "extent64")], optargs: [Closure("completion", "completion"), Flags("flags", cmdFlags, CMD_FLAG_REQ_ONE | CMD_FLAG_PAYLOAD_LEN)], ret: "cookie", states: connected, issues: "block-status", since: "1.18", summary: "send filtered block status command to the NBD server", errors: [...statusErrors, ...filterErrors] },
  aioDisconnect: { args: [], optargs: [Flags("flags", cmdFlags, 0)], ret: "err", states: connected, since: "1.0", summary: "disconnect from the NBD server", errors: [["EINVAL", "a disconnect was already requested"]] },

  // ---- aio: the event loop ------------------------------------------------------
  poll: { args: [Int("timeout")], ret: "int", since: "1.0", summary: "poll the handle once", errors: [["EINVAL", "there is nothing to wait for (the handle is created, closed or dead)"], ["EIO", "the connection failed while waiting (its errno: ECONNRESET, EPROTO, …)"]] },
  poll2: { args: [Int("fd"), Int("timeout")], ret: "int", since: "1.16", summary: "poll the handle once, with fd", errors: [["ENOTSUP", "fd is not -1 (the socket lives in nbd-ts's worker thread)"], ["EINVAL", "there is nothing to wait for (the handle is created, closed or dead)"]] },
  aioCommandCompleted: { args: [UInt64("cookie")], ret: "bool", since: "1.0", summary: "check if the command completed", errors: [["EINVAL", "cookie is below 1"], ["EIO", "the command failed: the server's errno, ENOTCONN if the connection ended first, or what a callback set"]] },
  aioPeekCommandCompleted: { args: [], ret: "int64", since: "1.0", summary: "check if any command has completed", errors: [["EINVAL", "no command is in flight or waiting to be retired"]] },
  aioInFlight: { args: [], ret: "int", states: ["connected", "closed", "dead"], since: "1.0", summary: "check how many aio commands are still in flight" },
  aioGetDirection: { args: [], ret: "uint", mayFail: false, since: "1.0", summary: "return the read or write direction" },
  aioGetFd: { args: [], ret: "int", since: "1.0", summary: "return file descriptor associated with this connection (ENOTSUP: the socket lives in the worker)", errors: notHere },
  aioNotifyRead: { args: [], ret: "err", since: "1.0", summary: "notify that the connection is readable (ENOTSUP: the worker's own loop reads)", errors: notHere },
  aioNotifyWrite: { args: [], ret: "err", since: "1.0", summary: "notify that the connection is writable (ENOTSUP: the worker's own loop writes)", errors: notHere },

  // ---- handle states --------------------------------------------------------
  aioIsCreated: stateQuery("check if the connection has just been created"),
  aioIsConnecting: stateQuery("check if the connection is connecting"),
  aioIsNegotiating: stateQuery("check if connection is ready to send handshake option", "1.4"),
  aioIsReady: stateQuery("check if the connection is in the READY state"),
  aioIsProcessing: stateQuery("check if the connection is processing a command"),
  aioIsDead: stateQuery("check if the connection is dead"),
  aioIsClosed: stateQuery("check if the connection is closed"),
} as const satisfies Record<string, Call>;

export type CallName = keyof typeof API;

/** The generated half of Handle: one method per table entry. */
export type HandleMethods = { [K in CallName]: Method<(typeof API)[K]> };

/** libnbd's hand-written calls, which stand outside the table (lib/handle.c, lib/errors.c). */
export const HANDWRITTEN = {
  nbd_create: { ts: "create()", since: "1.0", summary: "create a new handle (null on failure)" },
  nbd_close: { ts: "h.close() / h[Symbol.dispose]()", since: "1.0", summary: "close the handle, kill and reap its server" },
  nbd_get_error: { ts: "getError()", since: "1.0", summary: "the last error of this thread, or null" },
  nbd_get_errno: { ts: "getErrno()", since: "1.0", summary: "the errno of the last error of this thread, or 0" },
} as const;
