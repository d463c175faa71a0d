/**
 * libnbd's public constants without the LIBNBD_ prefix, with libnbd's values.
 * Where a constant is also a wire value, it is taken from the protocol module.
 */
import { CmdFlag } from "./protocol/constants.js";

export const TLS_DISABLE = 0;
export const TLS_ALLOW = 1;
export const TLS_REQUIRE = 2;

export const SIZE_MINIMUM = 0;
export const SIZE_PREFERRED = 1;
export const SIZE_MAXIMUM = 2;
export const SIZE_PAYLOAD = 3;

export const CMD_FLAG_FUA = CmdFlag.FUA;
export const CMD_FLAG_NO_HOLE = CmdFlag.NO_HOLE;
export const CMD_FLAG_DF = CmdFlag.DF;
export const CMD_FLAG_REQ_ONE = CmdFlag.REQ_ONE;
export const CMD_FLAG_FAST_ZERO = CmdFlag.FAST_ZERO;
export const CMD_FLAG_PAYLOAD_LEN = CmdFlag.PAYLOAD_LEN;
export const CMD_FLAG_MASK = 0x3f;

export const HANDSHAKE_FLAG_FIXED_NEWSTYLE = 0x01;
export const HANDSHAKE_FLAG_NO_ZEROES = 0x02;
export const HANDSHAKE_FLAG_MASK = 0x03;

export const STRICT_COMMANDS = 0x01;
export const STRICT_FLAGS = 0x02;
export const STRICT_BOUNDS = 0x04;
export const STRICT_ZERO_SIZE = 0x08;
export const STRICT_ALIGN = 0x10;
export const STRICT_PAYLOAD = 0x20;
export const STRICT_AUTO_FLAG = 0x40;
export const STRICT_MASK = 0x7f;

export const ALLOW_TRANSPORT_TCP = 0x01;
export const ALLOW_TRANSPORT_UNIX = 0x02;
export const ALLOW_TRANSPORT_VSOCK = 0x04;
export const ALLOW_TRANSPORT_MASK = 0x07;

export const SHUTDOWN_ABANDON_PENDING = 0x10000;
export const SHUTDOWN_MASK = 0x10000;

export const AIO_DIRECTION_READ = 1;
export const AIO_DIRECTION_WRITE = 2;
export const AIO_DIRECTION_BOTH = 3;

export const READ_DATA = 1;
export const READ_HOLE = 2;
export const READ_ERROR = 3;

export const NAMESPACE_BASE = "base:";
export const CONTEXT_BASE_ALLOCATION = "base:allocation";
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
export const NAMESPACE_QEMU = "qemu:";
export const CONTEXT_QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:";
export const CONTEXT_QEMU_ALLOCATION_DEPTH = "qemu:allocation-depth";
export const STATE_DIRTY = 1;

/** The largest read or write libnbd will issue (not exported by libnbd's header). */
export const MAX_REQUEST_SIZE = 64 * 1024 * 1024;
