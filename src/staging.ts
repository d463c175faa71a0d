/**
 * Shared memory for aio buffers that are not shared memory themselves: the
 * worker reads into (or sends from) a staging buffer, and the caller's
 * thread copies it out when the command is done (or in, when it is
 * issued). Staging buffers are pooled by size (powers of two): allocating
 * a SharedArrayBuffer costs more than the copy, and a pooled one is already
 * known to the worker by number (see shareBuffer in bridge.ts).
 */
const MIN = 4096;
/** The pool keeps at most this much memory free. */
const KEEP_BYTES = 64 * 1024 * 1024;

const free = new Map<number, SharedArrayBuffer[]>();
let freeBytes = 0;

/** A view of `n` bytes of a staging buffer, at its start. */
export function takeStaging(n: number): Uint8Array<SharedArrayBuffer> {
  let size = MIN;
  while (size < n) size *= 2;
  const sab = free.get(size)?.pop();
  if (sab) freeBytes -= size;
  return new Uint8Array(sab ?? new SharedArrayBuffer(size), 0, n);
}

/** Returns a staging buffer to the pool once nothing reads or writes it any more. */
export function giveStaging(view: Uint8Array<SharedArrayBuffer>): void {
  const sab = view.buffer;
  if (freeBytes + sab.byteLength > KEEP_BYTES) return;
  freeBytes += sab.byteLength;
  let list = free.get(sab.byteLength);
  if (!list) free.set(sab.byteLength, (list = []));
  list.push(sab);
}
