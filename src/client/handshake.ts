/**
 * The handshake, as libnbd's generator/states-{magic,oldstyle,newstyle*}.c
 * run it: greeting, client flags, NBD_OPT_STRUCTURED_REPLY, then NBD_OPT_GO
 * (falling back to NBD_OPT_EXPORT_NAME). Each step reads whole messages
 * through the codec and fails with libnbd's message and errno.
 */
import { errno } from "../errno.js";
import {
  EXPORT_NAME_REPLY_SIZE, EXPORT_NAME_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, Info, MAX_STRING,
  OLDSTYLE_SIZE, OPTION_REPLY_HEADER_SIZE, Opt, REP_ERR_BIT, Rep, TFlag,
} from "../protocol/constants.js";
import {
  ProtocolError, decodeExportNameReply, decodeGreeting, decodeHandshakeFlags, decodeInfo, decodeOldstyle,
  decodeOptionReplyHeader, encodeClientFlags, encodeInfoRequest, encodeOption, utf8,
} from "../protocol/handshake.js";
import { MAX_REQUEST_SIZE } from "../constants.js";
import { NbdError } from "./error.js";

export interface Wire {
  read(n: number): Promise<Uint8Array>;
  write(b: Uint8Array): void;
}

export interface Settings {
  readonly exportName: string;
  readonly fullInfo: boolean;
  readonly requestStructuredReplies: boolean;
  readonly requestBlockSize: boolean;
  readonly handshakeFlags: number;
}

/** What the handshake learned: everything the export queries answer from. */
export interface Negotiated {
  protocol: "oldstyle" | "newstyle" | "newstyle-fixed";
  handshakeFlags: number;
  structuredReplies: boolean;
  size: bigint;
  eflags: number;
  blockMinimum: number;
  blockPreferred: number;
  blockMaximum: number;
  payloadMaximum: number;
  canonicalName?: string;
  description?: string;
  metaContexts: { id: number; name: string }[];
}

/** Option replies are small (names and descriptions of at most 4096 bytes each). */
const MAX_OPTION_REPLY = 2 * MAX_STRING + 64;

export async function negotiate(io: Wire, settings: Settings): Promise<Negotiated> {
  const info: Negotiated = {
    protocol: "newstyle-fixed", handshakeFlags: 0, structuredReplies: false, size: 0n, eflags: 0,
    blockMinimum: 0, blockPreferred: 0, blockMaximum: 0, payloadMaximum: 0, metaContexts: [],
  };
  const greeting = decodeGreeting(await io.read(16));
  if (greeting.style === "oldstyle") {
    const old = decodeOldstyle(await io.read(OLDSTYLE_SIZE - 16));
    if (old.gflags) throw new NbdError(0, "handshake: oldstyle server should not set gflags");
    info.protocol = "oldstyle";
    setSizeAndFlags(info, old.size, old.eflags);
    return setPayload(info);
  }

  info.handshakeFlags = settings.handshakeFlags & decodeHandshakeFlags(await io.read(2));
  io.write(encodeClientFlags(info.handshakeFlags));
  if (!(info.handshakeFlags & FLAG_FIXED_NEWSTYLE)) {
    info.protocol = "newstyle";
    return exportName(io, settings, info);
  }
  if (settings.requestStructuredReplies) info.structuredReplies = await structuredReply(io);
  return go(io, settings, info);
}

function option(io: Wire, opt: Opt, data?: Uint8Array): void {
  io.write(encodeOption(opt, data));
}

async function reply(io: Wire, opt: Opt): Promise<{ type: number; payload: Uint8Array }> {
  const h = decodeOptionReplyHeader(await io.read(OPTION_REPLY_HEADER_SIZE));
  if (h.option !== opt) throw new ProtocolError(`handshake: unexpected option number in reply (${h.option}, expected ${opt})`);
  if (h.length > MAX_OPTION_REPLY) throw new ProtocolError("handshake: option reply too long");
  const payload = h.length ? await io.read(h.length) : new Uint8Array(0);
  if (h.type & REP_ERR_BIT && h.length > MAX_STRING) throw new ProtocolError("handshake: option error string too long");
  return { type: h.type, payload };
}

function unexpected(type: number): ProtocolError {
  return new ProtocolError(`handshake: unexpected option reply type ${type}`);
}

async function structuredReply(io: Wire): Promise<boolean> {
  option(io, Opt.STRUCTURED_REPLY);
  const { type } = await reply(io, Opt.STRUCTURED_REPLY);
  if (type === Rep.ACK) return true;
  if (type & REP_ERR_BIT) return false; // the server does not do them; carry on without
  throw unexpected(type);
}

/** libnbd's texts for NBD_OPT_GO's error replies (states-newstyle-opt-go.c). */
function goError(type: number, exportName: string): NbdError {
  switch (type) {
    case Rep.ERR_POLICY:
    case Rep.ERR_PLATFORM: return new NbdError(0, "handshake: server policy prevents NBD_OPT_GO");
    case Rep.ERR_INVALID:
    case Rep.ERR_TOO_BIG: return new NbdError(errno.EINVAL, "handshake: server rejected NBD_OPT_GO as invalid");
    case Rep.ERR_TLS_REQD: return new NbdError(errno.ENOTSUP, "handshake: server requires TLS encryption first");
    case Rep.ERR_UNKNOWN: return new NbdError(errno.ENOENT, `handshake: server has no export named '${exportName}'`);
    case Rep.ERR_SHUTDOWN: return new NbdError(errno.ESHUTDOWN, "handshake: server is shutting down");
    case Rep.ERR_BLOCK_SIZE_REQD: return new NbdError(errno.EINVAL, "handshake: server requires specific block sizes");
    default: return new NbdError(errno.ENOTSUP, `handshake: unknown reply from NBD_OPT_GO: 0x${type.toString(16)}`);
  }
}

async function go(io: Wire, settings: Settings, info: Negotiated): Promise<Negotiated> {
  const infos: Info[] = [];
  if (settings.requestBlockSize) infos.push(Info.BLOCK_SIZE);
  if (settings.fullInfo) infos.push(Info.NAME, Info.DESCRIPTION);
  option(io, Opt.GO, encodeInfoRequest(settings.exportName, infos));
  for (;;) {
    const { type, payload } = await reply(io, Opt.GO);
    if (type === Rep.INFO) {
      const i = decodeInfo(payload);
      if (i.type === Info.EXPORT) setSizeAndFlags(info, i.size, i.eflags);
      else if (i.type === Info.BLOCK_SIZE) setBlockSize(info, i.minimum, i.preferred, i.maximum);
      else if (i.type === Info.NAME) info.canonicalName = i.text;
      else if (i.type === Info.DESCRIPTION) info.description = i.text;
      continue;
    }
    if (type === Rep.ACK) {
      if (info.eflags === 0) throw new ProtocolError("handshake: server omitted NBD_INFO_EXPORT reply to NBD_OPT_GO");
      return setPayload(info);
    }
    if (type === Rep.ERR_UNSUP) return exportName(io, settings, info); // an old server: fall back
    if (!(type & REP_ERR_BIT)) throw unexpected(type);
    // Not in opt mode, libnbd gives up politely: NBD_OPT_ABORT, then DEAD.
    option(io, Opt.ABORT);
    throw goError(type, settings.exportName);
  }
}

async function exportName(io: Wire, settings: Settings, info: Negotiated): Promise<Negotiated> {
  option(io, Opt.EXPORT_NAME, utf8(settings.exportName));
  const r = decodeExportNameReply(await io.read(EXPORT_NAME_REPLY_SIZE));
  if (!(info.handshakeFlags & FLAG_NO_ZEROES)) await io.read(EXPORT_NAME_ZEROES);
  setSizeAndFlags(info, r.size, r.eflags);
  return setPayload(info);
}

/** lib/flags.c: drop flags that make no sense without what they build on. */
function setSizeAndFlags(info: Negotiated, size: bigint, eflags: number): void {
  if (eflags === 0) throw new NbdError(errno.EINVAL, "handshake: invalid eflags == 0 from server");
  if (!info.structuredReplies) eflags &= ~TFlag.SEND_DF;
  if (!(eflags & TFlag.SEND_WRITE_ZEROES)) eflags &= ~TFlag.SEND_FAST_ZERO;
  info.size = size;
  info.eflags = eflags;
}

/** Block size constraints that break the spec's rules are ignored, as libnbd does. */
function setBlockSize(info: Negotiated, min: number, pref: number, max: number): void {
  const pow2 = (n: number) => (n & (n - 1)) === 0;
  if (!min || min > 65536 || min > pref || pref < 512 || pref > max) return;
  if (!pow2(min) || !pow2(pref)) return;
  if (max !== 0xffffffff && max % min !== 0) return;
  info.blockMinimum = min;
  info.blockPreferred = pref;
  info.blockMaximum = max;
}

/** The largest write libnbd will send: 32 MiB unless the server said otherwise. */
function setPayload(info: Negotiated): Negotiated {
  info.payloadMaximum = info.blockMaximum
    ? Math.min(MAX_REQUEST_SIZE, Math.max(1024 * 1024, info.blockMaximum))
    : 32 * 1024 * 1024;
  return info;
}
