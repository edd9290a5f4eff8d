import { SpindleError } from "../errors.js";
import { hiddenRowsFor, Pooler } from "../model/pooling.js";
import type { EngineEvent } from "../protocol/events.js";
import { RequestOutput } from "../protocol/output.js";
import { type FinishReason, type RequestSpec, requestProblem } from "../protocol/request.js";
import { type SampleResult, Sampler } from "../sampling/sampler.js";
import type { Tokenizer } from "../tokenizer/index.js";
import { BlockManager, type PrefixCacheStats } from "./block-manager.js";
import type { Runner, RunnerItem } from "./runner.js";
import { DEFAULT_SCHEDULER_OPTIONS, Scheduler, type SchedulerOptions } from "./scheduler.js";
import { Sequence } from "./sequence.js";

/**
 * The engine loop's core: `step()` is one iteration — schedule, run the batch,
 * then hand each sampled token to its request's RequestOutput (src/protocol/output.ts: end of
 * generation, text, stop strings, max tokens), which says whether it joins the sequence and
 * whether the request is done. An embedding request (kind "embed") samples nothing: its prefill
 * chunks return the final hidden rows its pooling needs, batched with everything else, and it
 * finishes (its blocks freed) in the step that computes its last prompt token, its vector on
 * the finishing event. It is synchronous and owns no thread or timer, so tests drive it
 * step by step and the worker (engine-worker.ts) drives it in a loop.
 */

export interface Clock {
  now(): number;
  /** Present on virtual clocks: the engine moves them by a simulated step's duration. */
  advance?(ms: number): void;
}

export const realClock: Clock = { now: () => performance.now() };

export class VirtualClock implements Clock {
  constructor(private t = 0) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

export interface EngineOptions extends Partial<SchedulerOptions> {
  prefixCaching?: boolean;
  clock?: Clock;
  /** Turns tokens into text, finds stop strings and end-of-generation tokens. Without one, only ids are produced. */
  tokenizer?: Tokenizer;
}

export interface StepStats {
  batchSize: number;
  prefillTokens: number;
  decodeTokens: number;
  preempted: number;
}

interface SeqOutput {
  sampler: Sampler;
  output: RequestOutput;
  key: number;
  /** Embedding requests: the vector being pooled. */
  pooler?: Pooler;
}

/**
 * A sequence's key for runners that derive tokens from it (the simulator): like a model, the same
 * prompt gives the same tokens when sampling is greedy, or seeded with the same seed; otherwise
 * each request differs.
 */
function keyOf(spec: RequestSpec): number {
  let h = 0x811c9dc5;
  const mix = (v: number) => {
    h = Math.imul(h ^ v, 0x01000193);
  };
  const s = spec.sampling;
  if (s?.temperature === 0 || s?.seed !== undefined) {
    for (const t of spec.prompt) mix(t);
    if (s.temperature !== 0) mix(s.seed! | 0);
  } else {
    for (let i = 0; i < spec.id.length; i++) mix(spec.id.charCodeAt(i));
  }
  return h >>> 0;
}

export class EngineCore {
  readonly blocks: BlockManager;
  readonly scheduler: Scheduler;
  readonly clock: Clock;
  private readonly seqs = new Map<string, Sequence>();
  private readonly outputs = new Map<string, SeqOutput>();
  private pending: EngineEvent[] = [];
  private readonly tokenizer: Tokenizer | undefined;
  lastStep: StepStats = { batchSize: 0, prefillTokens: 0, decodeTokens: 0, preempted: 0 };
  steps = 0;

  constructor(
    readonly runner: Runner,
    opts: EngineOptions = {},
  ) {
    const { prefixCaching = true, clock = realClock, tokenizer, ...sched } = opts;
    this.clock = clock;
    this.tokenizer = tokenizer;
    this.blocks = new BlockManager(runner.numBlocks, runner.blockSize, prefixCaching);
    const defined = Object.fromEntries(Object.entries(sched).filter(([, v]) => v !== undefined));
    this.scheduler = new Scheduler(this.blocks, { ...DEFAULT_SCHEDULER_OPTIONS, ...defined });
  }

  /** Requests not yet finished (waiting or running). */
  get numUnfinished(): number {
    return this.seqs.size;
  }

  get prefixStats(): PrefixCacheStats {
    return this.blocks.stats;
  }

  /** Adds a request. Throws SpindleError (naming the limit) for a request that can never run. */
  add(spec: RequestSpec): Sequence {
    if (this.seqs.has(spec.id)) throw new SpindleError(`request id ${spec.id} is already in use`);
    const problem = requestProblem(spec, this.runner);
    if (problem) throw problem;
    const embed = spec.kind === "embed";
    const pooling = this.runner.pooling;
    if (embed && pooling === undefined) {
      throw new SpindleError(
        "this model computes no embeddings (its GGUF asks for a pooling Spindle does not support)",
        "embeddings_unsupported",
      );
    }
    const capacity = this.blocks.numBlocks * this.blocks.blockSize;
    if (embed ? spec.prompt.length > capacity : spec.prompt.length >= capacity) {
      throw new SpindleError(
        `the prompt has ${spec.prompt.length} tokens but the KV cache holds ${capacity}; raise --kv-cache-memory`,
        "kv_cache_too_small",
      );
    }
    const sampler = new Sampler(spec.sampling ?? {}, this.runner.vocabSize, this.runner.argmax);
    const seq = new Sequence(spec, this.clock.now());
    // Last-token pooling needs only the last position: a cached prefix serves it as well.
    if (embed) seq.reusePrefix = pooling === "last";
    this.outputs.set(spec.id, {
      sampler,
      output: new RequestOutput(spec, this.tokenizer, this.runner.contextLength, seq.times),
      key: keyOf(spec),
      pooler: embed ? new Pooler(pooling!, this.runner.embeddingLength) : undefined,
    });
    this.seqs.set(spec.id, seq);
    this.scheduler.add(seq);
    return seq;
  }

  get(id: string): Sequence | undefined {
    return this.seqs.get(id);
  }

  /**
   * Ends a request in any state: its blocks are freed now; its finish event comes with the next
   * step's events. Reason "abort" for cancellations, "error" when the request failed.
   */
  abort(id: string, message = "aborted", reason: "abort" | "error" = "abort"): boolean {
    const seq = this.seqs.get(id);
    if (!seq) return false;
    this.finish(seq, reason, message, this.clock.now());
    return true;
  }

  hasWork(): boolean {
    return this.seqs.size > 0 || this.pending.length > 0;
  }

  /** When idle-waiting (window mode, or deadlines), the time the next step has something to do. */
  nextWakeup(): number | undefined {
    return this.scheduler.admissionTime(this.clock.now());
  }

  /** Events of finishes since the last step (aborts), without running one. */
  takeEvents(): EngineEvent[] {
    const events = this.pending;
    this.pending = [];
    return events;
  }

  /** One engine step. Returns the events it produced (plus those of aborts since the last step). */
  step(): EngineEvent[] {
    let now = this.clock.now();
    this.expireDeadlines(now);
    const plan = this.scheduler.schedule(now);
    for (const seq of plan.overflowed) {
      this.finish(seq, "length", "the sequence outgrew the KV cache", now);
    }
    // A preempted embedding computes its whole prompt again: what it pooled so far goes.
    for (const seq of plan.preempted) this.outputs.get(seq.id)?.pooler?.reset();
    const items = plan.items.filter((it) => !it.seq.isFinished);
    this.lastStep = {
      batchSize: items.length,
      prefillTokens: 0,
      decodeTokens: 0,
      preempted: plan.preempted.length,
    };
    if (items.length > 0) {
      const runnerItems: RunnerItem[] = items.map(({ seq, n }) => {
        if (n === 1 && seq.numComputed >= seq.promptLength) this.lastStep.decodeTokens++;
        else this.lastStep.prefillTokens += n;
        const out = this.outputs.get(seq.id)!;
        const ends = seq.numComputed + n === seq.tokens.length;
        return {
          tokens: seq.tokens.slice(seq.numComputed, seq.numComputed + n),
          pos: seq.numComputed,
          blockTable: seq.blockTable,
          logits: ends && !out.pooler ? "last" : "none",
          hidden: out.pooler && hiddenRowsFor(out.pooler.pooling, seq.numComputed, n, seq.tokens.length),
          sampler: out.sampler,
          history: seq.tokens,
          seqKey: out.key,
        };
      });
      const result = this.runner.execute(runnerItems);
      if (result.simulatedMs !== undefined) this.clock.advance?.(result.simulatedMs);
      now = this.clock.now();
      this.steps++;
      items.forEach(({ seq, n }, i) => {
        seq.numComputed += n;
        this.blocks.commit(seq);
        const pooler = this.outputs.get(seq.id)!.pooler;
        if (pooler) {
          const rows = result.hidden?.[i];
          if (rows) pooler.add(rows);
          if (seq.numComputed === seq.tokens.length) this.finishEmbedding(seq, pooler, now);
          return;
        }
        const sample = result.samples[i];
        if (sample instanceof Error) this.finish(seq, "error", sample.message, now);
        else if (sample) this.accept(seq, sample, now);
      });
    }
    return this.takeEvents();
  }

  private event(seq: Sequence): EngineEvent {
    const last = this.pending[this.pending.length - 1];
    if (last && last.id === seq.id && !last.finish) return last;
    const e: EngineEvent = { id: seq.id, tokens: [], text: "" };
    this.pending.push(e);
    return e;
  }

  /** A sampled token: its output decides whether it joins the sequence and whether the sequence is done. */
  private accept(seq: Sequence, sample: SampleResult, now: number): void {
    const { output } = this.outputs.get(seq.id)!;
    if (output.accept(sample.token, sample, now, this.event(seq))) seq.tokens.push(sample.token);
    if (output.done) this.finish(seq, output.done.reason, undefined, now);
  }

  /** An embedding's prompt is computed: its vector goes on the finishing event, its blocks are freed. */
  private finishEmbedding(seq: Sequence, pooler: Pooler, now: number): void {
    this.event(seq).embedding = pooler.result();
    seq.times.firstToken ??= now;
    seq.times.lastToken = now;
    this.finish(seq, "stop", undefined, now);
  }

  private finish(seq: Sequence, reason: FinishReason, message: string | undefined, now: number): void {
    if (seq.isFinished) return;
    const { output } = this.outputs.get(seq.id)!;
    seq.state = "finished";
    this.scheduler.remove(seq);
    this.seqs.delete(seq.id);
    this.outputs.delete(seq.id);
    output.finish(this.event(seq), now, reason, message, {
      cachedTokens: seq.cachedTokens,
      completionTokens: seq.numOutput,
      preemptions: seq.preemptions,
    });
  }

  private expireDeadlines(now: number): void {
    for (const seq of [...this.seqs.values()]) {
      const t = seq.spec.timeoutMs;
      if (t !== undefined && now - seq.times.arrival >= t)
        this.finish(seq, "abort", `timed out after ${t} ms`, now);
    }
  }
}
