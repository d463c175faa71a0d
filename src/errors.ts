/**
 * The calling thread's last error, as libnbd keeps it in thread-local
 * storage. A module's state is per thread in JavaScript, so this is exactly
 * that. A successful call leaves it alone.
 */
let lastMessage: string | null = null;
let lastErrno = 0;

export function setError(message: string, errno: number): void {
  lastMessage = message;
  lastErrno = errno;
}

/** nbd_get_error(): the last error's message, or null if no call has failed yet. */
export function getError(): string | null {
  return lastMessage;
}

/** nbd_get_errno(): the last error's errno, or 0 if there is none. */
export function getErrno(): number {
  return lastErrno;
}
