/**
 * A handle's callbacks on the caller's thread. The worker cannot call them
 * (this thread sleeps while it works), so each is held here under an id, the
 * worker records its calls, and they are replayed here in order when a call
 * returns: those of a blocking call at its end, an aio command's as later
 * calls (poll, ...) bring them. What they return travels back: a completion
 * callback's 1 retires its command, a chunk or extent callback's -1 fails it,
 * and so does a completion callback's -1 with an errno in its box.
 */
import { FAILS_ON_MINUS_ONE, type ErrorBox, type Shape } from "./api/types.js";
import { copy } from "./client/bytes.js";
import { type Event, isSpan } from "./client/events.js";
import { errno } from "./errno.js";
import { giveStaging } from "./shared-pool.js";

interface Held {
  fn: (...args: unknown[]) => unknown;
  shape: Shape;
  /** What spans of shared memory in this callback's events map onto. */
  view?: Uint8Array;
  /** The aio command it belongs to, once its cookie is known. */
  cookie?: number;
  /** It outlives its call (keep): a later call that replays it is not its to fail. */
  kept?: boolean;
}

/**
 * Where an aio command's data must be copied when it is done (`to`, for a
 * read), and the staging buffer it went through, which is then given back.
 */
export interface Staged {
  to?: Uint8Array;
  from: Uint8Array<SharedArrayBuffer>;
}

/** An aio command in flight: its callbacks, its staging buffer, and whether its call crossed (its end comes as events). */
interface Aio {
  ids: number[];
  staged?: Staged | undefined;
  crossed: boolean;
}

/** How the callbacks of a blocking call went: their failure fails the call. */
export interface Replayed {
  /** A callback threw: the call fails with its message (API.md). */
  thrown?: Error;
  /** A chunk or extent callback returned -1: the errno it left in its box, or EPROTO. */
  errno?: number;
}

/**
 * Tells the worker what callbacks decided: [cookie, retire ? 1 : 0, errno].
 * A completion callback's return sends errno 0 (after its errno, if it
 * returned -1 with one in its box); a failed chunk or extent callback, its errno.
 */
export type Settlement = [number, number, number];

/** The event the worker sends when an aio command's reply is complete: its buffer is ready. */
export const DONE = 0;

/** What replaying no events gives: shared, never changed. */
const NOTHING: Replayed = Object.freeze({});

export class Callbacks {
  readonly #held = new Map<number, Held>();
  readonly #aio = new Map<number, Aio>();
  #next = DONE + 1;
  /** Callbacks that outlive their call (the debug callback), by name. */
  readonly #kept = new Map<string, number[]>();
  /** Decisions to send with the next call. */
  settlements: Settlement[] = [];
  /** aio commands in flight whose calls crossed: only a poll that crosses hears of their end. */
  crossed = 0;

  /** `ids` stay registered under `name`, replacing what was kept there. */
  keep(name: string, ids: number[]): void {
    this.release(name);
    this.#kept.set(name, ids);
    for (const id of ids) {
      const held = this.#held.get(id);
      if (held) held.kept = true;
    }
  }

  release(name: string): void {
    this.drop(this.#kept.get(name) ?? []);
    this.#kept.delete(name);
  }

  hold(fn: Held["fn"], shape: Shape, view?: Uint8Array): number {
    const id = this.#next++;
    this.#held.set(id, { fn, shape, ...(view && { view }) });
    return id;
  }

  drop(ids: readonly number[]): void {
    for (const id of ids) this.#held.delete(id);
  }

  /** An aio call returned `cookie`: its callbacks (and staging buffer) live until the command is done. */
  adopt(cookie: number, ids: number[], staged: Staged | undefined, crossed: boolean): void {
    for (const id of ids) this.#held.get(id)!.cookie = cookie;
    this.#aio.set(cookie, { ids, staged, crossed });
    if (crossed) this.crossed++;
  }

  /**
   * A queued command is done (the ring said so, with the errno its
   * completion callback sees): as the replay of its DONE and its callback's
   * call. With no callback it is settled all the same: the worker holds it
   * undecided until its data is in place.
   */
  complete(cookie: number, error: number): void {
    const ids = this.#aio.get(cookie)?.ids ?? [];
    const id = ids.find((i) => this.#held.get(i)?.shape === "completion");
    if (id === undefined) {
      this.replay([{ id: DONE, args: [cookie] }]);
      this.settlements.push([cookie, 0, 0]);
    } else {
      this.replay([{ id: DONE, args: [cookie] }, { id, args: [{ value: error }] }]);
    }
  }

  replay(events: readonly Event[] | undefined): Replayed {
    if (!events?.length) return NOTHING; // most calls: no garbage for them
    const result: Replayed = {};
    const done: number[] = [];
    /** aio commands a chunk or extent callback failed, with the errno. */
    const failed = new Map<number, number>();
    for (const ev of events) {
      if (ev.id === DONE) {
        const cookie = ev.args[0] as number;
        // DONE comes before the completion callback's call: the data is in place when it runs.
        const staged = this.#aio.get(cookie)?.staged;
        if (staged?.to) copy(staged.to, staged.from);
        done.push(cookie);
        continue;
      }
      const held = this.#held.get(ev.id);
      if (held) this.#call(held, ev.args, result, failed);
    }
    for (const [cookie, err] of failed) this.settlements.push([cookie, 0, err]);
    for (const cookie of done) {
      const aio = this.#aio.get(cookie);
      this.drop(aio?.ids ?? []);
      // Its callbacks have seen the buffer (a chunk callback gets a view of it): now it is free.
      if (aio?.staged) giveStaging(aio.staged.from);
      if (aio?.crossed) this.crossed--;
      this.#aio.delete(cookie);
    }
    return result;
  }

  #call(held: Held, wire: unknown[], result: Replayed, failed: Map<number, number>): void {
    let box: ErrorBox | undefined;
    const args = wire.map((a) => {
      if (isSpan(a)) return held.view!.subarray(a.span, a.span + a.length);
      if (typeof a === "object" && a !== null && "value" in a) return (box = { value: Number(a.value) });
      return a;
    });
    const cookie = held.cookie;
    // Later chunk, extent and completion callbacks see the error an earlier callback caused (libnbd's cmd->error).
    const earlier = cookie === undefined ? result.errno : failed.get(cookie);
    if (box && !box.value && earlier) box.value = earlier;
    let r: unknown;
    try {
      r = held.fn(...args);
    } catch (e) {
      r = -1;
      // libnbd ignores what the debug callback and an aio option's callbacks return: their throw fails nothing.
      if (cookie === undefined && !held.kept && held.shape !== "debug") result.thrown ??= e instanceof Error ? e : new Error(String(e));
    }
    if (held.shape === "completion" && cookie !== undefined) {
      // libnbd: a completion callback's -1 with an errno in its box fails the command with it.
      if (r === -1 && box?.value) this.settlements.push([cookie, 0, box.value]);
      this.settlements.push([cookie, r === 1 ? 1 : 0, 0]);
    }
    if (r !== -1 || !FAILS_ON_MINUS_ONE.has(held.shape)) return;
    const err = box?.value || errno.EPROTO;
    if (cookie === undefined) result.errno ??= err;
    else if (!failed.has(cookie)) failed.set(cookie, err);
  }
}
