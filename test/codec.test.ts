/**
 * Unit tests of the pure protocol codec (src/protocol/) against hex fixtures
 * written out by hand from the NBD spec (../shared/reference/nbd-protocol.md §2).
 * No expected byte here comes from the project's own encoders: a fake server
 * built on the same codec could not catch a codec bug, these fixtures can.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import {
  ProtocolError, decodeExportNameReply, decodeGreeting, decodeHandshakeFlags, decodeInfo,
  decodeMetaContext, decodeOldstyle, decodeOptionReplyHeader, decodeServer, encodeClientFlags,
  encodeInfoRequest, encodeMetaContextRequest, encodeOption,
} from "../src/protocol/handshake.js";
import {
  decodeBlockStatus, decodeBlockStatusExt, decodeBlockStatusPayload, decodeChunkHeader, decodeErrorChunk,
  decodeExtendedChunkHeader, decodeOffset, decodeOffsetHole, decodeRequest, decodeSimpleReply, encodeBlockStatusPayload,
  encodeExtendedRequest, encodeRequest, errnoOfNbdError, replyHeaderSize, requestBuffer, requestHeaderSize,
} from "../src/protocol/transmission.js";
import { Chunk, Cmd, CmdFlag, Info, Opt, Rep, TFlag } from "../src/protocol/constants.js";

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ""), "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
const zeroes = (n: number) => "00".repeat(n);
const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Asserts that fn throws a ProtocolError whose message matches `msg` (exact string or RegExp). */
function throwsProto(fn: () => unknown, msg: string | RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== undefined, "expected a throw");
  assert.instance(caught, ProtocolError);
  const m = (caught as Error).message;
  if (typeof msg === "string") assert.is(m, msg);
  else assert.match(m, msg);
}

// ---- greeting ---------------------------------------------------------------

const NBDMAGIC_HEX = "4e42444d41474943";
const IHAVEOPT_HEX = "49484156454f5054";
const OLDSTYLE_HEX = "0000420281861253";

test("decodeGreeting: newstyle (NBDMAGIC IHAVEOPT)", () => {
  assert.equal(decodeGreeting(hex(NBDMAGIC_HEX + IHAVEOPT_HEX)), { style: "newstyle" });
  // The whole 18-byte newstyle greeting (with handshake flags) is accepted as well.
  assert.equal(decodeGreeting(hex(NBDMAGIC_HEX + IHAVEOPT_HEX + "0003")), { style: "newstyle" });
});

test("decodeGreeting: oldstyle (NBDMAGIC cliserv_magic)", () => {
  assert.equal(decodeGreeting(hex(NBDMAGIC_HEX + OLDSTYLE_HEX)), { style: "oldstyle" });
});

test("decodeGreeting: wrong NBDMAGIC throws", () => {
  throwsProto(() => decodeGreeting(hex("4e42444d41474944" + IHAVEOPT_HEX)),
    "handshake: server did not send expected NBD magic");
  throwsProto(() => decodeGreeting(hex(zeroes(16))), "handshake: server did not send expected NBD magic");
});

test("decodeGreeting: wrong second magic throws", () => {
  throwsProto(() => decodeGreeting(hex(NBDMAGIC_HEX + zeroes(8))),
    "handshake: server is not either an oldstyle or fixed newstyle NBD server");
  throwsProto(() => decodeGreeting(hex(NBDMAGIC_HEX + "49484156454f5055")),
    "handshake: server is not either an oldstyle or fixed newstyle NBD server");
  // The option reply magic is not a greeting either.
  throwsProto(() => decodeGreeting(hex(NBDMAGIC_HEX + "0003e889045565a9")),
    "handshake: server is not either an oldstyle or fixed newstyle NBD server");
});

test("decodeGreeting: short input throws", () => {
  throwsProto(() => decodeGreeting(hex(NBDMAGIC_HEX + "49484156454f50")), /short/);
});

test("decodeHandshakeFlags", () => {
  assert.is(decodeHandshakeFlags(hex("0003")), 3);
  assert.is(decodeHandshakeFlags(hex("0001")), 1);
  assert.is(decodeHandshakeFlags(hex("8002")), 0x8002);
  throwsProto(() => decodeHandshakeFlags(hex("03")), /short/);
});

test("decodeOldstyle: size, gflags, eflags", () => {
  // 64 size = 1 GiB; 32 flags split into 16 gflags = 0 and 16 eflags = 0x0003; 124 zeroes.
  const r = decodeOldstyle(hex("0000000040000000" + "0000" + "0003" + zeroes(124)));
  assert.equal(r, { size: 0x40000000n, gflags: 0, eflags: 3 });
  const r2 = decodeOldstyle(hex("0123456789abcdef" + "0001" + "8d6f"));
  assert.equal(r2, { size: 0x0123456789abcdefn, gflags: 1, eflags: 0x8d6f });
  throwsProto(() => decodeOldstyle(hex("0000000040000000" + "0000" + "00")), /short/);
});

test("encodeClientFlags", () => {
  assert.is(toHex(encodeClientFlags(3)), "00000003");
  assert.is(toHex(encodeClientFlags(1)), "00000001");
  assert.is(toHex(encodeClientFlags(0)), "00000000");
  assert.is(encodeClientFlags(3).byteLength, 4);
});

// ---- option requests ----------------------------------------------------------

test("encodeOption: no data", () => {
  assert.is(toHex(encodeOption(Opt.ABORT)), IHAVEOPT_HEX + "00000002" + "00000000");
  assert.is(toHex(encodeOption(Opt.STRUCTURED_REPLY)), IHAVEOPT_HEX + "00000008" + "00000000");
  assert.is(toHex(encodeOption(Opt.LIST, new Uint8Array(0))), IHAVEOPT_HEX + "00000003" + "00000000");
});

test("encodeOption: with data", () => {
  assert.is(toHex(encodeOption(Opt.EXPORT_NAME, hex("666f6f"))),
    IHAVEOPT_HEX + "00000001" + "00000003" + "666f6f");
  // Data given as a subarray (nonzero byteOffset) is copied correctly.
  const big = hex("ffff0102030405ffff");
  assert.is(toHex(encodeOption(Opt.SET_META_CONTEXT, big.subarray(2, 7))),
    IHAVEOPT_HEX + "0000000a" + "00000005" + "0102030405");
});

test("encodeInfoRequest: exact bytes", () => {
  // 32 name length; name; 16 number of infos; 16 each.
  assert.is(toHex(encodeInfoRequest("a", [Info.BLOCK_SIZE])), "00000001" + "61" + "0001" + "0003");
  assert.is(toHex(encodeInfoRequest("", [])), "00000000" + "0000");
  assert.is(toHex(encodeInfoRequest("disk", [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE])),
    "00000004" + "6469736b" + "0003" + "0001" + "0002" + "0003");
  // The name length counts UTF-8 bytes, not UTF-16 code units.
  assert.is(toHex(encodeInfoRequest("é", [Info.EXPORT])), "00000002" + "c3a9" + "0001" + "0000");
});

test("encodeMetaContextRequest: exact bytes", () => {
  // 32 export-name length; name; 32 number of queries; each 32 length + query.
  assert.is(toHex(encodeMetaContextRequest("", ["base:allocation"])),
    "00000000" + "00000001" + "0000000f" + "626173653a616c6c6f636174696f6e");
  assert.is(toHex(encodeMetaContextRequest("x", [])), "00000001" + "78" + "00000000");
  assert.is(toHex(encodeMetaContextRequest("e", ["a:b", "c:"])),
    "00000001" + "65" + "00000002" + "00000003" + "613a62" + "00000002" + "633a");
  assert.is(toHex(encodeMetaContextRequest("ü", ["q:ü"])),
    "00000002" + "c3bc" + "00000001" + "00000004" + "713ac3bc");
});

// ---- option replies -----------------------------------------------------------

const REPLY_MAGIC_HEX = "0003e889045565a9";

test("decodeOptionReplyHeader: good", () => {
  assert.equal(decodeOptionReplyHeader(hex(REPLY_MAGIC_HEX + "00000007" + "00000003" + "0000000c")),
    { option: 7, type: 3, length: 12 });
  // Error types have bit 31 set and must come out unsigned.
  assert.equal(decodeOptionReplyHeader(hex(REPLY_MAGIC_HEX + "00000063" + "80000001" + "00000010")),
    { option: 99, type: 0x80000001, length: 16 });
  assert.equal(decodeOptionReplyHeader(hex(REPLY_MAGIC_HEX + "0000000a" + "00000001" + "00000000")),
    { option: 10, type: 1, length: 0 });
});

test("decodeOptionReplyHeader: bad magic / short", () => {
  throwsProto(() => decodeOptionReplyHeader(hex("0003e889045565aa" + "00000007" + "00000001" + "00000000")),
    "handshake: invalid option reply magic");
  throwsProto(() => decodeOptionReplyHeader(hex(IHAVEOPT_HEX + "00000007" + "00000001" + "00000000")),
    "handshake: invalid option reply magic");
  throwsProto(() => decodeOptionReplyHeader(hex(REPLY_MAGIC_HEX + "00000007" + "00000001" + "000000")), /short/);
});

test("decodeInfo: EXPORT, exactly 12 bytes", () => {
  assert.equal(decodeInfo(hex("0000" + "0000000000100000" + "0d6d")),
    { type: Info.EXPORT, size: 0x100000n, eflags: 0x0d6d });
  assert.equal(decodeInfo(hex("0000" + "ffffffffffffffff" + "ffff")),
    { type: Info.EXPORT, size: 0xffffffffffffffffn, eflags: 0xffff });
});

test("decodeInfo: EXPORT with wrong length throws", () => {
  throwsProto(() => decodeInfo(hex("0000" + "0000000000100000" + "0d")),
    "handshake: incorrect NBD_INFO_EXPORT option reply length");
  throwsProto(() => decodeInfo(hex("0000" + "0000000000100000" + "0d6d" + "00")),
    "handshake: incorrect NBD_INFO_EXPORT option reply length");
  throwsProto(() => decodeInfo(hex("0000")), "handshake: incorrect NBD_INFO_EXPORT option reply length");
});

test("decodeInfo: NAME and DESCRIPTION", () => {
  assert.equal(decodeInfo(hex("0001" + "666f6f")), { type: Info.NAME, text: "foo" });
  assert.equal(decodeInfo(hex("0001")), { type: Info.NAME, text: "" });
  assert.equal(decodeInfo(hex("0002" + "6869" + "20" + "c3a9")), { type: Info.DESCRIPTION, text: "hi é" });
  // 4096 bytes of text is the limit; 4097 is too long.
  assert.equal(decodeInfo(hex("0001" + "61".repeat(4096))), { type: Info.NAME, text: "a".repeat(4096) });
  throwsProto(() => decodeInfo(hex("0002" + "61".repeat(4097))), /too long/);
});

test("decodeInfo: BLOCK_SIZE, exactly 14 bytes", () => {
  assert.equal(decodeInfo(hex("0003" + "00000001" + "00001000" + "02000000")),
    { type: Info.BLOCK_SIZE, minimum: 1, preferred: 4096, maximum: 33554432 });
  assert.equal(decodeInfo(hex("0003" + "00000200" + "00010000" + "ffffffff")),
    { type: Info.BLOCK_SIZE, minimum: 512, preferred: 65536, maximum: 0xffffffff });
  throwsProto(() => decodeInfo(hex("0003" + "00000001" + "00001000" + "020000")),
    "handshake: incorrect NBD_INFO_BLOCK_SIZE option reply length");
  throwsProto(() => decodeInfo(hex("0003" + "00000001" + "00001000" + "02000000" + "00")),
    "handshake: incorrect NBD_INFO_BLOCK_SIZE option reply length");
});

test("decodeInfo: unknown type is returned, not thrown", () => {
  assert.equal(decodeInfo(hex("0063" + "0102")), { type: "unknown", code: 99 });
  assert.equal(decodeInfo(hex("ffff")), { type: "unknown", code: 0xffff });
  throwsProto(() => decodeInfo(hex("00")), /short/);
});

test("decodeServer", () => {
  assert.equal(decodeServer(hex("00000003" + "666f6f" + "6465736372")), { name: "foo", description: "descr" });
  assert.equal(decodeServer(hex("00000000")), { name: "", description: "" });
  assert.equal(decodeServer(hex("00000003" + "626172")), { name: "bar", description: "" });
  assert.equal(decodeServer(hex("00000000" + "6869")), { name: "", description: "hi" });
  throwsProto(() => decodeServer(hex("00000004" + "666f6f")), "handshake: invalid NBD_REP_SERVER name length");
  throwsProto(() => decodeServer(hex("ffffffff" + "666f6f")), "handshake: invalid NBD_REP_SERVER name length");
  throwsProto(() => decodeServer(hex("000000")), /short/);
});

test("decodeMetaContext", () => {
  assert.equal(decodeMetaContext(hex("00000001" + "626173653a616c6c6f636174696f6e")),
    { id: 1, name: "base:allocation" });
  assert.equal(decodeMetaContext(hex("ffffffff" + "783a79")), { id: 0xffffffff, name: "x:y" });
  assert.equal(decodeMetaContext(hex("00000000")), { id: 0, name: "" });
  throwsProto(() => decodeMetaContext(hex("000000")), /short/);
  throwsProto(() => decodeMetaContext(hex("00000001" + "61".repeat(4097))), /too long/);
});

test("decodeExportNameReply", () => {
  assert.equal(decodeExportNameReply(hex("0000000000100000" + "0003" + zeroes(124))),
    { size: 0x100000n, eflags: 3 });
  // With NO_ZEROES only 10 bytes come.
  assert.equal(decodeExportNameReply(hex("ffffffffffffffff" + "8d6f")),
    { size: 0xffffffffffffffffn, eflags: 0x8d6f });
  throwsProto(() => decodeExportNameReply(hex("0000000000100000" + "00")), /short/);
});

// ---- transmission: requests ----------------------------------------------------

const REQ = "25609513";

test("encodeRequest: READ cookie 1 offset 0x1000 length 512 FUA, byte-exact", () => {
  const b = requestBuffer();
  assert.is(b.byteLength, 28);
  encodeRequest(view(b), CmdFlag.FUA, Cmd.READ, 1, 0x1000, 512);
  assert.is(toHex(b), REQ + "0001" + "0000" + "0000000000000001" + "0000000000001000" + "00000200");
});

test("encodeRequest: bigint offset above 2^53", () => {
  const b = requestBuffer();
  encodeRequest(view(b), 0, Cmd.READ, 2, 2n ** 53n + 1n, 4096);
  assert.is(toHex(b), REQ + "0000" + "0000" + "0000000000000002" + "0020000000000001" + "00001000");
  encodeRequest(view(b), 0, Cmd.TRIM, 3, 0xfffffffffffffe00n, 512);
  assert.is(toHex(b), REQ + "0000" + "0004" + "0000000000000003" + "fffffffffffffe00" + "00000200");
});

test("encodeRequest: number offsets and cookies above 2^32", () => {
  const b = requestBuffer();
  encodeRequest(view(b), 0, Cmd.WRITE, 0x100000005, 0x123456789a, 0x10000);
  assert.is(toHex(b), REQ + "0000" + "0001" + "0000000100000005" + "000000123456789a" + "00010000");
  encodeRequest(view(b), 0, Cmd.READ, 7, 2 ** 53 - 1, 1);
  assert.is(toHex(b), REQ + "0000" + "0000" + "0000000000000007" + "001fffffffffffff" + "00000001");
  // 2^32 exactly: the low word must be 0, not wrap into the high word wrongly.
  encodeRequest(view(b), 0, Cmd.READ, 8, 2 ** 32, 512);
  assert.is(toHex(b), REQ + "0000" + "0000" + "0000000000000008" + "0000000100000000" + "00000200");
  // Same offset as bigint and number give the same bytes as written by hand.
  encodeRequest(view(b), 0, Cmd.READ, 9, 0xfffffffffn, 512);
  assert.is(toHex(b), REQ + "0000" + "0000" + "0000000000000009" + "0000000fffffffff" + "00000200");
  encodeRequest(view(b), 0, Cmd.READ, 9, 0xfffffffff, 512);
  assert.is(toHex(b), REQ + "0000" + "0000" + "0000000000000009" + "0000000fffffffff" + "00000200");
});

test("encodeRequest: flags, other commands, maximal count, non-zero byteOffset", () => {
  const b = requestBuffer();
  encodeRequest(view(b), CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO, Cmd.WRITE_ZEROES, 4, 0, 0xffffffff);
  assert.is(toHex(b), REQ + "0012" + "0006" + "0000000000000004" + "0000000000000000" + "ffffffff");
  encodeRequest(view(b), CmdFlag.REQ_ONE, Cmd.BLOCK_STATUS, 5, 0, 0x200000);
  assert.is(toHex(b), REQ + "0008" + "0007" + "0000000000000005" + "0000000000000000" + "00200000");
  encodeRequest(view(b), 0, Cmd.DISC, 6, 0, 0);
  assert.is(toHex(b), REQ + "0000" + "0002" + "0000000000000006" + zeroes(8) + zeroes(4));
  // Written at the start of the given view, even if the view starts mid-buffer.
  const outer = new Uint8Array(32).fill(0xee);
  encodeRequest(new DataView(outer.buffer, 2, 28), CmdFlag.DF, Cmd.READ, 1, 0, 512);
  assert.is(toHex(outer), "eeee" + REQ + "0004" + "0000" + "0000000000000001" + zeroes(8) + "00000200" + "eeee");
});

// ---- transmission: replies ----------------------------------------------------

test("replyHeaderSize", () => {
  assert.is(replyHeaderSize(0x67446698), 16);
  assert.is(replyHeaderSize(0x668e33ef), 20);
  assert.is(replyHeaderSize(0x25609513), 0);
  assert.is(replyHeaderSize(0x96744668), 0);
  assert.is(replyHeaderSize(0), 0);
  // As read off the wire with getUint32.
  assert.is(replyHeaderSize(view(hex("67446698")).getUint32(0)), 16);
  assert.is(replyHeaderSize(view(hex("668e33ef")).getUint32(0)), 20);
});

test("decodeSimpleReply", () => {
  assert.equal(decodeSimpleReply(view(hex("67446698" + "00000000" + "0000000000000001"))), { error: 0, cookie: 1 });
  assert.equal(decodeSimpleReply(view(hex("67446698" + "00000016" + "000000010000002a"))),
    { error: 22, cookie: 0x10000002a });
  assert.equal(decodeSimpleReply(view(hex("67446698" + "ffffffff" + "001fffffffffffff"))),
    { error: 0xffffffff, cookie: 2 ** 53 - 1 });
});

test("decodeChunkHeader", () => {
  assert.equal(decodeChunkHeader(view(hex("668e33ef" + "0001" + "0001" + "0000000000000007" + "00000208"))),
    { flags: 1, type: Chunk.OFFSET_DATA, cookie: 7, length: 520 });
  assert.equal(decodeChunkHeader(view(hex("668e33ef" + "0000" + "8002" + "0000000100000003" + "00000016"))),
    { flags: 0, type: 0x8002, cookie: 0x100000003, length: 22 });
  assert.equal(decodeChunkHeader(view(hex("668e33ef" + "ffff" + "0005" + "0000000000000000" + "ffffffff"))),
    { flags: 0xffff, type: Chunk.BLOCK_STATUS, cookie: 0, length: 0xffffffff });
});

test("decodeOffset", () => {
  assert.is(decodeOffset(hex("0000000000001000")), 0x1000n);
  assert.is(decodeOffset(hex("fffffffffffffe00")), 0xfffffffffffffe00n);
  // OFFSET_DATA: the offset is followed by data, which is ignored here.
  assert.is(decodeOffset(hex("0000000000000200" + "abcdef")), 0x200n);
  // Works on a subarray with a nonzero byteOffset.
  assert.is(decodeOffset(hex("ff" + "0020000000000001").subarray(1)), 2n ** 53n + 1n);
});

test("decodeOffsetHole: good", () => {
  assert.equal(decodeOffsetHole(hex("0000000000002000" + "00001000")), { offset: 0x2000n, length: 4096 });
  assert.equal(decodeOffsetHole(hex("8000000000000000" + "ffffffff")),
    { offset: 0x8000000000000000n, length: 0xffffffff });
});

test("decodeOffsetHole: wrong length", () => {
  throwsProto(() => decodeOffsetHole(hex("0000000000002000" + "000010")),
    "invalid length in NBD_REPLY_TYPE_OFFSET_HOLE");
  throwsProto(() => decodeOffsetHole(hex("0000000000002000" + "00001000" + "00")),
    "invalid length in NBD_REPLY_TYPE_OFFSET_HOLE");
  throwsProto(() => decodeOffsetHole(hex("")), "invalid length in NBD_REPLY_TYPE_OFFSET_HOLE");
});

test("decodeOffsetHole: zero hole length", () => {
  throwsProto(() => decodeOffsetHole(hex("0000000000002000" + "00000000")),
    "invalid length of zero in NBD_REPLY_TYPE_OFFSET_HOLE");
});

test("decodeErrorChunk: ERROR", () => {
  const e = decodeErrorChunk(hex("00000005" + "0004" + "6f6f7073"), Chunk.ERROR);
  assert.equal(e, { error: 5, message: "oops" });
  assert.not.ok("offset" in e);
  assert.equal(decodeErrorChunk(hex("00000016" + "0000"), Chunk.ERROR), { error: 22, message: "" });
  // The message length may be less than length-6 (spec: ≤ length-6).
  assert.equal(decodeErrorChunk(hex("00000005" + "0002" + "6869" + "ffff"), Chunk.ERROR), { error: 5, message: "hi" });
  // An unknown type with bit 15 set is decoded like ERROR.
  assert.equal(decodeErrorChunk(hex("00000001" + "0001" + "78"), 0x8003), { error: 1, message: "x" });
});

test("decodeErrorChunk: ERROR_OFFSET", () => {
  assert.equal(decodeErrorChunk(hex("00000005" + "0002" + "6869" + "0000000000001000"), Chunk.ERROR_OFFSET),
    { error: 5, message: "hi", offset: 0x1000n });
  assert.equal(decodeErrorChunk(hex("0000001c" + "0000" + "ffffffffffffff00"), Chunk.ERROR_OFFSET),
    { error: 28, message: "", offset: 0xffffffffffffff00n });
  // Trailing bytes after the offset are not allowed.
  throwsProto(() => decodeErrorChunk(hex("00000005" + "0000" + "0000000000001000" + "00"), Chunk.ERROR_OFFSET),
    "invalid length in NBD_REPLY_TYPE_ERROR_OFFSET");
});

test("decodeErrorChunk: message too long / too short", () => {
  // ERROR: message length 5 but only 4 bytes follow.
  throwsProto(() => decodeErrorChunk(hex("00000005" + "0005" + "6f6f7073"), Chunk.ERROR), "error message length too large");
  // ERROR_OFFSET: the message must leave room for the 8-byte offset (≤ length-14).
  throwsProto(() => decodeErrorChunk(hex("00000005" + "0004" + "6f6f7073" + "00000000"), Chunk.ERROR_OFFSET),
    "error message length too large");
  throwsProto(() => decodeErrorChunk(hex("00000005" + "0000" + "00000000000010"), Chunk.ERROR_OFFSET),
    "error message length too large");
  // More than 4096 bytes even though the payload holds them.
  throwsProto(() => decodeErrorChunk(hex("00000005" + "1001" + "61".repeat(4097)), Chunk.ERROR),
    "error message length too large");
  // 4096 is fine.
  assert.is(decodeErrorChunk(hex("00000005" + "1000" + "61".repeat(4096)), Chunk.ERROR).message, "a".repeat(4096));
  // Fewer than 6 bytes.
  throwsProto(() => decodeErrorChunk(hex("00000005" + "00"), Chunk.ERROR), "too short length in structured reply error");
});

test("decodeBlockStatus", () => {
  const r = decodeBlockStatus(hex("00000001" + "00010000" + "00000000" + "000f0000" + "00000003"));
  assert.is(r.id, 1);
  assert.instance(r.entries, Uint32Array);
  assert.equal(Array.from(r.entries), [65536, 0, 983040, 3]);
  const one = decodeBlockStatus(hex("ffffffff" + "00000200" + "80000003"));
  assert.is(one.id, 0xffffffff);
  assert.equal(Array.from(one.entries), [512, 0x80000003]);
  // Works on a subarray with a nonzero byteOffset.
  const sub = decodeBlockStatus(hex("aaaa" + "00000002" + "00100000" + "00000001").subarray(2));
  assert.equal({ id: sub.id, entries: Array.from(sub.entries) }, { id: 2, entries: [0x100000, 1] });
});

test("decodeBlockStatus: bad lengths throw", () => {
  const msg = "invalid length in NBD_REPLY_TYPE_BLOCK_STATUS";
  throwsProto(() => decodeBlockStatus(hex("00000001")), msg);
  throwsProto(() => decodeBlockStatus(hex("00000001" + "00000200")), msg);
  throwsProto(() => decodeBlockStatus(hex("00000001" + "00000200" + "00000000" + "00000200")), msg);
  throwsProto(() => decodeBlockStatus(hex("00000001" + "00000200" + "000000")), msg);
});

// ---- extended headers (NBD_OPT_EXTENDED_HEADERS) -------------------------------------
// Fixtures from the spec's extension-ext-header text: request magic 0x21e41c71,
// reply magic 0x6e8a278c, both headers 32 bytes with a 64-bit length.

const EXT_REQ = "21e41c71";
const EXT_REP = "6e8a278c";

test("extended headers: the option, its error reply, the flags and chunk type have the spec's numbers", () => {
  assert.is(toHex(encodeOption(Opt.EXTENDED_HEADERS)), IHAVEOPT_HEX + "0000000b" + "00000000");
  assert.equal(decodeOptionReplyHeader(hex("0003e889045565a9" + "0000000b" + "8000000a" + "00000000")),
    { option: 11, type: Rep.ERR_EXT_HEADER_REQD, length: 0 });
  assert.is(TFlag.BLOCK_STATUS_PAYLOAD, 0x1000);
  assert.is(CmdFlag.PAYLOAD_LEN, 0x20);
  assert.is(Chunk.BLOCK_STATUS_EXT, 6);
});

test("encodeExtendedRequest: WRITE with PAYLOAD_LEN | FUA, byte-exact", () => {
  const b = new Uint8Array(32);
  encodeExtendedRequest(view(b), CmdFlag.PAYLOAD_LEN | CmdFlag.FUA, Cmd.WRITE, 1, 0x1000, 512);
  assert.is(toHex(b), EXT_REQ + "0021" + "0001" + "0000000000000001" + "0000000000001000" + "0000000000000200");
});

test("encodeExtendedRequest: 64-bit lengths, as numbers and bigints", () => {
  const b = new Uint8Array(32);
  // TRIM of 5 GiB at 2^33.
  encodeExtendedRequest(view(b), 0, Cmd.TRIM, 2, 2 ** 33, 5 * 2 ** 30);
  assert.is(toHex(b), EXT_REQ + "0000" + "0004" + "0000000000000002" + "0000000200000000" + "0000000140000000");
  encodeExtendedRequest(view(b), CmdFlag.FAST_ZERO, Cmd.WRITE_ZEROES, 3, 0n, 0xffffffffffffffffn);
  assert.is(toHex(b), EXT_REQ + "0010" + "0006" + "0000000000000003" + zeroes(8) + "ffffffffffffffff");
  // 2^32 exactly: one in the high word, zero in the low one.
  encodeExtendedRequest(view(b), 0, Cmd.CACHE, 4, 0, 2 ** 32);
  assert.is(toHex(b), EXT_REQ + "0000" + "0005" + "0000000000000004" + zeroes(8) + "0000000100000000");
  encodeExtendedRequest(view(b), 0, Cmd.DISC, 5, 0, 0);
  assert.is(toHex(b), EXT_REQ + "0000" + "0002" + "0000000000000005" + zeroes(16));
  // At the start of a view that starts mid-buffer.
  const outer = new Uint8Array(36).fill(0xee);
  encodeExtendedRequest(new DataView(outer.buffer, 2, 32), CmdFlag.REQ_ONE | CmdFlag.PAYLOAD_LEN, Cmd.BLOCK_STATUS, 6, 512, 12);
  assert.is(toHex(outer), "eeee" + EXT_REQ + "0028" + "0007" + "0000000000000006" + "0000000000000200" + "000000000000000c" + "eeee");
});

test("requestHeaderSize and decodeRequest (a server's side): both forms", () => {
  assert.is(requestHeaderSize(0x25609513), 28);
  assert.is(requestHeaderSize(0x21e41c71), 32);
  assert.is(requestHeaderSize(0x67446698), 0);
  assert.is(requestHeaderSize(0x6e8a278c), 0);
  assert.equal(decodeRequest(view(hex(REQ + "0001" + "0001" + "0000000000000009" + "0000000000001000" + "ffffffff"))),
    { extended: false, flags: 1, type: Cmd.WRITE, cookie: 9n, offset: 0x1000n, length: 0xffffffffn });
  assert.equal(decodeRequest(view(hex(EXT_REQ + "0020" + "0006" + "0000000100000000" + "fffffffffffffe00" + "0000000140000000"))),
    { extended: true, flags: 0x20, type: Cmd.WRITE_ZEROES, cookie: 2n ** 32n, offset: 0xfffffffffffffe00n, length: 0x140000000n });
});

test("replyHeaderSize: the extended reply magic means 32 bytes", () => {
  assert.is(replyHeaderSize(0x6e8a278c), 32);
  assert.is(replyHeaderSize(view(hex(EXT_REP)).getUint32(0)), 32);
  // The request magics are not reply magics.
  assert.is(replyHeaderSize(0x21e41c71), 0);
});

test("decodeExtendedChunkHeader", () => {
  assert.equal(decodeExtendedChunkHeader(view(hex(EXT_REP + "0001" + "0006" + "0000000000000007" + "0000000100000000" + "0000000000000028"))),
    { flags: 1, type: Chunk.BLOCK_STATUS_EXT, cookie: 7, offset: 2n ** 32n, length: 40 });
  assert.equal(decodeExtendedChunkHeader(view(hex(EXT_REP + "0000" + "0001" + "0000000100000003" + "0000000000001000" + "0000000000000208"))),
    { flags: 0, type: Chunk.OFFSET_DATA, cookie: 0x100000003, offset: 0x1000n, length: 520 });
  // A length beyond any sane reply still compares as huge (it is checked against 64 MiB).
  const huge = decodeExtendedChunkHeader(view(hex(EXT_REP + "ffff" + "8001" + zeroes(8) + "ffffffffffffffff" + "ffffffffffffffff")));
  assert.equal([huge.flags, huge.type, huge.cookie, huge.offset], [0xffff, 0x8001, 0, 0xffffffffffffffffn]);
  assert.ok(huge.length > 2 ** 63);
  // 2^32 + 8: not truncated to 32 bits.
  assert.is(decodeExtendedChunkHeader(view(hex(EXT_REP + "0001" + "0000" + zeroes(8) + zeroes(8) + "0000000100000008"))).length, 2 ** 32 + 8);
});

test("decodeBlockStatusExt: id, count, 64-bit (length, status) pairs", () => {
  const r = decodeBlockStatusExt(hex("00000001" + "00000002" + "0000000140000000" + "0000000000000000" + "00000000c0000000" + "0000000000000003"));
  assert.is(r.id, 1);
  assert.is(r.count, 2);
  assert.instance(r.entries, BigUint64Array);
  assert.equal(Array.from(r.entries), [0x140000000n, 0n, 0xc0000000n, 3n]);
  const wide = decodeBlockStatusExt(hex("aa" + "ffffffff" + "00000001" + "ffffffffffffffff" + "ffffffff00000001").subarray(1));
  assert.equal([wide.id, wide.count, Array.from(wide.entries)], [0xffffffff, 1, [0xffffffffffffffffn, 0xffffffff00000001n]]);
  // The count is as sent, even when it disagrees with the payload.
  assert.is(decodeBlockStatusExt(hex("00000001" + "00000005" + "0000000000000200" + zeroes(8))).count, 5);
});

test("decodeBlockStatusExt: bad lengths throw", () => {
  const msg = "invalid length in NBD_REPLY_TYPE_BLOCK_STATUS_EXT";
  throwsProto(() => decodeBlockStatusExt(hex("00000001" + "00000000")), msg);
  throwsProto(() => decodeBlockStatusExt(hex("00000001" + "00000001" + "0000000000000200")), msg);
  throwsProto(() => decodeBlockStatusExt(hex("00000001" + "00000001" + "0000000000000200" + zeroes(8) + "00")), msg);
  // A compact BLOCK_STATUS payload (4 + 8n) is not an extended one.
  throwsProto(() => decodeBlockStatusExt(hex("00000001" + "00000200" + "00000000" + "00000200" + "00000000")), msg);
});

test("encodeBlockStatusPayload / decodeBlockStatusPayload: 64-bit length, then 32-bit context ids", () => {
  assert.is(toHex(encodeBlockStatusPayload(0x140000000n, [1, 2])), "0000000140000000" + "00000001" + "00000002");
  assert.is(toHex(encodeBlockStatusPayload(512n, [])), "0000000000000200");
  assert.equal(decodeBlockStatusPayload(hex("ffffffffffffffff" + "ffffffff")), { length: 0xffffffffffffffffn, ids: [0xffffffff] });
  assert.equal(decodeBlockStatusPayload(hex("0000000000001000")), { length: 4096n, ids: [] });
  throwsProto(() => decodeBlockStatusPayload(hex("00000000")), "invalid block status payload length");
  throwsProto(() => decodeBlockStatusPayload(hex("0000000000001000" + "0001")), "invalid block status payload length");
});

test("errnoOfNbdError", () => {
  const cases: Array<[number, number]> = [
    [0, 0], [1, 1], [5, 5], [12, 12], [22, 22], [28, 28], [75, 75], [95, 95], [108, 108],
  ];
  for (const [nbd, want] of cases) assert.is(errnoOfNbdError(nbd), want, `NBD error ${nbd}`);
  // Unknown values are EINVAL (spec §2.12).
  for (const unknown of [2, 99, 71, 0x80000000, 0xffffffff]) assert.is(errnoOfNbdError(unknown), 22, `NBD error ${unknown}`);
});

test.run();
