import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { freePort } from "../src/net.js";

/**
 * Servers the development benchmarks start and stop: `spindle serve` from this checkout, or any
 * other program (llama-server) that answers GET /health with 200 once its model is loaded. Each
 * listens on 127.0.0.1 on a free port, and is a child of the benchmark: stop it with `stop()`.
 */

const BIN = fileURLToPath(new URL("../bin/spindle.js", import.meta.url));

export interface StartedServer {
  label: string;
  /** http://127.0.0.1:PORT */
  url: string;
  child: ChildProcess;
  /** SIGTERM, then resolves once the process has exited (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<void>;
}

/** Polls GET /health every `pollMs` until it answers 200; fails when the process exits or `ms` pass. */
export async function waitHealthy(
  url: string,
  child: ChildProcess,
  ms = 120_000,
  pollMs = 200,
): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`${url}: the server exited (${child.exitCode ?? child.signalCode})`);
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(5_000) });
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
  throw new Error(`${url}: not healthy after ${ms / 1000} s`);
}

/**
 * Starts `command args` (with `{port}` in args replaced by a free port) and waits until it is
 * healthy. Its stdout is dropped; its stderr goes to ours unless `quiet`.
 */
export async function startServer(
  label: string,
  command: string,
  args: string[],
  o: { quiet?: boolean; healthMs?: number; pollMs?: number } = {},
): Promise<StartedServer> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const argv = args.map((a) => a.replace("{port}", String(port)));
  const child = spawn(command, argv, { stdio: ["ignore", "ignore", o.quiet ? "ignore" : "inherit"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async (graceMs = 10_000) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    }
  };
  try {
    await waitHealthy(url, child, o.healthMs, o.pollMs);
  } catch (err) {
    await stop(1_000);
    throw err;
  }
  process.stderr.write(`${label}: ${url} (${[command, ...argv].join(" ")})\n`);
  return { label, url, child, stop };
}

/** `spindle serve` from this checkout (bin/spindle.js, so `npm run build` first) with `args`. */
export function startSpindle(label: string, args: string[], o: { quiet?: boolean; pollMs?: number } = {}) {
  return startServer(
    label,
    process.execPath,
    [BIN, "serve", "--port", "{port}", "--log-level", "warn", ...args],
    o,
  );
}
