/**
 * How docs/api.md groups the calls and constants: by the sections of
 * libnbd's own manual (libnbd(3)), in its order. A call goes in the first
 * section whose rule matches its name (extensions first), so a new table
 * entry usually needs no edit here; the generator stops on a call that fits
 * none.
 */
import type { Call } from "./types.js";

export interface Section {
  readonly title: string;
  /** One line on what the section's calls are for. */
  readonly about: string;
  /** libnbd's hand-written calls (HANDWRITTEN in table.ts) that belong here. */
  readonly handwritten?: readonly string[];
  readonly match: (key: string, call: Call) => boolean;
}

const named = (re: RegExp) => (key: string) => re.test(key);

export const SECTIONS: readonly Section[] = [
  {
    title: "Handles",
    about: "Making and closing a handle, naming it, and what library it is.",
    handwritten: ["nbd_create", "nbd_close"],
    match: named(/HandleName$|^getVersion$|^getPackageName$/),
  },
  {
    title: "Error handling",
    about: "The calling thread's last error: set by every failed call, left alone by a successful one.",
    handwritten: ["nbd_get_error", "nbd_get_errno"],
    match: () => false,
  },
  {
    title: "Debugging messages",
    about: "libnbd's debug lines (also on with LIBNBD_DEBUG=1), to stderr or to a callback.",
    match: named(/Debug/),
  },
  {
    title: "Connecting to NBD servers",
    about: "Unix and TCP sockets, NBD URIs, a server run as a subprocess (plain or by systemd socket activation), a socket you opened.",
    match: named(/^(aio)?[cC]onnect[A-Z]|Subprocess|Uri|SocketActivation/),
  },
  {
    title: "Controlling negotiation",
    about: "What the handshake asks the server for, and opt mode, in which the caller drives the handshake option by option.",
    match: named(/^(aio)?[oO]pt|OptMode|^(set|get)ExportName$|FullInfo|^(set|get)Request|HandshakeFlags|^(add|get|clear|getNr)MetaContexts?$/),
  },
  {
    title: "Exports and flags",
    about: "What the server said about the export: size, block sizes, protocol, and the flags that say which commands it supports.",
    match: named(/^(is|can)[A-Z]|^get(Size|BlockSize|Protocol|CanonicalExportName|ExportDescription)$|^get(?!Tls).*Negotiated$/),
  },
  {
    title: "Data commands",
    about: "Blocking reads, writes and the other commands; each returns when the server has replied.",
    match: named(/^(pread|pwrite|flush|trim|cache|zero|blockStatus|shutdown)|PreadInitialize$|StrictMode$/),
  },
  {
    title: "Issuing asynchronous commands",
    about: "The same commands, returning a cookie at once; they complete later, seen through poll, aioCommandCompleted or a completion callback.",
    match: named(/^aio(?!Is|Get|Notify|InFlight|CommandCompleted|PeekCommandCompleted)/),
  },
  {
    title: "Completing asynchronous commands",
    about: "Waiting for and retiring aio commands. The socket lives in nbd-ts's worker thread, so the calls for external event loops are ENOTSUP.",
    match: named(/^poll|^aio(Get|Notify|InFlight|CommandCompleted|PeekCommandCompleted)/),
  },
  {
    title: "Handle states",
    about: "Where the handle is in its life: created, connecting, negotiating, ready, processing, closed or dead.",
    match: named(/^aioIs|^connectionState$/),
  },
  {
    title: "Encryption and authentication",
    about: "TLS with X.509 certificates or pre-shared keys, through Node's TLS (OpenSSL); a failure in the TLS layer has errno 0, as libnbd's GnuTLS ones, and leaves the handle dead (the README says more).",
    match: named(/Tls/),
  },
  {
    title: "Statistics counters",
    about: "Bytes and chunks sent and received over the connection so far.",
    match: named(/^stats/),
  },
  {
    title: "nbd-ts extensions",
    about: "Calls libnbd does not have, in its style (C-style names nbd_*, as if it did).",
    match: (_key, call) => call.since === "nbd-ts",
  },
];

/** The section of a call: an extension's own, else the first that matches. */
export function sectionOf(key: string, call: Call): Section {
  const ext = SECTIONS[SECTIONS.length - 1]!;
  const section = ext.match(key, call) ? ext : SECTIONS.find((s) => s.match(key, call));
  if (!section) throw new Error(`${key}: no section of src/api/sections.ts takes it; extend a rule there`);
  return section;
}

export interface ConstantGroup {
  readonly title: string;
  readonly about: string;
  readonly match: RegExp;
  /** Bit flags: values shown in hex. */
  readonly hex?: true;
}

/** The constants' groups, as libnbd's header has them (each constant in the first that matches). */
export const CONSTANT_GROUPS: readonly ConstantGroup[] = [
  { title: "TLS settings", about: "for setTls and setUriAllowTls; getTls returns one", match: /^TLS_/ },
  { title: "Block size constraints", about: "the size_type of getBlockSize", match: /^SIZE_/ },
  { title: "Command flags", about: "the flags of data commands; each call's docs say which it accepts", match: /^CMD_FLAG_/, hex: true },
  { title: "Handshake flags", about: "for setHandshakeFlags", match: /^HANDSHAKE_FLAG_/, hex: true },
  { title: "Strict mode", about: "for setStrictMode: the checks made before a command goes out", match: /^STRICT_/, hex: true },
  { title: "URI transports", about: "for setUriAllowTransports", match: /^ALLOW_TRANSPORT_/, hex: true },
  { title: "Shutdown flags", about: "for shutdown", match: /^SHUTDOWN_/, hex: true },
  { title: "Directions", about: "what aioGetDirection returns", match: /^AIO_DIRECTION_/ },
  { title: "Chunk status", about: "the status a chunk callback gets (preadStructured)", match: /^READ_/ },
  { title: "Meta contexts", about: "names of meta contexts and the flags their extents carry (blockStatus)", match: /^(NAMESPACE|CONTEXT|STATE)_/ },
  { title: "Limits", about: "sizes libnbd enforces", match: /^MAX_/ },
];
