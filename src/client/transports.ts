/**
 * Ways to reach a server: a Unix socket, TCP, a command on a socketpair
 * (connect_command), systemd socket activation, and a socket the caller
 * connected (connect_socket). Each yields a connected
 * net.Socket whose reads go to `onread` (one static buffer, no per-read
 * allocation), plus the subprocess and temp dir it started, if any.
 */
import { fstatSync, mkdtempSync, readFileSync, renameSync, rmSync, rmdirSync, unlinkSync } from "node:fs";
import { Socket, connect, createServer, type OnReadOpts, type Server, type SocketConstructorOpts } from "node:net";
import { randomBytes } from "node:crypto";
import { errno, errnoOf } from "../errno.js";
import { NbdError, asNbdError } from "./error.js";
import { Subprocess, explain } from "./subprocess.js";

export type OnRead = OnReadOpts;

export interface Transport {
  /** After NBD_OPT_STARTTLS, the TLS socket that wraps the connected one. */
  socket: Socket;
  child?: Subprocess;
  /** The temp dir holding the activation socket; removed on close. */
  dir?: string;
  /** Where the socket is, for get_uri. */
  path?: string;
  /** The host and port connected to by TCP, for get_uri and the TLS hostname. */
  host?: string;
  port?: string;
}

/** sizeof(sun_path) on Linux; libnbd refuses longer names rather than truncate them. */
export const SUN_PATH_MAX = 108;

/** How long a failed connect waits for a dying server's last words. */
export const STDERR_WAIT_MS = 1_000;

/** Where activation sockets live: /tmp, not $TMPDIR, to stay within sun_path (as libnbd). */
const SOCKET_DIR_PREFIX = "/tmp/nbd-ts-";
const socketIn = (dir: string) => `${dir}/sock`;

function connected(socket: Socket, what: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    socket.once("connect", () => {
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", (err) => reject(new NbdError(errnoOf(err), what)));
  });
}

export function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > SUN_PATH_MAX) throw new NbdError(errno.ENAMETOOLONG, `socket name too long: ${path}`);
}

export async function openUnix(path: string, onread: OnRead): Promise<Transport> {
  checkSocketPath(path);
  return { socket: await connected(connect({ path, onread }), "connect"), path };
}

/** getaddrinfo's service lookup: a port number, or a TCP service name from /etc/services. */
function servicePort(port: string): number | undefined {
  if (/^\d*$/.test(port)) return Number(port) % 65536; // glibc keeps the low 16 bits, as htons() does; "" is 0
  let services = "";
  try { services = readFileSync("/etc/services", "utf8"); } catch { return undefined; }
  for (const line of services.split("\n")) {
    const [name, spec, ...aliases] = line.replace(/#.*/, "").trim().split(/\s+/);
    const m = /^(\d+)\/tcp$/.exec(spec ?? "");
    if (m && (name === port || aliases.includes(port))) return Number(m[1]);
  }
  return undefined;
}

/** A failed name lookup reads as libnbd's (errno 0, gai_strerror's text). */
const gaiError = (host: string, port: string, text: string) =>
  new NbdError(0, `getaddrinfo: hostname "${host}" port "${port}": ${text}`);

export async function openTcp(host: string, port: string, onread: OnRead): Promise<Transport> {
  const number = servicePort(port);
  if (number === undefined) throw gaiError(host, port, "Servname not supported for ai_socktype");
  if (host === "") throw gaiError(host, port, "Name or service not known"); // Node would take "" for localhost
  const socket = connect({ host, port: number, onread, noDelay: true });
  let lookupFailed: NodeJS.ErrnoException | undefined;
  socket.once("lookup", (err: NodeJS.ErrnoException | null) => { if (err) lookupFailed = err; });
  try {
    return { socket: await connected(socket, `connect: ${host}:${port}: could not connect to remote host`), host, port };
  } catch (err) {
    socket.destroy();
    if (lookupFailed) {
      throw gaiError(host, port, lookupFailed.code === "EAI_AGAIN" ? "Temporary failure in name resolution" : "Name or service not known");
    }
    throw err;
  }
}

function listen(server: Server, path: string, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err) => reject(new NbdError(errnoOf(err), what)));
    server.listen(path, () => resolve());
  });
}

/** The caller's environment with the activation variables first and any inherited ones dropped. */
function activationEnv(env: NodeJS.ProcessEnv, fdName: string): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { LISTEN_FDS: "1", LISTEN_FDNAMES: fdName || "unknown" };
  for (const [k, v] of Object.entries(env)) if (!/^LISTEN_(PID|FDS|FDNAMES)$/.test(k)) out[k] = v;
  return out;
}

/**
 * connect_command: the server gets one end of a socketpair as stdin and
 * stdout. Node has no socketpair(), so a Linux abstract socket (no file, no
 * temp dir) is connected to itself and the accepted end is handed over.
 */
export async function openCommand(argv: readonly string[], env: NodeJS.ProcessEnv, onread: OnRead): Promise<Transport> {
  const name = `\0nbd-ts-${process.pid}-${randomBytes(8).toString("hex")}`;
  const server = createServer({ pauseOnConnect: true });
  await listen(server, name, "socketpair");
  const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
  try {
    const socket = await connected(connect({ path: name, onread }), "socketpair");
    const theirs = await accepted;
    const child = new Subprocess(argv[0]!, argv.slice(1), env, [theirs, theirs, "pipe"]);
    theirs.destroy();
    return { socket, child };
  } finally {
    server.close();
  }
}

/**
 * connect_systemd_socket_activation, as libnbd does it: a fresh temp dir with
 * a listening socket that becomes fd 3 of the server, LISTEN_PID set to the
 * server's own pid (by an exec'ing sh, since Node cannot run code between
 * fork and exec), LISTEN_FDS=1, LISTEN_FDNAMES, and a plain connect to it.
 */
export async function openSocketActivation(
  argv: readonly string[], env: NodeJS.ProcessEnv, fdName: string, onread: OnRead,
): Promise<Transport> {
  const dir = mkdtempSync(SOCKET_DIR_PREFIX);
  const path = socketIn(dir);
  const server = createServer();
  let child: Subprocess | undefined;
  try {
    // Listen under a temporary name: server.close() unlinks the bound path,
    // and the parent must close its copy before the server accepts anything.
    await listen(server, `${path}.bind`, `bind: ${path}`);
    const handle = (server as unknown as { _handle: { fd: number; setBlocking?(b: boolean): void } })._handle;
    handle.setBlocking?.(true); // libnbd hands over a blocking socket
    child = new Subprocess("/bin/sh", ["-c", 'LISTEN_PID=$$ exec "$@"', "sh", ...argv],
      activationEnv(env, fdName),
      ["inherit", "inherit", "pipe", handle.fd]);
    renameSync(`${path}.bind`, path);
    server.close();
    const socket = await connected(connect({ path, onread }), "connect");
    return { socket, child, dir, path };
  } catch (err) {
    server.close();
    const explained = await explain(asNbdError(err), child, STDERR_WAIT_MS);
    child?.kill("SIGTERM");
    await child?.reap(STDERR_WAIT_MS);
    removeSocketDir(dir);
    throw explained;
  }
}

/**
 * The activation dir holds just the socket: an unlink and a rmdir, as
 * libnbd's close (a fifth of rmSync's recursive walk); anything else found
 * there is removed all the same.
 */
export function removeSocketDir(dir: string): void {
  try {
    unlinkSync(socketIn(dir));
    rmdirSync(dir);
  } catch {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * connect_socket's first check, made before the state machine (a bad fd
 * leaves the handle created). libnbd's comes from fcntl(), hence its text.
 */
export function checkSocketFd(fd: number): void {
  const ebadf = new NbdError(errno.EBADF, "fcntl: set O_NONBLOCK");
  if (fd < 0) throw ebadf;
  try { fstatSync(fd); } catch (err) { throw new NbdError(errnoOf(err, errno.EBADF), "fcntl: set O_NONBLOCK"); }
}

/**
 * connect_socket: the caller's connected socket, owned by the handle from now
 * on (closed with it). Something other than a socket fails as libnbd's first
 * recv() on it would. Node wraps only stream sockets (Unix or TCP).
 */
export function openSocket(fd: number, onread: OnRead): Transport {
  if (!fstatSync(fd).isSocket()) throw new NbdError(errno.ENOTSOCK, "recv");
  try {
    // net.connect() hands `onread` to this constructor; the types only list it for connect().
    return { socket: new Socket({ fd, readable: true, writable: true, onread } as SocketConstructorOpts) };
  } catch (err) {
    throw new NbdError(errno.ENOTSUP, `recv: cannot use this socket: ${(err as Error).message}`);
  }
}
