import { SpindleError } from "../errors.js";
import type { SpawnLog } from "./spawn.js";
import { listModels, normalizeBase, probe } from "./upstream.js";
import { UpstreamError } from "./upstream-error.js";

/**
 * The upstreams of the openai backend and their health. Each upstream is checked every
 * `intervalMs` (GET /health, else /v1/models); the first time it is up, its model name is read from
 * /v1/models unless one was given. A healthy upstream with room takes requests (the one with the
 * fewest in flight first); an unhealthy one takes none until a check passes again. A request that
 * cannot reach an upstream marks it down at once (markDown). `onChange` fires whenever an
 * upstream's health changes, so the backend can hand out (or fail) waiting requests.
 */

export interface Upstream {
  readonly url: string;
  healthy: boolean;
  inFlight: number;
  /** The model name sent to it. */
  model: string | undefined;
  /** The context length it reports at /v1/models, if it does. */
  maxModelLen: number | undefined;
  /** Why it is not healthy (the last failure). */
  error: string | undefined;
  /** performance.now() of the last completed check. */
  checkedAt: number | undefined;
  checking: boolean;
  /** Requests sent to it, and how many of them failed. */
  requests: number;
  failures: number;
}

export interface UpstreamPoolOptions {
  urls: string[];
  apiKey?: string;
  /** Model name for every upstream; default: each upstream's first /v1/models id. */
  model?: string;
  intervalMs: number;
  log?: SpawnLog;
  onChange?: () => void;
}

export class UpstreamPool {
  readonly upstreams: Upstream[];
  private timer: NodeJS.Timeout | undefined;
  private readonly aborts = new AbortController();

  constructor(private readonly o: UpstreamPoolOptions) {
    const urls = [...new Set(o.urls.map(normalizeBase))];
    if (urls.length === 0) throw new SpindleError("the openai backend needs at least one upstream URL");
    this.upstreams = urls.map((url) => ({
      url,
      healthy: false,
      inFlight: 0,
      model: o.model,
      maxModelLen: undefined,
      error: "not checked yet",
      checkedAt: undefined,
      checking: false,
      requests: 0,
      failures: 0,
    }));
  }

  get anyHealthy(): boolean {
    return this.upstreams.some((u) => u.healthy);
  }

  /** The healthy upstream with the fewest in flight below `limit`, not in `exclude`. */
  pick(limit: number, exclude?: ReadonlySet<Upstream>): Upstream | undefined {
    let best: Upstream | undefined;
    for (const u of this.upstreams) {
      if (!u.healthy || u.inFlight >= limit || exclude?.has(u)) continue;
      if (!best || u.inFlight < best.inFlight) best = u;
    }
    return best;
  }

  /** Checks one upstream now (no two checks of one upstream overlap). */
  async check(u: Upstream): Promise<void> {
    if (u.checking || this.aborts.signal.aborted) return;
    u.checking = true;
    const timeout = AbortSignal.timeout(Math.min(10_000, Math.max(2000, this.o.intervalMs)));
    const signal = AbortSignal.any([timeout, this.aborts.signal]);
    try {
      await probe(u.url, this.o.apiKey, signal);
      if (u.model === undefined || u.maxModelLen === undefined) await this.readModels(u, signal);
      this.set(u, true, undefined);
    } catch (err) {
      if (this.aborts.signal.aborted) return;
      this.set(u, false, err instanceof Error ? err.message : String(err));
    } finally {
      u.checking = false;
      u.checkedAt = performance.now();
    }
  }

  private async readModels(u: Upstream, signal: AbortSignal): Promise<void> {
    let models: Awaited<ReturnType<typeof listModels>>;
    try {
      models = await listModels(u.url, this.o.apiKey, signal);
    } catch (err) {
      // Without a model name the upstream cannot be asked anything; with one, the list is a nicety.
      if (u.model === undefined) throw err;
      return;
    }
    if (u.model === undefined) {
      const first = models[0];
      if (!first) throw new UpstreamError(`upstream ${u.url} lists no model at /v1/models`, 503);
      u.model = first.id;
    }
    u.maxModelLen = models.find((m) => m.id === u.model)?.maxModelLen;
  }

  private set(u: Upstream, healthy: boolean, error: string | undefined): void {
    const changed = u.healthy !== healthy;
    u.healthy = healthy;
    u.error = error;
    if (!changed) return;
    if (healthy) this.o.log?.info({ upstream: u.url, model: u.model }, "upstream healthy");
    else this.o.log?.warn({ upstream: u.url, error }, "upstream unhealthy");
    this.o.onChange?.();
  }

  /** A request could not reach `u`: no new requests go there until a check passes. */
  markDown(u: Upstream, error: string): void {
    this.set(u, false, error);
  }

  checkAll(): Promise<void> {
    return Promise.all(this.upstreams.map((u) => this.check(u))).then(() => undefined);
  }

  /** Checks every upstream until one is healthy; throws naming each one's problem after `timeoutMs`. */
  async waitReady(timeoutMs: number, pollMs = 250): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      await this.checkAll();
      if (this.anyHealthy || this.aborts.signal.aborted) return;
      if (performance.now() >= deadline) {
        throw new SpindleError(
          `no upstream answered within ${timeoutMs} ms: ${this.upstreams.map((u) => u.error ?? u.url).join("; ")}`,
          "upstream_unavailable",
        );
      }
      await new Promise((r) => setTimeout(r, Math.min(pollMs, Math.max(0, deadline - performance.now()))));
    }
  }

  /** Periodic checks from now on. */
  startChecks(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.checkAll(), this.o.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.aborts.abort();
  }

  /** Why no upstream can take a request: one line, every upstream's reason. */
  unavailableError(): UpstreamError {
    const reasons = this.upstreams.map((u) => u.error ?? `${u.url} is unhealthy`).join("; ");
    return new UpstreamError(`no upstream is available: ${reasons}`, 503, "upstream_unavailable");
  }

  /** Per-upstream state for /health. */
  health(): Record<string, unknown>[] {
    const now = performance.now();
    return this.upstreams.map((u) => ({
      url: u.url,
      healthy: u.healthy,
      in_flight: u.inFlight,
      model: u.model ?? null,
      requests: u.requests,
      failures: u.failures,
      checked_ms_ago: u.checkedAt === undefined ? null : Math.round(now - u.checkedAt),
      ...(u.error && !u.healthy ? { error: u.error } : {}),
    }));
  }
}
