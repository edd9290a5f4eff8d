import { SpindleError } from "../errors.js";
import { readModelCard } from "../model/model-card.js";
import { validateSamplingParams } from "../sampling/params.js";
import type { SampleResult } from "../sampling/sampler.js";
import type { Tokenizer } from "../tokenizer/index.js";
import type { Backend, BackendInfo } from "./backend.js";
import type { OpenAIBackendInit } from "./index.js";
import { SlotBackend, type SlotOutcome, type SlotRun } from "./slot-backend.js";
import { type SpawnLog, Supervisor, type SupervisorOptions } from "./spawn.js";
import { type CompletionChunk, type CompletionChunkChoice, streamCompletion } from "./upstream.js";
import { UpstreamError } from "./upstream-error.js";
import { type Upstream, UpstreamPool } from "./upstream-pool.js";

/**
 * The `openai` backend: Spindle as a gateway in front of OpenAI-compatible servers (vLLM,
 * llama-server, another Spindle). Spindle keeps the model's GGUF for its tokenizer, chat template
 * and context length; routes tokenize and template as usual, and each request goes upstream as
 * POST /v1/completions with the prompt as token ids, streamed, its chunks passed on as they come.
 *
 * A slot is one request in flight on one upstream: at most `upstreamConcurrency` per upstream, so
 * Spindle's queue (the SlotQueue, with priorities and aging) decides what is sent and when. When no
 * upstream is healthy a request is not left waiting: it fails at once with 503.
 *
 * A failure before anything reached the client (refused connection, 5xx, broken stream) is retried
 * on another healthy upstream with room; after, the request ends with reason "error". Upstream 4xx
 * answers reach the client as they are (see upstream-error.ts).
 */

/** Options beyond OpenAIBackendInit (the CLI need not set them). */
export interface OpenAIBackendOptions {
  /** Logger for upstream health changes and the spawned server (a pino logger fits). */
  log?: SpawnLog;
  /** How long start waits for an upstream to answer (default 60 s; with spawn, the supervisor's 120 s). */
  startTimeoutMs?: number;
  /** Supervisor settings for `spawn` (backoff, stop timeout…). */
  spawnOptions?: Partial<Omit<SupervisorOptions, "command" | "url">>;
}

export const DEFAULT_UPSTREAM_CONCURRENCY = 8;
export const DEFAULT_HEALTH_INTERVAL_MS = 2000;

/** One request in flight on an upstream; none when no upstream is healthy (run() then fails with 503). */
interface Slot {
  upstream: Upstream | undefined;
}

class OpenAIBackend extends SlotBackend<Slot> {
  constructor(
    info: BackendInfo,
    tokenizer: Tokenizer,
    init: OpenAIBackendInit,
    private readonly pool: UpstreamPool,
    private readonly concurrency: number,
    private readonly apiKey: string | undefined,
    private readonly supervisor: Supervisor | undefined,
    private readonly log: SpawnLog | undefined,
  ) {
    super({
      info,
      tokenizer,
      policy: init.policy ?? "fcfs",
      agingPerSecond: init.agingPerSecond ?? 0,
      now: init.now,
    });
  }

  /** Health changed: waiting requests may go to an upstream now (or fail, if none is healthy). */
  changed(): void {
    this.queue.pump();
  }

  protected take(): Slot | undefined {
    const u = this.pool.pick(this.concurrency);
    if (u) {
      u.inFlight++;
      return { upstream: u };
    }
    return this.pool.anyHealthy ? undefined : { upstream: undefined };
  }

  protected release(slot: Slot): void {
    if (slot.upstream) slot.upstream.inFlight--;
    slot.upstream = undefined;
  }

  protected async run(slot: Slot, r: SlotRun): Promise<SlotOutcome> {
    // Refuse bad sampling parameters before any upstream sees them.
    validateSamplingParams(r.spec.sampling ?? {});
    const tried = new Set<Upstream>();
    let staleRetries = 3;
    for (;;) {
      const u = slot.upstream;
      if (!u) throw this.pool.unavailableError();
      tried.add(u);
      u.requests++;
      try {
        return await this.complete(u, r);
      } catch (err) {
        if (r.signal.aborted) return {};
        const e =
          err instanceof UpstreamError
            ? err
            : err instanceof SpindleError
              ? err
              : new UpstreamError(`upstream ${u.url} failed: ${String(err)}`, 502);
        u.failures++;
        if (e instanceof UpstreamError && e.connection) this.pool.markDown(u, e.message);
        const retryable = e instanceof UpstreamError && e.status >= 500;
        if (r.sentAny || !retryable) throw e;
        if (e instanceof UpstreamError && e.stale && staleRetries-- > 0) {
          // A kept-alive connection broke before any answer (the pool may hold several such after the
          // server restarted): again on the same upstream, until a connection answers or is refused.
          continue;
        }
        // Nothing reached the client yet: another upstream may do better.
        const next = this.pool.pick(this.concurrency, tried);
        if (!next) throw e;
        this.log?.warn({ upstream: u.url, error: e.message, retry_on: next.url }, "upstream request failed");
        u.inFlight--;
        next.inFlight++;
        slot.upstream = next;
        this.queue.pump();
      }
    }
  }

  /** One request on one upstream, its chunks passed through as they arrive. */
  private async complete(u: Upstream, r: SlotRun): Promise<SlotOutcome> {
    const outcome: SlotOutcome = {};
    let finish: string | undefined;
    const chunks = streamCompletion(u.url, requestBody(u, r), this.apiKey, r.signal);
    for await (const chunk of chunks) {
      for (const c of chunk.choices ?? []) {
        if ((c.index ?? 0) !== 0) continue;
        this.choice(c, r, outcome);
        if (c.finish_reason) finish = c.finish_reason;
      }
      readUsage(chunk, outcome);
    }
    if (finish === undefined) {
      throw new UpstreamError(`upstream ${u.url} ended the stream before the completion finished`, 502);
    }
    if (finish === "length") outcome.reason = "length";
    else if (finish === "stop") outcome.reason = "stop";
    else
      throw new UpstreamError(`upstream ${u.url} ended the completion with finish_reason "${finish}"`, 502);
    return outcome;
  }

  /** One choice chunk: its token ids, text and logprobs to the client. */
  private choice(c: CompletionChunkChoice, r: SlotRun, outcome: SlotOutcome): void {
    const text = typeof c.text === "string" ? c.text : "";
    const logprobs = c.logprobs ? toSamples(c.logprobs) : undefined;
    let ids: number[];
    if (Array.isArray(c.token_ids)) ids = c.token_ids;
    else if (logprobs && logprobs.length > 0 && logprobs.every((s) => s.token >= 0))
      ids = logprobs.map((s) => s.token);
    else {
      // The upstream does not return token ids (llama-server): tokenize the text delta here. These
      // ids are approximate (a delta is not tokenized in context); the counts come from its usage.
      const tok = this.tokenizer;
      // SentencePiece puts a space in front of the text itself: " word" would get two.
      const delta = tok.addSpacePrefix && text.startsWith(" ") ? text.slice(1) : text;
      ids = delta.length > 0 ? tok.encode(delta, { addSpecial: false, parseSpecial: false }) : [];
    }
    // vLLM counts the end-of-generation token among the ids; Spindle reports it as eogToken instead.
    const last = ids[ids.length - 1];
    if (
      c.finish_reason === "stop" &&
      (r.spec.stopAtEog ?? true) &&
      last !== undefined &&
      this.tokenizer.isEog(last)
    ) {
      outcome.eogToken = last;
      ids = ids.slice(0, -1);
    } else if (c.finish_reason === "stop" && typeof c.stop_reason === "number") {
      outcome.eogToken = c.stop_reason;
    }
    // One sample per id (an end-of-generation id taken off above takes its sample along).
    const lp = logprobs?.slice(0, ids.length);
    const samples =
      lp && lp.length === ids.length && (r.spec.sampling?.logprobs ?? 0) > 0
        ? lp.map((s, i) => (s.token >= 0 ? s : { ...s, token: ids[i]! }))
        : undefined;
    if (ids.length > 0 || text.length > 0) r.output(ids, text, samples);
  }

  protected async shutdown(): Promise<void> {
    this.pool.stop();
    await this.supervisor?.stop();
  }

  health(): Record<string, unknown> {
    return {
      upstream_concurrency: this.concurrency,
      upstreams: this.pool.health(),
      ...(this.supervisor ? { spawn: this.supervisor.status() } : {}),
    };
  }
}

/** The upstream request: prompt as token ids, Spindle's sampling parameters in OpenAI/vLLM names. */
function requestBody(u: Upstream, r: SlotRun): Record<string, unknown> {
  const s = r.spec;
  const p = validateSamplingParams(s.sampling ?? {});
  const body: Record<string, unknown> = {
    model: u.model,
    prompt: s.prompt,
    max_tokens: s.maxTokens,
    stream: true,
    stream_options: { include_usage: true },
    // Always sent, so that upstream defaults (llama-server: temperature 0.8, top_k 40, min_p 0.05)
    // do not replace Spindle's.
    temperature: p.temperature,
    top_p: p.topP,
    top_k: p.topK > 0 ? p.topK : -1,
    min_p: p.minP,
    return_token_ids: true,
  };
  if (p.seed !== undefined) body.seed = p.seed;
  if (p.presencePenalty !== 0) body.presence_penalty = p.presencePenalty;
  if (p.frequencyPenalty !== 0) body.frequency_penalty = p.frequencyPenalty;
  if (p.repetitionPenalty !== 1) body.repetition_penalty = p.repetitionPenalty;
  if (p.logitBias) {
    body.logit_bias = Object.fromEntries(
      [...p.logitBias].map(([id, b]) => [String(id), Math.max(-100, Math.min(100, b))]),
    );
  }
  if (s.stopAtEog === false) body.ignore_eos = true;
  if (s.stop && s.stop.length > 0) body.stop = s.stop;
  // Only when set: vLLM refuses a priority unless it runs with its priority scheduler.
  if (s.priority) body.priority = s.priority;
  if (p.logprobs > 0) {
    body.logprobs = p.logprobs;
    body.return_tokens_as_token_ids = true;
  }
  return body;
}

function readUsage(chunk: CompletionChunk, outcome: SlotOutcome): void {
  const u = chunk.usage;
  if (!u) return;
  if (typeof u.prompt_tokens === "number") outcome.promptTokens = u.prompt_tokens;
  if (typeof u.completion_tokens === "number") outcome.completionTokens = u.completion_tokens;
  const cached = u.prompt_tokens_details?.cached_tokens;
  if (typeof cached === "number") outcome.cachedTokens = cached;
}

/** "token_id:123" → 123; anything else → -1 (the caller fills it from token_ids). */
function tokenIdOf(s: string): number {
  const m = /^token_id:(\d+)$/.exec(s);
  return m ? Number(m[1]) : -1;
}

/** Completions-style logprobs (tokens rendered as "token_id:N") → SampleResults. */
function toSamples(lp: NonNullable<CompletionChunkChoice["logprobs"]>): SampleResult[] {
  const tokens = lp.tokens ?? [];
  return tokens.map((t, i) => {
    const top = Object.entries(lp.top_logprobs?.[i] ?? {})
      .map(([k, logprob]) => ({ token: tokenIdOf(k), logprob }))
      .filter((x) => x.token >= 0 && typeof x.logprob === "number")
      .sort((a, b) => b.logprob - a.logprob || a.token - b.token);
    return { token: tokenIdOf(t), logprob: lp.token_logprobs?.[i] ?? Number.NaN, topLogprobs: top };
  });
}

/**
 * Starts the openai backend: reads the model card, starts the spawned upstream when asked, waits
 * until an upstream answers (throws, naming each one's problem, when none does in time), then
 * checks health every `healthIntervalMs`.
 */
export async function startOpenAIBackend(init: OpenAIBackendInit & OpenAIBackendOptions): Promise<Backend> {
  const card = readModelCard(init.modelPath);
  if (init.upstreams.length === 0) throw new SpindleError("the openai backend needs an upstream URL");
  if (init.spawn !== undefined && init.upstreams.length !== 1) {
    throw new SpindleError("--spawn starts one upstream: give exactly one upstream URL (where it listens)");
  }
  const concurrency = init.upstreamConcurrency ?? DEFAULT_UPSTREAM_CONCURRENCY;
  if (!(Number.isSafeInteger(concurrency) && concurrency >= 1)) {
    throw new SpindleError(`upstream concurrency must be an integer ≥ 1, not ${concurrency}`);
  }
  const intervalMs = init.healthIntervalMs ?? DEFAULT_HEALTH_INTERVAL_MS;
  let backend: OpenAIBackend | undefined;
  const pool = new UpstreamPool({
    urls: init.upstreams,
    apiKey: init.upstreamApiKey,
    model: init.upstreamModel,
    intervalMs,
    log: init.log,
    onChange: () => backend?.changed(),
  });
  let supervisor: Supervisor | undefined;
  try {
    if (init.spawn !== undefined) {
      supervisor = new Supervisor({
        startTimeoutMs: init.startTimeoutMs,
        ...init.spawnOptions,
        command: init.spawn,
        url: pool.upstreams[0]!.url,
        apiKey: init.upstreamApiKey,
        log: init.log,
      });
      const up = pool.upstreams[0]!;
      // Its death takes it out of rotation at once; its return is checked at once.
      supervisor.on("exit", () => pool.markDown(up, `upstream ${up.url} exited; it is being restarted`));
      supervisor.on("ready", () => void pool.check(up));
      await supervisor.start();
    }
    await pool.waitReady(init.startTimeoutMs ?? 60_000);
  } catch (err) {
    pool.stop();
    await supervisor?.stop();
    throw err;
  }
  const lens = pool.upstreams.map((u) => u.maxModelLen).filter((n): n is number => n !== undefined && n > 0);
  const contextLength = Math.min(card.contextLength, ...lens);
  const tok = card.tokenizer;
  const info: BackendInfo = {
    kind: "openai",
    contextLength,
    vocabSize: card.vocabSize,
    bos: tok.bos,
    eos: tok.eos,
    eogTokens: [...tok.eogTokens],
    chatTemplate: card.chatTemplate,
    details: {
      upstreams: pool.upstreams.map((u) => u.url),
      upstreamModel: pool.upstreams.find((u) => u.healthy)?.model,
      upstreamConcurrency: concurrency,
      ...(init.spawn !== undefined ? { spawn: init.spawn } : {}),
    },
  };
  backend = new OpenAIBackend(info, tok, init, pool, concurrency, init.upstreamApiKey, supervisor, init.log);
  pool.startChecks();
  return backend;
}
