/** A request on the wire, from issue to retirement, keyed by its cookie. */
import { errno } from "../errno.js";
import { Cmd } from "../protocol/constants.js";
import type { NbdError } from "./error.js";

/** A user callback as the client calls it; the last argument is libnbd's `int *error`. */
export type Callback = (...args: never[]) => number;

export interface Command {
  readonly cookie: number;
  readonly type: Cmd;
  readonly flags: number;
  readonly offset: bigint;
  /** The request's length field (64 bits with extended headers). */
  readonly count: bigint;
  /** READ: where the data goes. WRITE: what is sent. */
  readonly buf: Uint8Array | undefined;
  /** block_status_filter's payload (sent only with extended headers and PAYLOAD_LEN). */
  readonly payload?: Uint8Array | undefined;
  /** The first errno the reply carried; 0 while all is well. */
  error: number;
  /** The server's own text for that error, if it sent one. */
  serverMessage?: string;
  /** Bytes of a read covered so far by data and holes. */
  seen: number;
  /**
   * With pread_initialize, the spans of a read's buffer that data and holes
   * covered ([start, end) pairs): the rest is zeroed when the read ends.
   */
  filled?: number[] | undefined;
  /** pread_structured's chunk callback, called per data, hole and error chunk. */
  chunk?: Callback | undefined;
  /** block_status's extent callback, and whether it takes 64-bit entries. */
  extent?: { fn: Callback; wide: boolean } | undefined;
  /** An aio command's completion callback. */
  completion?: Callback | undefined;
  /** The server had left before the command could go out: it fails when issued (Commands' #unsendable). */
  unsendable?: boolean;
  /** Set for aio commands: they wait in the done list once their reply is complete. */
  aio?: boolean;
  /**
   * Queued by the caller's thread: its completion goes through the bridge's
   * ring (Commands.ring), and its callback runs there, not here.
   */
  ring?: boolean;
  /** Done, but its completion callback has yet to return on the caller's thread (it may retire it). */
  undecided?: boolean;
  /** Set for blocking calls: their Promise's, settled once the reply is complete or the connection is gone. */
  resolve?: (() => void) | undefined;
  reject?: ((err: NbdError) => void) | undefined;
  /**
   * Called once, when the reply is complete or the connection is gone; `fatal`
   * is the error that killed the connection (a blocking call returns it).
   */
  settle(cmd: Command, fatal?: NbdError): void;
}

/** libnbd's name for each command in "<name>: command failed". */
export const commandName = ["read", "write", "disconnect", "flush", "trim", "cache", "write-zeroes", "block-status"];

/**
 * The errno a command retires with. A read whose chunks left part of its
 * range uncovered, with no error, is EPROTO: libnbd decides that at
 * retirement (aio_command_completed), so its completion callback sees 0.
 */
export function finalError(cmd: Command): number {
  return cmd.error || (cmd.type === Cmd.READ && cmd.seen !== Number(cmd.count) ? errno.EPROTO : 0);
}
