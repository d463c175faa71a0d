/**
 * One NBD connection: libnbd's handle state (settings, what the server said,
 * the in-flight commands) and the implementations of the calls in the API
 * table (libnbd's nbd_unlocked_* functions). Generic checks (state, argument
 * types, flags) happen before these methods run, in api/invoke.ts; what is
 * left here is what libnbd checks inside each call.
 */
import { rmSync, writeSync } from "node:fs";
import { Socket } from "node:net";
import { errno, errnoOf } from "../errno.js";
import {
  AIO_DIRECTION_READ, HANDSHAKE_FLAG_MASK, SHUTDOWN_ABANDON_PENDING, MAX_REQUEST_SIZE, SIZE_MAXIMUM, SIZE_MINIMUM, SIZE_PAYLOAD,
  SIZE_PREFERRED, STRICT_ALIGN, STRICT_BOUNDS, STRICT_COMMANDS, STRICT_MASK, STRICT_PAYLOAD, STRICT_ZERO_SIZE,
  STRICT_AUTO_FLAG, TLS_DISABLE, ALLOW_TRANSPORT_MASK, TLS_ALLOW, TLS_REQUIRE,
} from "../constants.js";
import { userInfo } from "node:os";
import { Cmd, CmdFlag, MAX_STRING, Opt, REQUEST_SIZE, TFlag } from "../protocol/constants.js";
import { encodeRequest } from "../protocol/transmission.js";
import type { State } from "../api/types.js";
import { type Event, recorders } from "./events.js";
import type { Stats } from "./handshake.js";
import { type Callback, type Command, commandName } from "./command.js";

type Callbacks = Pick<Command, "chunk" | "extent" | "completion">;
import { NbdError, asNbdError } from "./error.js";
import { type ExportInfo, Negotiator, Refused, noExport } from "./handshake.js";
import { Reader } from "./reader.js";
import { ReplyParser } from "./replies.js";
import { explain } from "./subprocess.js";
import {
  STDERR_WAIT_MS, checkSocketPath, openCommand, openSocketActivation, openTcp, openUnix, type Transport,
  checkSocketFd, openSocket,
} from "./transports.js";
import { type Endpoint, formatUri, isUri, parseUri } from "./uri.js";
import { VERSION } from "../version.js";

type StateName = "START" | "CONNECTING" | "NEGOTIATING" | "READY" | "CLOSED" | "DEAD";

const groupOf: Record<StateName, State> = {
  START: "created", CONNECTING: "connecting", NEGOTIATING: "negotiating",
  READY: "connected", CLOSED: "closed", DEAD: "dead",
};

const describe: Record<StateName, string> = {
  START: "Handle after being initially created",
  CONNECTING: "Connecting to the server",
  NEGOTIATING: "Connection is ready to negotiate an NBD option",
  READY: "Connection is ready to process NBD commands",
  CLOSED: "Connection is closed",
  DEAD: "Connection is in an unrecoverable error state, can only be closed",
};

/** How long close() and shutdown() wait for a server before forcing the issue. */
const SERVER_EXIT_WAIT_MS = 5_000;
const COMMAND_EXIT_WAIT_MS = 60_000;
const READ_BUFFER_SIZE = 256 * 1024;
const MAX_SOCKET_ACTIVATION_NAME = 32;

export class Connection {
  // ---- settings (libnbd's defaults) ----
  handleName: string;
  exportName = "";
  fullInfo = false;
  requestStructuredReplies = true;
  requestBlockSize = true;
  handshakeFlags = HANDSHAKE_FLAG_MASK;
  preadInitialize = true;
  strict = STRICT_MASK;
  socketActivationName = "";
  optMode = false;
  requestMetaContext = true;
  /** The contexts add_meta_context asked for (not what the server granted). */
  metaContextRequests: string[] = [];
  /** TLS: DISABLE, ALLOW or REQUIRE, and what authenticates us (see tls settings below). */
  tls = TLS_DISABLE;
  tlsCertificates: string | undefined;
  tlsVerifyPeer = true;
  tlsUsername: string | undefined;
  tlsPskFile: string | undefined;
  tlsHostname: string | undefined;

  // ---- state, and what the server said ----
  #state: StateName = "START";
  #neg: Negotiator | undefined;
  #transport: Transport | undefined;
  #reader = new Reader();
  #parser: ReplyParser | undefined;
  readonly #inflight = new Map<number, Command>();
  #nextCookie = 1;
  #disconnectRequested = false;
  /** The server went away while nothing was in flight (see #lost). */
  #peerGone = false;
  /** How it went, if not by a clean EOF: what poll reports when it finds out. */
  #peerError: NbdError | undefined;
  #tlsNegotiated = false;
  /** aio commands whose reply is complete, oldest first, until aio_command_completed retires them. */
  #done: Command[] = [];
  #progressed = false;
  #pollWaiter: (() => void) | undefined;
  /**
   * The connection ended (CLOSED, DEAD) and no call has returned since: if
   * the next call is poll, it reports the end as libnbd's poll would have
   * found it (1, or the error) rather than EINVAL. Any other call shows it
   * by the state (endSeen).
   */
  #endUnreported = false;
  /** The error that made the connection DEAD. */
  #fatal: NbdError | undefined;
  #closed: Promise<void> | undefined;
  #closedResolve: (() => void) | undefined;

  /** Callback calls recorded for the caller's thread, oldest first. */
  #events: Event[] = [];
  /** Plaintext protocol bytes and magic-delimited chunks, each way (libnbd 1.16's stats). */
  readonly stats: Stats = { bytesSent: 0, chunksSent: 0, bytesReceived: 0, chunksReceived: 0 };

  readonly #onread = {
    buffer: new Uint8Array(READ_BUFFER_SIZE),
    callback: (n: number, buf: Uint8Array): boolean => {
      this.stats.bytesReceived += n;
      const chunk = buf.subarray(0, n);
      if (this.#parser) this.#parser.push(chunk);
      else this.#reader.push(chunk);
      return true;
    },
  };

  constructor(readonly id: number) {
    this.handleName = `nbd${id}`;
  }

  emit(event: Event): void { this.#events.push(event); }

  // ---- debug --------------------------------------------------------------------

  /** libnbd's h->debug: LIBNBD_DEBUG=1 sets it at create(). */
  debug = false;
  #debugCallback: Callback | undefined;

  setDebug(debug: boolean): void { this.debug = debug; }
  getDebug(): boolean { return this.debug; }
  setDebugCallback(fn: Callback): void { this.#debugCallback = fn; }
  clearDebugCallback(): void { this.#debugCallback = undefined; }

  /** A debug message: to the debug callback if there is one, else to stderr as libnbd prints it. */
  log(context: string, msg: string): void {
    if (!this.debug) return;
    if (this.#debugCallback) {
      try { (this.#debugCallback as (c: string, m: string) => number)(context, msg); } catch { /* ignored, as libnbd ignores its return */ }
    } else {
      writeSync(2, `libnbd: debug: ${this.handleName}: ${context}: ${msg}\n`);
    }
  }

  drainEvents(): Event[] {
    const events = this.#events;
    this.#events = [];
    return events;
  }

  // ---- states ---------------------------------------------------------------

  get state(): State { return groupOf[this.#state]; }
  get stateName(): string { return this.#state; }
  connectionState(): string { return `${this.#state}: ${describe[this.#state]}`; }
  aioIsCreated(): boolean { return this.#state === "START"; }
  aioIsConnecting(): boolean { return this.#state === "CONNECTING"; }
  aioIsNegotiating(): boolean { return this.#state === "NEGOTIATING"; }
  aioIsReady(): boolean { return this.#state === "READY" && this.#inflight.size === 0; }
  aioIsProcessing(): boolean { return this.#state === "READY" && this.#inflight.size > 0; }
  aioIsDead(): boolean { return this.#state === "DEAD"; }
  aioIsClosed(): boolean { return this.#state === "CLOSED"; }

  // ---- simple settings ------------------------------------------------------

  setHandleName(name: string): void { this.handleName = name; }
  getHandleName(): string { return this.handleName; }
  getVersion(): string { return VERSION; }
  getPackageName(): string { return "nbd-ts"; }

  setExportName(name: string): void {
    if (Buffer.byteLength(name) > MAX_STRING) throw new NbdError(errno.ENAMETOOLONG, "export name too long for NBD protocol");
    if (name === this.exportName) return;
    this.exportName = name;
    this.#forgetExport(); // what opt_info learned was about the old name
  }
  getExportName(): string { return this.exportName; }
  setFullInfo(request: boolean): void { this.fullInfo = request; }
  getFullInfo(): boolean { return this.fullInfo; }
  setRequestStructuredReplies(request: boolean): void { this.requestStructuredReplies = request; }
  getRequestStructuredReplies(): boolean { return this.requestStructuredReplies; }
  setHandshakeFlags(flags: number): void { this.handshakeFlags = flags; }
  getHandshakeFlags(): number { return this.handshakeFlags; }
  setPreadInitialize(request: boolean): void { this.preadInitialize = request; }
  getPreadInitialize(): boolean { return this.preadInitialize; }
  setStrictMode(flags: number): void { this.strict = flags; }

  /** Milliseconds a call may wait on the server; 0 for ever (libnbd has no such limit). */
  timeout = 0;
  setTimeout(ms: number): void {
    if (ms < 0) throw new NbdError(errno.EINVAL, `invalid timeout: ${ms}`);
    this.timeout = ms;
  }
  getTimeout(): number { return this.timeout; }

  /** A call ran out of time: the handle dies with ETIMEDOUT, which the call reports. */
  expire(ms: number): NbdError {
    const err = new NbdError(errno.ETIMEDOUT, `timed out after ${ms} ms waiting for the server`);
    this.#die(err);
    return err;
  }
  getStrictMode(): number { return this.strict; }

  setSocketActivationName(name: string): void {
    if (name.length > MAX_SOCKET_ACTIVATION_NAME) {
      throw new NbdError(errno.ENAMETOOLONG, `socket activation name should be <= ${MAX_SOCKET_ACTIVATION_NAME} characters`);
    }
    if (!/^[A-Za-z0-9]*$/.test(name)) {
      throw new NbdError(errno.EINVAL, "socket activation name should contain only alphanumeric ASCII characters");
    }
    this.socketActivationName = name;
  }
  getSocketActivationName(): string { return this.socketActivationName; }

  // ---- TLS settings -----------------------------------------------------------

  setTls(tls: number): void { this.tls = tls; }
  getTls(): number { return this.tls; }
  /** TLS (NBD_OPT_STARTTLS) is not built yet: like a libnbd built without GnuTLS. */
  supportsTls(): boolean { return false; }

  /**
   * Where STARTTLS would go. Without TLS, ALLOW carries on in plaintext (as
   * when a server refuses TLS) and REQUIRE fails, as libnbd fails it.
   */
  #withoutTls(protocol: string): void {
    if (this.tls !== TLS_REQUIRE) return;
    const why = protocol === "oldstyle" ? "server is oldstyle"
      : protocol === "newstyle" ? "server is not using fixed newstyle"
      : "nbd-ts does not support TLS yet";
    throw new NbdError(errno.ENOTSUP, `handshake: ${why}, but handle TLS setting is 'require' (2)`);
  }
  setTlsCertificates(dir: string): void { this.tlsCertificates = dir; }
  setTlsVerifyPeer(verify: boolean): void { this.tlsVerifyPeer = verify; }
  getTlsVerifyPeer(): boolean { return this.tlsVerifyPeer; }
  setTlsUsername(name: string): void { this.tlsUsername = name; }
  /** Unset, it is the login name, as libnbd's getlogin_r() gives. */
  getTlsUsername(): string { return this.tlsUsername ?? process.env.LOGNAME ?? userInfo().username; }
  setTlsPskFile(file: string): void { this.tlsPskFile = file; }
  setTlsHostname(name: string): void { this.tlsHostname = name; }
  /** Unset, it is the host name the connection was made to (libnbd 1.22). */
  getTlsHostname(): string { return this.tlsHostname ?? this.#transport?.host ?? ""; }
  getTlsNegotiated(): boolean { return this.#tlsNegotiated; }

  // ---- connecting -----------------------------------------------------------

  connectUnix(path: string): Promise<void> {
    checkSocketPath(path); // before the state machine runs: the handle stays created
    this.#endpoint = { kind: "unix", path };
    return this.#connect(() => openUnix(path, this.#onread));
  }

  connectTcp(hostname: string, port: string): Promise<void> {
    // libnbd's CONNECT_TCP goes back to START when no address answers, so the handle can retry.
    this.#endpoint = { kind: "tcp", host: hostname, port };
    return this.#connect(() => openTcp(hostname, port, this.#onread), true);
  }

  connectCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
    checkArgv(argv);
    return this.#connect(() => openCommand(argv, env, this.#onread));
  }

  connectSystemdSocketActivation(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
    checkArgv(argv);
    return this.#connect(() => openSocketActivation(argv, env, this.socketActivationName, this.#onread));
  }

  async #connect(open: () => Promise<Transport>, retryable = false): Promise<void> {
    this.#state = "CONNECTING";
    try {
      const transport = (this.#transport = await open());
      this.#watch(transport.socket);
      const neg = (this.#neg = new Negotiator({ read: (n) => this.#reader.read(n), write: (b) => this.#send(b) }, this, this.stats));
      const protocol = await neg.greet();
      this.handshakeFlags = neg.handshakeFlags; // what both sides agreed on (0 for oldstyle)
      this.#withoutTls(protocol);
      if (protocol === "newstyle-fixed" && this.requestStructuredReplies) await neg.structuredReply();
      if (protocol !== "oldstyle" && this.optMode) {
        this.#state = "NEGOTIATING";
        return;
      }
      if (protocol !== "oldstyle") await this.#go(neg);
      this.#ready();
    } catch (e) {
      if (retryable && !this.#transport) {
        this.#state = "START";
        throw e;
      }
      // EOF first: a server still running (one that sent garbage) exits, and
      // explain() need not wait out its timeout to hear its last words.
      this.#transport?.socket.end();
      const err = await explain(asNbdError(e), this.#transport?.child, STDERR_WAIT_MS);
      this.#die(err);
      throw err;
    }
  }

  /** NBD_OPT_GO outside opt mode: a refusal ends with NBD_OPT_ABORT, then DEAD (libnbd 1.18). */
  async #go(neg: Negotiator): Promise<void> {
    try {
      await neg.go();
    } catch (e) {
      if (e instanceof Refused) neg.abort();
      throw e;
    }
  }

  /** The transmission phase: replies go to the push parser from now on. */
  #ready(): void {
    this.#parser = new ReplyParser(this.#replyHost);
    this.#state = "READY";
    for (const chunk of this.#reader.drain()) this.#parser.push(chunk);
  }

  #watch(socket: Socket): void {
    socket.on("error", (e: NodeJS.ErrnoException) => {
      const send = e.code === "EPIPE";
      this.#lost(new NbdError(errnoOf(e), send ? "send" : "recv"), false, send);
    });
    socket.on("end", () => this.#lost(new NbdError(0, "recv: server disconnected unexpectedly"), true));
    socket.on("close", () => this.#lost(new NbdError(0, "recv: server disconnected unexpectedly"), true));
  }

  /**
   * The socket failed or hit EOF. A clean EOF between replies closes; anything
   * else kills. With nothing in flight libnbd would not have looked at the
   * socket yet: the state stays READY and the next command finds out.
   */
  #lost(err: NbdError, eof: boolean, send = false): void {
    if (this.#state === "CLOSED" || this.#state === "DEAD" || this.#peerGone) return;
    if (!this.#parser) return this.#reader.fail(err);
    if (this.#inflight.size === 0 && !this.#disconnectRequested) {
      this.#peerGone = true;
      if (!eof) this.#peerError = err;
      this.#transport?.socket.destroy();
      return;
    }
    if (eof && (this.#disconnectRequested || this.#parser.idle)) return this.#close();
    this.#die(err, send);
  }

  /**
   * DEAD: a blocking call waiting on a command returns the error that killed
   * the connection, as libnbd's poll does; but when sending the request
   * failed, libnbd never polled, and the call reports its command's ENOTCONN.
   */
  #die(err: NbdError, sendFailed = false): void {
    this.#state = "DEAD";
    this.#fatal = err;
    this.#endUnreported = true;
    this.#transport?.socket.destroy();
    this.#failInflight(sendFailed ? undefined : err);
    this.#closedResolve?.();
    this.#progress();
  }

  /** CLOSED: commands still in flight fail with "<cmd>: command failed" (ENOTCONN unless they had an error). */
  #close(): void {
    this.#state = "CLOSED";
    this.#endUnreported = true;
    this.#transport?.socket.destroy();
    this.#failInflight();
    this.#closedResolve?.();
    this.#progress();
  }

  /** libnbd's abort_commands: ENOTCONN for each command that had no error of its own. */
  #failInflight(fatal?: NbdError): void {
    this.#unsent.length = 0;
    for (const cmd of this.#inflight.values()) {
      cmd.error ||= errno.ENOTCONN;
      cmd.settle(cmd, fatal);
    }
    this.#inflight.clear();
  }

  // ---- URIs and connect_socket ------------------------------------------------------

  uriAllowTransports = ALLOW_TRANSPORT_MASK;
  uriAllowTls = TLS_ALLOW;
  uriAllowLocalFile = false;
  /** Where connect_unix or connect_tcp aimed: libnbd keeps it for get_uri even when the connect failed. */
  #endpoint: Endpoint | undefined;

  setUriAllowTransports(mask: number): void { this.uriAllowTransports = mask; }
  setUriAllowTls(tls: number): void { this.uriAllowTls = tls; }
  setUriAllowLocalFile(allow: boolean): void { this.uriAllowLocalFile = allow; }
  supportsUri(): boolean { return true; }
  isUri(uri: string): boolean { return isUri(uri); }

  /**
   * nbd_connect_uri: the settings the URI implies, made through the setters
   * (and kept if a later step fails, as libnbd keeps them), then connect_tcp
   * or connect_unix. A URI that does not parse leaves the handle untouched.
   */
  connectUri(uri: string): Promise<void> {
    const plan = parseUri(uri, { transports: this.uriAllowTransports, tls: this.uriAllowTls, localFile: this.uriAllowLocalFile });
    for (const s of plan.settings) (this[s.call] as (value: unknown) => void)(s.value);
    const to = plan.target;
    if (to instanceof NbdError) throw to;
    return to.kind === "tcp" ? this.connectTcp(to.host, to.port) : this.connectUnix(to.path);
  }

  /** nbd_get_uri: rebuilt from the endpoint and settings; a command or a caller's socket has no URI. */
  getUri(): string {
    const path = this.#transport?.path; // socket activation's, known once it ran
    const endpoint = this.#endpoint ?? (path !== undefined ? { kind: "unix", path } : undefined);
    if (!endpoint) throw new NbdError(errno.EINVAL, "cannot construct a URI for this connection type");
    return formatUri({
      endpoint,
      tls: this.tls === TLS_REQUIRE || this.#tlsNegotiated,
      username: this.tlsUsername,
      exportName: this.exportName,
      tlsCertificates: this.tlsCertificates,
      tlsPskFile: this.tlsPskFile,
      tlsHostname: this.tlsHostname,
      tlsVerifyPeer: this.tlsVerifyPeer,
    });
  }

  connectSocket(sock: number): Promise<void> {
    checkSocketFd(sock); // a bad fd leaves the handle created, as libnbd's fcntl() check does
    return this.#connect(async () => openSocket(sock, this.#onread));
  }

  // ---- option negotiation (opt mode) -------------------------------------------

  setOptMode(enable: boolean): void { this.optMode = enable; }
  getOptMode(): boolean { return this.optMode; }

  /** The Negotiator, for options only a fixed newstyle server understands. */
  #fixed(): Negotiator {
    const neg = this.#neg!;
    if (!neg.fixed) throw new NbdError(errno.ENOTSUP, "server is not using fixed newstyle protocol");
    return neg;
  }

  /**
   * One option exchange. An error reply (Refused) leaves the handle
   * negotiating; anything else (EOF, a broken reply) kills it, as libnbd's
   * state machine moves to DEAD.
   */
  async #exchange<T>(run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (e) {
      if (!(e instanceof Refused)) this.#die(asNbdError(e));
      throw e;
    }
  }

  async optGo(): Promise<void> {
    const neg = this.#neg!;
    try {
      await this.#exchange(() => neg.go());
    } catch (e) {
      if (!(e instanceof Refused) || !neg.fixed) throw e;
      throw new NbdError(e.errno || errno.ENOTSUP, "server replied with error to opt_go request");
    }
    this.#ready();
  }

  async optInfo(): Promise<void> {
    try {
      const neg = this.#fixed();
      await this.#exchange(() => neg.go(Opt.INFO));
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      throw new NbdError(e.errno || errno.ENOTSUP, "server replied with error to opt_info request");
    }
  }

  /** NBD_OPT_ABORT, then CLOSED; a plain newstyle server cannot abort, so the handle dies. */
  optAbort(): void {
    const neg = this.#neg!;
    if (!neg.fixed) return this.#die(new NbdError(errno.ENOTSUP, "handshake: server is not using fixed newstyle"));
    neg.abort();
    this.#state = "CLOSED";
    this.#transport?.socket.end(); // let the abort reach the server; nobody waits for its reply
  }

  async optList(list: (name: string, description: string) => number): Promise<number> {
    const neg = this.#fixed();
    const { count, err } = await this.#exchange(() => neg.list(list));
    if (err) throw new NbdError(err, "server replied with error to list request");
    return count;
  }

  optListMetaContext(context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.LIST_META_CONTEXT, this.metaContextRequests, context);
  }
  optListMetaContextQueries(queries: string[], context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.LIST_META_CONTEXT, queries, context);
  }
  optSetMetaContext(context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.SET_META_CONTEXT, this.metaContextRequests, context);
  }
  optSetMetaContextQueries(queries: string[], context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.SET_META_CONTEXT, queries, context);
  }

  async #metaContext(opt: Opt.LIST_META_CONTEXT | Opt.SET_META_CONTEXT, queries: readonly string[],
    context: (name: string) => number): Promise<number> {
    const neg = this.#fixed();
    // Without structured replies libnbd 1.18 still asks; the server refuses SET.
    const { count, err } = await this.#exchange(() => neg.metaContext(opt, queries, context));
    if (err) throw new NbdError(err, "server replied with error to meta context request");
    return count;
  }

  async optStructuredReply(): Promise<boolean> {
    const neg = this.#fixed();
    return (await this.#exchange(() => neg.structuredReply())) === 0;
  }

  /** A new export name or new requests make what the server said about the old ones stale. */
  #forgetExport(): void {
    const neg = this.#neg;
    if (!neg || this.#state !== "NEGOTIATING") return;
    neg.export = noExport();
    neg.metaValid = false;
  }

  // ---- meta contexts and what to request -----------------------------------------

  addMetaContext(name: string): void {
    if (Buffer.byteLength(name) > MAX_STRING) throw new NbdError(errno.ENAMETOOLONG, "meta context name too long for NBD protocol");
    this.metaContextRequests.push(name);
  }
  getNrMetaContexts(): number { return this.metaContextRequests.length; }
  getMetaContext(i: bigint): string {
    const name = this.metaContextRequests[Number(i)];
    if (i >= BigInt(this.metaContextRequests.length) || name === undefined) {
      throw new NbdError(errno.EINVAL, "meta context request out of range");
    }
    return name;
  }
  clearMetaContexts(): void { this.metaContextRequests = []; }
  setRequestMetaContext(request: boolean): void { this.requestMetaContext = request; }
  getRequestMetaContext(): boolean { return this.requestMetaContext; }
  setRequestBlockSize(request: boolean): void { this.requestBlockSize = request; }
  getRequestBlockSize(): boolean { return this.requestBlockSize; }

  // ---- subprocess -----------------------------------------------------------

  getSubprocessPid(): bigint {
    const pid = this.#transport?.child?.pid;
    if (pid === undefined) throw new NbdError(errno.ESRCH, "no subprocess exists");
    return BigInt(pid);
  }

  killSubprocess(signum: number): void {
    const child = this.#transport?.child;
    if (!child || child.pid === undefined) throw new NbdError(errno.ESRCH, "no subprocess exists");
    if (signum < 0) throw new NbdError(errno.EINVAL, `invalid signal number: ${signum}`);
    if (child.reaped) return; // libnbd's child stays a zombie until close, so its kill() succeeds
    try {
      process.kill(child.pid, signum || "SIGTERM");
    } catch (e) {
      throw new NbdError(errnoOf(e), "kill");
    }
  }

  /** What the main thread must clean up if the process exits without close(). */
  get cleanup(): { pid?: number; dir?: string } {
    const t = this.#transport;
    return { ...(t?.child?.pid !== undefined && { pid: t.child.pid }), ...(t?.dir && { dir: t.dir }) };
  }

  // ---- what the server said -------------------------------------------------

  #known(what: "size" | "flags"): ExportInfo {
    const info = this.#neg?.export;
    if (!info || info.eflags === 0) {
      throw new NbdError(errno.EINVAL, `server has not returned export ${what}, you need to connect to the server first`);
    }
    return info;
  }

  #flag(bit: TFlag): boolean { return (this.#known("flags").eflags & bit) !== 0; }

  getSize(): bigint { return this.#known("size").size; }
  getProtocol(): string { return this.#neg!.protocol; }
  getStructuredRepliesNegotiated(): boolean { return this.#neg!.structuredReplies; }
  isReadOnly(): boolean { return this.#flag(TFlag.READ_ONLY); }
  canFlush(): boolean { return this.#flag(TFlag.SEND_FLUSH); }
  canFua(): boolean { return this.#flag(TFlag.SEND_FUA); }
  isRotational(): boolean { return this.#flag(TFlag.ROTATIONAL); }
  canTrim(): boolean { return this.#flag(TFlag.SEND_TRIM); }
  canZero(): boolean { return this.#flag(TFlag.SEND_WRITE_ZEROES); }
  canFastZero(): boolean { return this.#flag(TFlag.SEND_FAST_ZERO); }
  canDf(): boolean { return this.#flag(TFlag.SEND_DF); }
  canMultiConn(): boolean { return this.#flag(TFlag.CAN_MULTI_CONN); }
  canCache(): boolean { return this.#flag(TFlag.SEND_CACHE); }

  canMetaContext(name: string): boolean {
    const neg = this.#neg!;
    if (this.metaContextRequests.length && !neg.metaValid) {
      throw new NbdError(errno.EINVAL, "need a successful server meta context request first");
    }
    return neg.metaContexts.some((c) => c.name === name);
  }

  getBlockSize(type: number): bigint {
    const info = this.#known("flags");
    switch (type) {
      case SIZE_MINIMUM: return BigInt(info.blockMinimum);
      case SIZE_PREFERRED: return BigInt(info.blockPreferred);
      case SIZE_MAXIMUM: return BigInt(info.blockMaximum);
      case SIZE_PAYLOAD: return BigInt(info.payloadMaximum);
      default: throw new NbdError(errno.EINVAL, `size_type: invalid value for parameter: ${type}`);
    }
  }

  getCanonicalExportName(): string {
    const name = this.#known("flags").canonicalName;
    if (name === undefined) throw new NbdError(errno.ENOTSUP, "server did not advertise a canonical name");
    return name;
  }

  getExportDescription(): string {
    const text = this.#known("flags").description;
    if (text === undefined) throw new NbdError(errno.ENOTSUP, "server did not advertise a description");
    return text;
  }

  // ---- I/O --------------------------------------------------------------------
  // Each command is built once (libnbd's nbd_unlocked_aio_*); the blocking call
  // waits for it, the aio call hands back its cookie.

  pread(buf: Uint8Array, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#read(buf, offset, flags));
  }
  aioPread(buf: Uint8Array, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#read(buf, offset, flags, { completion }));
  }
  preadStructured(buf: Uint8Array, offset: bigint, chunk: Callback, flags: number): Promise<void> {
    return this.#wait(this.#read(buf, offset, flags, { chunk }));
  }
  aioPreadStructured(buf: Uint8Array, offset: bigint, chunk: Callback, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#read(buf, offset, flags, { chunk, completion }));
  }
  pwrite(buf: Uint8Array, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#write(buf, offset, flags));
  }
  aioPwrite(buf: Uint8Array, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#write(buf, offset, flags, { completion }));
  }
  flush(flags: number): Promise<void> {
    return this.#wait(this.#flush(flags));
  }
  aioFlush(completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#flush(flags, { completion }));
  }
  trim(count: bigint, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#trim(count, offset, flags));
  }
  aioTrim(count: bigint, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#trim(count, offset, flags, { completion }));
  }
  cache(count: bigint, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#cache(count, offset, flags));
  }
  aioCache(count: bigint, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#cache(count, offset, flags, { completion }));
  }
  zero(count: bigint, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#zero(count, offset, flags));
  }
  aioZero(count: bigint, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#zero(count, offset, flags, { completion }));
  }
  blockStatus(count: bigint, offset: bigint, extent: Callback, flags: number): Promise<void> {
    return this.#wait(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: false } }));
  }
  aioBlockStatus(count: bigint, offset: bigint, extent: Callback, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: false }, completion }));
  }
  blockStatus64(count: bigint, offset: bigint, extent: Callback, flags: number): Promise<void> {
    return this.#wait(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: true } }));
  }
  aioBlockStatus64(count: bigint, offset: bigint, extent: Callback, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: true }, completion }));
  }
  blockStatusFilter(count: bigint, offset: bigint, contexts: string[], extent64: Callback, flags: number): Promise<void> {
    return this.#wait(this.#blockStatusFilter(count, offset, contexts, flags, { extent: { fn: extent64, wide: true } }));
  }
  aioBlockStatusFilter(
    count: bigint, offset: bigint, contexts: string[], extent64: Callback, completion: Callback | undefined, flags: number,
  ): bigint {
    return this.#cookie(this.#blockStatusFilter(count, offset, contexts, flags, { extent: { fn: extent64, wide: true }, completion }));
  }

  #read(buf: Uint8Array, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictFlags(flags);
    return this.#command(Cmd.READ, flags, offset, BigInt(buf.byteLength), errno.EINVAL, buf, callbacks);
  }

  #write(buf: Uint8Array, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictWrite(flags);
    return this.#command(Cmd.WRITE, flags & ~CmdFlag.PAYLOAD_LEN, offset, BigInt(buf.byteLength), errno.ENOSPC, buf, callbacks);
  }

  #flush(flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_FLUSH, "flush");
    return this.#command(Cmd.FLUSH, flags, 0n, 0n, 0, undefined, callbacks);
  }

  #trim(count: bigint, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_TRIM, "trim");
    this.#strictWrite(flags);
    return this.#command(Cmd.TRIM, flags, offset, count, errno.ENOSPC, undefined, callbacks);
  }

  #cache(count: bigint, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_CACHE, "cache");
    return this.#command(Cmd.CACHE, flags, offset, count, errno.EINVAL, undefined, callbacks);
  }

  #zero(count: bigint, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_WRITE_ZEROES, "zero");
    this.#strictWrite(flags);
    if (this.strict & STRICT_COMMANDS && flags & CmdFlag.FAST_ZERO && !this.canFastZero()) {
      throw new NbdError(errno.EINVAL, "server does not support the fast zero flag");
    }
    return this.#command(Cmd.WRITE_ZEROES, flags, offset, count, errno.ENOSPC, undefined, callbacks);
  }

  /** libnbd's check_aio_block_status, shared by every block status call. */
  #checkBlockStatus(): void {
    const neg = this.#neg!;
    if (this.strict & STRICT_COMMANDS) {
      if (!neg.structuredReplies) throw new NbdError(errno.ENOTSUP, "server does not support structured replies");
      if (!neg.metaValid || neg.metaContexts.length === 0) {
        throw new NbdError(errno.ENOTSUP, "did not negotiate any metadata contexts, either you did not call " +
          "nbd_add_meta_context before connecting or the server does not support it");
      }
    }
  }

  #blockStatus(count: bigint, offset: bigint, flags: number, callbacks: Callbacks): Command {
    this.#checkBlockStatus();
    return this.#command(Cmd.BLOCK_STATUS, flags, offset, count, errno.EINVAL, undefined, callbacks);
  }

  /**
   * libnbd 1.18's block_status_filter. The ids of `contexts` travel as the
   * request's payload, which needs extended headers: nbd-ts negotiates none
   * yet (and libnbd ignores a server's BLOCK_STATUS_PAYLOAD flag without
   * them), so in the default strict mode the call fails before anything is
   * sent. With STRICT_AUTO_FLAG and STRICT_COMMANDS cleared libnbd goes on:
   * each context must have been negotiated, and a compact request goes out
   * whose length is that of the payload it cannot carry (8 + 4 per context).
   */
  #blockStatusFilter(count: bigint, offset: bigint, contexts: string[], flags: number, callbacks: Callbacks): Command {
    this.#checkBlockStatus();
    if (this.strict & STRICT_AUTO_FLAG) throw new NbdError(errno.ENOTSUP, "server does not support extended headers");
    if (this.strict & STRICT_COMMANDS) throw new NbdError(errno.EINVAL, "server does not support the block status payload flag");
    const neg = this.#neg!;
    for (const name of contexts) {
      if (!neg.metaValid || !neg.metaContexts.some((c) => c.name === name)) {
        throw new NbdError(errno.EINVAL, `context ${name} not negotiated`);
      }
    }
    return this.#command(Cmd.BLOCK_STATUS, flags, offset, count, errno.EINVAL, undefined, callbacks, 8 + 4 * contexts.length);
  }

  // STRICT_COMMANDS: refuse what the server did not advertise (lib/rw.c).
  #strictCommand(flag: TFlag, what: string): void {
    if (this.strict & STRICT_COMMANDS && !this.#flag(flag)) {
      throw new NbdError(errno.EINVAL, `server does not support ${what} operations`);
    }
  }

  #strictWrite(flags: number): void {
    if (!(this.strict & STRICT_COMMANDS)) return;
    if (this.isReadOnly()) throw new NbdError(errno.EPERM, "server does not support write operations");
    this.#strictFlags(flags);
  }

  #strictFlags(flags: number): void {
    if (!(this.strict & STRICT_COMMANDS)) return;
    if (flags & CmdFlag.FUA && !this.canFua()) throw new NbdError(errno.EINVAL, "server does not support the FUA flag");
    if (flags & CmdFlag.DF && !this.canDf()) throw new NbdError(errno.EINVAL, "server does not support the DF flag");
  }

  /**
   * libnbd's nbd_internal_command_common: the generic request checks, then the
   * request goes out. `payload`: block_status_filter's, whose length the request's becomes.
   */
  #command(
    type: Cmd, flags: number, offset: bigint, count: bigint, countErr: number, buf?: Uint8Array, callbacks?: Callbacks,
    payload?: number,
  ): Command {
    const info = this.#neg!.export;
    if (this.#disconnectRequested) throw new NbdError(errno.EINVAL, "cannot request more commands after NBD_CMD_DISC");
    if (countErr) {
      if (this.strict & STRICT_ZERO_SIZE && count === 0n) throw new NbdError(errno.EINVAL, "count cannot be 0");
      if (this.strict & STRICT_BOUNDS && (offset > info.size || count > info.size - offset)) {
        throw new NbdError(countErr, "request out of bounds");
      }
      const min = BigInt(info.blockMinimum);
      if (min && this.strict & STRICT_ALIGN && (offset | count) & (min - 1n)) {
        throw new NbdError(errno.EINVAL, "request is unaligned");
      }
    }
    if (payload !== undefined) {
      if (payload > MAX_REQUEST_SIZE || (this.strict & STRICT_PAYLOAD && payload > info.payloadMaximum)) {
        throw new NbdError(errno.ERANGE, "filter set too large");
      }
      count = BigInt(payload);
    }
    if (type === Cmd.WRITE && this.strict & STRICT_PAYLOAD && count > info.payloadMaximum) {
      throw new NbdError(errno.ERANGE, `request too large: maximum payload size is ${info.payloadMaximum}`);
    }
    if ((type === Cmd.READ || type === Cmd.WRITE) && count > MAX_REQUEST_SIZE) {
      throw new NbdError(errno.ERANGE, `request too large: maximum request size is ${MAX_REQUEST_SIZE}`);
    }
    if (count > 0xffffffffn) throw new NbdError(errno.ERANGE, "request too large: maximum request size is 4294967295");
    if (this.#peerGone) {
      // libnbd's send fails: DEAD, and the command is retired with ENOTCONN.
      this.#die(new NbdError(errno.ENOTCONN, "send: server disconnected"));
      throw new NbdError(errno.ENOTCONN, `${commandName[type]}: command failed`);
    }
    // Reads start from zeroes, so that a server that sends too little never
    // leaves stale bytes behind (libnbd's pread_initialize).
    if (type === Cmd.READ && this.preadInitialize) buf!.fill(0);
    const cmd: Command = {
      cookie: this.#nextCookie++, type, flags, offset, count: Number(count), buf, error: 0, seen: 0, ...callbacks,
      settle: (c, fatal) => this.#finished(c, fatal),
    };
    this.#inflight.set(cmd.cookie, cmd);
    this.#sendRequest(cmd);
    // Bytes that came while no reply was awaited are read now, as libnbd would;
    // in a microtask, once the caller has set up its wait (they may settle cmd).
    queueMicrotask(() => this.#parser?.resume());
    return cmd;
  }

  /** A blocking call: wait for the reply, or for the error that killed the connection. */
  #wait(cmd: Command): Promise<void> {
    return new Promise((resolve, reject) => {
      cmd.waiter = (fatal) => (fatal ? reject(fatal) : cmd.error ? reject(this.#commandError(cmd)) : resolve());
    });
  }

  #cookie(cmd: Command): bigint {
    cmd.aio = true;
    return BigInt(cmd.cookie);
  }

  /**
   * A reply is complete (or will never come). A blocking call returns; an aio
   * command's completion callback runs, and unless it returned 1 the command
   * waits in the done list for aio_command_completed.
   */
  #finished(cmd: Command, fatal?: NbdError): void {
    this.#inflight.delete(cmd.cookie);
    if (cmd.waiter) return cmd.waiter(fatal);
    if (!cmd.aio) return;
    this.emit({ id: 0, args: [cmd.cookie] }); // tells the caller's thread its buffer is ready
    let retire = false;
    if (cmd.completion) {
      try {
        retire = (cmd.completion as (box: { value: number }) => number)({ value: cmd.error }) === 1;
      } catch { /* a throwing completion callback changes nothing (libnbd ignores its -1) */ }
    }
    if (!retire) {
      if (cmd.completion && recorders.has(cmd.completion)) cmd.undecided = true;
      this.#done.push(cmd);
    }
    this.#progress();
  }

  #commandError(cmd: Command): NbdError {
    return new NbdError(cmd.error, `${commandName[cmd.type]}: command failed`);
  }

  /**
   * Requests held back while the socket's buffer is full (libnbd's
   * cmds_to_issue): they go out as it drains, in order, and
   * SHUTDOWN_ABANDON_PENDING drops them. NBD_CMD_DISC waits behind them.
   */
  #unsent: Command[] = [];
  #discUnsent = false;

  #sendRequest(cmd: Command): void {
    const socket = this.#transport!.socket;
    if (this.#unsent.length || socket.writableNeedDrain) {
      if (!this.#unsent.length) socket.once("drain", () => this.#sendUnsent());
      this.#unsent.push(cmd);
      return;
    }
    this.#writeRequest(cmd);
  }

  #sendUnsent(): void {
    const socket = this.#transport!.socket;
    while (this.#unsent.length && !socket.writableNeedDrain) this.#writeRequest(this.#unsent.shift()!);
    if (this.#unsent.length) socket.once("drain", () => this.#sendUnsent());
    else if (this.#discUnsent) this.#sendDisconnect();
  }

  /** SHUTDOWN_ABANDON_PENDING: what has not gone out completes with ENOTCONN (libnbd's abort_commands). */
  #abandonUnsent(): void {
    for (const cmd of this.#unsent.splice(0)) {
      this.#inflight.delete(cmd.cookie);
      cmd.error ||= errno.ENOTCONN;
      cmd.settle(cmd);
    }
    if (this.#discUnsent) this.#sendDisconnect();
  }

  #writeRequest(cmd: Command): void {
    const socket = this.#transport!.socket;
    // A fresh header each time: a queued write may still refer to an older one.
    const header = Buffer.allocUnsafe(REQUEST_SIZE);
    encodeRequest(new DataView(header.buffer, header.byteOffset, REQUEST_SIZE),
      cmd.flags, cmd.type, cmd.cookie, cmd.offset, cmd.count);
    this.stats.chunksSent++;
    if (cmd.type === Cmd.WRITE && cmd.count > 0) {
      socket.cork();
      this.#send(header);
      this.#send(cmd.buf!);
      socket.uncork();
    } else {
      this.#send(header);
    }
  }

  /** Every byte for the server goes through here, so that stats count it. */
  #send(bytes: Uint8Array, end = false): void {
    this.stats.bytesSent += bytes.byteLength;
    const socket = this.#transport!.socket;
    if (end) socket.end(bytes);
    else socket.write(bytes);
  }

  statsBytesSent(): bigint { return BigInt(this.stats.bytesSent); }
  statsChunksSent(): bigint { return BigInt(this.stats.chunksSent); }
  statsBytesReceived(): bigint { return BigInt(this.stats.bytesReceived); }
  statsChunksReceived(): bigint { return BigInt(this.stats.chunksReceived); }

  // ---- aio: completion and the event loop ------------------------------------------

  aioInFlight(): number { return this.#inflight.size; }

  aioCommandCompleted(cookie: bigint): boolean {
    if (cookie < 1n) throw new NbdError(errno.EINVAL, `invalid aio cookie ${cookie}`);
    const i = this.#done.findIndex((c) => BigInt(c.cookie) === cookie && !c.undecided);
    if (i < 0) return false;
    const [cmd] = this.#done.splice(i, 1);
    if (cmd!.error) throw this.#commandError(cmd!);
    return true;
  }

  aioPeekCommandCompleted(): bigint {
    const first = this.#done.find((c) => !c.undecided);
    if (first) return BigInt(first.cookie);
    if (this.#inflight.size || this.#done.length) return 0n;
    throw new NbdError(errno.EINVAL, "no commands are in flight");
  }

  /**
   * The caller's thread learned what callbacks it replayed returned: a
   * completion callback's 1 retires its command, a chunk or extent
   * callback's -1 fails it (libnbd applies both as the callbacks return).
   * An error of 0 says the completion callback has returned: until then
   * the command is not reported done, since its callback may retire it.
   */
  settleFromCaller(cookie: number, retire: boolean, error: number): void {
    const i = this.#done.findIndex((c) => c.cookie === cookie);
    const cmd = i >= 0 ? this.#done[i] : this.#inflight.get(cookie);
    if (!cmd) return;
    if (!error) cmd.undecided = false; // its completion callback has returned
    if (retire && i >= 0) this.#done.splice(i, 1);
    else cmd.error ||= error;
  }

  /** Something happened that poll() reports: a command finished or the connection ended. */
  #progress(): void {
    this.#progressed = true;
    const wake = this.#pollWaiter;
    this.#pollWaiter = undefined;
    wake?.();
  }

  /**
   * nbd_poll: 1 once something has happened since the last poll (a reply
   * finished, the connection ended), 0 if `timeout` ms pass first (-1 waits
   * as long as it takes). The worker reads the socket all along; poll only
   * waits for what it read to matter.
   */
  async poll(timeout: number): Promise<number> {
    const state = this.#state;
    const unreported = this.#endUnreported;
    this.#endUnreported = false;
    if ((state === "START" || state === "CLOSED" || state === "DEAD") && !unreported) {
      throw new NbdError(errno.EINVAL, `nothing to poll for in state ${state}`);
    }
    // The server left while the handle was idle: libnbd's poll reads that now (EOF: CLOSED; an error: DEAD).
    if (this.#peerGone && state === "READY") {
      if (this.#peerError) this.#die(this.#peerError);
      else this.#close();
    }
    if (!this.#progressed && timeout !== 0) {
      await new Promise<void>((resolve) => {
        const timer = timeout > 0 ? setTimeout(resolve, timeout) : undefined;
        this.#pollWaiter = () => { clearTimeout(timer); resolve(); };
      });
      this.#pollWaiter = undefined;
    }
    const progressed = this.#progressed;
    this.#progressed = false;
    this.#endUnreported = false; // reported now
    if (this.#state === "DEAD" && this.#fatal) throw this.#fatal;
    return progressed ? 1 : 0;
  }

  /** A call other than poll returned (api/invoke.ts): an end of the connection before it is no longer news. */
  endSeen(): void { this.#endUnreported = false; }

  poll2(fd: number, timeout: number): Promise<number> {
    if (fd !== -1) throw new NbdError(errno.ENOTSUP, "only fd -1 is supported: the socket lives in nbd-ts's worker thread");
    return this.poll(timeout);
  }

  aioGetDirection(): number {
    return this.#state === "READY" || this.#state === "NEGOTIATING" || this.#state === "CONNECTING" ? AIO_DIRECTION_READ : 0;
  }

  aioGetFd(): number { throw notHere(); }
  aioNotifyRead(): void { throw notHere(); }
  aioNotifyWrite(): void { throw notHere(); }

  readonly #replyHost = {
    structuredReplies: () => this.#neg?.structuredReplies ?? false,
    stats: this.stats,
    contextName: (id: number) => this.#neg?.metaContexts.find((c) => c.id === id)?.name,
    awaiting: () => this.#inflight.size > 0,
    find: (cookie: number) => this.#inflight.get(cookie),
    retire: (cmd: Command) => {
      this.#inflight.delete(cmd.cookie);
      cmd.settle(cmd);
    },
    fatal: (err: NbdError) => this.#die(err),
  };

  // ---- disconnecting --------------------------------------------------------

  async shutdown(flags: number): Promise<void> {
    if (this.#peerGone) return this.#die(new NbdError(errno.ENOTCONN, "send: server disconnected"));
    if (this.#state === "READY") {
      if (flags & SHUTDOWN_ABANDON_PENDING) this.#abandonUnsent();
      if (!this.#disconnectRequested) this.#sendDisconnect();
      await this.#waitClosed();
    } else if (this.#state === "NEGOTIATING") {
      this.optAbort();
    }
  }

  aioDisconnect(_flags: number): void {
    if (this.#disconnectRequested) throw new NbdError(errno.EINVAL, "cannot request more commands after NBD_CMD_DISC");
    if (this.#peerGone) return this.#die(new NbdError(errno.ENOTCONN, "send: server disconnected"));
    this.#sendDisconnect();
  }

  #sendDisconnect(): void {
    this.#disconnectRequested = true;
    this.#discUnsent = this.#unsent.length > 0;
    if (this.#discUnsent) return; // after the requests still waiting to go out
    const header = Buffer.allocUnsafe(REQUEST_SIZE);
    encodeRequest(new DataView(header.buffer, header.byteOffset, REQUEST_SIZE), 0, Cmd.DISC, this.#nextCookie++, 0, 0);
    this.stats.chunksSent++;
    this.#send(header, true); // NBD_CMD_DISC has no reply: half-close and wait for the server's EOF
  }

  #waitClosed(): Promise<void> {
    if (this.#state === "CLOSED" || this.#state === "DEAD") return Promise.resolve();
    this.#closed ??= new Promise<void>((resolve) => {
      this.#closedResolve = resolve;
      setTimeout(() => { if (this.#state === "READY") this.#close(); }, SERVER_EXIT_WAIT_MS).unref();
    });
    return this.#closed;
  }

  /** nbd_close: fail what is in flight, stop the server we started, remove its socket dir. */
  async close(): Promise<void> {
    this.log("nbd_close", "closing handle");
    const t = this.#transport;
    if (this.#state !== "DEAD" && this.#state !== "CLOSED") this.#close();
    this.#reader.fail(new NbdError(errno.ENOTCONN, "handle closed"));
    if (!t) return;
    t.socket.destroy();
    if (t.dir) {
      t.child?.kill("SIGTERM"); // socket activation: libnbd sends SIGTERM
      rmSync(t.dir, { recursive: true, force: true });
    }
    // connect_command: libnbd just waits for the child, which sees EOF.
    await t.child?.reap(t.dir ? SERVER_EXIT_WAIT_MS : COMMAND_EXIT_WAIT_MS);
  }
}

/** The calls of libnbd for external event loops: the socket is the worker's, not the caller's. */
function notHere(): NbdError {
  return new NbdError(errno.ENOTSUP, "not supported: the socket lives in nbd-ts's worker thread; use nbd_poll");
}

function checkArgv(argv: string[]): void {
  if (argv.length === 0) throw new NbdError(errno.EINVAL, "missing command name in argv list");
}
