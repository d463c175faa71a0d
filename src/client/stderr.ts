/**
 * The worker's writes to fd 2 (debug lines, a server's stderr). They go
 * straight to the fd, since the worker's process.stderr goes through the
 * main thread's event loop, which a blocking call holds. Node makes a stdio
 * pipe non-blocking, so a reader that falls behind means EAGAIN, which used to throw and kill the
 * worker. Now a write waits for the reader, as libnbd's fprintf would, but
 * for BLOCK_MS at most (a worker silent for seconds counts as dead); after
 * that the rest is queued and retried in the background, in order.
 */
import { writeSync } from "node:fs";

const BLOCK_MS = 2000;
const queue: Uint8Array[] = [];
let retry: ReturnType<typeof setTimeout> | undefined;
const pause = new Int32Array(new SharedArrayBuffer(4));

export function toStderr(data: string | Uint8Array): void {
  queue.push(typeof data === "string" ? Buffer.from(data) : data);
  if (!retry) flush(Date.now() + BLOCK_MS);
}

function flush(deadline = 0): void {
  retry = undefined;
  while (queue.length) {
    const head = queue[0]!;
    let n: number;
    try {
      n = writeSync(2, head);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") {
        queue.length = 0; // stderr is gone (EPIPE, EBADF): dropped, as stdio drops it
        return;
      }
      if (Date.now() < deadline) {
        Atomics.wait(pause, 0, 0, 1);
        continue;
      }
      retry = setTimeout(flush, 10);
      return;
    }
    if (n < head.byteLength) queue[0] = head.subarray(n);
    else queue.shift();
  }
}
