/**
 * libnbd's public constants without the LIBNBD_ prefix, with libnbd's values.
 * Where a constant is also a wire value, it is taken from the protocol module.
 */
import { CmdFlag } from "./protocol/constants.js";

/** Never use TLS (the default). */
export const TLS_DISABLE = 0;
/** Use TLS if the server offers it, else carry on in plaintext. */
export const TLS_ALLOW = 1;
/** Use TLS or fail the handshake; never fall back to plaintext. */
export const TLS_REQUIRE = 2;

/** The server's minimum block size: requests not aligned to it may fail (0: none advertised). */
export const SIZE_MINIMUM = 0;
/** The block size the server handles best (0: none advertised). */
export const SIZE_PREFERRED = 1;
/** The largest request the server accepts (0: none advertised). */
export const SIZE_MAXIMUM = 2;
/** The largest write payload the client will send (libnbd 1.18). */
export const SIZE_PAYLOAD = 3;

/** Force unit access: the command returns only once the data is on stable storage. */
export const CMD_FLAG_FUA = CmdFlag.FUA;
/** zero: write actual zeroes rather than punching a hole. */
export const CMD_FLAG_NO_HOLE = CmdFlag.NO_HOLE;
/** Don't fragment: the server must answer a structured read in one data chunk. */
export const CMD_FLAG_DF = CmdFlag.DF;
/** Block status: one extent per meta context is enough. */
export const CMD_FLAG_REQ_ONE = CmdFlag.REQ_ONE;
/** zero: fail at once (ENOTSUP) unless zeroing is faster than writing. */
export const CMD_FLAG_FAST_ZERO = CmdFlag.FAST_ZERO;
/** The length travels in the payload (extended headers; libnbd 1.18). */
export const CMD_FLAG_PAYLOAD_LEN = CmdFlag.PAYLOAD_LEN;
/** Every command flag libnbd knows. */
export const CMD_FLAG_MASK = 0x3f;

/** Ask for the fixed newstyle handshake. */
export const HANDSHAKE_FLAG_FIXED_NEWSTYLE = 0x01;
/** Skip the 124 bytes of zeroes after the handshake. */
export const HANDSHAKE_FLAG_NO_ZEROES = 0x02;
/** Every handshake flag. */
export const HANDSHAKE_FLAG_MASK = 0x03;

/** Refuse commands and flags the server did not advertise. */
export const STRICT_COMMANDS = 0x01;
/** Refuse command flags the call does not accept. */
export const STRICT_FLAGS = 0x02;
/** Refuse requests that reach past the end of the export. */
export const STRICT_BOUNDS = 0x04;
/** Refuse requests of length 0. */
export const STRICT_ZERO_SIZE = 0x08;
/** Refuse requests not aligned to the server's minimum block size. */
export const STRICT_ALIGN = 0x10;
/** Refuse writes larger than the maximum payload. */
export const STRICT_PAYLOAD = 0x20;
/** Let the library decide flags it manages itself (such as CMD_FLAG_PAYLOAD_LEN). */
export const STRICT_AUTO_FLAG = 0x40;
/** Every strictness flag (the default). */
export const STRICT_MASK = 0x7f;

/** URIs may connect over TCP (nbd://, nbds://). */
export const ALLOW_TRANSPORT_TCP = 0x01;
/** URIs may connect to a Unix socket (nbd+unix://, nbds+unix://). */
export const ALLOW_TRANSPORT_UNIX = 0x02;
/** URIs may connect over AF_VSOCK (nbd+vsock://; Node cannot, so such a URI is ENOTSUP). */
export const ALLOW_TRANSPORT_VSOCK = 0x04;
/** Every transport. */
export const ALLOW_TRANSPORT_MASK = 0x07;

/** shutdown: drop the commands not yet sent (they fail with ENOTCONN). */
export const SHUTDOWN_ABANDON_PENDING = 0x10000;
/** Every shutdown flag. */
export const SHUTDOWN_MASK = 0x10000;

/** The handle is waiting to read from the socket. */
export const AIO_DIRECTION_READ = 1;
/** The handle is waiting to write to the socket. */
export const AIO_DIRECTION_WRITE = 2;
/** The handle is waiting to read and to write. */
export const AIO_DIRECTION_BOTH = 3;

/** The chunk holds data. */
export const READ_DATA = 1;
/** The chunk is a hole: it reads as zeroes. */
export const READ_HOLE = 2;
/** The server reported an error for the chunk's range. */
export const READ_ERROR = 3;

/** The namespace of the protocol's own meta contexts. */
export const NAMESPACE_BASE = "base:";
/** The meta context of allocation: its extents carry STATE_HOLE and STATE_ZERO. */
export const CONTEXT_BASE_ALLOCATION = "base:allocation";
/** base:allocation: the range is not allocated. */
export const STATE_HOLE = 1;
/** base:allocation: the range reads as zeroes. */
export const STATE_ZERO = 2;
/** The namespace of qemu's meta contexts. */
export const NAMESPACE_QEMU = "qemu:";
/** The prefix of qemu's dirty-bitmap meta contexts (add the bitmap's name). */
export const CONTEXT_QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:";
/** qemu's meta context for how deep in the backing chain each range is allocated. */
export const CONTEXT_QEMU_ALLOCATION_DEPTH = "qemu:allocation-depth";
/** qemu:dirty-bitmap: the range is dirty. */
export const STATE_DIRTY = 1;

/** The largest read or write libnbd will issue (not exported by libnbd's header). */
export const MAX_REQUEST_SIZE = 64 * 1024 * 1024;
