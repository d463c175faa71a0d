/**
 * A server process that a handle started (connect_command, socket
 * activation). Its stderr is passed through to ours as libnbd's inherited
 * stderr would be, and its last lines are kept so that a failed connect can
 * say why the server died (an addition to libnbd).
 */
import { spawn, type ChildProcess, type StdioOptions } from "node:child_process";
import { NbdError } from "./error.js";
import { toStderr } from "./stderr.js";

const TAIL_BYTES = 2048;
const TAIL_LINES = 5;

export class Subprocess {
  readonly pid: number | undefined;
  readonly #child: ChildProcess;
  #tail = "";
  #exited = false;
  readonly #exit: Promise<void>;

  constructor(file: string, args: readonly string[], env: NodeJS.ProcessEnv, stdio: StdioOptions) {
    const child = (this.#child = spawn(file, args, { env, stdio }));
    this.pid = child.pid;
    child.stderr?.on("data", (chunk: Buffer) => {
      toStderr(chunk);
      this.#tail = (this.#tail + chunk.toString()).slice(-TAIL_BYTES);
    });
    this.#exit = new Promise((resolve) => {
      const done = () => { this.#exited = true; resolve(); };
      // "error" without a pid: the program could not be started at all.
      child.once("error", (err: NodeJS.ErrnoException) => {
        if (child.pid === undefined) this.#tail += `${file}: ${err.message}\n`;
        done();
      });
      // "close" waits for stderr to drain too, so the tail is complete.
      child.once("close", done);
    });
  }

  get exited(): boolean { return this.#exited; }

  /** Node has waited for it: its pid may belong to another process now. */
  get reaped(): boolean { return this.#child.exitCode !== null || this.#child.signalCode !== null; }

  /** The last lines the server wrote to stderr, joined with "; ". */
  stderrTail(): string {
    return this.#tail.split("\n").map((l) => l.trim()).filter(Boolean).slice(-TAIL_LINES).join("; ");
  }

  /** Node's kill refuses a child that has already been reaped, so no stray pid is hit. */
  kill(signal: NodeJS.Signals | number): boolean {
    return this.#child.kill(signal);
  }

  /** Resolves when the process has exited (and stderr is drained), or after `ms`. */
  wait(ms: number): Promise<boolean> {
    if (this.#exited) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      void this.#exit.then(() => { clearTimeout(timer); resolve(true); });
    });
  }

  /** Waits for exit, escalating to SIGKILL after `ms` so that close never hangs. */
  async reap(ms: number): Promise<void> {
    if (await this.wait(ms)) return;
    this.kill("SIGKILL");
    await this.wait(ms);
  }
}

/** Beyond libnbd: if the server died, a failed connect says what it last wrote to stderr. */
export async function explain(err: NbdError, child: Subprocess | undefined, waitMs: number): Promise<NbdError> {
  if (!child || !(await child.wait(waitMs))) return err;
  const tail = child.stderrTail();
  return tail ? new NbdError(err.errno, err.message, `server stderr: ${tail}`) : err;
}
