/**
 * The two ends of nbd-ts copy: an NBD export (a URI or a server run by
 * socket activation, on the Promise API, one handle per connection), a local
 * file (random access, sparse), a stream (stdout, a pipe, a device: written
 * in order), or null: (discards everything).
 */
import { once } from "node:events";
import { constants, type Stats } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { CMD_FLAG_NO_HOLE, CONTEXT_BASE_ALLOCATION, SIZE_PREFERRED, STATE_ZERO } from "../constants.js";
import { create, type AsyncHandle } from "../async.js";
import { errnoOf, strerror } from "../errno.js";
import { Failure, type Endpoint } from "./args.js";

export interface Extent { offset: number; length: number; zero: boolean }

export interface End {
  /** How messages name it: the URI, the command's program, the file name. */
  readonly name: string;
  readonly kind: string;
  /** Bytes, or -1 when unknown (null:, streams). */
  readonly size: number;
  /** The preferred request size, a power of 2. */
  readonly preferred: number;
  /** Reads as zeroes wherever nothing is written (a fresh file, null:), so zeroes need not be sent. */
  zeroed: boolean;
  /** Must be written in order, one request at a time. */
  readonly sequential: boolean;
  readonly readOnly: boolean;
  readonly multiConn: boolean;
  /** Opens more connections, for `n` in all (NBD over a URI only). */
  connect(n: number): Promise<void>;
  read(buf: Uint8Array, offset: number, conn: number): Promise<void>;
  write(buf: Uint8Array, offset: number, conn: number): Promise<void>;
  /** Makes [offset, offset+length) read as zeroes; `allocated` forbids holes. */
  zero(offset: number, length: number, allocated: boolean, conn: number): Promise<void>;
  /** Data and zero runs covering [offset, offset+length), or null if the end cannot tell. */
  extents(offset: number, length: number, conn: number): Promise<Extent[] | null>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** A buffer of zeroes for ends that must write zeroes out; shared, never written to. */
let zeroes = new Uint8Array(0);
function zeroBuffer(length: number): Uint8Array {
  if (zeroes.length < length) zeroes = new Uint8Array(Math.max(length, 1 << 20));
  return zeroes.subarray(0, length);
}

/** Writes zeroes through `write`, a chunk at a time. */
async function writeZeroes(write: (b: Uint8Array, o: number) => Promise<void>, offset: number, length: number): Promise<void> {
  const CHUNK = 1 << 20;
  for (let o = offset; o < offset + length; o += CHUNK) await write(zeroBuffer(Math.min(CHUNK, offset + length - o)), o);
}

/** Whether an operand names an NBD URI rather than a local file. */
export const isNbdUri = (s: string): boolean => /^nbds?(\+(unix|vsock))?:/.test(s);

/** The message, prefixed with the end's name as nbdcopy does: libnbd's for NBD, strerror's for a file. */
function failure(name: string, err: unknown): Failure {
  if (err instanceof Failure) return err;
  const message = err instanceof Error ? err.message : String(err);
  if ((err as { syscall?: unknown }).syscall === undefined) return new Failure(`${name}: ${message}`);
  // A Node system error ("ENOENT: no such file or directory, open 'x'"): glibc's words for it.
  const n = errnoOf(err);
  const text = n ? strerror(n) : message.replace(/^E[A-Z0-9]+: ([^,]*).*$/s, (_, t: string) => t.charAt(0).toUpperCase() + t.slice(1));
  return new Failure(`${name}: ${text}`);
}

class NbdEnd implements End {
  readonly kind = "nbd";
  readonly sequential = false;
  zeroed = false;
  size = -1;
  preferred = 4096;
  readOnly = false;
  multiConn = false;
  private canZero = false;
  private canFlush = false;
  private extentsOk = false;
  private handles: AsyncHandle[] = [];

  constructor(readonly name: string, private readonly how: Endpoint, private readonly wantExtents: boolean) {}

  async open(): Promise<void> {
    const h = create();
    this.handles.push(h); // closed by close(), even if it never connects
    try {
      if (process.env.LIBNBD_DEBUG === "1") await h.setHandleName(`${this.wantExtents ? "src" : "dst"}${this.handles.length - 1}`);
      if (this.wantExtents) await h.addMetaContext(CONTEXT_BASE_ALLOCATION);
      if (this.how.kind === "name") {
        await h.setUriAllowLocalFile(true); // ?tls-psk-file=
        await h.connectUri(this.how.name);
      } else await h.connectSystemdSocketActivation(this.how.argv);
      if (this.handles.length > 1) return;
      this.size = Number(await h.getSize());
      const preferred = Number(await h.getBlockSize(SIZE_PREFERRED));
      if (preferred > 0 && (preferred & (preferred - 1)) === 0) this.preferred = preferred;
      this.readOnly = (await h.isReadOnly()) === 1;
      this.canZero = (await h.canZero()) === 1;
      this.canFlush = (await h.canFlush()) === 1;
      this.multiConn = this.how.kind === "name" && (await h.canMultiConn()) === 1;
      this.extentsOk = this.wantExtents && (await h.canMetaContext(CONTEXT_BASE_ALLOCATION)) === 1;
    } catch (err) {
      throw failure(this.name, err);
    }
  }

  async connect(n: number): Promise<void> {
    while (this.handles.length < n) await this.open();
  }

  private h(conn: number): AsyncHandle {
    return this.handles[conn % this.handles.length]!;
  }

  async read(buf: Uint8Array, offset: number, conn: number): Promise<void> {
    await this.h(conn).pread(buf, offset).catch((e) => { throw failure(this.name, e); });
  }

  async write(buf: Uint8Array, offset: number, conn: number): Promise<void> {
    await this.h(conn).pwrite(buf, offset).catch((e) => { throw failure(this.name, e); });
  }

  async zero(offset: number, length: number, allocated: boolean, conn: number): Promise<void> {
    if (!this.canZero) return writeZeroes((b, o) => this.write(b, o, conn), offset, length);
    await this.h(conn).zero(length, offset, allocated ? CMD_FLAG_NO_HOLE : 0).catch((e) => { throw failure(this.name, e); });
  }

  async extents(offset: number, length: number, conn: number): Promise<Extent[] | null> {
    if (!this.extentsOk) return null;
    const out: Extent[] = [];
    const end = offset + length;
    // A server may answer for less than was asked: ask again from where it stopped.
    for (let at = offset; at < end;) {
      const before = out.length;
      await this.h(conn).blockStatus(end - at, at, (context, start, entries) => {
        if (context !== CONTEXT_BASE_ALLOCATION) return 0;
        let o = Number(start);
        for (let i = 0; i + 1 < entries.length && o < end; i += 2) {
          const len = Math.min(entries[i]!, end - o);
          out.push({ offset: o, length: len, zero: (entries[i + 1]! & STATE_ZERO) !== 0 });
          o += len;
        }
        return 0;
      }).catch((e) => { throw failure(this.name, e); });
      if (out.length === before) throw new Failure(`${this.name}: server did not return any extents`);
      const last = out.at(-1)!;
      at = last.offset + last.length;
    }
    return out;
  }

  async flush(): Promise<void> {
    if (!this.canFlush) return;
    await Promise.all(this.handles.map((h) => h.flush())).catch((e) => { throw failure(this.name, e); });
  }

  async close(): Promise<void> {
    const handles = this.handles.splice(0);
    let error: unknown;
    for (const h of handles) {
      await h.shutdown().catch((e) => { error ??= e; });
      await h.close();
    }
    if (error) throw failure(this.name, error);
  }
}

/** A regular file: random access; as a destination it starts as one hole, so zeroes are skipped. */
export class FileEnd implements End {
  readonly kind = "file";
  readonly sequential = false;
  readonly readOnly = false;
  readonly multiConn = true;
  zeroed = false;

  size: number;
  /** Which file it is (device, inode), to refuse copying a file onto itself. */
  readonly identity: string;

  constructor(readonly name: string, private readonly fh: FileHandle, st: Stats, readonly preferred: number) {
    this.size = st.size;
    this.identity = `${st.dev}:${st.ino}`;
  }

  async connect(): Promise<void> {}

  async read(buf: Uint8Array, offset: number): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, offset + done).catch((e) => { throw failure(this.name, e); });
      if (bytesRead === 0) throw new Failure(`${this.name}: unexpected end of file`);
      done += bytesRead;
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, offset + done).catch((e) => { throw failure(this.name, e); });
      done += bytesWritten;
    }
  }

  async zero(offset: number, length: number): Promise<void> {
    // Node has no fallocate: zeroes are written out (the fresh-file case never gets here).
    await writeZeroes((b, o) => this.write(b, o), offset, length);
  }

  async extents(): Promise<null> {
    return null; // Node has no SEEK_DATA; zero detection (-S) finds the holes instead
  }

  /** Makes the file exactly `size` bytes of hole: what the copy does not write reads as zeroes. */
  async startEmpty(size: number): Promise<void> {
    await this.fh.truncate(0).catch((e) => { throw failure(this.name, e); });
    await this.fh.truncate(size).catch((e) => { throw failure(this.name, e); });
    this.size = size;
    this.zeroed = true;
  }

  async flush(): Promise<void> {
    await this.fh.datasync().catch((e) => { throw failure(this.name, e); });
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** A destination written in order: stdout, a pipe, a character or block device. */
class StreamEnd implements End {
  readonly kind = "stream";
  readonly sequential = true;
  readonly readOnly = false;
  readonly multiConn = false;
  readonly size = -1;
  readonly preferred = 4096;
  zeroed = false;

  constructor(readonly name: string, private readonly out: NodeJS.WritableStream) {}

  async connect(): Promise<void> {}

  async read(): Promise<void> {
    throw new Failure(`${this.name}: cannot read from a stream`);
  }

  write(buf: Uint8Array): Promise<void> {
    // Resolves once the stream has taken the bytes, so the buffer can be reused.
    return new Promise((resolve, reject) => {
      this.out.write(buf, (err) => (err ? reject(failure(this.name, err)) : resolve()));
    });
  }

  zero(offset: number, length: number): Promise<void> {
    return writeZeroes((b) => this.write(b), offset, length);
  }

  async extents(): Promise<null> {
    return null;
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.out === process.stdout) return;
    const done = once(this.out, "close");
    this.out.end();
    await done;
  }
}

/** null: — the fastest destination there is. */
class NullEnd implements End {
  readonly kind = "null";
  readonly name = "null:";
  readonly sequential = false;
  readonly readOnly = false;
  readonly multiConn = true;
  readonly size = -1;
  readonly preferred = 4096;
  zeroed = true;
  async connect(): Promise<void> {}
  async read(): Promise<void> {
    throw new Failure("null: cannot be a source");
  }
  async write(): Promise<void> {}
  async zero(): Promise<void> {}
  async extents(): Promise<null> {
    return null;
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/** Opens the source: an NBD URI, a server to run, or a regular file. */
export async function openSource(ep: Endpoint, extents: boolean): Promise<End> {
  if (ep.kind === "command" || isNbdUri(ep.name)) return openNbd(ep, true, extents);
  if (ep.name === "-") throw new Failure("-: reading the source from stdin is not supported; give a file or an NBD URI");
  const fh = await open(ep.name, "r").catch((e) => { throw failure(ep.name, e); });
  const st = await fh.stat();
  if (!st.isFile()) {
    await fh.close();
    throw new Failure(`${ep.name}: the source must be a regular file or an NBD URI`);
  }
  return new FileEnd(ep.name, fh, st, preferredOf(st));
}

/** Opens the destination, creating a file that does not exist (never truncating a device into a file). */
export async function openDestination(ep: Endpoint): Promise<End> {
  if (ep.kind === "command" || isNbdUri(ep.name)) return openNbd(ep, false, false);
  if (ep.name === "null:") return new NullEnd();
  if (ep.name === "-") {
    if (process.stdout.isTTY) throw new Failure("refusing to write to tty");
    return new StreamEnd("-", process.stdout);
  }
  let fh: FileHandle;
  try {
    fh = await open(ep.name, constants.O_WRONLY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw failure(ep.name, err);
    fh = await open(ep.name, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644).catch((e) => { throw failure(ep.name, e); });
  }
  const st = await fh.stat();
  if (!st.isFile()) return new StreamEnd(ep.name, fh.createWriteStream());
  return new FileEnd(ep.name, fh, st, preferredOf(st));
}

const preferredOf = (st: Stats): number => {
  const b = Number(st.blksize);
  return b >= 512 && (b & (b - 1)) === 0 ? b : 4096;
};

async function openNbd(ep: Endpoint, reading: boolean, extents: boolean): Promise<End> {
  const name = ep.kind === "name" ? ep.name : ep.argv[0]!;
  const end = new NbdEnd(name, ep, reading && extents);
  try {
    await end.open();
  } catch (err) {
    await end.close().catch(() => {});
    throw err;
  }
  return end;
}
