/**
 * One connection's life: the transport, the handshake up to the
 * transmission phase, the state libnbd reports, and how it ends (CLOSED,
 * DEAD). The option calls (negotiation.ts) and commands (commands.ts)
 * build on it.
 */
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { TLS_DISABLE, TLS_REQUIRE } from "../constants.js";
import { errno, errnoOf } from "../errno.js";
import type { State } from "../api/types.js";
import type { Command } from "./command.js";
import { NbdError, asNbdError } from "./error.js";
import type { Event } from "./events.js";
import { Negotiator, Refused, type Protocol, type Stats } from "./handshake.js";
import { Reader } from "./reader.js";
import { ReplyParser } from "./replies.js";
import { Settings } from "./settings.js";
import { credentials, upgrade } from "./tls.js";
import { explain } from "./subprocess.js";
import {
  STDERR_WAIT_MS, checkSocketFd, checkSocketPath, openCommand, openSocket, openSocketActivation, openTcp, openUnix,
  type Transport,
} from "./transports.js";
import { type Endpoint, formatUri, parseUri } from "./uri.js";

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

const READ_BUFFER_SIZE = 16 * 1024;

export class Session extends Settings {
  // ---- state, and what the server said ----------------------------------------
  protected phase: StateName = "START";
  protected neg: Negotiator | undefined;
  protected transport: Transport | undefined;
  protected reader = new Reader();
  protected parser: ReplyParser | undefined;
  protected readonly inflight = new Map<number, Command>();
  protected nextCookie = 1;
  protected disconnectRequested = false;
  /** The server went away while nothing was in flight (see lost). */
  protected peerGone = false;
  /** How it went, if not by a clean EOF: what poll reports when it finds out. */
  protected peerError: NbdError | undefined;
  protected tlsNegotiated = false;
  protected progressed = false;
  protected pollWaiter: (() => void) | undefined;
  /**
   * The connection ended (CLOSED, DEAD) and no call has returned since: if
   * the next call is poll, it reports the end as libnbd's poll would have
   * found it (1, or the error) rather than EINVAL. Any other call shows it
   * by the state (endSeen).
   */
  protected endUnreported = false;
  /**
   * Requests held back while the socket's buffer is full (libnbd's
   * cmds_to_issue): they go out as it drains, in order, and
   * SHUTDOWN_ABANDON_PENDING drops them. NBD_CMD_DISC waits behind them.
   */
  protected unsent: Command[] = [];
  protected discUnsent = false;
  /** An aio option's completion, which DEAD and CLOSED call at once (libnbd's abort_option). */
  protected optionDone: ((err: number) => void) | undefined;
  /** The error that made the connection DEAD. */
  protected fatal: NbdError | undefined;
  protected closedPromise: Promise<void> | undefined;
  protected closedResolve: (() => void) | undefined;

  /** Callback calls recorded for the caller's thread, oldest first. */
  protected events: Event[] = [];
  /**
   * Where the bridge hears of queued commands' completions (cookie, errno)
   * and of the connection's end (cookie 0): its ring, read by the caller's
   * thread without crossing (see dispatch.ts).
   */
  ring: ((cookie: number, error: number) => void) | undefined;
  /** Plaintext protocol bytes and magic-delimited chunks, each way (libnbd 1.16's stats). */
  readonly stats: Stats = { bytesSent: 0, chunksSent: 0, bytesReceived: 0, chunksReceived: 0 };

  readonly #readBuffer = new Uint8Array(READ_BUFFER_SIZE);
  /** Where each read goes: a read's data straight into its destination, anything else into one reused buffer. */
  protected readonly onread = {
    buffer: (): Uint8Array => this.parser?.readTarget() ?? this.#readBuffer,
    callback: (n: number, buf: Uint8Array): boolean => {
      this.stats.bytesReceived += n;
      if (this.parser) this.parser.push(buf, n);
      else this.reader.push(buf.subarray(0, n));
      return true;
    },
  };

  emit(event: Event): void { this.events.push(event); }

  drainEvents(): Event[] {
    const events = this.events;
    this.events = [];
    return events;
  }

  // ---- states ---------------------------------------------------------------

  get state(): State { return groupOf[this.phase]; }
  get stateName(): string { return this.phase; }
  connectionState(): string { return `${this.phase}: ${describe[this.phase]}`; }
  aioIsCreated(): boolean { return this.phase === "START"; }
  aioIsConnecting(): boolean { return this.phase === "CONNECTING"; }
  aioIsNegotiating(): boolean { return this.phase === "NEGOTIATING"; }
  aioIsReady(): boolean { return this.phase === "READY" && this.inflight.size === 0; }
  aioIsProcessing(): boolean { return this.phase === "READY" && this.inflight.size > 0; }
  aioIsDead(): boolean { return this.phase === "DEAD"; }
  aioIsClosed(): boolean { return this.phase === "CLOSED"; }

  /** A call ran out of time: the handle dies with ETIMEDOUT, which the call reports. */
  expire(ms: number): NbdError {
    const err = new NbdError(errno.ETIMEDOUT, `timed out after ${ms} ms waiting for the server`);
    this.die(err);
    return err;
  }

  // ---- TLS --------------------------------------------------------------------------

  supportsTls(): boolean { return true; }

  /**
   * The handshake's TLS step (libnbd's NEWSTYLE.OPT_STARTTLS): skipped when
   * TLS is disabled; a server that cannot do it is refused under REQUIRE and
   * used in plaintext under ALLOW.
   */
  protected async negotiateTls(neg: Negotiator, protocol: Protocol): Promise<void> {
    if (this.tls === TLS_DISABLE) return;
    if (protocol !== "newstyle-fixed") {
      if (this.tls !== TLS_REQUIRE) return;
      const why = protocol === "oldstyle" ? "server is oldstyle" : "server is not using fixed newstyle";
      throw new NbdError(errno.ENOTSUP, `handshake: ${why}, but handle TLS setting is 'require' (2)`);
    }
    await this.starttls(neg);
  }

  /**
   * NBD_OPT_STARTTLS, then the TLS handshake over the same socket: 0 once
   * TLS is up, else the errno of the server's refusal (what an option's
   * completion callback gets), and the connection goes on in plaintext.
   * Under REQUIRE a refusal sends NBD_OPT_ABORT and ends the connection
   * (CLOSED in opt mode, else DEAD, as libnbd's PREPARE_OPT_ABORT).
   */
  protected async starttls(neg: Negotiator): Promise<number> {
    const refused = await neg.starttls();
    if (refused) {
      if (this.tls !== TLS_REQUIRE) return refused;
      neg.abort();
      if (this.optMode) {
        this.phase = "CLOSED";
        this.transport?.socket.end();
      }
      throw new Refused(errno.ENOTSUP, "handshake: server refused TLS, but handle TLS setting is 'require' (2)");
    }
    if (this.tlsNegotiated) throw new NbdError(errno.EPROTO, "handshake: unable to support server accepting TLS twice");
    const transport = this.transport!;
    const options = credentials({
      certificates: this.tlsCertificates,
      pskFile: this.tlsPskFile,
      username: this.getTlsUsername(),
      verifyPeer: this.tlsVerifyPeer,
      hostname: this.tlsHostname || transport.host,
    });
    // From here the TLS socket carries everything; what it decrypts takes the plaintext path.
    const { socket, ready } = upgrade(transport.socket, options, (chunk) => this.onread.callback(chunk.length, chunk));
    transport.socket = socket;
    this.watch(socket);
    await ready;
    this.tlsNegotiated = true;
    return 0;
  }

  /** Unset, it is the host name the connection was made to (libnbd 1.22). */
  getTlsHostname(): string { return this.tlsHostname ?? this.transport?.host ?? ""; }
  getTlsNegotiated(): boolean { return this.tlsNegotiated; }

  // ---- connecting -----------------------------------------------------------
  // Each aio_connect_* call returns once its transport is up (what libnbd does
  // before its state machine would block); the handshake goes on and poll
  // reports how it ends. The blocking form waits for that end (libnbd's
  // nbd_internal_wait_until_connected).

  connectUnix(path: string): Promise<void> { return this.connected(this.aioConnectUnix(path)); }
  aioConnectUnix(path: string): Promise<void> {
    checkSocketPath(path); // before the state machine runs: the handle stays created
    this.endpoint = { kind: "unix", path };
    return this.start(() => openUnix(path, this.onread));
  }

  connectTcp(hostname: string, port: string): Promise<void> { return this.connected(this.aioConnectTcp(hostname, port)); }
  aioConnectTcp(hostname: string, port: string): Promise<void> {
    // libnbd's CONNECT_TCP goes back to START when no address answers, so the handle can retry.
    this.endpoint = { kind: "tcp", host: hostname, port };
    return this.start(() => openTcp(hostname, port, this.onread), true);
  }

  connectCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<void> { return this.connected(this.aioConnectCommand(argv, env)); }
  aioConnectCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
    checkArgv(argv);
    return this.start(() => openCommand(argv, env, this.onread));
  }

  connectSystemdSocketActivation(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
    return this.connected(this.aioConnectSystemdSocketActivation(argv, env));
  }
  aioConnectSystemdSocketActivation(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
    checkArgv(argv);
    return this.start(() => openSocketActivation(argv, env, this.socketActivationName, this.onread));
  }

  /** The handshake the last connect began; it settles when the handle is READY, NEGOTIATING or DEAD. */
  protected handshake: Promise<void> = Promise.resolve();

  /** An aio connect: resolves once the transport is up (or fails as the call), and poll wakes when the handshake ends. */
  protected start(open: () => Promise<Transport>, retryable = false): Promise<void> {
    return new Promise((resolve, reject) => {
      this.handshake = this.open(open, retryable, resolve);
      this.handshake.then(() => this.progress(), reject); // after resolve, a failure is poll's to report (die)
    });
  }

  /** A blocking connect: the aio connect, then its handshake, whose end its own polls have seen. */
  protected async connected(started: Promise<void>): Promise<void> {
    await started;
    await this.handshake;
    this.progressed = false;
  }

  protected async open(open: () => Promise<Transport>, retryable = false, started?: () => void): Promise<void> {
    this.phase = "CONNECTING";
    try {
      const transport = (this.transport = await open());
      this.watch(transport.socket);
      started?.();
      const neg = (this.neg = new Negotiator({ read: (n) => this.reader.read(n), write: (b) => this.send(b) }, this, this.stats));
      const protocol = await neg.greet();
      this.handshakeFlags = neg.handshakeFlags; // what both sides agreed on (0 for oldstyle)
      await this.negotiateTls(neg, protocol);
      if (protocol === "newstyle-fixed" && this.requestStructuredReplies) {
        // libnbd 1.18's order: extended headers first; once agreed they imply structured replies.
        if (this.requestExtendedHeaders) await neg.negotiateExtendedHeaders();
        if (!neg.structuredReplies) await neg.structuredReply();
      }
      if (protocol !== "oldstyle" && this.optMode) {
        this.phase = "NEGOTIATING";
        return;
      }
      if (protocol !== "oldstyle") await this.goOrAbort(neg);
      this.ready();
    } catch (e) {
      if (retryable && !this.transport) {
        this.phase = "START";
        throw e;
      }
      // EOF first: a server still running (one that sent garbage) exits, and
      // explain() need not wait out its timeout to hear its last words.
      this.transport?.socket.end();
      const err = await explain(asNbdError(e), this.transport?.child, STDERR_WAIT_MS);
      // Opt mode's NBD_OPT_ABORT left it CLOSED, which libnbd's connect reports as such.
      if ((this.phase as StateName) === "CLOSED") throw new NbdError(0, "connection is closed");
      this.die(err);
      throw err;
    }
  }

  /** NBD_OPT_GO outside opt mode: a refusal ends with NBD_OPT_ABORT, then DEAD (libnbd 1.18). */
  protected async goOrAbort(neg: Negotiator): Promise<void> {
    try {
      await neg.go();
    } catch (e) {
      if (e instanceof Refused) neg.abort();
      throw e;
    }
  }

  /** The transmission phase: replies go to the push parser from now on. */
  protected ready(): void {
    this.parser = new ReplyParser(this.replyHost);
    this.phase = "READY";
    for (const chunk of this.reader.drain()) this.parser.push(chunk);
  }

  protected watch(socket: Socket): void {
    // Once TLS wraps a socket, only the TLS socket speaks for the connection.
    const current = () => this.transport?.socket === socket;
    socket.on("error", (e: NodeJS.ErrnoException) => {
      if (!current()) return;
      const send = e.code === "EPIPE";
      const what = send ? "send" : "recv";
      // Under TLS libnbd's errors are GnuTLS's, with errno 0: the reason is in the text.
      const tls = (socket as TLSSocket).encrypted === true;
      this.lost(tls ? new NbdError(0, `${what}: TLS: ${e.message}`) : new NbdError(errnoOf(e), what), false, send);
    });
    socket.on("end", () => current() && this.lost(new NbdError(0, "recv: server disconnected unexpectedly"), true));
    socket.on("close", () => current() && this.lost(new NbdError(0, "recv: server disconnected unexpectedly"), true));
  }

  /**
   * The socket failed or hit EOF. A clean EOF between replies closes; anything
   * else kills. With nothing in flight libnbd would not have looked at the
   * socket yet: the state stays READY and the next command finds out.
   */
  protected lost(err: NbdError, eof: boolean, send = false): void {
    if (this.phase === "CLOSED" || this.phase === "DEAD" || this.peerGone) return;
    if (!this.parser) return this.reader.fail(err);
    if (this.inflight.size === 0 && !this.disconnectRequested) {
      this.peerGone = true;
      if (!eof) this.peerError = err;
      this.transport?.socket.destroy();
      this.ring?.(0, 0); // a poll waiting on the ring must cross to find out
      return;
    }
    if (eof && (this.disconnectRequested || this.parser.idle)) return this.markClosed();
    this.die(err, send);
  }

  /**
   * DEAD: a blocking call waiting on a command returns the error that killed
   * the connection, as libnbd's poll does; but when sending the request
   * failed, libnbd never polled, and the call reports its command's ENOTCONN.
   */
  protected die(err: NbdError, sendFailed = false): void {
    this.phase = "DEAD";
    this.fatal = err;
    this.endUnreported = true;
    this.transport?.socket.destroy();
    this.optionDone?.(err.errno || errno.ENOTCONN);
    this.failInflight(sendFailed ? undefined : err);
    this.closedResolve?.();
    this.ring?.(0, 0); // after the commands it failed
    this.progress();
  }

  /** CLOSED: commands still in flight fail with "<cmd>: command failed" (ENOTCONN unless they had an error). */
  protected markClosed(): void {
    this.phase = "CLOSED";
    this.endUnreported = true;
    this.transport?.socket.destroy();
    this.optionDone?.(errno.ENOTCONN);
    this.failInflight();
    this.closedResolve?.();
    this.ring?.(0, 0);
    this.progress();
  }

  /** libnbd's abort_commands: ENOTCONN for each command that had no error of its own. */
  protected failInflight(fatal?: NbdError): void {
    this.unsent.length = 0;
    for (const cmd of this.inflight.values()) {
      cmd.error ||= errno.ENOTCONN;
      cmd.settle(cmd, fatal);
    }
    this.inflight.clear();
  }

  // ---- URIs and connect_socket ------------------------------------------------------

  /** Where connect_unix or connect_tcp aimed: libnbd keeps it for get_uri even when the connect failed. */
  protected endpoint: Endpoint | undefined;

  /**
   * nbd_connect_uri: the settings the URI implies, made through the setters
   * (and kept if a later step fails, as libnbd keeps them), then connect_tcp
   * or connect_unix. A URI that does not parse leaves the handle untouched.
   */
  connectUri(uri: string): Promise<void> { return this.connected(this.aioConnectUri(uri)); }
  aioConnectUri(uri: string): Promise<void> {
    const plan = parseUri(uri, { transports: this.uriAllowTransports, tls: this.uriAllowTls, localFile: this.uriAllowLocalFile });
    for (const s of plan.settings) (this[s.call] as (value: unknown) => void)(s.value);
    const to = plan.target;
    if (to instanceof NbdError) throw to;
    return to.kind === "tcp" ? this.aioConnectTcp(to.host, to.port) : this.aioConnectUnix(to.path);
  }

  /** nbd_get_uri: rebuilt from the endpoint and settings; a command or a caller's socket has no URI. */
  getUri(): string {
    const path = this.transport?.path; // socket activation's, known once it ran
    const endpoint = this.endpoint ?? (path !== undefined ? { kind: "unix", path } : undefined);
    if (!endpoint) throw new NbdError(errno.EINVAL, "cannot construct a URI for this connection type");
    return formatUri({
      endpoint,
      tls: this.tls === TLS_REQUIRE || this.tlsNegotiated,
      username: this.tlsUsername,
      exportName: this.exportName,
      tlsCertificates: this.tlsCertificates,
      tlsPskFile: this.tlsPskFile,
      tlsHostname: this.tlsHostname,
      tlsVerifyPeer: this.tlsVerifyPeer,
    });
  }

  connectSocket(sock: number): Promise<void> { return this.connected(this.aioConnectSocket(sock)); }
  aioConnectSocket(sock: number): Promise<void> {
    checkSocketFd(sock); // a bad fd leaves the handle created, as libnbd's fcntl() check does
    return this.start(async () => openSocket(sock, this.onread));
  }

  // ---- subprocess -----------------------------------------------------------

  getSubprocessPid(): bigint {
    const pid = this.transport?.child?.pid;
    if (pid === undefined) throw new NbdError(errno.ESRCH, "no subprocess exists");
    return BigInt(pid);
  }

  killSubprocess(signum: number): void {
    const child = this.transport?.child;
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
    const t = this.transport;
    return { ...(t?.child?.pid !== undefined && { pid: t.child.pid }), ...(t?.dir && { dir: t.dir }) };
  }

  // ---- what goes out, and what waiters hear ------------------------------------------

  /** Every byte for the server goes through here, so that stats count it. */
  protected send(bytes: Uint8Array, end = false): void {
    this.stats.bytesSent += bytes.byteLength;
    const socket = this.transport!.socket;
    if (end) socket.end(bytes);
    else socket.write(bytes);
  }

  /** Something happened that poll() reports: a command finished or the connection ended. */
  protected progress(): void {
    this.progressed = true;
    const wake = this.pollWaiter;
    this.pollWaiter = undefined;
    wake?.();
  }

  protected readonly replyHost = {
    structuredReplies: () => this.neg?.structuredReplies ?? false,
    extendedHeaders: () => this.neg?.extendedHeaders ?? false,
    exportSize: () => this.neg?.export.size ?? 0n,
    stats: this.stats,
    contextName: (id: number) => this.neg?.metaContexts.find((c) => c.id === id)?.name,
    awaiting: () => this.inflight.size > 0,
    find: (cookie: number) => this.inflight.get(cookie),
    retire: (cmd: Command) => {
      this.inflight.delete(cmd.cookie);
      cmd.settle(cmd);
    },
    fatal: (err: NbdError) => this.die(err),
  };
}

function checkArgv(argv: string[]): void {
  if (argv.length === 0) throw new NbdError(errno.EINVAL, "missing command name in argv list");
}
