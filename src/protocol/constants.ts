/**
 * Wire constants of the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd).
 * Every number that travels on the socket is named here and nowhere else.
 * All integers on the wire are big-endian.
 */

// Handshake magics (64-bit).
export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT": newstyle, and the prefix of each option
export const OLDSTYLE_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;

// Transmission magics (32-bit).
export const REQUEST_MAGIC = 0x25609513;
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const EXTENDED_REPLY_MAGIC = 0x6e8a278c;

/** Server handshake flags (16-bit). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32-bit) echo the server's. */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

/** Option codes. */
export const enum Opt {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}

/** Option reply types; errors have bit 31 set. */
export const enum Rep {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = 0x80000001,
  ERR_POLICY = 0x80000002,
  ERR_INVALID = 0x80000003,
  ERR_PLATFORM = 0x80000004,
  ERR_TLS_REQD = 0x80000005,
  ERR_UNKNOWN = 0x80000006,
  ERR_SHUTDOWN = 0x80000007,
  ERR_BLOCK_SIZE_REQD = 0x80000008,
  ERR_TOO_BIG = 0x80000009,
  ERR_EXT_HEADER_REQD = 0x8000000a,
}
export const REP_ERR_BIT = 0x80000000;

/** Info types inside NBD_REP_INFO and in INFO/GO requests. */
export const enum Info {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

/** Transmission flags (16-bit), from NBD_INFO_EXPORT or the EXPORT_NAME reply. */
export const enum TFlag {
  HAS_FLAGS = 1 << 0,
  READ_ONLY = 1 << 1,
  SEND_FLUSH = 1 << 2,
  SEND_FUA = 1 << 3,
  ROTATIONAL = 1 << 4,
  SEND_TRIM = 1 << 5,
  SEND_WRITE_ZEROES = 1 << 6,
  SEND_DF = 1 << 7,
  CAN_MULTI_CONN = 1 << 8,
  SEND_RESIZE = 1 << 9,
  SEND_CACHE = 1 << 10,
  SEND_FAST_ZERO = 1 << 11,
  BLOCK_STATUS_PAYLOAD = 1 << 12,
}

/** Command types (16-bit). */
export const enum Cmd {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}

/** Command flags (16-bit); the same bits as libnbd's LIBNBD_CMD_FLAG_*. */
export const enum CmdFlag {
  FUA = 1 << 0,
  NO_HOLE = 1 << 1,
  DF = 1 << 2,
  REQ_ONE = 1 << 3,
  FAST_ZERO = 1 << 4,
  PAYLOAD_LEN = 1 << 5,
}

/** Structured reply flags and chunk types; error types have bit 15 set. */
export const REPLY_FLAG_DONE = 1 << 0;
export const enum Chunk {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  BLOCK_STATUS_EXT = 6,
  ERROR = 0x8001,
  ERROR_OFFSET = 0x8002,
}
export const CHUNK_ERR_BIT = 0x8000;

/** NBD error values in replies. */
export const enum NbdErr {
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EINVAL = 22,
  ENOSPC = 28,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESHUTDOWN = 108,
}

// Sizes of fixed wire structures, in bytes.
export const OLDSTYLE_SIZE = 8 + 8 + 8 + 4 + 124; // magic, magic, size, flags, zeroes
export const NEWSTYLE_GREETING_SIZE = 8 + 8 + 2;
export const OPTION_HEADER_SIZE = 8 + 4 + 4;
export const OPTION_REPLY_HEADER_SIZE = 8 + 4 + 4 + 4;
export const EXPORT_NAME_REPLY_SIZE = 8 + 2; // then 124 zeroes unless NO_ZEROES
export const EXPORT_NAME_ZEROES = 124;
export const REQUEST_SIZE = 28;
export const EXTENDED_REQUEST_SIZE = 32;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_REPLY_SIZE = 20;
export const EXTENDED_REPLY_SIZE = 32;

/** Strings (export names, context names, messages) may not exceed this. */
export const MAX_STRING = 4096;
