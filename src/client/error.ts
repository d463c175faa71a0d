/**
 * The client's one error type: an errno and libnbd's message text without
 * the "nbd_<call>: " prefix, which the caller's name supplies (as libnbd's
 * per-call error context does).
 */
import { strerror } from "../errno.js";

export class NbdError extends Error {
  override name = "NbdError";
  /** `detail` is our addition to libnbd's text (a dying server's stderr); it goes last. */
  constructor(readonly errno: number, message: string, readonly detail?: string) {
    super(message);
  }

  /** libnbd's full text: "<context>: <message>[: <strerror(errno)>]", then any detail. */
  format(context: string): string {
    const err = this.errno ? `: ${strerror(this.errno)}` : "";
    return `${context}: ${this.message}${err}${this.detail ? `: ${this.detail}` : ""}`;
  }
}

/** Anything thrown becomes an NbdError; unexpected ones keep their text. */
export function asNbdError(err: unknown, errno = 0): NbdError {
  if (err instanceof NbdError) return err;
  return new NbdError(errno, err instanceof Error ? err.message : String(err));
}
