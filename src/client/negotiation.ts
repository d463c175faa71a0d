/**
 * The handshake's options as calls (opt mode: libnbd's lib/opt.c) and what
 * the server said about its export (lib/flags.c).
 */
import { SIZE_MAXIMUM, SIZE_MINIMUM, SIZE_PAYLOAD, SIZE_PREFERRED } from "../constants.js";
import { errno } from "../errno.js";
import { Opt, TFlag } from "../protocol/constants.js";
import type { Callback } from "./command.js";
import { NbdError, asNbdError } from "./error.js";
import { type ExportInfo, Negotiator, Refused, noExport } from "./handshake.js";
import { Session } from "./session.js";

type ListCallback = (name: string, description: string) => number;
type ContextCallback = (name: string) => number;

/** libnbd ignores what an aio option's list and context callbacks return: a throw (nbd-ts/async) is just a -1. */
function ignoring<F extends (...args: never[]) => number>(fn: F): F {
  return ((...args: never[]) => {
    try {
      return fn(...args);
    } catch {
      return -1;
    }
  }) as F;
}

/** For an option whose exchange answers with an errno (0: the server agreed): its refusal as a rejection, for aioOption. */
async function agreed(answer: Promise<number>): Promise<void> {
  const err = await answer;
  if (err) throw new NbdError(err, "server refused the option");
}

export class Negotiation extends Session {
  // ---- option negotiation (opt mode) -------------------------------------------

  /** The Negotiator, for options only a fixed newstyle server understands. */
  protected fixedNewstyle(): Negotiator {
    const neg = this.neg!;
    if (!neg.fixed) throw new NbdError(errno.ENOTSUP, "server is not using fixed newstyle protocol");
    return neg;
  }

  /**
   * One option exchange, during which the handle is connecting (as libnbd's
   * is while its state machine sends and reads an option). An error reply
   * (Refused) leaves the handle negotiating; anything else (EOF, a broken
   * reply) kills it, as libnbd's state machine moves to DEAD.
   */
  protected async exchange<T>(run: () => Promise<T>): Promise<T> {
    this.phase = "CONNECTING";
    try {
      return await run();
    } catch (e) {
      if (!(e instanceof Refused)) this.die(asNbdError(e));
      throw e;
    } finally {
      if (this.phase === "CONNECTING") this.phase = "NEGOTIATING";
    }
  }

  /**
   * libnbd's aio_opt_*: after the up-front check (fixed newstyle, unless
   * `anyNewstyle`), `run` (the blocking call's exchange) goes on once the call
   * has returned 0. When it ends, `completion` hears its errno — 0, that of
   * the server's refusal, or that of the error that killed the handle
   * (ENOTCONN if it had none) — and poll wakes. Its return is ignored, as
   * libnbd ignores it.
   */
  protected aioOption(run: () => Promise<unknown>, completion: Callback | undefined, anyNewstyle = false): number {
    if (!anyNewstyle) this.fixedNewstyle();
    const done = (err: number) => {
      if (this.optionDone !== done) return; // told once: by DEAD or CLOSED, or when run settles
      this.optionDone = undefined;
      try {
        (completion as ((error: { value: number }) => number) | undefined)?.({ value: err });
      } catch { /* ignored, like its return */ }
      this.progress();
    };
    this.optionDone = done;
    void run().then(() => done(0), (e) => done(asNbdError(e).errno || errno.ENOTCONN));
    return 0;
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

  /**
   * NBD_OPT_STARTTLS by hand: true once TLS is up, false if the server
   * refused. A failed TLS handshake kills the handle. Under REQUIRE (TLS is
   * already up then) a refusal aborts the connection as the automatic
   * STARTTLS does; libnbd's opt_starttls asserts in that case.
   */
  async optStarttls(): Promise<boolean> {
    const neg = this.fixedNewstyle();
    return (await this.exchange(() => this.starttls(neg))) === 0;
  }

  async optStructuredReply(): Promise<boolean> {
    const neg = this.fixedNewstyle();
    return (await this.exchange(() => neg.structuredReply())) === 0;
  }

  async optExtendedHeaders(): Promise<boolean> {
    const neg = this.fixedNewstyle();
    return (await this.exchange(() => neg.negotiateExtendedHeaders())) === 0;
  }

  // ---- the aio forms: the option goes out, the call returns, poll sees it end ---------
  // A new one is an aioOpt entry in api/table.ts and one line here.

  aioOptGo(completion?: Callback): number { return this.aioOption(() => this.optGo(), completion, true); }
  aioOptAbort(): void { this.optAbort(); }
  aioOptInfo(completion?: Callback): number { return this.aioOption(() => this.optInfo(), completion); }
  aioOptList(list: ListCallback, completion?: Callback): number { return this.aioOption(() => this.optList(ignoring(list)), completion); }
  aioOptListMetaContext(context: ContextCallback, completion?: Callback): number {
    return this.aioOption(() => this.optListMetaContext(ignoring(context)), completion);
  }
  aioOptListMetaContextQueries(queries: string[], context: ContextCallback, completion?: Callback): number {
    return this.aioOption(() => this.optListMetaContextQueries(queries, ignoring(context)), completion);
  }
  aioOptSetMetaContext(context: ContextCallback, completion?: Callback): number {
    return this.aioOption(() => this.optSetMetaContext(ignoring(context)), completion);
  }
  aioOptSetMetaContextQueries(queries: string[], context: ContextCallback, completion?: Callback): number {
    return this.aioOption(() => this.optSetMetaContextQueries(queries, ignoring(context)), completion);
  }
  aioOptStructuredReply(completion?: Callback): number {
    return this.aioOption(() => agreed(this.exchange(() => this.neg!.structuredReply())), completion);
  }
  aioOptStarttls(completion?: Callback): number {
    return this.aioOption(() => agreed(this.exchange(() => this.starttls(this.neg!))), completion);
  }
  aioOptExtendedHeaders(completion?: Callback): number {
    return this.aioOption(() => agreed(this.exchange(() => this.neg!.negotiateExtendedHeaders())), completion);
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
  getExtendedHeadersNegotiated(): boolean { return this.neg!.extendedHeaders; }
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
  canBlockStatusPayload(): boolean { return this.flag(TFlag.BLOCK_STATUS_PAYLOAD); }

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
