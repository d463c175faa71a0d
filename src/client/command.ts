/** A request on the wire, from issue to retirement, keyed by its cookie. */
import type { Cmd } from "../protocol/constants.js";

export interface Command {
  readonly cookie: number;
  readonly type: Cmd;
  readonly flags: number;
  readonly offset: bigint;
  readonly count: number;
  /** READ: where the data goes. WRITE: what is sent. */
  readonly buf: Uint8Array | undefined;
  /** The first errno the reply carried; 0 while all is well. */
  error: number;
  /** The server's own text for that error, if it sent one. */
  serverMessage?: string;
  /** Bytes of a read covered so far by data and holes. */
  seen: number;
  /** Called once, when the reply is complete or the connection is gone. */
  settle(cmd: Command): void;
}

/** libnbd's name for each command in "<name>: command failed". */
export const commandName = ["read", "write", "disconnect", "flush", "trim", "cache", "write-zeroes", "block-status"];
