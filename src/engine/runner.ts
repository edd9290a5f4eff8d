import type { GrammarMatcher } from "../grammar/constraint.js";
import type { KVCacheType } from "../kernels/kernels.js";
import type { BatchSeq, Transformer } from "../model/forward.js";
import { KVCacheStorage, slidingWindowOf } from "../model/kv-cache.js";
import type { Model } from "../model/model.js";
import type { PoolingType } from "../model/pooling.js";
import type { SampleResult, Sampler, SamplerOps } from "../sampling/sampler.js";
import { verifyDraft } from "../sampling/speculative.js";
import type { WindowPool } from "./block-manager.js";

/**
 * The model runner: executes one engine step. It gets, for every scheduled
 * sequence, the tokens to compute now, their position and the block table,
 * and returns a sampled token for each sequence whose step ends its pending
 * tokens, and the final hidden rows an embedding request's chunk asks for. A sequence with a draft
 * (speculative decoding) brings its last token and the draft tokens, and gets back the accepted
 * run (src/sampling/speculative.ts). Two implementations share this interface: ModelRunner (the real
 * forward pass over the paged KV cache) and SimRunner (a cost model, for
 * scheduler experiments at scale).
 */

/** A scheduled sequence as the forward pass takes it (BatchSeq), with what sampling it needs. */
export interface RunnerItem extends BatchSeq {
  /** Tokens whose K/V this step computes; tokens[0] is at position `pos`. */
  tokens: number[];
  blockTable: number[];
  /**
   * "last": sample the next token after this step (it ends the sequence's pending tokens); "none": a
   * prefill chunk; "all": verify `draft` (every position's logits).
   */
  logits: "last" | "all" | "none";
  /** Speculative decoding: the draft tokens, which are the last `draft.length` of `tokens`. Never with a grammar. */
  draft?: number[];
  sampler: Sampler;
  /** Every token of the sequence so far (for penalties). */
  history: number[];
  /** A stable per-sequence number (the simulated runner derives its tokens from it). */
  seqKey: number;
  /**
   * A constrained sequence that samples this step: the runner fills `mask` from the matcher
   * (GrammarMatcher.fillMask) and samples under it. Absent for every other item.
   */
  grammar?: { matcher: GrammarMatcher; mask: Uint32Array };
}

export interface RunnerResult {
  /**
   * One entry per item: the sampled token; for an item with a draft, the accepted run (the draft
   * tokens kept, then one of the model's own); undefined when the item did not sample; an Error when
   * sampling failed for that sequence alone (e.g. a logit_bias that bans every token) — the others
   * in the batch are unaffected.
   */
  samples: (SampleResult | SampleResult[] | Error | undefined)[];
  /**
   * Per item, the final hidden rows it asked for (`RunnerItem.hidden`), or undefined: views that the
   * next execute overwrites. Absent when no item asked.
   */
  hidden?: (Float32Array | undefined)[];
  /** Simulated runners report how long the step would have taken, in ms. */
  simulatedMs?: number;
}

export interface Runner {
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly numBlocks: number;
  readonly blockSize: number;
  /** The sliding-window layers' own KV pool, when the model has one (Gemma 2 and 3: see slidingWindowOf). */
  readonly windowPool?: WindowPool;
  /** The kernels' versions of sampling's whole-vocabulary loops (Sampler's third argument), where they have them. */
  readonly samplerOps?: SamplerOps;
  /** How embeddings pool, and their length; undefined pooling: the model computes none. */
  readonly pooling: PoolingType | undefined;
  readonly embeddingLength: number;
  execute(items: readonly RunnerItem[]): RunnerResult;
}

/** The real runner: one batched forward pass of the model, then sampling. */
export class ModelRunner implements Runner {
  readonly kv: KVCacheStorage;
  readonly windowPool?: WindowPool;
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly samplerOps?: SamplerOps;
  readonly pooling: PoolingType | undefined;
  readonly embeddingLength: number;
  private readonly transformer: Transformer;
  private readonly overlap?: (work: () => void) => () => void;

  /**
   * `contextLength` caps a sequence's context below the model's (`--ctx-size`); `windowBlocks` sizes
   * the sliding-window layers' pools of a model that has them (default numBlocks).
   */
  constructor(
    model: Model,
    numBlocks: number,
    blockSize?: number,
    contextLength?: number,
    kvCacheType?: KVCacheType,
    windowBlocks?: number,
  ) {
    this.transformer = model.transformer;
    // The pools go into the kernels' memory now (if they offer it and the pools fit), not at the first step.
    this.kv = new KVCacheStorage(
      model.config,
      numBlocks,
      blockSize,
      model.transformer.kernels,
      kvCacheType,
      windowBlocks,
    );
    const window = slidingWindowOf(model.config);
    if (window !== undefined) this.windowPool = { window, numBlocks: this.kv.windowBlocks };
    this.vocabSize = model.config.vocabSize;
    this.contextLength = Math.min(model.config.contextLength, contextLength ?? Infinity);
    this.pooling = model.config.pooling;
    this.embeddingLength = model.config.dim;
    const k = model.transformer.kernels;
    this.samplerOps = k;
    this.overlap = k.overlap?.bind(k);
  }

  get numBlocks(): number {
    return this.kv.numBlocks;
  }
  get blockSize(): number {
    return this.kv.blockSize;
  }

  execute(items: readonly RunnerItem[]): RunnerResult {
    // Grammar masks are computed while the kernel threads run the forward pass's first shared kernel
    // (where the kernels can overlap; else before it), and only for constrained items that sample.
    let masks: (Uint32Array | Error | undefined)[] = [];
    const work = () => {
      masks = fillMasks(items);
    };
    const constrained = items.some((it) => it.grammar && it.logits !== "none");
    const finish = constrained && this.overlap ? this.overlap(work) : undefined;
    if (constrained && !finish) work();
    // Sampled before the next step: the logits may stay in the kernels' memory (no copy per step).
    const hidden = items.some((it) => it.hidden) ? [] : undefined;
    let logits: (Float32Array | undefined)[];
    try {
      logits = this.transformer.forward(this.kv, items, { transientLogits: true, hidden });
    } finally {
      finish?.();
    }
    return {
      hidden,
      samples: items.map((it, i) => {
        if (it.logits === "none") return undefined;
        try {
          const m = masks[i];
          if (m instanceof Error) return m;
          if (it.draft) return verifyDraft(it.sampler, logits[i]!, it.history, it.draft);
          return it.sampler.sample(logits[i]!, it.history, m);
        } catch (e) {
          return e instanceof Error ? e : new Error(String(e));
        }
      }),
    };
  }
}

/**
 * Fills the mask of every constrained item that samples this step: per item, its mask, undefined
 * for an unconstrained one, or the Error its matcher threw (that sequence alone fails).
 */
export function fillMasks(items: readonly RunnerItem[]): (Uint32Array | Error | undefined)[] {
  return items.map((it) => {
    const g = it.grammar;
    if (!g || it.logits === "none") return undefined;
    try {
      g.matcher.fillMask(g.mask);
      return g.mask;
    } catch (e) {
      return e instanceof Error ? e : new Error(String(e));
    }
  });
}
