/**
 * The copy loop of nbd-ts copy. The source is walked in windows of
 * WINDOW bytes; each window's extents (block status) split it into runs of
 * zeroes and of data. Zero runs become one zero request each, or nothing
 * when the destination already reads as zeroes; data is read and written in
 * requests of `requestSize`, with up to `requests` of them (and `queueSize`
 * bytes of buffers) in flight, spread over the connections, completing in
 * any order. Data that turns
 * out to be zero blocks of `sparseSize` is not written either (-S).
 */
import type { End, Extent } from "./copy-ends.js";
import type { Progress } from "./progress.js";

/** How much of the source one block-status request covers (nbdcopy's THREAD_WORK_SIZE). */
export const WINDOW = 128 * 1024 * 1024;

export interface Settings {
  requestSize: number;
  requests: number;
  queueSize: number;
  sparseSize: number;
  allocated: boolean;
  extents: boolean;
  connections: number;
  progress?: Progress;
}

/** Requests in flight, bounded in number and in buffer bytes; the first failure stops new ones. */
class InFlight {
  private running = new Set<Promise<void>>();
  private bytes = 0;
  private error: unknown;
  private failed = false;

  constructor(private readonly max: number, private readonly maxBytes: number) {}

  async add(bytes: number, job: () => Promise<void>): Promise<void> {
    while (this.running.size > 0 && (this.running.size >= this.max || this.bytes + bytes > this.maxBytes)) {
      await Promise.race(this.running);
    }
    if (this.failed) throw this.error;
    this.bytes += bytes;
    const p: Promise<void> = job()
      .catch((err) => {
        if (!this.failed) [this.failed, this.error] = [true, err];
      })
      .finally(() => {
        this.running.delete(p);
        this.bytes -= bytes;
      });
    this.running.add(p);
  }

  async drain(): Promise<void> {
    while (this.running.size) await Promise.race(this.running);
    if (this.failed) throw this.error;
  }
}

/** Buffers of one size, reused. */
class Pool {
  private free: Uint8Array[] = [];
  constructor(private readonly size: number) {}
  get(): Uint8Array {
    return this.free.pop() ?? new Uint8Array(this.size);
  }
  put(b: Uint8Array): void {
    this.free.push(b);
  }
}

/** Whether [offset, offset+length) lies in zero extents only; `at` is a cursor into `exts`, kept between calls. */
function onlyZeroes(exts: Extent[], at: { i: number }, offset: number, length: number): boolean {
  while (at.i + 1 < exts.length && exts[at.i + 1]!.offset <= offset) at.i++;
  for (let j = at.i; j < exts.length && exts[j]!.offset < offset + length; j++) if (!exts[j]!.zero) return false;
  return true;
}

/** Whether a block is all zeroes (compared 8 bytes at a time where it is aligned). */
function isZero(b: Uint8Array): boolean {
  if (b.byteOffset % 8 === 0 && b.length % 8 === 0) {
    const words = new BigUint64Array(b.buffer, b.byteOffset, b.length / 8);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

export async function copy(src: End, dst: End, s: Settings): Promise<void> {
  const size = src.size;
  // In total, not per connection as in nbdcopy: one thread drives them all, and more in flight measured slower.
  const inFlight = new InFlight(dst.sequential ? 1 : s.requests, dst.sequential ? Infinity : s.queueSize);
  const pool = new Pool(s.requestSize);
  let conn = 0;
  let done = 0;
  const advance = (n: number) => {
    done += n;
    s.progress?.(done, size);
  };
  const skipZeroes = dst.zeroed && !s.allocated;

  const zeroRange = async (offset: number, length: number) => {
    if (skipZeroes) return advance(length);
    const c = conn++;
    await inFlight.add(0, async () => {
      await dst.zero(offset, length, s.allocated, c);
      advance(length);
    });
  };

  /** Writes what was read, leaving out blocks of zeroes when the destination can do without them. */
  const writeData = async (buf: Uint8Array, offset: number, c: number) => {
    if (s.sparseSize === 0 || s.allocated || dst.sequential) return dst.write(buf, offset, c);
    const jobs: Promise<void>[] = [];
    let runStart = 0;
    let runZero = false;
    const flush = (end: number) => {
      if (end === runStart) return;
      const piece = buf.subarray(runStart, end);
      if (!runZero) jobs.push(dst.write(piece, offset + runStart, c));
      else if (!dst.zeroed) jobs.push(dst.zero(offset + runStart, piece.length, false, c));
    };
    for (let at = 0; at < buf.length; at += s.sparseSize) {
      const zero = isZero(buf.subarray(at, Math.min(at + s.sparseSize, buf.length)));
      if (at === 0) runZero = zero;
      else if (zero !== runZero) {
        flush(at);
        runStart = at;
        runZero = zero;
      }
    }
    flush(buf.length);
    await Promise.all(jobs);
  };

  for (let window = 0; window < size; window += WINDOW) {
    const count = Math.min(WINDOW, size - window);
    const exts = (s.extents && (await src.extents(window, count, conn))) || [{ offset: window, length: count, zero: false }];
    const cursor = { i: 0 };
    let zeroStart = -1;
    for (let offset = window; offset < window + count; offset += s.requestSize) {
      const length = Math.min(s.requestSize, window + count - offset);
      if (onlyZeroes(exts, cursor, offset, length)) {
        if (zeroStart < 0) zeroStart = offset; // merged into one request with the zeroes after it
        continue;
      }
      if (zeroStart >= 0) {
        await zeroRange(zeroStart, offset - zeroStart);
        zeroStart = -1;
      }
      const c = conn++;
      await inFlight.add(length, async () => {
        const buf = pool.get();
        const view = buf.subarray(0, length);
        await src.read(view, offset, c);
        await writeData(view, offset, c);
        pool.put(buf);
        advance(length);
      });
    }
    if (zeroStart >= 0) await zeroRange(zeroStart, window + count - zeroStart);
  }
  await inFlight.drain();
}
