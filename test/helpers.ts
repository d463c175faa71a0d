/**
 * Test fixtures: real servers on Unix sockets and TCP ports, scratch files,
 * and small synchronous waits (the API under test is blocking, so the tests
 * are too). Everything started here is stopped by `cleanup()` or at exit.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const sleep = (ms: number): void => {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
};

/** Polls `ready` until it holds or `ms` passes. */
export function waitFor(ready: () => boolean, ms = 10_000, what = "condition"): void {
  const deadline = Date.now() + ms;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    sleep(20);
  }
}

/** Runs `f` and says how long it took. */
export function timed<T>(f: () => T): { value: T; ms: number } {
  const start = Date.now();
  const value = f();
  return { value, ms: Date.now() - start };
}

/** A live (not zombie) process? */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

const scratch = mkdtempSync(join(tmpdir(), "nbdts-test-"));
const stops: (() => void)[] = [];

/** A path in this test file's scratch dir (removed at exit). */
export const scratchPath = (name: string): string => join(scratch, name);

/** A file of `size` bytes, made with `content` or sparse zeroes. */
export function scratchFile(name: string, size: number, content?: Uint8Array): string {
  const path = scratchPath(name);
  writeFileSync(path, content ?? new Uint8Array(0));
  if (!content) spawnSync("truncate", ["-s", String(size), path]);
  return path;
}

/** Runs a command to completion; throws with its stderr if it fails. */
export function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr || r.error}`);
  return r.stdout;
}

export interface Server { pid: number; stop(): void }

/** Starts `cmd args` in the background, waits until `ready()`, and has `cleanup()` stop it. */
function daemon(cmd: string, args: string[], ready: () => boolean): Server {
  const child = spawn(cmd, args, { stdio: ["ignore", "inherit", "inherit"] });
  child.unref(); // a test file ends when its tests do; the exit hook stops the server
  waitFor(ready, 10_000, `${cmd} ${args.join(" ")}`);
  const pid = child.pid!;
  const stop = () => {
    if (!alive(pid)) return;
    process.kill(pid, "SIGTERM");
    waitFor(() => !alive(pid), 5_000, `${cmd} ${pid} to exit`);
  };
  stops.push(stop);
  return { pid, stop };
}

const written = (file: string) => () => existsSync(file) && readFileSync(file, "utf8").trim() !== "";

/** Starts `nbdkit -f -P PIDFILE ...args` and waits until it is serving. */
function nbdkit(args: string[]): Server {
  const pidfile = scratchPath(`nbdkit-${stops.length}.pid`);
  return daemon("nbdkit", ["-f", "-P", pidfile, ...args], written(pidfile));
}

/** `qemu-nbd -t` (it outlives its clients) on a Unix socket in the scratch dir. */
export function qemuNbdUnix(...args: string[]): Server & { socket: string } {
  const socket = scratchPath(`qemu-nbd-${stops.length}.sock`);
  const pidfile = scratchPath(`qemu-nbd-${stops.length}.pid`);
  return { ...daemon("qemu-nbd", ["-t", "-k", socket, "--pid-file", pidfile, ...args], written(pidfile)), socket };
}

/**
 * A Unix socket in the scratch dir on which each connection runs `argv` with
 * the connection as its stdin and stdout, as connect_command would: it puts a
 * one-connection server such as the fake server where a socket path is wanted.
 */
export function serveUnix(argv: string[]): Server & { socket: string } {
  const socket = scratchPath(`serve-${stops.length}.sock`);
  const script = `
    const [socket, cmd, ...args] = process.argv.slice(1);
    require("node:net").createServer((conn) => {
      require("node:child_process").spawn(cmd, args, { stdio: [conn, conn, "inherit"] });
      conn.destroy(); // the child holds its own copy
    }).listen(socket, () => require("node:fs").writeFileSync(socket + ".ready", "1"));`;
  return { ...daemon(process.execPath, ["-e", script, socket, ...argv], written(`${socket}.ready`)), socket };
}

/** nbdkit on a Unix socket in the scratch dir. */
export function nbdkitUnix(...args: string[]): Server & { socket: string } {
  const socket = scratchPath(`nbdkit-${stops.length}.sock`);
  return { ...nbdkit(["-U", socket, ...args]), socket };
}

/** A TCP port that was free a moment ago. */
export function freePort(): number {
  const r = spawnSync(process.execPath, ["-e",
    "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"],
  { encoding: "utf8" });
  return Number(r.stdout.trim());
}

/** nbdkit on a loopback TCP port. */
export function nbdkitTcp(...args: string[]): Server & { port: number } {
  const port = freePort();
  return { ...nbdkit(["-i", "127.0.0.1", "-p", String(port), ...args]), port };
}

/** Whether a socket listens on 127.0.0.1:port (read from /proc/net/tcp: probing it would be a client). */
function listening(port: number): boolean {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return readFileSync("/proc/net/tcp", "utf8").split("\n").some((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[1] === local && fields[3] === "0A";
  });
}

/** `qemu-nbd -t` (persistent, up to 8 clients at once) on a loopback TCP port, with `args` (options, then the image). */
export function qemuNbdTcp(...args: string[]): Server & { port: number } {
  const port = freePort();
  const child = spawn("qemu-nbd", ["-t", "-e", "8", "-b", "127.0.0.1", "-p", String(port), ...args], { stdio: ["ignore", "inherit", "inherit"] });
  child.unref();
  const pid = child.pid!;
  waitFor(() => listening(port) || !alive(pid), 10_000, `qemu-nbd ${args.join(" ")}`);
  if (!alive(pid)) throw new Error(`qemu-nbd ${args.join(" ")} exited`);
  const stop = () => {
    if (!alive(pid)) return;
    process.kill(pid, "SIGTERM");
    waitFor(() => !alive(pid), 5_000, `qemu-nbd ${pid} to exit`);
  };
  stops.push(stop);
  return { pid, stop, port };
}

/** Stops every server this file started and removes the scratch dir. */
export function cleanup(): void {
  for (const stop of stops.splice(0)) stop();
  rmSync(scratch, { recursive: true, force: true });
}
process.once("exit", cleanup);

/** The bytes nbdkit's pattern plugin serves at `offset`: each 8-byte word is its own offset. */
export function pattern(offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  const word = new DataView(new ArrayBuffer(8));
  for (let i = 0; i < length; i++) {
    const at = offset + i;
    word.setBigUint64(0, BigInt(at - (at % 8)));
    out[i] = word.getUint8(at % 8);
  }
  return out;
}
