/**
 * Callback calls made where the client runs, for the thread that holds the
 * real callbacks to replay: the callback's id (given by that thread) and its
 * arguments, with byte views sent as their place in shared memory.
 */
export interface Event {
  id: number;
  args: unknown[];
}

/** A view of shared memory in an event: the replaying thread maps it back onto its own buffer. */
export interface Span { span: number; length: number }

export const span = (view: Uint8Array): Span => ({ span: view.byteOffset, length: view.byteLength });

/** Callbacks that only record their calls (api/invoke.ts): the real one runs later, on the caller's thread. */
export const recorders = new WeakSet<object>();

export const isSpan = (x: unknown): x is Span => typeof x === "object" && x !== null && "span" in x;
