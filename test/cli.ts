/**
 * Running the built command-line tools (dist/src/cli/main.js) and libnbd's
 * own (nbdinfo, nbdcopy) as child processes, and a persistent qemu-nbd on a
 * Unix socket for them to share. Everything started here stops at exit.
 */
import { spawn, spawnSync, type SpawnSyncOptions } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { alive, scratchPath, waitFor, type Server } from "./helpers.js";

export const MAIN = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));

export interface Ran { status: number | null; stdout: string; stderr: string }

/** `nbd-ts ARGS…` to completion (30 s at most). */
export function tool(args: string[], options: SpawnSyncOptions = {}): Ran {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8", timeout: 30_000, ...options });
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** A libnbd tool (nbdinfo, nbdcopy) to completion. */
export function libnbd(cmd: string, args: string[]): Ran {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const servers: Server[] = [];
process.once("exit", () => servers.forEach((s) => s.stop()));

/** `qemu-nbd -t -k SOCKET ARGS…`: a persistent server for several clients in turn. */
export function qemuNbdUnix(...args: string[]): Server & { socket: string } {
  const socket = scratchPath(`qemu-nbd-${servers.length}.sock`);
  const child = spawn("qemu-nbd", ["-t", "-k", socket, ...args], { stdio: ["ignore", "inherit", "inherit"] });
  child.unref();
  waitFor(() => existsSync(socket), 10_000, `qemu-nbd ${args.join(" ")}`);
  const pid = child.pid!;
  const stop = () => {
    if (!alive(pid)) return;
    process.kill(pid, "SIGTERM");
    waitFor(() => !alive(pid), 5_000, `qemu-nbd ${pid} to exit`);
  };
  const server = { pid, stop, socket };
  servers.push(server);
  return server;
}

/** The nbd+unix URI of a socket, for an export name. */
export const unixUri = (socket: string, name = ""): string => `nbd+unix:///${name}?socket=${socket}`;
