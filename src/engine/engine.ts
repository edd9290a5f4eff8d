import { SpindleError } from "../errors.js";
import { GrammarError, maskWords } from "../grammar/constraint.js";
import { hiddenRowsFor, Pooler } from "../model/pooling.js";
import type { EngineEvent } from "../protocol/events.js";
import { RequestOutput } from "../protocol/output.js";
import { type FinishReason, type RequestSpec, requestProblem } from "../protocol/request.js";
import { type SampleResult, Sampler } from "../sampling/sampler.js";
import type { Tokenizer } from "../tokenizer/index.js";
import { BlockManager, type PrefixCacheStats } from "./block-manager.js";
import type { Drafter } from "./drafter.js";
import { type GrammarCompiler, grammarCompiler } from "./grammars.js";
import type { Runner, RunnerItem } from "./runner.js";
import { DEFAULT_SCHEDULER_OPTIONS, Scheduler, type SchedulerOptions } from "./scheduler.js";
import { Sequence } from "./sequence.js";
import { DEFAULT_MAX_BATCH, type SpeculativeOptions, Speculator } from "./speculation.js";

/**
 * The engine loop's core: `step()` is one iteration — schedule, run the batch,
 * then hand each sampled token to its request's RequestOutput (src/protocol/output.ts: end of
 * generation, text, stop strings, max tokens), which says whether it joins the sequence and
 * whether the request is done. An embedding request (kind "embed") samples nothing: its prefill
 * chunks return the final hidden rows its pooling needs, batched with everything else, and it
 * finishes (its blocks freed) in the step that computes its last prompt token, its vector on
 * the finishing event. It is synchronous and owns no thread or timer, so tests drive it
 * step by step and the worker (engine-worker.ts) drives it in a loop.
 *
 * Constrained decoding: a request with a grammar (RequestSpec.grammar) is compiled when it is added
 * (`grammars`, cached by content; a spec that cannot compile is refused there with its
 * GrammarError) and carries its matcher in its RequestOutput. Only when such a sequence samples does
 * its RunnerItem carry the matcher and a mask buffer: the runner fills the mask and the sampler
 * applies it, so unconstrained sequences never pay for masks. After each accepted token, the
 * tokens the grammar forces (GrammarMatcher.forcedTokens) are accepted at once, without sampling
 * (jump-forward, while the batch is small: acceptForced): they join the sequence as pending tokens,
 * and the scheduler computes them all in the next step as a chunk of the running sequence, as it
 * does a prefill chunk. Preemption needs
 * nothing more: it keeps a sequence's tokens and recomputes their K/V, so the matcher, which has
 * accepted exactly those tokens, is already where it must be.
 *
 * Speculative decoding (`speculative`): before scheduling, each decoding sequence may get a draft
 * (Speculator: prompt lookup or a draft model — `drafter`, whose per-sequence cache is released
 * when the sequence finishes or is preempted —, an adaptive length per sequence); the scheduler computes it with the
 * sequence's last token in the same batched forward pass as everything else, and the runner returns
 * the accepted run (the draft tokens the model chose, then one of its own), which goes through the
 * same acceptance path token by token — EOS, stop strings and max_tokens end it inside the run. The
 * K/V of the rejected positions is rolled back: numComputed stops after the last accepted token and
 * the blocks past it are released (BlockManager.trim). Constrained sequences (a grammar) and
 * embeddings never draft; penalties, logit bias and logprobs verify through the request's Sampler.
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
  /** Compiles request grammars; default: grammarCompiler(tokenizer), and none without a tokenizer (grammars refused). */
  grammars?: GrammarCompiler;
  /**
   * Jump-forward (accepting the tokens a grammar forces without sampling them) while at most this many
   * requests are unfinished (running or waiting): default DEFAULT_MAX_BATCH (4), as speculation; 0
   * never, Infinity always.
   */
  jumpForwardMaxBatch?: number;
  /** Speculative decoding (off when absent). */
  speculative?: SpeculativeOptions;
  /** Speculative method "draft": the draft model's drafter (the worker builds it from `speculative.draftModel`). */
  drafter?: Drafter;
}

export interface StepStats {
  batchSize: number;
  prefillTokens: number;
  decodeTokens: number;
  preempted: number;
  /** Tokens accepted without sampling because the grammar forced them (jump-forward). */
  forcedTokens: number;
  /** Draft tokens verified this step (speculative decoding), and how many were accepted. */
  draftTokens: number;
  acceptedTokens: number;
}

interface SeqOutput {
  sampler: Sampler;
  output: RequestOutput;
  key: number;
  /** The mask buffer of a constrained sequence (maskWords(vocabSize) words). */
  mask?: Uint32Array;
  /** Embedding requests: the vector being pooled. */
  pooler?: Pooler;
}

/** The most forced tokens accepted at once (the next step computes them as one chunk). */
const MAX_FORCED = 256;

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
  private readonly grammars: GrammarCompiler | undefined;
  private readonly jumpForwardMaxBatch: number;
  readonly speculator: Speculator | undefined;
  lastStep: StepStats = {
    batchSize: 0,
    prefillTokens: 0,
    decodeTokens: 0,
    preempted: 0,
    forcedTokens: 0,
    draftTokens: 0,
    acceptedTokens: 0,
  };
  steps = 0;
  /** Tokens accepted without sampling (jump-forward) since the engine started. */
  totalForcedTokens = 0;
  /** Those not yet in a step's stats (lastStep.forcedTokens). */
  private forcedSinceStep = 0;

  constructor(
    readonly runner: Runner,
    opts: EngineOptions = {},
  ) {
    const {
      prefixCaching = true,
      clock = realClock,
      tokenizer,
      grammars,
      jumpForwardMaxBatch,
      speculative,
      drafter,
      ...sched
    } = opts;
    this.speculator = speculative ? new Speculator(speculative, drafter) : undefined;
    this.clock = clock;
    this.tokenizer = tokenizer;
    this.grammars = grammars ?? (tokenizer ? grammarCompiler(tokenizer) : undefined);
    this.jumpForwardMaxBatch = jumpForwardMaxBatch ?? DEFAULT_MAX_BATCH;
    this.blocks = new BlockManager(runner.numBlocks, runner.blockSize, prefixCaching, runner.windowPool);
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

  /**
   * Adds a request. Throws SpindleError (naming the limit) for a request that can never run, and
   * GrammarError for a grammar that cannot be compiled.
   */
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
    const sampler = new Sampler(spec.sampling ?? {}, this.runner.vocabSize, this.runner.samplerOps);
    const matcher = spec.grammar && !embed ? this.compile(spec).matcher() : undefined;
    const now = this.clock.now();
    const seq = new Sequence(spec, now);
    // Last-token pooling needs only the last position: a cached prefix serves it as well.
    if (embed) seq.reusePrefix = pooling === "last";
    const output = new RequestOutput(spec, this.tokenizer, this.runner.contextLength, seq.times, matcher);
    this.outputs.set(spec.id, {
      sampler,
      output,
      key: keyOf(spec),
      mask: matcher ? new Uint32Array(maskWords(this.runner.vocabSize)) : undefined,
      pooler: embed ? new Pooler(pooling!, this.runner.embeddingLength) : undefined,
    });
    this.seqs.set(spec.id, seq);
    this.scheduler.add(seq);
    // A grammar that starts with forced text (a schema's "{"): it joins the prompt's prefill.
    if (matcher) this.acceptForced(seq, output, now);
    return seq;
  }

  /** The request's grammar, compiled (cached by content). Throws GrammarError. */
  private compile(spec: RequestSpec) {
    if (!this.grammars) {
      throw new GrammarError("", "structured output needs the model's tokenizer, and this engine has none");
    }
    return this.grammars(spec.grammar!);
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
    this.proposeDrafts();
    const plan = this.scheduler.schedule(now);
    for (const seq of plan.overflowed) {
      this.finish(seq, "length", "the sequence outgrew the KV cache", now);
    }
    // A preempted embedding computes its whole prompt again: what it pooled so far goes. A preempted
    // sequence's draft-model cache goes too (it catches up again when it drafts next).
    for (const seq of plan.preempted) {
      this.outputs.get(seq.id)?.pooler?.reset();
      this.speculator?.release(seq);
    }
    const items = plan.items.filter((it) => !it.seq.isFinished);
    this.lastStep = {
      batchSize: items.length,
      prefillTokens: 0,
      decodeTokens: 0,
      preempted: plan.preempted.length,
      forcedTokens: 0,
      draftTokens: 0,
      acceptedTokens: 0,
    };
    if (items.length > 0) {
      const runnerItems: RunnerItem[] = items.map(({ seq, n }) => {
        const draft = seq.draft.length > 0 ? seq.draft : undefined;
        if (n === 1 + seq.draft.length && seq.numComputed >= seq.promptLength)
          this.lastStep.decodeTokens += n;
        else this.lastStep.prefillTokens += n;
        const out = this.outputs.get(seq.id)!;
        const ends = seq.numComputed + n === seq.tokens.length + seq.draft.length;
        const samples = ends && !out.pooler;
        const matcher = out.output.matcher;
        return {
          tokens: draft
            ? [seq.tokens[seq.numComputed]!, ...draft]
            : seq.tokens.slice(seq.numComputed, seq.numComputed + n),
          pos: seq.numComputed,
          blockTable: seq.blockTable,
          windowTable: this.runner.windowPool && seq.windowTable,
          logits: !samples ? "none" : draft ? "all" : "last",
          draft,
          hidden: out.pooler && hiddenRowsFor(out.pooler.pooling, seq.numComputed, n, seq.tokens.length),
          sampler: out.sampler,
          history: seq.tokens,
          seqKey: out.key,
          grammar: samples && matcher && out.mask ? { matcher, mask: out.mask } : undefined,
        };
      });
      const result = this.runner.execute(runnerItems);
      if (result.simulatedMs !== undefined) this.clock.advance?.(result.simulatedMs);
      now = this.clock.now();
      this.steps++;
      items.forEach(({ seq, n }, i) => {
        const sample = result.samples[i];
        if (seq.draft.length > 0) {
          if (Array.isArray(sample)) this.acceptRun(seq, sample, now);
          else this.finish(seq, "error", sample instanceof Error ? sample.message : "no draft verified", now);
          return;
        }
        seq.numComputed += n;
        this.blocks.commit(seq);
        const pooler = this.outputs.get(seq.id)!.pooler;
        if (pooler) {
          const rows = result.hidden?.[i];
          if (rows) pooler.add(rows);
          if (seq.numComputed === seq.tokens.length) this.finishEmbedding(seq, pooler, now);
          return;
        }
        if (sample instanceof Error) this.finish(seq, "error", sample.message, now);
        else if (sample && !Array.isArray(sample)) this.accept(seq, sample, now);
      });
    }
    // Forced tokens of this step, and of requests added since the last one (a forced start).
    this.lastStep.forcedTokens = this.forcedSinceStep;
    this.forcedSinceStep = 0;
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
    if (output.matcher) this.acceptForced(seq, output, now);
    if (output.done) this.finish(seq, output.done.reason, output.done.message, now);
  }

  /**
   * Speculative decoding, before scheduling: a draft for each decoding sequence the Speculator picks
   * (never a constrained one), as long as max_tokens and the context leave room for it after the
   * token this step samples anyway.
   */
  private proposeDrafts(): void {
    const spec = this.speculator;
    const running = this.scheduler.running;
    const active = spec?.active(running.length) ?? false;
    const asks: { seq: Sequence; room: number }[] = [];
    for (const seq of running) {
      seq.draft = [];
      if (!active || seq.numPending !== 1 || seq.isEmbedding) continue;
      const { output } = this.outputs.get(seq.id)!;
      if (output.matcher) continue;
      const room = Math.min(
        seq.spec.maxTokens - output.completion - 1,
        this.runner.contextLength - seq.tokens.length - 1,
      );
      if (room > 0) asks.push({ seq, room });
    }
    if (asks.length === 0) return;
    // All together: a draft model drafts for them in one batch.
    const drafts = spec!.proposeAll(asks);
    for (const [i, { seq }] of asks.entries()) seq.draft = drafts[i]!;
  }

  /**
   * A verified draft: the last token's K/V is computed, and so is each accepted draft token's; the
   * run's last token is the model's own (pending, as after a plain decode step). Each token goes
   * through the one acceptance path, which may end the request inside the run. Then the rejected
   * positions are rolled back: their K/V is past numComputed, and their blocks go back to the pool.
   */
  private acceptRun(seq: Sequence, run: SampleResult[], now: number): void {
    const proposed = seq.draft.length;
    const accepted = run.length - 1;
    seq.draft = [];
    this.speculator!.record(seq, proposed, accepted);
    this.lastStep.draftTokens += proposed;
    this.lastStep.acceptedTokens += accepted;
    seq.numComputed++;
    const { output } = this.outputs.get(seq.id)!;
    const ev = this.event(seq);
    for (const [j, sample] of run.entries()) {
      if (!output.accept(sample.token, sample, now, ev)) break;
      seq.tokens.push(sample.token);
      if (j < accepted) seq.numComputed++;
      if (output.done) break;
    }
    this.blocks.commit(seq);
    this.blocks.trim(seq);
    if (output.done) this.finish(seq, output.done.reason, output.done.message, now);
  }

  /**
   * Jump-forward: the tokens the grammar forces from here go through the same acceptance path as
   * sampled ones (with logprob 0 and themselves as the only top logprob when logprobs are asked
   * for: under the grammar's mask they were certain), and join the sequence's pending tokens.
   * Only while the batch is small (jumpForwardMaxBatch, counting the waiting requests, which the
   * next step may admit): in a larger one, computing a sequence's
   * forced tokens together makes the shared step longer for every other sequence by what they cost
   * (DEFAULT_MAX_BATCH), so there each forced token takes its own step, sampled under a mask that
   * allows only it, and every sequence gets one token a step.
   */
  private acceptForced(seq: Sequence, output: RequestOutput, now: number): void {
    if (output.done || this.seqs.size > this.jumpForwardMaxBatch) return;
    const room = Math.min(MAX_FORCED, seq.spec.maxTokens - output.completion);
    if (room <= 0) return;
    const forced = output.matcher!.forcedTokens(room);
    if (forced.length === 0) return;
    const ev = this.event(seq);
    for (const t of forced) {
      const sample = output.logprobs
        ? { token: t, logprob: 0, topLogprobs: [{ token: t, logprob: 0 }] }
        : undefined;
      if (output.accept(t, sample, now, ev)) seq.tokens.push(t);
      this.forcedSinceStep++;
      this.totalForcedTokens++;
      if (output.done) break;
    }
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
    this.speculator?.release(seq);
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
