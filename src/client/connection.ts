/**
 * One NBD connection: libnbd's handle, built up in layers, each a file —
 * settings.ts (what the caller set), session.ts (transport, handshake,
 * states), negotiation.ts (opt mode and what the server said), commands.ts
 * (I/O and aio) — and here, waiting (poll) and ending (shutdown, close).
 * These are the implementations of the API table's calls (libnbd's
 * nbd_unlocked_* functions). Generic checks (state, argument types, flags)
 * happen before they run, in api/invoke.ts; what is left in them is what
 * libnbd checks inside each call.
 */
import { AIO_DIRECTION_READ, SHUTDOWN_ABANDON_PENDING } from "../constants.js";
import { errno } from "../errno.js";
import { Commands } from "./commands.js";
import { NbdError } from "./error.js";
import { removeSocketDir } from "./transports.js";

/** How long close() and shutdown() wait for a server before forcing the issue. */
const SERVER_EXIT_WAIT_MS = 5_000;
const COMMAND_EXIT_WAIT_MS = 60_000;

export class Connection extends Commands {
  // ---- waiting: poll ---------------------------------------------------------------

  /**
   * nbd_poll: 1 once something has happened since the last poll (a reply
   * finished, the connection ended), 0 if `timeout` ms pass first (-1 waits
   * as long as it takes). The worker reads the socket all along; poll only
   * waits for what it read to matter.
   */
  async poll(timeout: number): Promise<number> {
    const state = this.phase;
    const unreported = this.endUnreported;
    this.endUnreported = false;
    if ((state === "START" || state === "CLOSED" || state === "DEAD") && !unreported) {
      throw new NbdError(errno.EINVAL, `nothing to poll for in state ${state}`);
    }
    // The server left while the handle was idle: libnbd's poll reads that now (EOF: CLOSED; an error: DEAD).
    if (this.peerGone && state === "READY") {
      if (this.peerError) this.die(this.peerError);
      else this.markClosed();
    }
    if (!this.progressed && timeout !== 0) {
      await new Promise<void>((resolve) => {
        const timer = timeout > 0 ? setTimeout(resolve, timeout) : undefined;
        this.pollWaiter = () => { clearTimeout(timer); resolve(); };
      });
      this.pollWaiter = undefined;
    }
    const progressed = this.progressed;
    this.progressed = false;
    this.endUnreported = false; // reported now
    if (this.phase === "DEAD" && this.fatal) throw this.fatal;
    return progressed ? 1 : 0;
  }

  /** A call other than poll returned (api/invoke.ts): an end of the connection before it is no longer news. */
  endSeen(): void { this.endUnreported = false; }

  poll2(fd: number, timeout: number): Promise<number> {
    if (fd !== -1) throw new NbdError(errno.ENOTSUP, "only fd -1 is supported: the socket lives in nbd-ts's worker thread");
    return this.poll(timeout);
  }

  aioGetDirection(): number {
    return this.phase === "READY" || this.phase === "NEGOTIATING" || this.phase === "CONNECTING" ? AIO_DIRECTION_READ : 0;
  }

  aioGetFd(): number { throw notHere(); }
  aioNotifyRead(): void { throw notHere(); }
  aioNotifyWrite(): void { throw notHere(); }

  // ---- disconnecting --------------------------------------------------------

  async shutdown(flags: number): Promise<void> {
    if (this.peerGone) return this.die(new NbdError(errno.ENOTCONN, "send: server disconnected"));
    if (this.phase === "READY") {
      if (flags & SHUTDOWN_ABANDON_PENDING) this.abandonUnsent();
      if (!this.disconnectRequested) this.sendDisconnect();
      await this.#waitClosed();
    } else if (this.phase === "NEGOTIATING") {
      this.optAbort();
    }
  }

  aioDisconnect(_flags: number): void {
    if (this.disconnectRequested) throw new NbdError(errno.EINVAL, "cannot request more commands after NBD_CMD_DISC");
    if (this.peerGone) return this.die(new NbdError(errno.ENOTCONN, "send: server disconnected"));
    this.sendDisconnect();
  }

  #waitClosed(): Promise<void> {
    if (this.phase === "CLOSED" || this.phase === "DEAD") return Promise.resolve();
    this.closedPromise ??= new Promise<void>((resolve) => {
      this.closedResolve = resolve;
      setTimeout(() => { if (this.phase === "READY") this.markClosed(); }, SERVER_EXIT_WAIT_MS).unref();
    });
    return this.closedPromise;
  }

  /** nbd_close: fail what is in flight, stop the server we started, remove its socket dir. */
  async close(): Promise<void> {
    this.log("nbd_close", "closing handle");
    const t = this.transport;
    // Socket activation: libnbd sends SIGTERM before anything else, so the server's exit overlaps the rest.
    if (t?.dir) t.child?.kill("SIGTERM");
    if (this.phase !== "DEAD" && this.phase !== "CLOSED") this.markClosed();
    this.reader.fail(new NbdError(errno.ENOTCONN, "handle closed"));
    if (!t) return;
    t.socket.destroy();
    if (t.dir) removeSocketDir(t.dir);
    // connect_command: libnbd just waits for the child, which sees EOF.
    await t.child?.reap(t.dir ? SERVER_EXIT_WAIT_MS : COMMAND_EXIT_WAIT_MS);
  }
}

/** The calls of libnbd for external event loops: the socket is the worker's, not the caller's. */
function notHere(): NbdError {
  return new NbdError(errno.ENOTSUP, "not supported: the socket lives in nbd-ts's worker thread; use nbd_poll");
}
