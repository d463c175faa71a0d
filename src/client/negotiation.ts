/**
 * The handshake's options as calls (opt mode: libnbd's lib/opt.c) and what
 * the server said about its export (lib/flags.c).
 */
import { SIZE_MAXIMUM, SIZE_MINIMUM, SIZE_PAYLOAD, SIZE_PREFERRED } from "../constants.js";
import { errno } from "../errno.js";
import { Opt, TFlag } from "../protocol/constants.js";
import { NbdError, asNbdError } from "./error.js";
import { type ExportInfo, Negotiator, Refused, noExport } from "./handshake.js";
import { Session } from "./session.js";

export class Negotiation extends Session {
  // ---- option negotiation (opt mode) -------------------------------------------

  /** The Negotiator, for options only a fixed newstyle server understands. */
  protected fixedNewstyle(): Negotiator {
    const neg = this.neg!;
    if (!neg.fixed) throw new NbdError(errno.ENOTSUP, "server is not using fixed newstyle protocol");
    return neg;
  }

  /**
   * One option exchange. An error reply (Refused) leaves the handle
   * negotiating; anything else (EOF, a broken reply) kills it, as libnbd's
   * state machine moves to DEAD.
   */
  protected async exchange<T>(run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (e) {
      if (!(e instanceof Refused)) this.die(asNbdError(e));
      throw e;
    }
  }

  async optGo(): Promise<void> {
    const neg = this.neg!;
    try {
      await this.exchange(() => neg.go());
    } catch (e) {
      if (!(e instanceof Refused) || !neg.fixed) throw e;
      throw new NbdError(e.errno || errno.ENOTSUP, "server replied with error to opt_go request");
    }
    this.ready();
  }

  async optInfo(): Promise<void> {
    try {
      const neg = this.fixedNewstyle();
      await this.exchange(() => neg.go(Opt.INFO));
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      throw new NbdError(e.errno || errno.ENOTSUP, "server replied with error to opt_info request");
    }
  }

  /** NBD_OPT_ABORT, then CLOSED; a plain newstyle server cannot abort, so the handle dies. */
  optAbort(): void {
    const neg = this.neg!;
    if (!neg.fixed) return this.die(new NbdError(errno.ENOTSUP, "handshake: server is not using fixed newstyle"));
    neg.abort();
    this.phase = "CLOSED";
    this.transport?.socket.end(); // let the abort reach the server; nobody waits for its reply
  }

  async optList(list: (name: string, description: string) => number): Promise<number> {
    const neg = this.fixedNewstyle();
    const { count, err } = await this.exchange(() => neg.list(list));
    if (err) throw new NbdError(err, "server replied with error to list request");
    return count;
  }

  optListMetaContext(context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.LIST_META_CONTEXT, this.metaContextRequests, context);
  }
  optListMetaContextQueries(queries: string[], context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.LIST_META_CONTEXT, queries, context);
  }
  optSetMetaContext(context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.SET_META_CONTEXT, this.metaContextRequests, context);
  }
  optSetMetaContextQueries(queries: string[], context: (name: string) => number): Promise<number> {
    return this.#metaContext(Opt.SET_META_CONTEXT, queries, context);
  }

  async #metaContext(opt: Opt.LIST_META_CONTEXT | Opt.SET_META_CONTEXT, queries: readonly string[],
    context: (name: string) => number): Promise<number> {
    const neg = this.fixedNewstyle();
    // Without structured replies libnbd 1.18 still asks; the server refuses SET.
    const { count, err } = await this.exchange(() => neg.metaContext(opt, queries, context));
    if (err) throw new NbdError(err, "server replied with error to meta context request");
    return count;
  }

  async optStructuredReply(): Promise<boolean> {
    const neg = this.fixedNewstyle();
    return (await this.exchange(() => neg.structuredReply())) === 0;
  }

  /** A new export name or new requests make what the server said about the old ones stale. */
  protected override exportChanged(): void {
    const neg = this.neg;
    if (!neg || this.phase !== "NEGOTIATING") return;
    neg.export = noExport();
    neg.metaValid = false;
  }

  // ---- what the server said -------------------------------------------------

  #known(what: "size" | "flags"): ExportInfo {
    const info = this.neg?.export;
    if (!info || info.eflags === 0) {
      throw new NbdError(errno.EINVAL, `server has not returned export ${what}, you need to connect to the server first`);
    }
    return info;
  }

  protected flag(bit: TFlag): boolean { return (this.#known("flags").eflags & bit) !== 0; }

  /** int64_t, as in C: newer libnbd refuses a size that does not fit (1.14 returned it negative). */
  getSize(): bigint {
    const { size } = this.#known("size");
    if (size > 0x7fffffffffffffffn) throw new NbdError(errno.EOVERFLOW, `server export size ${size} does not fit in a signed 64-bit integer`);
    return size;
  }
  getProtocol(): string { return this.neg!.protocol; }
  getStructuredRepliesNegotiated(): boolean { return this.neg!.structuredReplies; }
  isReadOnly(): boolean { return this.flag(TFlag.READ_ONLY); }
  canFlush(): boolean { return this.flag(TFlag.SEND_FLUSH); }
  canFua(): boolean { return this.flag(TFlag.SEND_FUA); }
  isRotational(): boolean { return this.flag(TFlag.ROTATIONAL); }
  canTrim(): boolean { return this.flag(TFlag.SEND_TRIM); }
  canZero(): boolean { return this.flag(TFlag.SEND_WRITE_ZEROES); }
  canFastZero(): boolean { return this.flag(TFlag.SEND_FAST_ZERO); }
  canDf(): boolean { return this.flag(TFlag.SEND_DF); }
  canMultiConn(): boolean { return this.flag(TFlag.CAN_MULTI_CONN); }
  canCache(): boolean { return this.flag(TFlag.SEND_CACHE); }

  canMetaContext(name: string): boolean {
    const neg = this.neg!;
    if (this.metaContextRequests.length && !neg.metaValid) {
      throw new NbdError(errno.EINVAL, "need a successful server meta context request first");
    }
    return neg.metaContexts.some((c) => c.name === name);
  }

  getBlockSize(type: number): bigint {
    const info = this.#known("flags");
    switch (type) {
      case SIZE_MINIMUM: return BigInt(info.blockMinimum);
      case SIZE_PREFERRED: return BigInt(info.blockPreferred);
      case SIZE_MAXIMUM: return BigInt(info.blockMaximum);
      case SIZE_PAYLOAD: return BigInt(info.payloadMaximum);
      default: throw new NbdError(errno.EINVAL, `size_type: invalid value for parameter: ${type}`);
    }
  }

  getCanonicalExportName(): string {
    const name = this.#known("flags").canonicalName;
    if (name === undefined) throw new NbdError(errno.ENOTSUP, "server did not advertise a canonical name");
    return name;
  }

  getExportDescription(): string {
    const text = this.#known("flags").description;
    if (text === undefined) throw new NbdError(errno.ENOTSUP, "server did not advertise a description");
    return text;
  }
}
