/**
 * The vocabulary of the API table (after libnbd's generator/API.mli): the
 * kinds of arguments and return values, handle states, and flag sets. The
 * sync Handle, the worker's dispatcher, the argument checks and the README's
 * coverage table are all derived from entries written in these terms.
 */

import type { errno } from "../errno.js";

/** Handle states in which a call is permitted (libnbd's permitted_states). */
export type State = "created" | "connecting" | "negotiating" | "connected" | "closed" | "dead";

/** A named set of flag bits; command flags are checked only in strict mode (or above 16 bits). */
export interface FlagSet {
  readonly prefix: string;
  readonly mask: number;
  readonly commandFlags?: true;
}

export type Arg =
  | { readonly kind: "bool"; readonly name: string }
  | { readonly kind: "int"; readonly name: string }
  | { readonly kind: "uint64"; readonly name: string }
  | { readonly kind: "string"; readonly name: string }
  | { readonly kind: "path"; readonly name: string }
  | { readonly kind: "stringList"; readonly name: string }
  | { readonly kind: "bytesIn"; readonly name: string }
  | { readonly kind: "bytesOut"; readonly name: string }
  | { readonly kind: "bytesPersistIn"; readonly name: string }
  | { readonly kind: "bytesPersistOut"; readonly name: string }
  | { readonly kind: "port"; readonly name: string }
  | { readonly kind: "enum"; readonly name: string; readonly values: readonly number[] }
  | { readonly kind: "closure"; readonly name: string; readonly shape: Shape }
  | { readonly kind: "flags"; readonly name: string; readonly set: FlagSet; readonly allowed: number };

/** libnbd's callback types; their TypeScript shapes are fixed by API.md. */
export type Shape = keyof Shapes;

/** libnbd's `int *error`: a callback may set the errno its failure reports. */
export interface ErrorBox { value: number }

/** What a callback of each shape is called with, and what it returns. */
export interface Shapes {
  list: (name: string, description: string) => number;
  context: (name: string) => number;
  chunk: (subbuf: Uint8Array, offset: bigint, status: number, error: ErrorBox) => number;
  extent: (metacontext: string, offset: bigint, entries: Uint32Array, error: ErrorBox) => number;
  extent64: (metacontext: string, offset: bigint, entries: BigUint64Array, error: ErrorBox) => number;
  completion: (error: ErrorBox) => number;
  debug: (context: string, msg: string) => number;
}

/** Shapes whose -1 fails the command they report on (libnbd's chunk and extent callbacks). */
export const FAILS_ON_MINUS_ONE: ReadonlySet<Shape> = new Set(["chunk", "extent", "extent64"]);

/**
 * Return kinds, which fix the error value: -1 for numbers, -1n for 64-bit
 * values, null for strings. `never` marks calls that cannot fail and so
 * never touch the thread's last error.
 */
export type Ret = "err" | "bool" | "int" | "uint" | "int64" | "cookie" | "string" | "staticString";

export type ErrnoName = keyof typeof errno;

/**
 * Why a call fails with an errno, beyond what its states, arguments and
 * flags already say (the docs derive those): pairs of errno and cause, after
 * `man 3 nbd_<call>` and libnbd's source, in our own words.
 */
export type Errors = readonly (readonly [ErrnoName, string])[];

export interface Call {
  readonly args: readonly Arg[];
  /** Trailing optional arguments (libnbd's OFlags). */
  readonly optargs?: readonly Arg[];
  readonly ret: Ret;
  /** Omitted: permitted in every state, as libnbd's calls without a state check. */
  readonly states?: readonly State[];
  /** False for calls that never fail and never set the error. */
  readonly mayFail?: false;
  /** Spawns a subprocess, so the caller's environment travels with the call. */
  readonly spawns?: true;
  /** Its callback stays registered after the call, under this name (set_debug_callback). */
  readonly keeps?: string;
  /** Unregisters the callback kept under this name (clear_debug_callback). */
  readonly releases?: string;
  /** The NBD command a call issues, as libnbd names it in "<command>: command failed". */
  readonly issues?: string;
  /** The C name when it is not the snake_case of the key (nbd_poll2, nbd_block_status_64). */
  readonly c?: string;
  /** Errnos particular to this call (see Errors). */
  readonly errors?: Errors;
  readonly since: string;
  readonly summary: string;
}

// Argument constructors, as libnbd spells them.
export const Bool = (name: string) => ({ kind: "bool", name }) as const;
export const Int = (name: string) => ({ kind: "int", name }) as const;
export const UInt64 = (name: string) => ({ kind: "uint64", name }) as const;
export const Str = (name: string) => ({ kind: "string", name }) as const;
export const Path = (name: string) => ({ kind: "path", name }) as const;
export const StringList = (name: string) => ({ kind: "stringList", name }) as const;
export const BytesIn = (name: string) => ({ kind: "bytesIn", name }) as const;
export const BytesOut = (name: string) => ({ kind: "bytesOut", name }) as const;
/** A buffer an aio command keeps until it completes (libnbd's BytesPersistIn/Out). */
export const BytesPersistIn = (name: string) => ({ kind: "bytesPersistIn", name }) as const;
export const BytesPersistOut = (name: string) => ({ kind: "bytesPersistOut", name }) as const;
export const Port = (name: string) => ({ kind: "port", name }) as const;
export const Enum = (name: string, values: readonly number[]) => ({ kind: "enum", name, values }) as const;
/** `allowed` narrows the set for one call (libnbd's OFlags subset); omitted, the whole set. */
export const Closure = <S extends Shape>(name: string, shape: S) => ({ kind: "closure", name, shape }) as const;
export const Flags = (name: string, set: FlagSet, allowed = set.mask) => ({ kind: "flags", name, set, allowed }) as const;

/** The TypeScript type a caller passes for an argument kind. */
export type TsArg<A> =
  A extends { kind: "bool" } ? boolean :
  A extends { kind: "uint64" } ? number | bigint :
  A extends { kind: "string" | "path" } ? string :
  A extends { kind: "stringList" } ? string[] :
  A extends { kind: "bytesIn" | "bytesOut" | "bytesPersistIn" | "bytesPersistOut" } ? Uint8Array :
  A extends { kind: "port" } ? string | number :
  A extends { kind: "closure"; shape: infer S extends Shape } ? Shapes[S] :
  number;

/** The TypeScript type a call returns (its error value included). */
export type TsRet<R> =
  R extends "int64" | "cookie" ? bigint :
  R extends "string" | "staticString" ? string | null :
  number;

type Required<T> = { -readonly [I in keyof T]: TsArg<T[I]> };
type Optional<T> = T extends readonly [infer F, ...infer R] ? [TsArg<F>?, ...Optional<R>] : [];

/** The method signature of a table entry. */
export type Method<C extends Call> = (
  ...args: [...Required<C["args"]>, ...Optional<C extends { optargs: infer O } ? O : []>]
) => TsRet<C["ret"]>;

export type BytesKind = "bytesIn" | "bytesOut" | "bytesPersistIn" | "bytesPersistOut";
export const isBytes = (a: Arg): a is Extract<Arg, { kind: BytesKind }> => a.kind.startsWith("bytes");
export const isPersist = (a: Arg): boolean => a.kind.startsWith("bytesPersist");
export const isOut = (a: Arg): boolean => a.kind === "bytesOut" || a.kind === "bytesPersistOut";

/** `connectSystemdSocketActivation` → `connect_systemd_socket_activation`. */
export const snake = (camel: string): string => camel.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());

/** The C function name of a table entry. */
export const cName = (key: string, call: Call): string => "nbd_" + (call.c ?? snake(key));
