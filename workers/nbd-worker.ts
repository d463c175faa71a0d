/**
 * The worker thread's entry, loaded by the bridge's bootstrap (see
 * channel.ts), which has already arranged for the worker's end to be
 * reported: every handle's client lives here.
 */
import type { MessagePort } from "node:worker_threads";
import { serve } from "../src/serve.js";

export function run({ sab, port, registry }: { sab: SharedArrayBuffer; port: MessagePort; registry: MessagePort }): void {
  serve(sab, port, registry);
}
