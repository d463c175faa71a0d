/**
 * nbd-ts shell, driven by -c, by stdin and through a pseudo-terminal
 * (script(1)), against nbdkit: h connected by -u or a server command,
 * nbd-ts in scope, code that awaits and requires, nbdsh's failures and
 * usage.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { MAIN, tool, unixUri } from "./cli.js";
import { nbdkitUnix } from "./helpers.js";

const shell = (args: string[], input?: string) => tool(["shell", ...args], input === undefined ? {} : { input });

test("-u URI, then -c: h is connected and every nbd-ts export is in scope", () => {
  const server = nbdkitUnix("memory", "1M");
  const r = shell(["-u", unixUri(server.socket), "-c", "console.log(h.getSize(), CMD_FLAG_FUA, STATE_ZERO, typeof create, typeof nbd.Handle, h.getHandleName())"]);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, "1048576n 1 2 function function nbdsh\n");
  server.stop();
});

test("a server after -- or in [ ]: run by socket activation, stopped at the end", () => {
  const a = shell(["-c", "console.log(h.getSize(), h.getSubprocessPid() > 0n)", "--", "nbdkit", "memory", "2M"]);
  assert.is(a.status, 0, a.stderr);
  assert.is(a.stdout, "2097152n true\n");
  const b = shell(["-c", "console.log(h.getSize())", "[", "nbdkit", "-r", "pattern", "3M", "]"]);
  assert.is(b.stdout, "3145728n\n", b.stderr);
});

test("several -c share their declarations, in order; await and require() work", () => {
  const r = shell(["-c", "const b = new Uint8Array(8)", "-c", "h.pread(b, 8)", "-c", "console.log(Array.from(b).join(','))",
    "-c", "const { create: acreate } = require('nbd-ts/async'); const h2 = acreate(); await h2.connectSystemdSocketActivation(['nbdkit', 'null', '5M']); console.log(await h2.getSize()); await h2.close()",
    "--", "nbdkit", "pattern", "1M"]);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, "0,0,0,0,0,0,0,8\n5242880n\n");
});

test("stdin: the REPL prints each value; -c - runs stdin as one script", () => {
  const repl = shell(["--", "nbdkit", "memory", "1M"], "h.getSize()\nlet x = 2\nx * 21\nh.pread(new Uint8Array(1), 1n << 40n)\ngetError()\n");
  assert.is(repl.status, 0, repl.stderr);
  assert.is(repl.stdout, "1048576n\n42\n-1\n'nbd_pread: request out of bounds: Invalid argument'\n");
  const script = shell(["-c", "-", "--", "nbdkit", "memory", "1M"], "const buf = new Uint8Array([1, 2, 3]);\nh.pwrite(buf, 100);\nconst back = new Uint8Array(3);\nh.pread(back, 100);\nconsole.log(back.join(' '));\n");
  assert.is(script.status, 0, script.stderr);
  assert.is(script.stdout, "1 2 3\n");
});

test("--opt-mode and --base-allocation take effect before the connection; -n makes no handle", () => {
  const opt = shell(["--opt-mode", "-c", "const names = []; h.optList((n) => (names.push(n), 0)); console.log(h.aioIsNegotiating(), JSON.stringify(names))", "--", "nbdkit", "memory", "1M"]);
  assert.is(opt.stdout, '1 [""]\n', opt.stderr);
  const ctx = shell(["--base-allocation", "-c", "console.log(h.canMetaContext(CONTEXT_BASE_ALLOCATION))", "--", "nbdkit", "memory", "1M"]);
  assert.is(ctx.stdout, "1\n", ctx.stderr);
  const none = shell(["-n", "-c", "console.log(typeof h)"]);
  assert.is(none.stdout, "undefined\n", none.stderr);
});

test("failures: status 1 with nbdsh's 'command line script failed' and libnbd's message", () => {
  const thrown = shell(["-n", "-c", "throw new Error('boom')"]);
  assert.is(thrown.status, 1);
  assert.is(thrown.stderr, "nbd-ts shell: command line script failed: boom\n");
  const syntax = shell(["-n", "-c", "foo("]);
  assert.is(syntax.status, 1);
  assert.match(syntax.stderr, /^nbd-ts shell: command line script failed: /);
  const refused = shell(["-u", "nbd://127.0.0.1:1", "-c", "console.log('not reached')"]);
  assert.is(refused.status, 1);
  assert.is(refused.stdout, "");
  assert.is(refused.stderr, "nbd-ts shell: command line script failed: nbd_connect_uri: connect: 127.0.0.1:1: could not connect to remote host: Connection refused\n");
});

test("on a terminal: a banner, the nbd> prompt, and Tab completes h's methods", async () => {
  // script(1) gives the shell a pseudo-terminal; we type once the screen shows what we wait for.
  const child = spawn("script", ["-qec", `${process.execPath} ${MAIN} shell -- nbdkit memory 1M`, "/dev/null"], { stdio: ["pipe", "pipe", "inherit"] });
  let screen = "";
  const waiters: (() => void)[] = [];
  child.stdout.on("data", (d: Buffer) => {
    screen += d.toString().replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");
    waiters.splice(0).forEach((w) => w());
  });
  const shows = (re: RegExp) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the screen never showed ${re}:\n${screen}`)), 15_000);
    const check = () => (re.test(screen) ? (clearTimeout(timer), resolve()) : waiters.push(check));
    check();
  });
  const exited = once(child, "exit");
  try {
    await shows(/nbd> $/);
    assert.match(screen, /Welcome to nbd-ts shell/);
    child.stdin.write("h.getSi\t");
    await shows(/nbd> h\.getSize/);
    child.stdin.write("()\r");
    await shows(/1048576n/); // the completed name, called
    child.stdin.write(".exit\r");
    assert.equal(await exited, [0, null]);
  } finally {
    child.kill();
  }
});

test("usage: --help (0); mistakes (2)", () => {
  const help = shell(["--help"]);
  assert.is(help.status, 0);
  assert.match(help.stdout, /-c, --command CODE/);
  for (const args of [["-n", "-u", "nbd://x"], ["-u", "nbd://x", "--", "nbdkit", "null"], ["--bogus"], ["nbd://x"], ["-c"]]) {
    const r = shell(args);
    assert.is(r.status, 2, `shell ${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /^nbd-ts shell: .+\n\nNetwork Block Device \(NBD\) shell/);
  }
});

test.run();
