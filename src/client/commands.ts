/**
 * NBD commands (libnbd's lib/rw.c and lib/aio.c): each is checked as libnbd
 * checks it, built once, and sent or queued; a blocking call waits for its
 * reply, an aio call hands back its cookie and its reply waits in the done
 * list.
 */
import { MAX_REQUEST_SIZE, STRICT_ALIGN, STRICT_AUTO_FLAG, STRICT_BOUNDS, STRICT_COMMANDS, STRICT_PAYLOAD, STRICT_ZERO_SIZE } from "../constants.js";
import { errno } from "../errno.js";
import { Cmd, CmdFlag, EXTENDED_REQUEST_SIZE, REQUEST_SIZE, TFlag } from "../protocol/constants.js";
import { encodeBlockStatusPayload, encodeExtendedRequest, encodeRequest } from "../protocol/transmission.js";
import { type Callback, type Command, commandName, finalError } from "./command.js";
import { NbdError } from "./error.js";
import { zeroGaps } from "./bytes.js";
import { recorders } from "./events.js";
import { Negotiation } from "./negotiation.js";

type Callbacks = Pick<Command, "chunk" | "extent" | "completion">;

/** See Commands.queueable. */
export interface Queueable {
  /** The cookie the next command gets. */
  cookie: number;
  size: bigint;
  /** Offsets and counts must be multiples of this (0: any). */
  align: number;
  /** The largest write payload. */
  payload: number;
  /** Whether a write with no flags would be accepted. */
  write: boolean;
  /** Whether poll may be answered from the ring: not with set_timeout, which a poll that waits too long must trip. */
  poll: boolean;
}

export class Commands extends Negotiation {
  /** aio commands whose reply is complete, oldest first, until aio_command_completed retires them. */
  protected done: Command[] = [];

  // ---- I/O --------------------------------------------------------------------
  // Each command is built once (libnbd's nbd_unlocked_aio_*); the blocking call
  // waits for it, the aio call hands back its cookie.

  pread(buf: Uint8Array, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#read(buf, offset, flags));
  }
  aioPread(buf: Uint8Array, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#read(buf, offset, flags, { completion }));
  }
  preadStructured(buf: Uint8Array, offset: bigint, chunk: Callback, flags: number): Promise<void> {
    return this.#wait(this.#read(buf, offset, flags, { chunk }));
  }
  aioPreadStructured(buf: Uint8Array, offset: bigint, chunk: Callback, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#read(buf, offset, flags, { chunk, completion }));
  }
  pwrite(buf: Uint8Array, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#write(buf, offset, flags));
  }
  aioPwrite(buf: Uint8Array, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#write(buf, offset, flags, { completion }));
  }
  flush(flags: number): Promise<void> {
    return this.#wait(this.#flush(flags));
  }
  aioFlush(completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#flush(flags, { completion }));
  }
  trim(count: bigint, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#trim(count, offset, flags));
  }
  aioTrim(count: bigint, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#trim(count, offset, flags, { completion }));
  }
  cache(count: bigint, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#cache(count, offset, flags));
  }
  aioCache(count: bigint, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#cache(count, offset, flags, { completion }));
  }
  zero(count: bigint, offset: bigint, flags: number): Promise<void> {
    return this.#wait(this.#zero(count, offset, flags));
  }
  aioZero(count: bigint, offset: bigint, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#zero(count, offset, flags, { completion }));
  }
  blockStatus(count: bigint, offset: bigint, extent: Callback, flags: number): Promise<void> {
    return this.#wait(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: false } }));
  }
  aioBlockStatus(count: bigint, offset: bigint, extent: Callback, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: false }, completion }));
  }
  blockStatus64(count: bigint, offset: bigint, extent: Callback, flags: number): Promise<void> {
    return this.#wait(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: true } }));
  }
  aioBlockStatus64(count: bigint, offset: bigint, extent: Callback, completion: Callback | undefined, flags: number): bigint {
    return this.#cookie(this.#blockStatus(count, offset, flags, { extent: { fn: extent, wide: true }, completion }));
  }
  blockStatusFilter(count: bigint, offset: bigint, contexts: string[], extent64: Callback, flags: number): Promise<void> {
    return this.#wait(this.#blockStatusFilter(count, offset, contexts, flags, { extent: { fn: extent64, wide: true } }));
  }
  aioBlockStatusFilter(
    count: bigint, offset: bigint, contexts: string[], extent64: Callback, completion: Callback | undefined, flags: number,
  ): bigint {
    return this.#cookie(this.#blockStatusFilter(count, offset, contexts, flags, { extent: { fn: extent64, wide: true }, completion }));
  }

  #read(buf: Uint8Array, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictFlags(flags);
    return this.#command(Cmd.READ, flags, offset, BigInt(buf.byteLength), errno.EINVAL, buf, callbacks);
  }

  #write(buf: Uint8Array, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    // STRICT_AUTO_FLAG: PAYLOAD_LEN follows what was negotiated, whatever the caller said (libnbd 1.18).
    if (this.strict & STRICT_AUTO_FLAG) flags = this.#extended() ? flags | CmdFlag.PAYLOAD_LEN : flags & ~CmdFlag.PAYLOAD_LEN;
    this.#strictWrite(flags);
    if (this.strict & STRICT_COMMANDS && !!(flags & CmdFlag.PAYLOAD_LEN) !== this.#extended()) {
      throw new NbdError(errno.EINVAL, "incorrect setting for PAYLOAD_LEN flag");
    }
    return this.#command(Cmd.WRITE, flags, offset, BigInt(buf.byteLength), errno.ENOSPC, buf, callbacks);
  }

  #extended(): boolean { return this.neg!.extendedHeaders; }

  #flush(flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_FLUSH, "flush");
    return this.#command(Cmd.FLUSH, flags, 0n, 0n, 0, undefined, callbacks);
  }

  #trim(count: bigint, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_TRIM, "trim");
    this.#strictWrite(flags);
    return this.#command(Cmd.TRIM, flags, offset, count, errno.ENOSPC, undefined, callbacks);
  }

  #cache(count: bigint, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_CACHE, "cache");
    return this.#command(Cmd.CACHE, flags, offset, count, errno.EINVAL, undefined, callbacks);
  }

  #zero(count: bigint, offset: bigint, flags: number, callbacks?: Callbacks): Command {
    this.#strictCommand(TFlag.SEND_WRITE_ZEROES, "zero");
    this.#strictWrite(flags);
    if (this.strict & STRICT_COMMANDS && flags & CmdFlag.FAST_ZERO && !this.canFastZero()) {
      throw new NbdError(errno.EINVAL, "server does not support the fast zero flag");
    }
    return this.#command(Cmd.WRITE_ZEROES, flags, offset, count, errno.ENOSPC, undefined, callbacks);
  }

  /** libnbd's check_aio_block_status, shared by every block status call. */
  #checkBlockStatus(): void {
    const neg = this.neg!;
    if (this.strict & STRICT_COMMANDS) {
      if (!neg.structuredReplies) throw new NbdError(errno.ENOTSUP, "server does not support structured replies");
      if (!neg.metaValid || neg.metaContexts.length === 0) {
        throw new NbdError(errno.ENOTSUP, "did not negotiate any metadata contexts, either you did not call " +
          "nbd_add_meta_context before connecting or the server does not support it");
      }
    }
  }

  #blockStatus(count: bigint, offset: bigint, flags: number, callbacks: Callbacks): Command {
    this.#checkBlockStatus();
    return this.#command(Cmd.BLOCK_STATUS, flags, offset, count, errno.EINVAL, undefined, callbacks);
  }

  /**
   * libnbd 1.18's block_status_filter. The request's payload (the count, then
   * the ids of `contexts`) needs extended headers and a server that claims
   * BLOCK_STATUS_PAYLOAD. With STRICT_AUTO_FLAG and STRICT_COMMANDS cleared
   * libnbd goes on without them: the request's length is the payload's, and
   * the payload itself goes out only with extended headers and PAYLOAD_LEN.
   */
  #blockStatusFilter(count: bigint, offset: bigint, contexts: string[], flags: number, callbacks: Callbacks): Command {
    this.#checkBlockStatus();
    if (this.strict & STRICT_AUTO_FLAG) {
      if (!this.#extended()) throw new NbdError(errno.ENOTSUP, "server does not support extended headers");
      flags |= CmdFlag.PAYLOAD_LEN;
    }
    if (this.strict & STRICT_COMMANDS) {
      if (!this.canBlockStatusPayload()) throw new NbdError(errno.EINVAL, "server does not support the block status payload flag");
      if (!(flags & CmdFlag.PAYLOAD_LEN)) throw new NbdError(errno.EINVAL, "incorrect setting for PAYLOAD_LEN flag");
    }
    const neg = this.neg!;
    const ids = contexts.map((name) => {
      const id = neg.metaValid ? neg.metaContexts.find((c) => c.name === name)?.id : undefined;
      if (id === undefined) throw new NbdError(errno.EINVAL, `context ${name} not negotiated`);
      return id;
    });
    return this.#command(Cmd.BLOCK_STATUS, flags, offset, count, errno.EINVAL, undefined, callbacks,
      encodeBlockStatusPayload(count, ids));
  }

  // STRICT_COMMANDS: refuse what the server did not advertise (lib/rw.c).
  #strictCommand(flag: TFlag, what: string): void {
    if (this.strict & STRICT_COMMANDS && !this.flag(flag)) {
      throw new NbdError(errno.EINVAL, `server does not support ${what} operations`);
    }
  }

  #strictWrite(flags: number): void {
    if (!(this.strict & STRICT_COMMANDS)) return;
    if (this.isReadOnly()) throw new NbdError(errno.EPERM, "server does not support write operations");
    this.#strictFlags(flags);
  }

  #strictFlags(flags: number): void {
    if (!(this.strict & STRICT_COMMANDS)) return;
    if (flags & CmdFlag.FUA && !this.canFua()) throw new NbdError(errno.EINVAL, "server does not support the FUA flag");
    if (flags & CmdFlag.DF && !this.canDf()) throw new NbdError(errno.EINVAL, "server does not support the DF flag");
  }

  /**
   * libnbd's nbd_internal_command_common: the generic request checks, then the
   * request goes out. `payload`: block_status_filter's, whose length the request's becomes.
   */
  #command(
    type: Cmd, flags: number, offset: bigint, count: bigint, countErr: number, buf?: Uint8Array, callbacks?: Callbacks,
    payload?: Uint8Array,
  ): Command {
    const info = this.neg!.export;
    if (this.disconnectRequested) throw new NbdError(errno.EINVAL, "cannot request more commands after NBD_CMD_DISC");
    if (countErr) {
      if (this.strict & STRICT_ZERO_SIZE && count === 0n) throw new NbdError(errno.EINVAL, "count cannot be 0");
      if (this.strict & STRICT_BOUNDS && (offset > info.size || count > info.size - offset)) {
        throw new NbdError(countErr, "request out of bounds");
      }
      const min = BigInt(info.blockMinimum);
      if (min && this.strict & STRICT_ALIGN && (offset | count) & (min - 1n)) {
        throw new NbdError(errno.EINVAL, "request is unaligned");
      }
    }
    if (payload !== undefined) {
      const length = payload.byteLength;
      if (length > MAX_REQUEST_SIZE || (this.strict & STRICT_PAYLOAD && length > info.payloadMaximum)) {
        throw new NbdError(errno.ERANGE, "filter set too large");
      }
      count = BigInt(length);
    }
    if (type === Cmd.WRITE && this.strict & STRICT_PAYLOAD && count > info.payloadMaximum) {
      throw new NbdError(errno.ERANGE, `request too large: maximum payload size is ${info.payloadMaximum}`);
    }
    if ((type === Cmd.READ || type === Cmd.WRITE) && count > MAX_REQUEST_SIZE) {
      throw new NbdError(errno.ERANGE, `request too large: maximum request size is ${MAX_REQUEST_SIZE}`);
    }
    // The compact request's length field is 32 bits; the extended one's is 64.
    if (count > 0xffffffffn && !this.#extended()) {
      throw new NbdError(errno.ERANGE, "request too large: maximum request size is 4294967295");
    }
    const cmd = this.#make(this.nextCookie++, type, flags, offset, count, buf, 0, callbacks, payload);
    if (this.peerGone) {
      cmd.unsendable = true; // see #unsendable
      return cmd;
    }
    this.inflight.set(cmd.cookie, cmd);
    this.#sendRequest(cmd);
    // Bytes that came while no reply was awaited are read now, as libnbd would;
    // in a microtask, once the caller has set up its wait (they may settle cmd).
    // None can be held later in this turn: bytes only come in a later one.
    if (this.parser?.holding) queueMicrotask(this.#resume);
    return cmd;
  }

  readonly #resume = (): void => this.parser?.resume();
  readonly #settle = (cmd: Command, fatal?: NbdError): void => this.#finished(cmd, fatal);

  /** A Command with every field it will ever have, so that none is added later. */
  #make(
    cookie: number, type: Cmd, flags: number, offset: bigint, count: bigint, buf: Uint8Array | undefined, error: number,
    callbacks?: Callbacks, payload?: Uint8Array,
  ): Command {
    return {
      cookie, type, flags, offset, count, buf, payload, error, serverMessage: undefined, seen: 0, filled: this.#initialize(type),
      chunk: callbacks?.chunk, extent: callbacks?.extent, completion: callbacks?.completion,
      unsendable: false, aio: false, ring: false, undecided: false, resolve: undefined, reject: undefined, settle: this.#settle,
    };
  }

  /** A blocking call: wait for the reply, or for the error that killed the connection (see #finished). */
  #wait(cmd: Command): Promise<void> {
    if (cmd.unsendable) return Promise.reject(this.#unsendable(cmd));
    return new Promise((resolve, reject) => {
      cmd.resolve = resolve;
      cmd.reject = reject;
    });
  }

  #cookie(cmd: Command): bigint {
    cmd.aio = true;
    if (cmd.unsendable) {
      this.inflight.set(cmd.cookie, cmd);
      this.#unsendable(cmd);
    }
    return BigInt(cmd.cookie);
  }

  /**
   * The server left while the handle was idle, so libnbd's send of this
   * command fails: the handle goes DEAD and the command is retired with
   * ENOTCONN. A blocking call returns that error; an aio call still returns
   * its cookie, and the command is already complete (its callback has run).
   */
  #unsendable(cmd: Command): NbdError {
    this.die(new NbdError(errno.ENOTCONN, "send: server disconnected"), true);
    return new NbdError(errno.ENOTCONN, `${commandName[cmd.type]}: command failed`);
  }

  /**
   * A reply is complete (or will never come). A blocking call returns; an aio
   * command's completion callback runs, and unless it returned 1 the command
   * waits in the done list for aio_command_completed.
   */
  #finished(cmd: Command, fatal?: NbdError): void {
    this.inflight.delete(cmd.cookie);
    if (cmd.filled) zeroGaps(cmd.buf!, cmd.filled);
    if (cmd.resolve) {
      if (fatal) cmd.reject!(fatal);
      else if (finalError(cmd)) cmd.reject!(this.#commandError(cmd));
      else cmd.resolve();
      return;
    }
    if (!cmd.aio) return;
    if (cmd.ring) {
      // The caller's thread copies its data, runs its callback and settles it (settleFromCaller).
      cmd.undecided = true;
      this.done.push(cmd);
      this.ring!(cmd.cookie, cmd.error);
      // It wakes a poll that waits, but unlike progress() leaves nothing for a later poll: the caller saw it in the ring.
      if (this.pollWaiter) this.progress();
      return;
    }
    this.emit({ id: 0, args: [cmd.cookie] }); // tells the caller's thread its buffer is ready
    let retire = false;
    if (cmd.completion) {
      // 1 retires the command; -1 with an errno in the box fails it with that errno.
      const box = { value: cmd.error };
      try {
        const r = (cmd.completion as (box: { value: number }) => number)(box);
        retire = r === 1;
        if (r === -1 && box.value) cmd.error = box.value;
      } catch { /* a throwing completion callback changes nothing */ }
    }
    if (!retire) {
      if (cmd.completion && recorders.has(cmd.completion)) cmd.undecided = true;
      this.done.push(cmd);
    }
    this.progress();
  }

  /**
   * libnbd's pread_initialize: no byte of a read's buffer is left stale,
   * whatever the server sends. Rather than zero the buffer first, as libnbd
   * does, the read records what it covered and the rest is zeroed when it
   * ends (zeroGaps): the same outcome, and nothing to do for a read that
   * the server answered in full.
   */
  #initialize(type: Cmd): number[] | undefined {
    return type === Cmd.READ && this.preadInitialize ? [] : undefined;
  }

  #commandError(cmd: Command): NbdError {
    return new NbdError(finalError(cmd), `${commandName[cmd.type]}: command failed`);
  }

  #sendRequest(cmd: Command): void {
    const socket = this.transport!.socket;
    if (this.unsent.length || socket.writableNeedDrain) {
      if (!this.unsent.length) socket.once("drain", () => this.#sendUnsent());
      this.unsent.push(cmd);
      return;
    }
    this.#writeRequest(cmd);
  }

  #sendUnsent(): void {
    const socket = this.transport!.socket;
    while (this.unsent.length && !socket.writableNeedDrain) this.#writeRequest(this.unsent.shift()!);
    if (this.unsent.length) socket.once("drain", () => this.#sendUnsent());
    else if (this.discUnsent) this.sendDisconnect();
  }

  /** SHUTDOWN_ABANDON_PENDING: what has not gone out completes with ENOTCONN (libnbd's abort_commands). */
  protected abandonUnsent(): void {
    for (const cmd of this.unsent.splice(0)) {
      this.inflight.delete(cmd.cookie);
      cmd.error ||= errno.ENOTCONN;
      cmd.settle(cmd);
    }
    if (this.discUnsent) this.sendDisconnect();
  }

  /** A request header in the negotiated form; a fresh one each time (a queued write may still refer to an older one). */
  #header(flags: number, type: Cmd, cookie: number, offset: bigint, count: bigint): Buffer {
    this.stats.chunksSent++;
    if (this.#extended()) {
      const header = Buffer.allocUnsafe(EXTENDED_REQUEST_SIZE);
      encodeExtendedRequest(new DataView(header.buffer, header.byteOffset, EXTENDED_REQUEST_SIZE), flags, type, cookie, offset, count);
      return header;
    }
    const header = Buffer.allocUnsafe(REQUEST_SIZE);
    encodeRequest(new DataView(header.buffer, header.byteOffset, REQUEST_SIZE), flags, type, cookie, offset, Number(count));
    return header;
  }

  #writeRequest(cmd: Command): void {
    const socket = this.transport!.socket;
    const header = this.#header(cmd.flags, cmd.type, cmd.cookie, cmd.offset, cmd.count);
    // What follows the header: a write's data; block_status_filter's ids, as libnbd sends them.
    const payload = cmd.type === Cmd.WRITE ? cmd.buf
      : cmd.payload && this.#extended() && cmd.flags & CmdFlag.PAYLOAD_LEN ? cmd.payload : undefined;
    if (payload?.byteLength) {
      socket.cork();
      this.send(header);
      this.send(payload);
      socket.uncork();
    } else {
      this.send(header);
    }
  }

  protected sendDisconnect(): void {
    this.disconnectRequested = true;
    this.discUnsent = this.unsent.length > 0;
    if (this.discUnsent) return; // after the requests still waiting to go out
    // NBD_CMD_DISC has no reply: half-close and wait for the server's EOF.
    this.send(this.#header(0, Cmd.DISC, this.nextCookie++, 0n, 0n), true);
  }

  statsBytesSent(): bigint { return BigInt(this.stats.bytesSent); }
  statsChunksSent(): bigint { return BigInt(this.stats.chunksSent); }
  statsBytesReceived(): bigint { return BigInt(this.stats.bytesReceived); }
  statsChunksReceived(): bigint { return BigInt(this.stats.chunksReceived); }

  // ---- aio commands issued from the caller's thread -----------------------------------

  /**
   * What the caller's thread needs to issue aio reads and writes without
   * waiting for this connection's answer (handle.ts): the cookie the next
   * command will get, and the bounds within which #command's checks cannot
   * refuse one with no flags. Undefined when they might refuse it for
   * another reason (not READY, a disconnect requested, the server gone) or
   * when each call must be traced (debug).
   */
  queueable(): Queueable | undefined {
    if (this.phase !== "READY" || this.disconnectRequested || this.peerGone || this.debug) return undefined;
    const info = this.neg!.export;
    const write = !(this.strict & STRICT_COMMANDS) ||
      (!this.isReadOnly() && (!!(this.strict & STRICT_AUTO_FLAG) || !this.#extended()));
    return {
      cookie: this.nextCookie, size: info.size, align: info.blockMinimum, payload: info.payloadMaximum, write, poll: this.timeout === 0,
    };
  }

  /** An aio read or write (no flags, no callback) the caller's thread queued: it completes through the ring. */
  aioQueued(write: boolean, buf: Uint8Array, offset: bigint): void {
    const cmd = write ? this.#write(buf, offset, 0) : this.#read(buf, offset, 0);
    cmd.ring = true;
    this.#cookie(cmd);
  }

  /**
   * A command the caller's thread queued while this connection could take
   * it, reached only once it could not (it ended meanwhile; libnbd would
   * have learned that later, in poll): it takes its cookie and completes at
   * once with `err`, as the commands in flight did.
   */
  abandonQueued(type: Cmd, cookie: number, offset: bigint, buf: Uint8Array, err: number): void {
    if (this.inflight.has(cookie) || this.done.some((c) => c.cookie === cookie)) return; // another command's: never ours to end
    this.nextCookie = Math.max(this.nextCookie, cookie + 1);
    const cmd = this.#make(cookie, type, 0, offset, BigInt(buf.byteLength), buf, err);
    cmd.aio = cmd.ring = true;
    this.#finished(cmd);
  }

  /** The caller's thread has not read all the ring said of this connection: poll reports it at once. */
  unseen(): void { this.progressed = true; }

  /** Requests sent between cork() and uncork() go out together, in one write. */
  cork(): void { this.transport?.socket.cork(); }
  uncork(): void { this.transport?.socket.uncork(); }

  // ---- aio: completion and the event loop ------------------------------------------

  aioInFlight(): number { return this.inflight.size; }

  aioCommandCompleted(cookie: bigint): boolean {
    if (cookie < 1n) throw new NbdError(errno.EINVAL, `invalid aio cookie ${cookie}`);
    const i = this.done.findIndex((c) => BigInt(c.cookie) === cookie && !c.undecided);
    if (i < 0) return false;
    const [cmd] = this.done.splice(i, 1);
    if (finalError(cmd!)) throw this.#commandError(cmd!);
    return true;
  }

  aioPeekCommandCompleted(): bigint {
    const first = this.done.find((c) => !c.undecided);
    if (first) return BigInt(first.cookie);
    if (this.inflight.size || this.done.length) return 0n;
    throw new NbdError(errno.EINVAL, "no commands are in flight");
  }

  /**
   * The caller's thread learned what callbacks it replayed returned: a
   * completion callback's 1 retires its command, a chunk or extent
   * callback's -1 fails it (libnbd applies both as the callbacks return).
   * An error of 0 says the completion callback has returned: until then
   * the command is not reported done, since its callback may retire it.
   */
  settleFromCaller(cookie: number, retire: boolean, error: number): void {
    const i = this.done.findIndex((c) => c.cookie === cookie);
    const cmd = i >= 0 ? this.done[i] : this.inflight.get(cookie);
    if (!cmd) return;
    if (!error) cmd.undecided = false; // its completion callback has returned
    if (retire && i >= 0) this.done.splice(i, 1);
    else cmd.error ||= error;
  }
}
