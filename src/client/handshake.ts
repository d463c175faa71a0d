/**
 * The handshake, as libnbd's generator/states-{magic,oldstyle,newstyle*}.c
 * run it, one option exchange per method so that both the automatic connect
 * and opt mode (nbd_opt_*) can drive it: greeting and client flags,
 * NBD_OPT_STARTTLS (the TLS handshake itself is tls.ts's),
 * NBD_OPT_EXTENDED_HEADERS, NBD_OPT_STRUCTURED_REPLY,
 * NBD_OPT_{LIST,SET}_META_CONTEXT, NBD_OPT_LIST,
 * NBD_OPT_INFO / NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME) and
 * NBD_OPT_ABORT. Each reads whole messages through the codec and fails with
 * libnbd's message and errno.
 */
import { errno } from "../errno.js";
import {
  EXPORT_NAME_REPLY_SIZE, EXPORT_NAME_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, Info, MAX_STRING,
  OLDSTYLE_SIZE, OPTION_REPLY_HEADER_SIZE, Opt, REP_ERR_BIT, Rep, TFlag,
} from "../protocol/constants.js";
import {
  ProtocolError, decodeExportNameReply, decodeGreeting, decodeHandshakeFlags, decodeInfo, decodeMetaContext,
  decodeOldstyle, decodeOptionReplyHeader, decodeServer, encodeClientFlags, encodeInfoRequest,
  encodeMetaContextRequest, encodeOption, utf8,
} from "../protocol/handshake.js";
import { MAX_REQUEST_SIZE } from "../constants.js";
import { NbdError } from "./error.js";

export interface Wire {
  read(n: number): Promise<Uint8Array>;
  write(b: Uint8Array): void;
}

/** The handle settings the handshake reads (libnbd's h->export_name, h->full_info, ...). */
export interface Settings {
  readonly exportName: string;
  readonly fullInfo: boolean;
  readonly requestStructuredReplies: boolean;
  readonly requestExtendedHeaders: boolean;
  readonly requestBlockSize: boolean;
  readonly requestMetaContext: boolean;
  readonly metaContextRequests: readonly string[];
  readonly handshakeFlags: number;
}

export type Protocol = "oldstyle" | "newstyle" | "newstyle-fixed";

/** What the server told us about the export: everything the export queries answer from. */
export interface ExportInfo {
  size: bigint;
  /** 0 until the server has described the export (libnbd: "not yet known"). */
  eflags: number;
  blockMinimum: number;
  blockPreferred: number;
  blockMaximum: number;
  payloadMaximum: number;
  canonicalName?: string;
  description?: string;
}

export const noExport = (): ExportInfo =>
  ({ size: 0n, eflags: 0, blockMinimum: 0, blockPreferred: 0, blockMaximum: 0, payloadMaximum: 0 });

export interface MetaContext { id: number; name: string }

/** Counters that libnbd's nbd_stats_* report; a chunk is a magic-delimited message. */
export interface Stats { bytesSent: number; chunksSent: number; bytesReceived: number; chunksReceived: number }

/** The server answered an option with an error reply (as opposed to breaking the protocol). */
export class Refused extends NbdError {}

/** Option replies are small (names and descriptions of at most 4096 bytes each). */
const MAX_OPTION_REPLY = 2 * MAX_STRING + 64;

export class Negotiator {
  protocol: Protocol = "newstyle-fixed";
  handshakeFlags = 0;
  structuredReplies = false;
  /** Sticky, as libnbd's: a later refusal (a duplicate request) does not undo it. */
  extendedHeaders = false;
  export: ExportInfo = noExport();
  /** The contexts the last successful NBD_OPT_SET_META_CONTEXT selected. */
  metaContexts: MetaContext[] = [];
  /** Whether metaContexts answers for the current export (libnbd's meta_valid). */
  metaValid = false;

  constructor(private readonly io: Wire, private readonly settings: Settings, private readonly stats: Stats) {}

  get fixed(): boolean { return (this.handshakeFlags & FLAG_FIXED_NEWSTYLE) !== 0; }

  /** MAGIC, then the oldstyle export or the newstyle flags exchange. */
  async greet(): Promise<Protocol> {
    const greeting = decodeGreeting(await this.io.read(16));
    this.stats.chunksReceived++;
    if (greeting.style === "oldstyle") {
      const old = decodeOldstyle(await this.io.read(OLDSTYLE_SIZE - 16));
      if (old.gflags) throw new NbdError(0, "handshake: oldstyle server should not set gflags");
      this.protocol = "oldstyle";
      this.#setExport(old.size, old.eflags);
      this.#setPayload();
      return this.protocol;
    }
    this.handshakeFlags = this.settings.handshakeFlags & decodeHandshakeFlags(await this.io.read(2));
    this.io.write(encodeClientFlags(this.handshakeFlags));
    this.protocol = this.fixed ? "newstyle-fixed" : "newstyle";
    return this.protocol;
  }

  #option(opt: Opt, data?: Uint8Array): void {
    this.stats.chunksSent++;
    this.io.write(encodeOption(opt, data));
  }

  async #reply(opt: Opt): Promise<{ type: number; payload: Uint8Array }> {
    const h = decodeOptionReplyHeader(await this.io.read(OPTION_REPLY_HEADER_SIZE));
    this.stats.chunksReceived++;
    if (h.option !== opt) {
      throw new ProtocolError(`handshake: unexpected option number in reply (${h.option}, expected ${opt})`);
    }
    if (h.length > MAX_OPTION_REPLY) throw new ProtocolError("handshake: option reply too long");
    const payload = h.length ? await this.io.read(h.length) : new Uint8Array(0);
    if (h.type & REP_ERR_BIT && h.length > MAX_STRING) throw new ProtocolError("handshake: option error string too long");
    if (!(h.type & REP_ERR_BIT) && h.type !== Rep.ACK && !expected[opt]?.includes(h.type)) {
      throw new ProtocolError(`handshake: unexpected option reply type ${h.type}`);
    }
    return { type: h.type, payload };
  }

  /**
   * NBD_OPT_STARTTLS: 0 if the server agreed (the TLS handshake is the
   * caller's), else the errno opt mode reports. Nothing said in plaintext
   * counts once TLS starts: the export, extended headers, structured replies,
   * meta contexts.
   */
  async starttls(): Promise<number> {
    this.#option(Opt.STARTTLS);
    const { type } = await this.#reply(Opt.STARTTLS);
    if (type !== Rep.ACK) return type === Rep.ERR_INVALID ? errno.EINVAL : errno.ENOTSUP;
    this.export = noExport();
    this.extendedHeaders = this.structuredReplies = false;
    this.metaValid = false;
    return 0;
  }

  /** NBD_OPT_STRUCTURED_REPLY: 0 if the server agreed, else the errno opt mode reports. */
  async structuredReply(): Promise<number> {
    this.#option(Opt.STRUCTURED_REPLY);
    const { type } = await this.#reply(Opt.STRUCTURED_REPLY);
    if (type === Rep.ACK) {
      this.structuredReplies = true;
      return 0;
    }
    return type === Rep.ERR_INVALID || type === Rep.ERR_EXT_HEADER_REQD ? errno.EINVAL : errno.ENOTSUP;
  }

  /**
   * NBD_OPT_EXTENDED_HEADERS: 0 if the server agreed (which implies
   * structured replies), else the errno opt mode reports.
   */
  async negotiateExtendedHeaders(): Promise<number> {
    this.#option(Opt.EXTENDED_HEADERS);
    const { type } = await this.#reply(Opt.EXTENDED_HEADERS);
    if (type === Rep.ACK) {
      this.extendedHeaders = this.structuredReplies = true;
      return 0;
    }
    return type === Rep.ERR_INVALID ? errno.EINVAL : errno.ENOTSUP;
  }

  /**
   * NBD_OPT_LIST_META_CONTEXT or SET_META_CONTEXT for `queries`; each context
   * the server names goes to `onContext`. Returns how many came and the errno
   * of an error reply (0 if none). SET replaces the selected contexts.
   */
  async metaContext(opt: Opt.LIST_META_CONTEXT | Opt.SET_META_CONTEXT, queries: readonly string[],
    onContext?: (name: string) => void): Promise<{ count: number; err: number }> {
    if (opt === Opt.SET_META_CONTEXT) {
      this.metaContexts = [];
      this.metaValid = false;
    }
    this.#option(opt, encodeMetaContextRequest(this.settings.exportName, queries));
    let count = 0;
    for (;;) {
      const { type, payload } = await this.#reply(opt);
      if (type === Rep.META_CONTEXT) {
        const context = decodeMetaContext(payload);
        count++;
        onContext?.(context.name);
        if (opt === Opt.SET_META_CONTEXT) this.metaContexts.push(context);
        continue;
      }
      if (type === Rep.ACK) {
        if (opt === Opt.SET_META_CONTEXT) this.metaValid = true;
        return { count, err: 0 };
      }
      if (opt === Opt.SET_META_CONTEXT) this.metaContexts = [];
      return { count, err: errno.ENOTSUP };
    }
  }

  /** The automatic SET_META_CONTEXT before GO/INFO, skipped as libnbd skips it. */
  async #metaContextForGo(): Promise<void> {
    const s = this.settings;
    if (s.requestMetaContext) {
      this.metaContexts = [];
      this.metaValid = false;
    }
    if (!s.requestMetaContext || !this.structuredReplies || s.metaContextRequests.length === 0) return;
    await this.metaContext(Opt.SET_META_CONTEXT, s.metaContextRequests); // errors here are ignored
  }

  /** NBD_OPT_LIST: each export to `onExport`; returns the count and an error reply's errno. */
  async list(onExport: (name: string, description: string) => void): Promise<{ count: number; err: number }> {
    this.#option(Opt.LIST);
    let count = 0;
    for (;;) {
      const { type, payload } = await this.#reply(Opt.LIST);
      if (type === Rep.SERVER) {
        const e = decodeServer(payload);
        count++;
        onExport(e.name, e.description);
        continue;
      }
      return { count, err: type === Rep.ACK ? 0 : errno.ENOTSUP };
    }
  }

  /**
   * NBD_OPT_GO or NBD_OPT_INFO (after the automatic meta context request).
   * Throws libnbd's error for an error reply, with the export info reset.
   */
  async go(opt: Opt.GO | Opt.INFO = Opt.GO): Promise<void> {
    if (!this.fixed) return this.exportName();
    await this.#metaContextForGo();
    this.export = noExport(); // nothing from an earlier NBD_OPT_INFO survives (libnbd's OPT_GO.START)
    const s = this.settings;
    const infos: Info[] = [];
    if (s.requestBlockSize) infos.push(Info.BLOCK_SIZE);
    if (s.fullInfo) infos.push(Info.NAME, Info.DESCRIPTION);
    this.#option(opt, encodeInfoRequest(s.exportName, infos));
    for (;;) {
      const { type, payload } = await this.#reply(opt);
      if (type === Rep.INFO) {
        const i = decodeInfo(payload);
        if (i.type === Info.EXPORT) this.#setExport(i.size, i.eflags);
        else if (i.type === Info.BLOCK_SIZE) this.#setBlockSize(i.minimum, i.preferred, i.maximum);
        else if (i.type === Info.NAME) this.export.canonicalName = i.text;
        else if (i.type === Info.DESCRIPTION) this.export.description = i.text;
        continue;
      }
      if (type === Rep.ACK) {
        if (this.export.eflags === 0) throw new ProtocolError("handshake: server omitted NBD_INFO_EXPORT reply");
        return this.#setPayload();
      }
      if (type === Rep.ERR_UNSUP && opt === Opt.GO) return this.exportName(); // an old server: fall back
      this.export = noExport();
      this.metaValid = false;
      throw goError(type, opt, s.exportName);
    }
  }

  async exportName(): Promise<void> {
    this.#option(Opt.EXPORT_NAME, utf8(this.settings.exportName));
    const r = decodeExportNameReply(await this.io.read(EXPORT_NAME_REPLY_SIZE));
    if (!(this.handshakeFlags & FLAG_NO_ZEROES)) await this.io.read(EXPORT_NAME_ZEROES);
    this.#setExport(r.size, r.eflags);
    this.#setPayload();
  }

  /** NBD_OPT_ABORT; the server may or may not answer, nobody waits for it. */
  abort(): void {
    this.#option(Opt.ABORT);
  }

  /** lib/flags.c: drop flags that make no sense without what they build on. */
  #setExport(size: bigint, eflags: number): void {
    if (eflags === 0) throw new NbdError(errno.EINVAL, "handshake: invalid eflags == 0 from server");
    if (!this.structuredReplies) eflags &= ~TFlag.SEND_DF;
    if (!this.extendedHeaders) eflags &= ~TFlag.BLOCK_STATUS_PAYLOAD;
    if (!(eflags & TFlag.SEND_WRITE_ZEROES)) eflags &= ~TFlag.SEND_FAST_ZERO;
    this.export.size = size;
    this.export.eflags = eflags;
    // Without a SET_META_CONTEXT to wait for, the (empty) answer is already valid.
    const s = this.settings;
    if (s.requestMetaContext && (!this.structuredReplies || s.metaContextRequests.length === 0)) this.metaValid = true;
  }

  /** Block size constraints that break the spec's rules are ignored, as libnbd does. */
  #setBlockSize(min: number, pref: number, max: number): void {
    const pow2 = (n: number) => (n & (n - 1)) === 0;
    if (!min || min > 65536 || min > pref || pref < 512 || pref > max) return;
    if (!pow2(min) || !pow2(pref)) return;
    if (max !== 0xffffffff && max % min !== 0) return;
    Object.assign(this.export, { blockMinimum: min, blockPreferred: pref, blockMaximum: max });
  }

  /** The largest write libnbd will send: 32 MiB unless the server said otherwise. */
  #setPayload(): void {
    const max = this.export.blockMaximum;
    this.export.payloadMaximum = max ? Math.min(MAX_REQUEST_SIZE, Math.max(1024 * 1024, max)) : 32 * 1024 * 1024;
  }
}

/** The reply types, besides ACK and errors, that each option may get. */
const expected: Partial<Record<Opt, readonly number[]>> = {
  [Opt.LIST]: [Rep.SERVER],
  [Opt.INFO]: [Rep.INFO],
  [Opt.GO]: [Rep.INFO],
  [Opt.LIST_META_CONTEXT]: [Rep.META_CONTEXT],
  [Opt.SET_META_CONTEXT]: [Rep.META_CONTEXT],
};

/** libnbd's texts for NBD_OPT_GO/INFO error replies (states-newstyle-opt-go.c). */
function goError(type: number, opt: Opt, exportName: string): Refused {
  switch (type) {
    case Rep.ERR_UNSUP: return new Refused(errno.ENOTSUP, "handshake: server lacks NBD_OPT_INFO support");
    case Rep.ERR_POLICY:
    case Rep.ERR_PLATFORM: return new Refused(0, "handshake: server policy prevents NBD_OPT_GO");
    case Rep.ERR_INVALID:
    case Rep.ERR_TOO_BIG: return new Refused(errno.EINVAL, "handshake: server rejected NBD_OPT_GO as invalid");
    case Rep.ERR_TLS_REQD: return new Refused(errno.ENOTSUP, "handshake: server requires TLS encryption first");
    case Rep.ERR_UNKNOWN: return new Refused(errno.ENOENT, `handshake: server has no export named '${exportName}'`);
    case Rep.ERR_SHUTDOWN: return new Refused(errno.ESHUTDOWN, "handshake: server is shutting down");
    case Rep.ERR_BLOCK_SIZE_REQD: return new Refused(errno.EINVAL, "handshake: server requires specific block sizes");
    default:
      return new Refused(0, `handshake: unknown reply from NBD_OPT_${opt === Opt.GO ? "GO" : "INFO"}: 0x${type.toString(16)}`);
  }
}
