import { randomInt } from "node:crypto";
import { availableParallelism } from "node:os";
import type {
  Llama,
  LlamaContext,
  LlamaContextSequence,
  LlamaModel,
  SequenceEvaluateOptions,
  Token,
} from "node-llama-cpp";
import { SpindleError } from "../errors.js";
import { readModelCard } from "../model/model-card.js";
import { EventStream, type RequestStream } from "../protocol/event-stream.js";
import type { SubmitOptions, SubmitSpec } from "../protocol/request.js";
import { type SamplingParams, validateSamplingParams } from "../sampling/params.js";
import { Sampler } from "../sampling/sampler.js";
import type { Backend, BackendInfo } from "./backend.js";
import type { LlamaCppBackendInit } from "./index.js";
import { SlotBackend, type SlotOutcome, type SlotRun } from "./slot-backend.js";

/**
 * The `llamacpp` backend: llama.cpp in process through the optional
 * `node-llama-cpp` package. One LlamaContext holds `parallel` sequences; each
 * is a slot of the SlotBackend (which queues, times out, aborts, detokenizes
 * and applies stop strings / EOG / max_tokens exactly as the engine does).
 * Sequences evaluating at the same time are batched by node-llama-cpp into one
 * llama_decode, and sampled one after another (serializeSampling says why).
 * Tokenizing and chat templates stay Spindle's (from the GGUF), so llama.cpp
 * only ever sees token ids.
 *
 * run() on a slot: keep the longest common prefix of the sequence's previous
 * state and the new prompt (reported as cachedTokens), prefill the rest in
 * batch-sized chunks (checking for aborts between chunks), then generate one
 * token at a time. An abort returns at once; the llama.cpp work still in
 * flight finishes in the background and only then is the slot handed out again.
 *
 * Sampling, two paths:
 *  - native (the usual): llama.cpp's sampler chain, built by node-llama-cpp from
 *    temperature (0 = greedy), top_k, top_p, min_p, seed, repetition / presence /
 *    frequency penalties over the last penalty_last_n tokens of prompt + output,
 *    and logit_bias. llama.cpp's order is logit bias → penalties → top-k → top-p
 *    → min-p → temperature → draw (llama-server's), so top-p/min-p see the
 *    distribution before temperature, unlike Spindle's sampler (temperature
 *    before top-p). A seed reproduces this backend's output, not `local`'s.
 *  - Spindle's own Sampler, when the request asks for logprobs, or biases an
 *    end-of-generation token (node-llama-cpp's TokenBias silently drops EOG
 *    tokens): llama.cpp returns the full next-token distribution of the raw
 *    logits (greedy chain, nothing applied), Spindle samples from its log and
 *    feeds its choice back. Logprobs and every sampling parameter then mean
 *    exactly what they mean on `local`; it costs a vocabulary-sized transfer
 *    per token.
 *
 * Threads: `threads: "auto"` (default) measures a short greedy decode with 1
 * thread and with the core count on throwaway one-sequence contexts and keeps
 * the faster. On small machines llama.cpp's spinning worker threads compete
 * with the JS thread that drives node-llama-cpp, so more threads can be far
 * slower (stories260K on 2 vCPUs: ~1,700 tok/s with 1, under 100 with 2).
 */

type NodeLlamaCpp = typeof import("node-llama-cpp");

const DEFAULT_PARALLEL = 8;
const MAX_DEFAULT_CONTEXT = 4096;
/** Thread measurement: tokens decoded before timing starts (prompt, warm-up), then at most this many tokens or ms. */
const MEASURE_WARMUP = 2;
const MEASURE_TOKENS = 16;
const MEASURE_MS = 1000;

interface Slot {
  readonly index: number;
  readonly seq: LlamaContextSequence;
  /** Handed to a request (or still finishing one). */
  busy: boolean;
  /** llama.cpp work of the last request, which may outlive run() after an abort. */
  job: Promise<unknown> | undefined;
  /** The base released the slot while its job was still running: free it when the job ends. */
  releaseWanted: boolean;
}

/** What `threads: "auto"` measured: decode tok/s per thread count. */
export interface ThreadChoice {
  threads: number;
  mode: "auto" | "fixed";
  /** Thread count → measured decode tok/s (auto only). */
  rates: Record<number, number>;
  /** One log-friendly line. */
  line: string;
}

class LlamaCppBackend extends SlotBackend<Slot> {
  private readonly slots: Slot[];
  private readonly logits: Float32Array;

  constructor(
    private readonly nlc: NodeLlamaCpp,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    info: BackendInfo,
    card: ReturnType<typeof readModelCard>,
    init: LlamaCppBackendInit,
  ) {
    super({
      info,
      tokenizer: card.tokenizer,
      policy: init.policy ?? "fcfs",
      agingPerSecond: init.agingPerSecond ?? 1,
      now: init.now,
    });
    this.slots = Array.from({ length: context.totalSequences }, (_, index) => ({
      index,
      seq: context.getSequence({ contextShift: { strategy: noContextShift } }),
      busy: false,
      job: undefined,
      releaseWanted: false,
    }));
    this.logits = new Float32Array(info.vocabSize);
  }

  /** Refuses bad sampling parameters at once (the engine does so at submission), not after waiting for a slot. */
  override submit(s: SubmitSpec, opts?: SubmitOptions): RequestStream {
    try {
      new Sampler(s.sampling ?? {}, this.info.vocabSize);
    } catch (err) {
      const stream = new EventStream(s.id ?? "llamacpp-refused", () => {});
      stream.fail(err instanceof SpindleError ? err : new SpindleError(String(err), "invalid_request_error"));
      return stream;
    }
    return super.submit(s, opts);
  }

  protected take(): Slot | undefined {
    const slot = this.slots.find((s) => !s.busy);
    if (slot) slot.busy = true;
    return slot;
  }

  protected release(slot: Slot): void {
    if (slot.job) slot.releaseWanted = true;
    else slot.busy = false;
  }

  protected async run(slot: Slot, r: SlotRun): Promise<SlotOutcome> {
    const job = this.generate(slot, r);
    slot.job = job;
    void job
      .catch(() => {})
      .finally(() => {
        slot.job = undefined;
        if (slot.releaseWanted) {
          slot.releaseWanted = false;
          slot.busy = false;
          this.queue.pump();
        }
      });
    return (await untilAborted(job, r.signal)) ?? {};
  }

  /** One request on one sequence: prefix reuse, chunked prefill, then token by token until told to stop. */
  private async generate(slot: Slot, r: SlotRun): Promise<SlotOutcome> {
    const { seq } = slot;
    const prompt = r.spec.prompt as Token[];
    const p = validateSamplingParams(r.spec.sampling ?? {});
    // Keep what the sequence already holds of the prompt, but always evaluate at least the last prompt token.
    await seq.adaptStateToTokens(prompt.slice(0, -1), false);
    const cachedTokens = seq.nextTokenIndex;
    const chunk = this.context.batchSize;
    for (let i = cachedTokens; i < prompt.length - 1; i += chunk) {
      if (r.signal.aborted) return { cachedTokens };
      await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(i, Math.min(i + chunk, prompt.length - 1)));
    }
    if (r.signal.aborted) return { cachedTokens };
    const last = prompt.slice(prompt.length - 1);
    const history: number[] = [...prompt];
    const ownSampler =
      p.logprobs > 0 || [...(p.logitBias?.keys() ?? [])].some((t) => this.tokenizer.isEog(t));
    if (ownSampler) await this.generateOwnSampler(seq, last, p, history, r);
    else await this.generateNative(seq, last, p, history, r);
    return { cachedTokens };
  }

  private async generateNative(
    seq: LlamaContextSequence,
    input: Token[],
    p: SamplingParams,
    history: number[],
    r: SlotRun,
  ): Promise<void> {
    const it = seq.evaluate(input, this.nativeOptions(p, history));
    try {
      while (!r.signal.aborted) {
        const next = await it.next();
        if (next.done) return;
        history.push(next.value);
        if (!r.token(next.value)) return;
      }
    } finally {
      await it.return();
    }
  }

  /** llama.cpp gives the raw next-token distribution; Spindle's Sampler chooses and reports logprobs. */
  private async generateOwnSampler(
    seq: LlamaContextSequence,
    input: Token[],
    p: SamplingParams,
    history: number[],
    r: SlotRun,
  ): Promise<void> {
    const V = this.info.vocabSize;
    const sampler = new Sampler(p, V);
    const logits = this.logits;
    const it = seq.evaluateWithMetadata(
      input,
      { probabilities: true },
      { temperature: 0, yieldEogToken: true },
    );
    try {
      let next = await it.next();
      while (!next.done && !r.signal.aborted) {
        // log p is the raw logit minus a constant: the same softmax, the same logprobs.
        logits.fill(Number.NEGATIVE_INFINITY);
        for (const [t, prob] of next.value.probabilities) if (t < V) logits[t] = Math.log(prob);
        const s = sampler.sample(logits, history);
        history.push(s.token);
        if (!r.token(s.token, s)) return;
        next = await it.next(s.token as Token);
      }
    } finally {
      await it.return();
    }
  }

  private nativeOptions(p: SamplingParams, history: number[]): SequenceEvaluateOptions {
    const o: SequenceEvaluateOptions = {
      temperature: p.temperature,
      topK: p.topK > 0 ? p.topK : 0,
      topP: p.topP,
      minP: p.minP,
      // Left unset, node-llama-cpp seeds from the clock in seconds: concurrent requests would draw alike.
      seed: p.seed === undefined ? randomInt(2 ** 32) : ((p.seed % 2 ** 32) + 2 ** 32) % 2 ** 32,
      yieldEogToken: true,
    };
    const penalize = p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
    if (penalize && p.penaltyLastN !== 0) {
      const n = p.penaltyLastN < 0 ? this.info.contextLength : p.penaltyLastN;
      o.repeatPenalty = {
        punishTokens: () => history.slice(-n) as Token[],
        maxPunishTokens: n,
        penalty: p.repetitionPenalty,
        presencePenalty: p.presencePenalty,
        frequencyPenalty: p.frequencyPenalty,
      };
    }
    if (p.logitBias) {
      const bias = new this.nlc.TokenBias(this.model.tokenizer);
      for (const [t, b] of p.logitBias) bias.set(t as Token, { logit: b });
      o.tokenBias = bias;
    }
    return o;
  }

  health(): Record<string, unknown> {
    return {
      slots: this.slots.length,
      slotsBusy: this.slots.filter((s) => s.busy).length,
      ...this.queueState,
    };
  }

  protected async shutdown(): Promise<void> {
    await Promise.allSettled(this.slots.map((s) => s.job));
    await this.context.dispose();
    await this.model.dispose();
  }
}

/** Resolves with `p`, or with undefined as soon as `signal` aborts; rejects when `p` rejects first. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise<T | undefined>((resolve, reject) => {
    const onAbort = () => resolve(undefined);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * Makes node-llama-cpp sample one sequence at a time. After a batch whose
 * outputs llama.cpp computed out of order (its per-sequence split does that
 * when sequences of different lengths share a batch), llama.cpp puts the
 * logits rows back in order lazily, on the first read, and not thread-safely;
 * node-llama-cpp samples every sequence of the batch on its own libuv thread,
 * so two reads can both apply the swaps and each sequence then samples from
 * another's logits (seen here as concurrent greedy answers trading tokens,
 * a few in a thousand). Serialized, the first read reorders and the rest see
 * the result. `_ctx` is node-llama-cpp's internal native context: if a new
 * version renames it, starting fails here rather than answers getting mixed.
 */
function serializeSampling(context: LlamaContext): void {
  type SampleToken = (...args: unknown[]) => Promise<unknown>;
  const native = (context as unknown as { _ctx?: { sampleToken?: SampleToken } })._ctx;
  const sampleToken = native?.sampleToken;
  if (native === undefined || typeof sampleToken !== "function")
    throw new Error("node-llama-cpp's context has no _ctx.sampleToken: cannot serialize sampling");
  let last: Promise<unknown> = Promise.resolve();
  Object.defineProperty(native, "sampleToken", {
    value: (...args: unknown[]) => {
      const sampled = last.then(() => sampleToken.apply(native, args));
      last = sampled.catch(() => {});
      return sampled;
    },
  });
}

/** The base stops at the context length, so a full sequence is a bug: fail rather than silently drop its beginning. */
function noContextShift(): never {
  throw new Error("the sequence's context is full");
}

async function importNodeLlamaCpp(): Promise<NodeLlamaCpp> {
  try {
    return await import("node-llama-cpp");
  } catch {
    throw new SpindleError(
      "the llamacpp backend needs the node-llama-cpp package: install it with `npm install node-llama-cpp`",
      "backend_unavailable",
    );
  }
}

let llamaPromise: Promise<Llama> | undefined;

/** One llama.cpp binding per process (node-llama-cpp test-loads the binary each time, ~1 s): later backends reuse it. */
function sharedLlama(nlc: NodeLlamaCpp): Promise<Llama> {
  llamaPromise ??= nlc
    .getLlama({ gpu: false, build: "never", logLevel: nlc.LlamaLogLevel.error })
    .catch((err: unknown) => {
      llamaPromise = undefined;
      throw new SpindleError(
        `node-llama-cpp could not load llama.cpp: ${firstLine(err)}`,
        "backend_unavailable",
      );
    });
  return llamaPromise;
}

/** Greedy decode tok/s of `model` with `threads` threads, on a throwaway one-sequence context. */
async function decodeRate(model: LlamaModel, prompt: Token[], threads: number): Promise<number> {
  const ctx = await model.createContext({ sequences: 1, contextSize: 256, threads });
  try {
    const seq = ctx.getSequence();
    let n = 0;
    let t0 = 0;
    let timed = 0;
    for await (const _ of seq.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
      n++;
      if (n === MEASURE_WARMUP) t0 = performance.now();
      else if (n > MEASURE_WARMUP) {
        timed = n - MEASURE_WARMUP;
        if (timed >= MEASURE_TOKENS || performance.now() - t0 >= MEASURE_MS) break;
      }
    }
    return timed / ((performance.now() - t0) / 1000);
  } finally {
    await ctx.dispose();
  }
}

/**
 * Picks llama.cpp's thread count: a number is taken as is; "auto" measures 1
 * thread against the core count and keeps the faster. A second round is timed
 * when the first is within 1.5× (a neighbour's load makes one round noisy).
 */
export async function chooseThreads(
  model: LlamaModel,
  prompt: Token[],
  threads: number | "auto",
  cores: number,
): Promise<ThreadChoice> {
  if (threads !== "auto") {
    return { threads, mode: "fixed", rates: {}, line: `llama.cpp threads: ${threads} (fixed)` };
  }
  const candidates = cores > 1 ? [1, cores] : [1];
  const rates: Record<number, number> = {};
  for (let round = 0; round < 2; round++) {
    for (const t of candidates)
      rates[t] = Math.max(rates[t] ?? 0, Math.round(await decodeRate(model, prompt, t)));
    if (candidates.length === 1) break;
    const [a, b] = candidates.map((t) => rates[t]!);
    if (Math.max(a!, b!) > 1.5 * Math.min(a!, b!)) break;
  }
  const best = candidates.reduce((x, y) => (rates[y]! > rates[x]! ? y : x));
  const measured = candidates.map((t) => `${t} thread${t === 1 ? "" : "s"} ${rates[t]} tok/s`).join(", ");
  return { threads: best, mode: "auto", rates, line: `llama.cpp threads: ${best} (auto: ${measured})` };
}

export async function startLlamaCppBackend(init: LlamaCppBackendInit): Promise<Backend> {
  const nlc = await importNodeLlamaCpp();
  const card = readModelCard(init.modelPath);
  const parallel = init.parallel ?? DEFAULT_PARALLEL;
  if (!(Number.isInteger(parallel) && parallel >= 1))
    throw new SpindleError(`parallel must be a whole number ≥ 1, got ${parallel}`);
  const contextLength = init.contextLength ?? Math.min(card.contextLength, MAX_DEFAULT_CONTEXT);
  if (!(Number.isInteger(contextLength) && contextLength >= 2))
    throw new SpindleError(`the context length must be a whole number ≥ 2, got ${contextLength}`);
  const threadsOpt = init.threads ?? "auto";
  if (threadsOpt !== "auto" && !(Number.isInteger(threadsOpt) && threadsOpt >= 1))
    throw new SpindleError(`threads must be "auto" or a whole number ≥ 1, got ${threadsOpt}`);

  const llama = await sharedLlama(nlc);
  const model = await llama.loadModel({ modelPath: init.modelPath, gpuLayers: 0 }).catch((err: unknown) => {
    throw new SpindleError(
      `llama.cpp could not load ${init.modelPath}: ${firstLine(err)}`,
      "model_file_error",
    );
  });
  try {
    const cores = llama.cpuMathCores > 0 ? llama.cpuMathCores : availableParallelism();
    const probe = card.tokenizer.encode("Once upon a time", { addSpecial: true }) as Token[];
    const choice = await chooseThreads(model, probe.length > 0 ? probe : [0 as Token], threadsOpt, cores);
    const context = await model.createContext({
      sequences: parallel,
      contextSize: contextLength,
      threads: choice.threads,
    });
    serializeSampling(context);
    const info: BackendInfo = {
      kind: "llamacpp",
      contextLength,
      vocabSize: card.vocabSize,
      bos: card.tokenizer.bos,
      eos: card.tokenizer.eos,
      eogTokens: [...card.tokenizer.eogTokens],
      chatTemplate: card.chatTemplate,
      details: {
        parallel,
        threads: choice.threads,
        threadChoice: choice.mode,
        threadRates: choice.rates,
        threadLine: choice.line,
        cores,
        batchSize: context.batchSize,
        llamaCpp: `${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release}`,
        llamaBuild: llama.buildType,
      },
    };
    return new LlamaCppBackend(nlc, model, context, info, card, init);
  } catch (err) {
    await model.dispose();
    throw err;
  }
}

function firstLine(err: unknown): string {
  const m = err instanceof Error ? err.message : String(err);
  return m.split("\n", 1)[0]!.trim();
}
