/**
 * A pull reader for the handshake: bytes are pushed in as the socket
 * delivers them, `read(n)` resolves with exactly n bytes. The handshake is
 * short and sequential, so clarity wins here; the transmission phase uses
 * the push parser in replies.ts instead.
 */
import type { NbdError } from "./error.js";

export class Reader {
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #want = 0;
  #resolve: ((b: Uint8Array) => void) | undefined;
  #reject: ((e: NbdError) => void) | undefined;
  #failure: NbdError | undefined;

  /** Bytes are copied: the caller may reuse its buffer after this returns. */
  push(chunk: Uint8Array): void {
    this.#chunks.push(chunk.slice());
    this.#buffered += chunk.byteLength;
    this.#deliver();
  }

  /** No more bytes will come: pending and later reads fail with `err`. */
  fail(err: NbdError): void {
    this.#failure ??= err;
    const reject = this.#reject;
    this.#resolve = this.#reject = undefined;
    reject?.(err);
  }

  read(n: number): Promise<Uint8Array> {
    if (this.#resolve) throw new Error("Reader: one read at a time");
    return new Promise((resolve, reject) => {
      this.#want = n;
      this.#resolve = resolve;
      this.#reject = reject;
      this.#deliver();
    });
  }

  /** Hands over whatever is buffered (the start of the transmission phase). */
  drain(): Uint8Array[] {
    const chunks = this.#chunks;
    this.#chunks = [];
    this.#buffered = 0;
    return chunks;
  }

  #deliver(): void {
    const resolve = this.#resolve;
    if (!resolve) return;
    if (this.#buffered < this.#want) {
      if (this.#failure) this.fail(this.#failure);
      return;
    }
    const out = new Uint8Array(this.#want);
    let filled = 0;
    while (filled < out.byteLength) {
      const head = this.#chunks[0]!;
      const take = Math.min(head.byteLength, out.byteLength - filled);
      out.set(head.subarray(0, take), filled);
      filled += take;
      if (take === head.byteLength) this.#chunks.shift();
      else this.#chunks[0] = head.subarray(take);
    }
    this.#buffered -= out.byteLength;
    this.#resolve = this.#reject = undefined;
    resolve(out);
  }
}
