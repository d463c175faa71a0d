/**
 * Shared memory kept for reuse: the one pool for both threads' shared
 * buffers. Neither thread collects garbage for the sake of a
 * SharedArrayBuffer's memory, so a process that made many short-lived
 * handles, or many aio commands on plain buffers, grew by every buffer it
 * ever used (test/memory.test.ts, bench/soak.ts); and allocating one costs
 * more than the copy it serves. Buffers come back here once nothing uses
 * them any more: a handle's when it closes or grows, an aio command's
 * staging buffer when the command is done.
 */
import { zero } from "./client/bytes.js";

const pool = new Map<number, SharedArrayBuffer[]>();
let pooled = 0;
/** At most this much memory waits here for reuse. */
const POOL_BYTES = 64 * 1024 * 1024;
/** The smallest staging buffer; they come in powers of two from here. */
const STAGING_MIN = 4096;

/** A shared buffer of `size` bytes: all zero, unless the caller overwrites it all anyway (`clean` false). */
export function takeShared(size: number, clean = true): SharedArrayBuffer {
  const sab = pool.get(size)?.pop();
  if (!sab) return new SharedArrayBuffer(size);
  pooled -= size;
  if (clean) zero(new Uint8Array(sab)); // nothing of an earlier use shows through
  return sab;
}

/** `sab` is free: no thread reads or writes it any more. */
export function giveShared(sab: SharedArrayBuffer): void {
  if (!sab.byteLength || pooled + sab.byteLength > POOL_BYTES) return;
  pooled += sab.byteLength;
  const list = pool.get(sab.byteLength);
  if (list) list.push(sab);
  else pool.set(sab.byteLength, [sab]);
}

/**
 * A view of `n` bytes at the start of a staging buffer, for an aio buffer
 * that is not shared memory itself: the worker reads into it (or sends from
 * it) and the caller's thread copies it out when the command is done (or in,
 * when it is issued). Sizes are powers of two, so buffers are reused across
 * request sizes, and a reused one is already known to the worker by number
 * (bufferId in bridge.ts). Not zeroed: a write overwrites its view, and a
 * read's gaps are zeroed by the worker when it ends (pread_initialize, zeroGaps).
 */
export function takeStaging(n: number): Uint8Array<SharedArrayBuffer> {
  let size = STAGING_MIN;
  while (size < n) size *= 2;
  return new Uint8Array(takeShared(size, false), 0, n);
}

/** A staging buffer's command is done: its callbacks have seen it, and its data has been copied out. */
export function giveStaging(view: Uint8Array<SharedArrayBuffer>): void {
  giveShared(view.buffer);
}
