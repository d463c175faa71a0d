/**
 * TLS after NBD_OPT_STARTTLS, as libnbd's lib/crypto.c sets it up: a PSK
 * from a psktool file, or X.509 credentials from a certificates directory
 * (ca-cert.pem, and client-cert.pem with client-key.pem), then the connected
 * socket upgraded in place with node:tls. What goes through it afterwards is
 * the same plaintext protocol as before.
 */
import { accessSync, constants, readFileSync } from "node:fs";
import { isIP, type Socket } from "node:net";
import {
  checkServerIdentity, connect, createSecureContext, type ConnectionOptions, type TLSSocket,
} from "node:tls";
import { errno, errnoOf } from "../errno.js";
import { NbdError } from "./error.js";

/** The handle's TLS settings, as the upgrade reads them. */
export interface TlsConfig {
  certificates: string | undefined;
  pskFile: string | undefined;
  /** The PSK identity: set_tls_username, else the login name. */
  username: string;
  verifyPeer: boolean;
  /** set_tls_hostname, else the TCP host; none for a Unix socket, a command or a caller's socket. */
  hostname: string | undefined;
}

/**
 * libnbd's GnuTLS priority for PSK adds "+ECDHE-PSK:+DHE-PSK:+PSK": these are
 * OpenSSL's TLS 1.2 names for the same key exchanges. TLS 1.3 comes first:
 * OpenSSL's PSK callback only fits its SHA-256 suites, and without ChaCha20
 * on offer GnuTLS servers pick AES-128-GCM, three times as fast here (AES-NI).
 */
const PSK_CIPHERS = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:kECDHEPSK:kDHEPSK:kPSK:!eNULL";

/**
 * Where libnbd looks when set_tls_certificates was not called: for root
 * /etc/pki/libnbd, for others ~/.pki/libnbd then ~/.config/pki/libnbd. The
 * directories are libnbd's own, so a setup made for libnbd works here.
 */
function defaultDirs(): string[] {
  const home = process.env.HOME;
  if (process.geteuid?.() !== 0 && home !== undefined) return [`${home}/.pki/libnbd`, `${home}/.config/pki/libnbd`];
  return ["/etc/pki/libnbd"];
}

const readable = (path: string): boolean => {
  try {
    accessSync(path, constants.R_OK);
    return true;
  } catch {
    return false;
  }
};

/** A PEM file: a failure to read names the file, as GnuTLS's loaders do. */
function pem(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new NbdError(errnoOf(e), `open: ${path}`);
  }
}

/** Node's check of what `options` hold, with the files it came from named. */
function check(options: ConnectionOptions, files: string): void {
  try {
    createSecureContext(options);
  } catch (e) {
    throw new NbdError(0, `${files}: ${(e as Error).message}`);
  }
}

/**
 * A certificates directory, if it has ca-cert.pem (libnbd's test of one):
 * the CA; the client's certificate if both client-cert.pem and
 * client-key.pem can be read (else none is sent, as libnbd sends none); and
 * ca-crl.pem if it is there.
 */
function loadDir(dir: string): ConnectionOptions | undefined {
  const caFile = `${dir}/ca-cert.pem`;
  if (!readable(caFile)) return undefined;
  const options: ConnectionOptions = { ca: pem(caFile) };
  check(options, caFile);
  const certFile = `${dir}/client-cert.pem`;
  const keyFile = `${dir}/client-key.pem`;
  if (readable(certFile) && readable(keyFile)) {
    const pair = { cert: pem(certFile), key: pem(keyFile) };
    check(pair, `${certFile}, ${keyFile}`);
    Object.assign(options, pair);
  }
  const crlFile = `${dir}/ca-crl.pem`;
  if (readable(crlFile)) {
    options.crl = pem(crlFile);
    check(options, crlFile);
  }
  return options;
}

/** Where distributions keep the system's trusted CAs (GnuTLS's system trust). */
const SYSTEM_CA_FILES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/** libnbd's fallback, the system's CAs; node's own bundle where there is no system file. */
function systemCas(): ConnectionOptions {
  const file = SYSTEM_CA_FILES.find(readable);
  return file !== undefined ? { ca: pem(file) } : {};
}

/**
 * X.509: the first certificates directory that exists, else the system's
 * CAs. The server is verified (chain and name) when verify_peer is on and a
 * hostname is known, as libnbd verifies it; with no hostname (a Unix socket
 * without set_tls_hostname) libnbd checks nothing, and neither does this.
 * (Against the system's CAs libnbd checks nothing either; this does.)
 */
function x509(config: TlsConfig): ConnectionOptions {
  let options: ConnectionOptions | undefined;
  for (const dir of config.certificates !== undefined ? [config.certificates] : defaultDirs()) {
    options = loadDir(dir);
    if (options) break;
  }
  options ??= systemCas();
  const host = config.hostname;
  if (config.verifyPeer && host !== undefined) {
    options.checkServerIdentity = (_name, cert) => checkServerIdentity(host, cert);
  } else {
    options.rejectUnauthorized = false;
  }
  return options;
}

/** libnbd's lookup_key: the first "username:hexkey" line for the username. */
function psk(file: string, username: string): ConnectionOptions {
  let text: string;
  try {
    text = readFileSync(file, "latin1");
  } catch (e) {
    throw new NbdError(errnoOf(e), `open: ${file}`);
  }
  const line = text.split("\n").map((l) => l.replace(/\r$/, ""))
    .find((l) => l.length > username.length + 1 && l.startsWith(`${username}:`));
  if (line === undefined) throw new NbdError(errno.EINVAL, `${file}: username ${username} was not found in PSK file`);
  const hex = line.slice(username.length + 1);
  if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new NbdError(0, `${file}: the key of username ${username} is not hexadecimal`);
  const key = Buffer.from(hex, "hex");
  return {
    ciphers: PSK_CIPHERS,
    pskCallback: () => ({ identity: username, psk: key }),
    // No certificate comes with PSK: node's check of one would fail.
    checkServerIdentity: () => undefined,
  };
}

/** The credentials, loaded when the server has agreed to TLS (libnbd's crypto_create_session). */
export function credentials(config: TlsConfig): ConnectionOptions {
  const options = config.pskFile !== undefined ? psk(config.pskFile, config.username) : x509(config);
  const sni = config.hostname;
  // SNI as libnbd sends it, but node sends no IP address there (RFC 6066).
  if (sni !== undefined && !isIP(sni)) options.servername = sni;
  return options;
}

/**
 * Starts TLS on `socket` (which now belongs to the TLS socket). Plaintext
 * from the server goes to `onData`. `ready` settles when the handshake
 * does; a failure is libnbd's handshake failure (errno 0) with node's reason.
 */
export function upgrade(socket: Socket, options: ConnectionOptions, onData: (chunk: Buffer) => void):
  { socket: TLSSocket; ready: Promise<void> } {
  const tls = connect({ ...options, socket });
  tls.on("data", onData);
  const ready = new Promise<void>((resolve, reject) => {
    const fail = (e: Error) => reject(new NbdError(0, `TLS handshake: ${e.message}`));
    const closed = () => fail(new Error("server disconnected"));
    tls.once("error", fail);
    tls.once("close", closed);
    tls.once("secureConnect", () => {
      tls.off("error", fail);
      tls.off("close", closed);
      resolve();
    });
  });
  return { socket: tls, ready };
}
