/**
 * What a handle is told before (and between) connections: libnbd's settings
 * with their defaults, each a set_/get_ pair of the API table. No I/O here.
 */
import { userInfo } from "node:os";
import {
  ALLOW_TRANSPORT_MASK, HANDSHAKE_FLAG_MASK, STRICT_MASK, TLS_ALLOW, TLS_DISABLE,
} from "../constants.js";
import { errno } from "../errno.js";
import { MAX_STRING } from "../protocol/constants.js";
import { VERSION } from "../version.js";
import type { Callback } from "./command.js";
import { NbdError } from "./error.js";
import { toStderr } from "./stderr.js";
import { isUri } from "./uri.js";

const MAX_SOCKET_ACTIVATION_NAME = 32;

export class Settings {
  // ---- settings (libnbd's defaults) ---------------------------------------------
  handleName: string;
  exportName = "";
  fullInfo = false;
  requestStructuredReplies = true;
  requestExtendedHeaders = true;
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

  constructor(readonly id: number) {
    this.handleName = `nbd${id}`;
  }

  /** The export name or the meta context requests changed (a connection may hold stale answers). */
  protected exportChanged(): void {}

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
      toStderr(`libnbd: debug: ${this.handleName}: ${context}: ${msg}\n`);
    }
  }

  // ---- simple settings ------------------------------------------------------

  setHandleName(name: string): void { this.handleName = name; }
  getHandleName(): string { return this.handleName; }
  getVersion(): string { return VERSION; }
  getPackageName(): string { return "nbd-ts"; }

  setExportName(name: string): void {
    if (Buffer.byteLength(name) > MAX_STRING) throw new NbdError(errno.ENAMETOOLONG, "export name too long for NBD protocol");
    if (name === this.exportName) return;
    this.exportName = name;
    this.exportChanged(); // what opt_info learned was about the old name
  }
  getExportName(): string { return this.exportName; }
  setFullInfo(request: boolean): void { this.fullInfo = request; }
  getFullInfo(): boolean { return this.fullInfo; }
  setRequestStructuredReplies(request: boolean): void { this.requestStructuredReplies = request; }
  getRequestStructuredReplies(): boolean { return this.requestStructuredReplies; }
  /** Ignored while structured replies are not requested: extended headers imply them (libnbd 1.18). */
  setRequestExtendedHeaders(request: boolean): void { this.requestExtendedHeaders = request; }
  getRequestExtendedHeaders(): boolean { return this.requestExtendedHeaders; }
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
  setTlsCertificates(dir: string): void { this.tlsCertificates = dir; }
  setTlsVerifyPeer(verify: boolean): void { this.tlsVerifyPeer = verify; }
  getTlsVerifyPeer(): boolean { return this.tlsVerifyPeer; }
  setTlsUsername(name: string): void { this.tlsUsername = name; }
  /** Unset, it is the login name, as libnbd's getlogin_r() gives. */
  getTlsUsername(): string { return this.tlsUsername ?? process.env.LOGNAME ?? userInfo().username; }
  setTlsPskFile(file: string): void { this.tlsPskFile = file; }
  setTlsHostname(name: string): void { this.tlsHostname = name; }

  // ---- URIs ---------------------------------------------------------------------

  uriAllowTransports = ALLOW_TRANSPORT_MASK;
  uriAllowTls = TLS_ALLOW;
  uriAllowLocalFile = false;

  setUriAllowTransports(mask: number): void { this.uriAllowTransports = mask; }
  setUriAllowTls(tls: number): void { this.uriAllowTls = tls; }
  setUriAllowLocalFile(allow: boolean): void { this.uriAllowLocalFile = allow; }
  supportsUri(): boolean { return true; }
  isUri(uri: string): boolean { return isUri(uri); }

  // ---- opt mode ---------------------------------------------------------------------

  setOptMode(enable: boolean): void { this.optMode = enable; }
  getOptMode(): boolean { return this.optMode; }

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
}
