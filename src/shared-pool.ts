/**
 * Shared memory kept for reuse. Neither thread collects garbage for the sake
 * of a SharedArrayBuffer's memory, so a process that made many short-lived
 * handles, or many aio commands on plain buffers, grew by every buffer it
 * ever used (test/memory.test.ts, bench/soak.ts). Buffers come back here
 * once nothing uses them any more: a handle's when it closes or grows, an
 * aio write's staging copy when the command is done. (An aio read's staging
 * buffer is a fresh one: zeroing a reused one costs a pass over the data,
 * 15% of aio read throughput, which fresh memory from the kernel does not.)
 */
const pool = new Map<number, SharedArrayBuffer[]>();
let pooled = 0;
/** At most this much memory waits here for reuse. */
const POOL_BYTES = 32 * 1024 * 1024;

/** A shared buffer of `size` bytes: all zero, unless the caller overwrites it all anyway (`zero` false). */
export function takeShared(size: number, zero = true): SharedArrayBuffer {
  const sab = pool.get(size)?.pop();
  if (!sab) return new SharedArrayBuffer(size);
  pooled -= size;
  if (zero) new Uint8Array(sab).fill(0); // nothing of an earlier use shows through
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
