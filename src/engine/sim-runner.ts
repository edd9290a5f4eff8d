import type { PoolingType } from "../model/pooling.js";
import type { SampleResult } from "../sampling/sampler.js";
import { fillMasks, type Runner, type RunnerItem, type RunnerResult } from "./runner.js";

/**
 * The simulated runner: the real scheduler and block manager run unchanged,
 * but a step's compute is replaced by a cost model
 *
 *   step ms = base + perPrefillToken · prefill tokens + perDecodeSeq · decoding sequences
 *             + perAttendedToken · Σ context length over the batch's new tokens
 *
 * with coefficients fitted from measured runs of the real runner (`spindle
 * calibrate`). Tokens are a deterministic function of the sequence and
 * position, never an end-of-generation token, so outputs are reproducible. Under a grammar's mask
 * the token is the first allowed one from there (in id order, wrapping), end tokens included when
 * nothing else is allowed. Embedding requests get hidden rows that are a fixed function of each token
 * (SIM_EMBEDDING_LENGTH wide, mean pooling), so equal inputs embed equally.
 */

/** The width of the simulator's hidden rows. */
export const SIM_EMBEDDING_LENGTH = 16;

export interface SimCost {
  baseMs: number;
  perPrefillTokenMs: number;
  perDecodeSeqMs: number;
  perAttendedTokenMs: number;
}

/** Coefficients for a stories15M-sized model on one core (see `spindle calibrate`). */
export const DEFAULT_SIM_COST: SimCost = {
  baseMs: 0.5,
  perPrefillTokenMs: 0.35,
  perDecodeSeqMs: 2,
  perAttendedTokenMs: 0.0005,
};

export interface SimRunnerOptions {
  vocabSize?: number;
  contextLength?: number;
  numBlocks: number;
  blockSize?: number;
  cost?: SimCost;
  /** Token ids the simulator never emits (e.g. EOS), so lengths are exactly max_tokens. */
  avoid?: ReadonlySet<number>;
}

export function simStepMs(cost: SimCost, items: readonly Pick<RunnerItem, "tokens" | "pos">[]): number {
  let prefill = 0;
  let decode = 0;
  let attended = 0;
  for (const it of items) {
    if (it.tokens.length === 1) decode++;
    else prefill += it.tokens.length;
    // Each new token attends to every position up to its own.
    attended += it.tokens.length * it.pos + (it.tokens.length * (it.tokens.length + 1)) / 2;
  }
  return (
    cost.baseMs +
    cost.perPrefillTokenMs * prefill +
    cost.perDecodeSeqMs * decode +
    cost.perAttendedTokenMs * attended
  );
}

export class SimRunner implements Runner {
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly cost: SimCost;
  readonly pooling: PoolingType = "mean";
  readonly embeddingLength = SIM_EMBEDDING_LENGTH;
  private readonly avoid: ReadonlySet<number>;

  constructor(o: SimRunnerOptions) {
    this.vocabSize = o.vocabSize ?? 32000;
    this.contextLength = o.contextLength ?? 4096;
    this.numBlocks = o.numBlocks;
    this.blockSize = o.blockSize ?? 16;
    this.cost = o.cost ?? DEFAULT_SIM_COST;
    this.avoid = o.avoid ?? new Set();
  }

  execute(items: readonly RunnerItem[]): RunnerResult {
    const masks = fillMasks(items);
    const samples = items.map((it, i): SampleResult | SampleResult[] | Error | undefined => {
      if (it.logits === "none") return undefined;
      if (it.draft) return this.verify(it, it.draft);
      const mask = masks[i];
      if (mask instanceof Error) return mask;
      const position = it.pos + it.tokens.length;
      const start = this.tokenAt(it.seqKey, position);
      const token = mask ? this.allowed(start, mask) : this.avoiding(start);
      if (token < 0) return new Error("the grammar allows no token");
      return { token, logprob: Number.NaN, topLogprobs: [] };
    });
    const hidden = items.some((it) => it.hidden) ? items.map((it) => this.hiddenRows(it)) : undefined;
    return { samples, hidden, simulatedMs: simStepMs(this.cost, items) };
  }

  /** The accepted run of a draft: its tokens while they equal the simulator's, then the simulator's own. */
  private verify(it: RunnerItem, draft: readonly number[]): SampleResult[] {
    const run: SampleResult[] = [];
    const first = it.pos + it.tokens.length - draft.length;
    for (let j = 0; j <= draft.length; j++) {
      const token = this.avoiding(this.tokenAt(it.seqKey, first + j));
      run.push({ token, logprob: Number.NaN, topLogprobs: [] });
      if (token !== draft[j]) break;
    }
    return run;
  }

  /** The rows an item asked for: each a fixed pseudo-random function of its token. */
  private hiddenRows(it: RunnerItem): Float32Array | undefined {
    if (!it.hidden || it.tokens.length === 0) return undefined;
    const toks =
      it.hidden === "all" ? it.tokens : [it.tokens[it.hidden === "first" ? 0 : it.tokens.length - 1]!];
    const d = SIM_EMBEDDING_LENGTH;
    const rows = new Float32Array(toks.length * d);
    toks.forEach((t, r) => {
      for (let i = 0; i < d; i++) rows[r * d + i] = this.tokenAt(t, i) / this.vocabSize - 0.5;
    });
    return rows;
  }

  private avoiding(token: number): number {
    while (this.avoid.has(token)) token = (token + 1) % this.vocabSize;
    return token;
  }

  /** The first token from `start` on (wrapping) that the mask allows, avoided ones last; −1 if none. */
  private allowed(start: number, mask: Uint32Array): number {
    const V = this.vocabSize;
    let fallback = -1;
    for (let k = 0; k < V; k++) {
      const t = (start + k) % V;
      if (((mask[t >>> 5]! >>> (t & 31)) & 1) === 0) continue;
      if (!this.avoid.has(t)) return t;
      if (fallback < 0) fallback = t;
    }
    return fallback;
  }

  /** A fixed pseudo-random token for (sequence, position). */
  private tokenAt(key: number, position: number): number {
    let h = Math.imul(key ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(position + 1, 0xc2b2ae35);
    h ^= h >>> 16;
    h = Math.imul(h, 0x7feb352d);
    h ^= h >>> 15;
    return (h >>> 0) % this.vocabSize;
  }
}
