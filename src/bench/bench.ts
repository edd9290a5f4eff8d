import { SpindleError } from "../errors.js";
import { Rng } from "../sampling/rng.js";
import {
  type ApiKind,
  type BenchRequest,
  type SendOptions,
  type StreamResult,
  sendStreaming,
  type Target,
} from "./client.js";
import { CUT_OFF, type DriveProgress, describeShape, drive, INTERRUPTED, type LoadShape } from "./load.js";
import {
  computeMetrics,
  type GroupMetrics,
  groupMetrics,
  jainIndex,
  type RequestRecord,
  type RunMetrics,
  type Slo,
} from "./metrics.js";
import { PromptBuilder } from "./prompts.js";
import { type Protocol, RpcTarget } from "./rpc-client.js";
import type { ScenarioName } from "./scenarios.js";
import {
  diffServer,
  type PollSample,
  ServerMetricsClient,
  type ServerRunMetrics,
  type ServerSnapshot,
} from "./server-metrics.js";
import { BenchTargetError, detectTokenizer, firstModel, type TokenCounter } from "./target.js";
import { type BenchItem, markStructured, planRun, type WorkloadSpec } from "./workload.js";

/**
 * A benchmark: one or two targets, a list of load shapes (the sweep), one
 * workload. For each load shape the run's prompts are drawn once and sent to
 * every target; with two targets each run is split into `rounds` batches sent
 * to the targets in the order A B, B A, A B, … so machine noise hits both.
 */

export interface BenchTargetSpec {
  label: string;
  baseUrl: string;
  api: ApiKind;
  /** Default: the first of GET /v1/models. */
  model?: string;
  endpoint?: string;
  /** Several keys = several tenants, requests assigned round-robin. */
  apiKeys: string[];
  /**
   * How generation requests travel: the OpenAI HTTP API with SSE (http, the default), or Spindle's
   * RPC service's GenerateStream over Connect (HTTP/1.1) or gRPC (HTTP/2), see rpc-client.ts.
   */
  protocol?: Protocol;
  /** Where the RPC service listens (default baseUrl; gRPC needs the server's --grpc-port). */
  rpcUrl?: string;
}

export interface BenchConfig {
  targets: BenchTargetSpec[];
  shapes: LoadShape[];
  workload: WorkloadSpec;
  numPrompts: number;
  maxSeconds: number;
  warmup: number;
  seed: number;
  ignoreEos: boolean;
  temperature?: number;
  /** Extra fields merged into every request's body (e.g. sampling settings a server defaults otherwise). */
  extraBody?: Record<string, unknown>;
  slo?: Slo;
  rounds: number;
  /** After Ctrl-C, how long in-flight requests may finish (ms). */
  graceMs: number;
  /** Poll the server's metrics this often during a run (ms); 0 = never. */
  metricsIntervalMs: number;
  /** Scrape engine metrics from targets that export them. */
  serverMetrics: boolean;
  /** Build exact-length prompts with the target's /tokenize when it has one. */
  tokenize: boolean;
  /** Share of requests that ask for a JSON schema (response_format), 0..1; 0 or undefined = none. */
  structured?: number;
  /** The named scenario the workload comes from (scenarios.ts), if any. */
  scenario?: ScenarioName;
}

export interface TargetInfo {
  label: string;
  baseUrl: string;
  api: ApiKind;
  protocol: Protocol;
  /** The RPC service's URL (connect, grpc). */
  rpcUrl?: string;
  model: string;
  tenants: number;
  /** Engine metrics exported: "spindle", "vllm", or null. */
  serverMetrics: string | null;
  /** Whether its /tokenize was used to build prompts. */
  tokenizer: boolean;
  warmup: { sent: number; failed: number };
}

/** One request as the report's details keep it. */
export interface RequestDetail {
  sent_at_ms: number;
  ok: boolean;
  error?: string;
  ttft_ms?: number;
  e2el_ms?: number;
  itl_ms: number[];
  prompt_tokens: number;
  output_tokens: number;
  output_tokens_from: "usage" | "chunks";
  cached_tokens?: number;
  queue_wait_ms?: number;
  tenant?: string;
  class?: string;
}

export interface RunResult {
  target: string;
  shape: LoadShape;
  /** "concurrency 4", "rate 2 req/s". */
  loadLabel: string;
  /** Concurrency or request rate: the sweep's x axis. */
  x: number;
  metrics: RunMetrics;
  classes?: Record<string, GroupMetrics>;
  tenants?: Record<string, GroupMetrics>;
  /** Jain's index over per-tenant output throughput (several tenants only). */
  jainFairness?: number;
  /** Prompt tokens served from the prefix cache, as the server's usage reported them. */
  cachedPromptTokens?: number;
  /** Completed requests whose usage reported prompt tokens from the prefix cache. */
  cacheHitRequests?: number;
  notSent: number;
  timedOut: boolean;
  interrupted: boolean;
  server?: ServerRunMetrics;
  requests: RequestDetail[];
}

export interface BenchResult {
  startedAt: string;
  config: BenchConfig;
  targets: TargetInfo[];
  runs: RunResult[];
  /** Requests whose prompt was built to an exact length with a tokenizer vs estimated. */
  promptLengths: "exact" | "estimated";
  interrupted: boolean;
}

export interface BenchHooks {
  /** Ctrl-C: stop sending, finish what is in flight (up to graceMs), skip remaining runs. */
  stop?: AbortSignal;
  /** A second Ctrl-C: cut off in-flight requests at once. */
  kill?: AbortSignal;
  onRunStart?: (target: string, label: string, total: number) => void;
  onProgress?: (p: DriveProgress) => void;
  onRunEnd?: () => void;
  /** A load point is done: its runs (one per target). */
  onResults?: (runs: RunResult[]) => void;
  log?: (line: string) => void;
}

interface ResolvedTarget {
  spec: BenchTargetSpec;
  target: Target;
  metrics?: ServerMetricsClient;
  info: TargetInfo;
  /** Sends one timed streaming request over the target's protocol. */
  send: (r: BenchRequest, o: SendOptions) => Promise<StreamResult>;
  rpc?: RpcTarget;
}

function toRequest(cfg: BenchConfig, t: ResolvedTarget, item: BenchItem, index: number): BenchRequest {
  const keys = t.spec.apiKeys;
  const k = keys.length > 0 ? index % keys.length : -1;
  return {
    prompt: item.prompt,
    promptTokens: item.promptTokens,
    maxTokens: item.maxTokens,
    ignoreEos: cfg.ignoreEos,
    temperature: cfg.temperature,
    priority: item.priority,
    apiKey: k >= 0 ? keys[k] : undefined,
    tenant: keys.length > 1 ? `tenant${k}` : undefined,
    klass: item.klass,
    responseFormat: item.responseFormat,
  };
}

function toRecord(req: BenchRequest, r: StreamResult, sentAtMs: number): RequestRecord {
  return {
    ok: r.ok,
    error: r.error,
    sentAt: sentAtMs,
    ttftMs: r.ttftMs,
    e2eMs: r.e2eMs,
    itlMs: r.itlMs,
    outputTokens: r.outputTokens,
    promptTokens: r.promptTokens,
    tenant: req.tenant,
    klass: req.klass,
    queueWaitMs: r.queueWaitMs,
    cutOff: r.error === CUT_OFF || r.error === INTERRUPTED,
  };
}

function detailOf(rec: RequestRecord, r: StreamResult): RequestDetail {
  return {
    sent_at_ms: rec.sentAt,
    ok: rec.ok,
    error: r.errorDetail ?? r.error,
    ttft_ms: rec.ttftMs,
    e2el_ms: rec.e2eMs,
    itl_ms: rec.itlMs,
    prompt_tokens: rec.promptTokens,
    output_tokens: rec.outputTokens,
    output_tokens_from: r.outputTokensFrom,
    cached_tokens: r.cachedTokens,
    queue_wait_ms: r.queueWaitMs,
    tenant: rec.tenant,
    class: rec.klass,
  };
}

/** Sends `items` at a fixed concurrency outside any measurement (warm-up, prefix priming). */
async function sendUnmeasured(
  cfg: BenchConfig,
  t: ResolvedTarget,
  items: BenchItem[],
  concurrency: number,
  stop: AbortSignal | undefined,
): Promise<StreamResult[]> {
  const out: StreamResult[] = [];
  await drive({
    items,
    shape: { kind: "closed", concurrency },
    rng: new Rng(0),
    maxSeconds: cfg.maxSeconds,
    stop,
    graceMs: 0,
    send: async (item, i, signal) => {
      const r = await t.send(toRequest(cfg, t, item, i), { signal, extraBody: cfg.extraBody });
      out.push(r);
      return r;
    },
  });
  return out;
}

function checkConfig(cfg: BenchConfig): void {
  if (cfg.targets.length < 1 || cfg.targets.length > 2)
    throw new SpindleError("bench takes one or two targets");
  if (cfg.shapes.length === 0) throw new SpindleError("no load shape to run");
  const pos = (name: string, v: number) => {
    if (!(Number.isInteger(v) && v >= 1))
      throw new SpindleError(`${name} must be a positive integer, got ${v}`);
  };
  pos("--num-prompts", cfg.numPrompts);
  pos("--rounds", cfg.rounds);
  if (!(cfg.maxSeconds > 0)) throw new SpindleError(`--max-seconds must be positive, got ${cfg.maxSeconds}`);
  for (const s of cfg.shapes) {
    if (s.kind === "closed") pos("--concurrency", s.concurrency);
    else if (!(s.rate > 0)) throw new SpindleError(`--request-rate must be positive or inf, got ${s.rate}`);
  }
}

/** Resolves the targets: model, engine metrics, tokenizer (over the target's protocol). */
async function resolveTargets(cfg: BenchConfig, log: (s: string) => void) {
  const resolved: ResolvedTarget[] = [];
  const opened: RpcTarget[] = [];
  let counter: TokenCounter | undefined;
  try {
    for (const spec of cfg.targets) {
      const key = spec.apiKeys[0];
      const protocol = spec.protocol ?? "http";
      const rpc = protocol === "http" ? undefined : RpcTarget.create(protocol, spec.rpcUrl ?? spec.baseUrl);
      let model = spec.model;
      if (rpc) {
        opened.push(rpc);
        try {
          if (protocol === "grpc") await RpcTarget.checkHttp2(rpc.url);
          model ??= await rpc.firstModel(key);
        } catch (err) {
          const hint =
            protocol === "grpc" ? "; gRPC needs HTTP/2: point --rpc-url at the server's --grpc-port" : "";
          throw new BenchTargetError(
            `cannot reach the RPC service at ${rpc.url} over ${protocol} (${(err as Error).message})${hint}`,
          );
        }
      } else model ??= await firstModel(spec.baseUrl, key);
      const metrics = cfg.serverMetrics ? await ServerMetricsClient.detect(spec.baseUrl, key) : undefined;
      let tokenizer = false;
      if (cfg.tokenize && !counter) {
        counter = rpc ? await rpc.tokenCounter(model, key) : await detectTokenizer(spec.baseUrl, model, key);
        tokenizer = counter !== undefined;
      }
      const target: Target = { baseUrl: spec.baseUrl, api: spec.api, model, endpoint: spec.endpoint };
      const via = rpc ? `${protocol} ${rpc.url}` : spec.baseUrl;
      log(
        `${spec.label}: ${via}  model ${model}${metrics ? `  (${metrics.kind} metrics)` : ""}${tokenizer ? `  (exact prompt lengths via ${rpc ? "Tokenize" : "/tokenize"})` : ""}`,
      );
      resolved.push({
        spec,
        target,
        metrics,
        rpc,
        send: rpc ? (r, o) => rpc.send(target, r, o) : (r, o) => sendStreaming(target, r, o),
        info: {
          label: spec.label,
          baseUrl: spec.baseUrl,
          api: spec.api,
          protocol,
          ...(rpc ? { rpcUrl: rpc.url } : {}),
          model,
          tenants: Math.max(1, spec.apiKeys.length),
          serverMetrics: metrics?.kind ?? null,
          tokenizer,
          warmup: { sent: 0, failed: 0 },
        },
      });
    }
  } catch (err) {
    for (const rpc of opened) rpc.close();
    throw err;
  }
  return { resolved, counter };
}

/** The warm-up prompts: like the workload's, from a seed of their own. */
function warmupSpec(w: WorkloadSpec): WorkloadSpec {
  if (w.kind === "mixed-prompt")
    return { kind: "random", inputLen: w.shortLen, outputLen: w.outputLen, rangeRatio: 0 };
  if (w.kind === "shared-prefix")
    return { kind: "random", inputLen: w.prefixLen + w.suffixLen, outputLen: w.outputLen, rangeRatio: 0 };
  return { kind: "random", inputLen: w.inputLen, outputLen: w.outputLen, rangeRatio: 0 };
}

interface Accum {
  records: RequestRecord[];
  details: RequestDetail[];
  durationMs: number;
  timedOut: boolean;
  interrupted: boolean;
  cached: number;
  cacheHits: number;
  polls: PollSample[];
  before?: ServerSnapshot;
  after?: ServerSnapshot;
  primed: boolean;
}

export async function runBench(cfg: BenchConfig, hooks: BenchHooks = {}): Promise<BenchResult> {
  checkConfig(cfg);
  const log = hooks.log ?? (() => {});
  const startedAt = new Date().toISOString();
  const { resolved, counter } = await resolveTargets(cfg, log);
  try {
    return await runResolved(cfg, hooks, resolved, counter, startedAt);
  } finally {
    for (const t of resolved) t.rpc?.close();
  }
}

async function runResolved(
  cfg: BenchConfig,
  hooks: BenchHooks,
  resolved: ResolvedTarget[],
  counter: TokenCounter | undefined,
  startedAt: string,
): Promise<BenchResult> {
  const log = hooks.log ?? (() => {});
  const builder = new PromptBuilder(counter);
  const stopped = () => hooks.stop?.aborted === true;

  // Warm-up: a few requests per target, outside any measurement. Without a tokenizer their
  // usage counts calibrate the words-per-token estimate (completions only: chat adds a template).
  if (cfg.warmup > 0) {
    const maxC = Math.max(
      1,
      ...cfg.shapes.map((s) => (s.kind === "closed" ? s.concurrency : (s.maxConcurrency ?? cfg.warmup))),
    );
    const plan = await planRun(warmupSpec(cfg.workload), builder, cfg.seed, -1, cfg.warmup);
    for (const t of resolved) {
      if (stopped()) break;
      log(`${t.info.label}: warming up with ${cfg.warmup} request${cfg.warmup === 1 ? "" : "s"}`);
      const rs = await sendUnmeasured(cfg, t, plan.items, Math.min(cfg.warmup, maxC), hooks.stop);
      t.info.warmup = { sent: rs.length, failed: rs.filter((r) => !r.ok).length };
      if (rs.length > 0 && rs.every((r) => !r.ok) && !stopped()) {
        const why = rs[0]!.errorDetail ?? rs[0]!.error;
        throw new SpindleError(`${t.info.label}: every warm-up request failed (${why})`);
      }
      if (!counter && t.spec.api === "completions")
        rs.forEach((r, i) => {
          if (r.promptTokensFrom === "usage")
            builder.calibrate(plan.items[i]!.prompt.split(" ").length, r.promptTokens);
        });
    }
    if (!counter && builder.tokensPerWord !== 1.3)
      log(
        `prompt lengths estimated at ${builder.tokensPerWord.toFixed(2)} tokens per word (from warm-up usage)`,
      );
  }

  const runs: RunResult[] = [];
  for (let si = 0; si < cfg.shapes.length && !stopped(); si++) {
    const shape = cfg.shapes[si]!;
    const label = describeShape(shape);
    const plan = await planRun(cfg.workload, builder, cfg.seed, si, cfg.numPrompts);
    markStructured(plan.items, cfg.structured ?? 0);
    const accs = resolved.map<Accum>(() => ({
      records: [],
      details: [],
      durationMs: 0,
      timedOut: false,
      interrupted: false,
      cached: 0,
      cacheHits: 0,
      polls: [],
      primed: false,
    }));
    const rounds = Math.min(cfg.rounds, Math.max(1, plan.items.length));
    // Every round takes every rounds-th item, so each batch has the workload's mix.
    const chunks = Array.from({ length: rounds }, (_, r) => plan.items.filter((_, i) => i % rounds === r));
    const chunkIndex = Array.from({ length: rounds }, (_, r) =>
      plan.items.map((_, i) => i).filter((i) => i % rounds === r),
    );
    const order = (r: number) => (resolved.length === 2 && r % 2 === 1 ? [1, 0] : resolved.map((_, i) => i));
    for (let r = 0; r < rounds && !stopped(); r++) {
      for (const ti of order(r)) {
        if (stopped()) break;
        const t = resolved[ti]!;
        const acc = accs[ti]!;
        if (!acc.primed) {
          acc.primed = true;
          if (plan.prime.length > 0) {
            log(`${t.info.label}: priming ${plan.prime.length} shared prefixes`);
            await sendUnmeasured(cfg, t, plan.prime, Math.min(8, plan.prime.length), hooks.stop);
          }
          if (t.metrics) acc.before = await t.metrics.scrape().catch(() => undefined);
        }
        const items = chunks[r]!;
        const rng = new Rng(BigInt(cfg.seed) * 31n + BigInt(si * 1000 + r));
        hooks.onRunStart?.(
          t.info.label,
          `${label}${rounds > 1 ? ` (batch ${r + 1}/${rounds})` : ""}`,
          items.length,
        );
        const offset = acc.durationMs;
        const t0 = performance.now();
        const stopPoll =
          t.metrics && cfg.metricsIntervalMs > 0
            ? t.metrics.startPolling(t0, cfg.metricsIntervalMs)
            : undefined;
        const reqs = new Map<number, BenchRequest>();
        const res = await drive({
          items,
          shape,
          rng,
          maxSeconds: cfg.maxSeconds / rounds,
          stop: hooks.stop,
          kill: hooks.kill,
          graceMs: cfg.graceMs,
          onProgress: hooks.onProgress,
          send: (item, i, signal) => {
            const req = toRequest(cfg, t, item, chunkIndex[r]![i]!);
            reqs.set(i, req);
            return t.send(req, { signal, extraBody: cfg.extraBody });
          },
        });
        hooks.onRunEnd?.();
        if (stopPoll) for (const p of await stopPoll()) acc.polls.push({ ...p, tMs: p.tMs + offset });
        for (const s of res.records) {
          const rec = toRecord(reqs.get(s.index)!, s.result, s.sentAtMs + offset);
          acc.records.push(rec);
          acc.details.push(detailOf(rec, s.result));
          if (s.result.ok && s.result.cachedTokens !== undefined) {
            acc.cached += s.result.cachedTokens;
            if (s.result.cachedTokens > 0) acc.cacheHits++;
          }
        }
        acc.durationMs += res.durationMs;
        acc.timedOut ||= res.timedOut;
        acc.interrupted ||= res.interrupted;
      }
    }
    const point: RunResult[] = [];
    for (let ti = 0; ti < resolved.length; ti++) {
      const t = resolved[ti]!;
      const acc = accs[ti]!;
      if (!acc.primed || acc.records.length === 0) continue;
      if (t.metrics && acc.before) acc.after = await t.metrics.scrape().catch(() => undefined);
      point.push(assemble(cfg, t, shape, label, acc, plan.items.length));
    }
    runs.push(...point);
    if (point.length) hooks.onResults?.(point);
  }
  return {
    startedAt,
    config: cfg,
    targets: resolved.map((t) => t.info),
    runs,
    promptLengths: counter ? "exact" : "estimated",
    interrupted: stopped(),
  };
}

function assemble(
  cfg: BenchConfig,
  t: ResolvedTarget,
  shape: LoadShape,
  loadLabel: string,
  acc: Accum,
  planned: number,
): RunResult {
  const durationS = acc.durationMs / 1000;
  const metrics = computeMetrics(acc.records, durationS, cfg.slo);
  const hasClasses = acc.records.some((r) => r.klass !== undefined);
  const hasTenants = t.spec.apiKeys.length > 1;
  const tenants = hasTenants ? groupMetrics(acc.records, (r) => r.tenant, durationS) : undefined;
  const server =
    t.metrics && acc.before && acc.after
      ? diffServer(t.metrics.kind, acc.before, acc.after, acc.polls)
      : undefined;
  const order = acc.records.map((_, i) => i).sort((a, b) => acc.records[a]!.sentAt - acc.records[b]!.sentAt);
  return {
    target: t.info.label,
    shape,
    loadLabel,
    x: shape.kind === "closed" ? shape.concurrency : shape.rate,
    metrics,
    classes: hasClasses ? groupMetrics(acc.records, (r) => r.klass, durationS) : undefined,
    tenants,
    jainFairness: tenants ? jainIndex(Object.values(tenants).map((g) => g.outputThroughput)) : undefined,
    cachedPromptTokens: acc.details.some((d) => d.cached_tokens !== undefined) ? acc.cached : undefined,
    cacheHitRequests: acc.details.some((d) => d.cached_tokens !== undefined) ? acc.cacheHits : undefined,
    notSent: Math.max(0, planned - acc.records.length),
    timedOut: acc.timedOut,
    interrupted: acc.interrupted,
    server,
    requests: order.map((i) => acc.details[i]!),
  };
}
