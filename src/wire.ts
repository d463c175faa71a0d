/**
 * Values written into shared memory and read back on the other thread: what
 * crosses the bridge without a structured clone or a message. Numbers,
 * bigints, strings, arrays, plain objects and the typed arrays that extent
 * callbacks carry are encoded in place; anything else (a SharedArrayBuffer,
 * a bigint beyond 64 bits, a class instance) is "attached": it travels in
 * a side message and the encoding holds its index there.
 */

const enum T { UNDEFINED, NULL, FALSE, TRUE, INT, FLOAT, U64, I64, STRING, ARRAY, OBJECT, U32S, U64S, ATTACHED }

/** The area is full: the caller sends the value some other way. */
export class NoRoom extends Error {}

const TWO64 = 1n << 64n;
const NO_ROOM = new NoRoom("no room in the shared area");

export class Wire {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #text: Buffer;
  #at = 0;
  /** Values that could not be encoded, in the order their indices were given. */
  attached: unknown[] = [];

  constructor(sab: SharedArrayBuffer, offset: number, length: number) {
    this.#bytes = new Uint8Array(sab, offset, length);
    this.#view = new DataView(sab, offset, length);
    this.#text = Buffer.from(sab, offset, length);
  }

  /** Bytes used so far. */
  get length(): number { return this.#at; }

  /** Start writing, or reading values written with `attached` beside them. */
  rewind(attached: unknown[] = []): void {
    this.#at = 0;
    this.attached = attached;
  }

  #room(n: number): number {
    const at = this.#at;
    if (at + n > this.#bytes.byteLength) throw NO_ROOM;
    this.#at = at + n;
    return at;
  }

  #tag(t: T): void { this.#bytes[this.#room(1)] = t; }
  #u32(n: number): void { this.#view.setUint32(this.#room(4), n, true); }

  /** Appends `v`; throws NoRoom when the area is full. */
  write(v: unknown): void {
    switch (typeof v) {
      case "undefined": return this.#tag(T.UNDEFINED);
      case "boolean": return this.#tag(v ? T.TRUE : T.FALSE);
      case "number":
        if ((v | 0) === v && !Object.is(v, -0)) {
          this.#tag(T.INT);
          this.#view.setInt32(this.#room(4), v, true);
        } else {
          this.#tag(T.FLOAT);
          this.#view.setFloat64(this.#room(8), v, true);
        }
        return;
      case "bigint":
        if (v >= 0n && v < TWO64) {
          this.#tag(T.U64);
          this.#view.setBigUint64(this.#room(8), v, true);
        } else if (v < 0n && v >= -(1n << 63n)) {
          this.#tag(T.I64);
          this.#view.setBigInt64(this.#room(8), v, true);
        } else {
          this.#attach(v);
        }
        return;
      case "string": {
        this.#tag(T.STRING);
        const n = Buffer.byteLength(v);
        this.#u32(n);
        this.#text.write(v, this.#room(n), n);
        return;
      }
      case "object":
        if (v === null) return this.#tag(T.NULL);
        if (Array.isArray(v)) {
          this.#tag(T.ARRAY);
          this.#u32(v.length);
          for (const item of v) this.write(item);
          return;
        }
        if (v instanceof Uint32Array || v instanceof BigUint64Array) {
          this.#tag(v instanceof Uint32Array ? T.U32S : T.U64S);
          this.#u32(v.length);
          this.#bytes.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), this.#room(v.byteLength));
          return;
        }
        if (Object.getPrototypeOf(v) === Object.prototype) {
          const keys = Object.keys(v);
          this.#tag(T.OBJECT);
          this.#u32(keys.length);
          for (const k of keys) {
            this.write(k);
            this.write((v as Record<string, unknown>)[k]);
          }
          return;
        }
        return this.#attach(v);
      default:
        return this.#attach(v);
    }
  }

  /** Starts over with `v` attached whole: for a value too large for the area. */
  attachWhole(v: unknown): void {
    this.rewind();
    this.#attach(v);
  }

  #attach(v: unknown): void {
    this.#tag(T.ATTACHED);
    this.#u32(this.attached.push(v) - 1);
  }

  #readU32(): number {
    const n = this.#view.getUint32(this.#at, true);
    this.#at += 4;
    return n;
  }

  /** The next value written. */
  read(): unknown {
    const t = this.#bytes[this.#at++] as T;
    switch (t) {
      case T.UNDEFINED: return undefined;
      case T.NULL: return null;
      case T.FALSE: return false;
      case T.TRUE: return true;
      case T.INT: return this.#step(this.#view.getInt32(this.#at, true), 4);
      case T.FLOAT: return this.#step(this.#view.getFloat64(this.#at, true), 8);
      case T.U64: return this.#step(this.#view.getBigUint64(this.#at, true), 8);
      case T.I64: return this.#step(this.#view.getBigInt64(this.#at, true), 8);
      case T.STRING: {
        const n = this.#readU32();
        return this.#step(this.#text.toString("utf8", this.#at, this.#at + n), n);
      }
      case T.ARRAY: {
        const n = this.#readU32();
        const out = new Array<unknown>(n);
        for (let i = 0; i < n; i++) out[i] = this.read();
        return out;
      }
      case T.OBJECT: {
        const n = this.#readU32();
        const out: Record<string, unknown> = {};
        for (let i = 0; i < n; i++) {
          const k = this.read() as string;
          out[k] = this.read();
        }
        return out;
      }
      case T.U32S:
      case T.U64S: {
        const n = this.#readU32();
        const out = t === T.U32S ? new Uint32Array(n) : new BigUint64Array(n);
        new Uint8Array(out.buffer).set(this.#bytes.subarray(this.#at, this.#at + out.byteLength));
        return this.#step(out, out.byteLength);
      }
      case T.ATTACHED: return this.attached[this.#readU32()];
      default: throw new Error(`nbd-ts: bad tag ${t as number} in shared memory`);
    }
  }

  #step<V>(value: V, n: number): V {
    this.#at += n;
    return value;
  }
}
