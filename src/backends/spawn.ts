import { type ChildProcess, spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { SpindleError } from "../errors.js";
import { normalizeBase, probe } from "./upstream.js";

/**
 * `--spawn "<command line>"`: the openai backend starts its upstream server itself and looks
 * after it. The Supervisor
 *
 *  - runs the command without a shell (splitCommandLine: whitespace separates words, '…' and "…"
 *    quote, backslash escapes; leading NAME=value words set environment variables), in its own
 *    process group so that whatever it starts goes down with it;
 *  - waits until the server answers at its URL (GET /health, else /v1/models);
 *  - restarts it when it dies, after a delay that doubles from backoff.initialMs up to
 *    backoff.maxMs while it keeps dying young (a process that ran backoff.stableMs resets it);
 *  - stops it on stop(): SIGTERM to the group, SIGKILL after stopTimeoutMs; and SIGKILL if the
 *    Node process exits first, so no server is left behind.
 *
 * Events: "spawn" (pid), "ready" (pid), "exit" ({pid, code, signal}), "restart" (delay ms).
 */

/** A pino logger fits. */
export interface SpawnLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface SupervisorOptions {
  /** The command line, e.g. `llama-server -m model.gguf --port 8081`. */
  command: string;
  /** The server's base URL once up (its health is checked there). */
  url: string;
  apiKey?: string;
  /** How long start() waits for the first healthy answer (default 120 s: a big model loads slowly). */
  startTimeoutMs?: number;
  backoff?: { initialMs?: number; maxMs?: number; stableMs?: number };
  /** SIGTERM → SIGKILL delay on stop() (default 5 s). */
  stopTimeoutMs?: number;
  /** Health poll period while the server starts (default 250 ms). */
  pollMs?: number;
  log?: SpawnLog;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export type SupervisorState = "idle" | "starting" | "ready" | "backoff" | "stopped";

export interface SupervisorStatus {
  command: string;
  state: SupervisorState;
  pid: number | null;
  /** Launches after the first. */
  restarts: number;
  last_exit: { code: number | null; signal: string | null } | null;
}

/** Splits a command line into words the way a POSIX shell would, without running one. */
export function splitCommandLine(line: string): string[] {
  const words: string[] = [];
  let cur = "";
  let inWord = false;
  let quote: "'" | '"' | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else cur += c;
      continue;
    }
    if (quote === '"') {
      if (c === '"') quote = undefined;
      else if (c === "\\" && i + 1 < line.length && '"\\$`'.includes(line[i + 1]!)) cur += line[++i];
      else cur += c;
      continue;
    }
    if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === "\\" && i + 1 < line.length) {
      const next = line[++i]!;
      // Backslash-newline continues the line.
      if (next !== "\n") {
        cur += next;
        inWord = true;
      }
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = "";
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) throw new SpindleError(`--spawn: unterminated ${quote} quote in ${JSON.stringify(line)}`);
  if (inWord) words.push(cur);
  return words;
}

/** The program, its arguments and the NAME=value assignments in front of it. */
export function parseCommand(line: string): { file: string; args: string[]; env: Record<string, string> } {
  const words = splitCommandLine(line);
  const env: Record<string, string> = {};
  while (words.length > 0 && /^[A-Za-z_][A-Za-z0-9_]*=/.test(words[0]!)) {
    const w = words.shift()!;
    const eq = w.indexOf("=");
    env[w.slice(0, eq)] = w.slice(eq + 1);
  }
  const file = words.shift();
  if (file === undefined) throw new SpindleError(`--spawn: no command to run in ${JSON.stringify(line)}`);
  return { file, args: words, env };
}

const TAIL_LINES = 20;
const silent: SpawnLog = { info() {}, warn() {}, debug() {} };

export class Supervisor extends EventEmitter {
  readonly url: string;
  private readonly log: SpawnLog;
  private readonly cmd: ReturnType<typeof parseCommand>;
  private child: ChildProcess | undefined;
  /** Resolves when the current child has exited. */
  private exited: Promise<void> = Promise.resolve();
  private spawnedAt = 0;
  private delay = 0;
  private timer: NodeJS.Timeout | undefined;
  private launches = 0;
  private lastExit: SupervisorStatus["last_exit"] = null;
  private spawnError: Error | undefined;
  private readonly tail: string[] = [];
  private stateNow: SupervisorState = "idle";
  private readonly killOnExit = () => this.signalGroup("SIGKILL");

  constructor(private readonly o: SupervisorOptions) {
    super();
    this.url = normalizeBase(o.url);
    this.log = o.log ?? silent;
    this.cmd = parseCommand(o.command);
  }

  get state(): SupervisorState {
    return this.stateNow;
  }

  get pid(): number | undefined {
    return this.alive ? this.child?.pid : undefined;
  }

  private get alive(): boolean {
    const c = this.child;
    return c !== undefined && c.pid !== undefined && c.exitCode === null && c.signalCode === null;
  }

  status(): SupervisorStatus {
    return {
      command: this.o.command,
      state: this.stateNow,
      pid: this.pid ?? null,
      restarts: Math.max(0, this.launches - 1),
      last_exit: this.lastExit,
    };
  }

  /** Starts the server and waits until it answers; throws (after stopping it) if it does not in time. */
  async start(): Promise<void> {
    if (this.stateNow !== "idle") throw new Error("Supervisor.start() called twice");
    this.launch();
    const timeoutMs = this.o.startTimeoutMs ?? 120_000;
    const ok = await new Promise<boolean>((resolve) => {
      const done = (v: boolean) => {
        clearTimeout(t);
        this.off("ready", onReady);
        this.off("fatal", onFatal);
        resolve(v);
      };
      const onReady = () => done(true);
      const onFatal = () => done(false);
      const t = setTimeout(() => done(false), timeoutMs);
      this.on("ready", onReady);
      this.on("fatal", onFatal);
    });
    if (ok) return;
    const why = this.spawnError
      ? `cannot run ${JSON.stringify(this.cmd.file)}: ${this.spawnError.message}`
      : `${this.o.command} did not answer at ${this.url} within ${timeoutMs} ms${this.exitNote()}`;
    await this.stop();
    throw new SpindleError(`--spawn: ${why}`, "spawn_failed");
  }

  private exitNote(): string {
    const last = this.lastExit;
    const exit = last ? `; it exited (${last.signal ?? `code ${last.code}`})` : "";
    const out = this.tail.length > 0 ? `; its last output: ${this.tail.slice(-5).join(" | ")}` : "";
    return exit + out;
  }

  private launch(): void {
    this.timer = undefined;
    if (this.stateNow === "stopped") return;
    this.stateNow = "starting";
    this.launches++;
    this.spawnedAt = performance.now();
    const child = spawn(this.cmd.file, this.cmd.args, {
      cwd: this.o.cwd,
      env: { ...(this.o.env ?? process.env), ...this.cmd.env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    this.child = child;
    let settle!: () => void;
    this.exited = new Promise<void>((r) => (settle = r));
    let ended = false;
    const onEnd = (code: number | null, signal: NodeJS.Signals | null) => {
      if (ended) return;
      ended = true;
      settle();
      this.exitedChild(child, code, signal);
    };
    child.once("exit", onEnd);
    child.once("error", (err) => {
      // spawn failed (no such program): there is no process and no "exit" event.
      if (child.pid === undefined) {
        this.spawnError = err;
        onEnd(null, null);
      }
    });
    for (const [name, stream] of [
      ["stdout", child.stdout],
      ["stderr", child.stderr],
    ] as const) {
      let partial = "";
      stream?.setEncoding("utf8");
      stream?.on("data", (s: string) => {
        const lines = (partial + s).split(/\r?\n/);
        partial = lines.pop()!;
        for (const line of lines) this.output(name, child.pid, line);
      });
      stream?.on("end", () => partial && this.output(name, child.pid, partial));
    }
    if (child.pid !== undefined) {
      process.on("exit", this.killOnExit);
      this.log.info({ pid: child.pid, command: this.o.command }, "upstream started");
      this.emit("spawn", child.pid);
      void this.waitHealthy(child);
    }
  }

  private output(stream: string, pid: number | undefined, line: string): void {
    if (line.length === 0) return;
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
    this.log.debug({ pid, stream }, line);
  }

  /** Polls the URL while `child` lives and has not answered yet. */
  private async waitHealthy(child: ChildProcess): Promise<void> {
    const poll = this.o.pollMs ?? 250;
    while (this.child === child && this.alive && this.stateNow === "starting") {
      try {
        await probe(this.url, this.o.apiKey, AbortSignal.timeout(Math.max(1000, poll * 4)));
        if (this.child !== child || !this.alive || this.stateNow !== "starting") return;
        this.stateNow = "ready";
        this.log.info({ pid: child.pid, url: this.url }, "upstream ready");
        this.emit("ready", child.pid);
        return;
      } catch {
        await new Promise((r) => setTimeout(r, poll));
      }
    }
  }

  private exitedChild(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.child !== child) return;
    process.off("exit", this.killOnExit);
    // Whatever it started in its group goes too.
    this.signalGroup("SIGKILL");
    this.lastExit = { code, signal };
    this.emit("exit", { pid: child.pid, code, signal });
    if (this.stateNow === "stopped") return;
    if (this.spawnError && this.launches === 1) {
      this.emit("fatal");
      return;
    }
    const { initialMs = 500, maxMs = 30_000, stableMs = 10_000 } = this.o.backoff ?? {};
    const ranFor = performance.now() - this.spawnedAt;
    this.delay = ranFor >= stableMs || this.delay === 0 ? initialMs : Math.min(this.delay * 2, maxMs);
    this.stateNow = "backoff";
    this.log.warn(
      { pid: child.pid, code, signal, restart_in_ms: this.delay, output: this.tail.slice(-5) },
      "upstream exited; restarting it",
    );
    this.emit("restart", this.delay);
    this.timer = setTimeout(() => this.launch(), this.delay);
  }

  /** Signals the child's process group (the child alone where groups are not available). */
  private signalGroup(sig: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, sig);
    } catch {
      try {
        if (this.alive) this.child?.kill(sig);
      } catch {
        // Already gone.
      }
    }
  }

  /** Stops the server (SIGTERM, then SIGKILL after stopTimeoutMs) and restarts nothing after. Idempotent. */
  async stop(): Promise<void> {
    this.stateNow = "stopped";
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.alive) return;
    this.signalGroup("SIGTERM");
    const grace = this.o.stopTimeoutMs ?? 5000;
    let t: NodeJS.Timeout | undefined;
    const killed = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((r) => (t = setTimeout(() => r(true), grace))),
    ]);
    clearTimeout(t);
    if (killed) {
      this.log.warn({ pid: this.child?.pid, after_ms: grace }, "upstream ignored SIGTERM; killing it");
      this.signalGroup("SIGKILL");
      await this.exited;
    }
  }
}
