/** The worker thread's entry: every handle's client lives here. */
import { runAsWorker } from "synckit";
import { dispatch } from "../src/dispatch.js";

runAsWorker(dispatch);
