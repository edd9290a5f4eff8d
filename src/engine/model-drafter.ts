import { SpindleError } from "../errors.js";
import type { KVCacheType } from "../kernels/kernels.js";
import type { BatchSeq } from "../model/forward.js";
import { KVCacheStorage } from "../model/kv-cache.js";
import type { Model } from "../model/model.js";
import type { Drafter, DraftRequest } from "./drafter.js";
import type { Sequence } from "./sequence.js";

/**
 * Drafts from a draft model (`--draft-model`, llama-server's `-md`, vLLM's draft model): a small
 * model with the target's vocabulary proposes the next k tokens greedily (its argmax each time, so
 * each draft token is a point mass and verifyDraft's rejection rule stays exact for sampling).
 *
 * Its K/V lives in a paged cache of its own (`kv`, blocks handed out from a free list here, not by
 * the engine's BlockManager: no prefix sharing, nothing the scheduler must know about). Per drafting
 * sequence it keeps a block table and what its cache holds: the sequence's tokens as they were at
 * its last draft, then the draft tokens it fed itself. At the next draft it keeps the longest part
 * of that which the target accepted (the sequence's tokens only grow: the old tokens, then the draft
 * tokens the target kept) and catches up on the rest — the whole prompt the first time — as one
 * prefill chunk, whose last logits give the first draft token; each further draft token is one
 * decode step. All the drafting sequences of an engine step run together: the catch-up chunks in
 * one batched forward pass, then one batched pass per further draft position (Transformer.forward
 * takes a batch of sequences over a paged cache, as the target's does).
 *
 * A sequence's blocks go back to the free list when the engine releases it (finished, aborted,
 * preempted) or when the pool cannot hold its next draft (it then drafts nothing this step and
 * catches up from scratch later).
 */

interface DraftSeq {
  blockTable: number[];
  /** The sequence's length at its last draft: tokens[0, base) are in the cache… */
  base: number;
  /** …followed by these draft tokens' K/V (all of the last draft but its final token). */
  fed: number[];
}

export interface ModelDrafterOptions {
  /** Blocks in the draft model's KV pool. */
  numBlocks: number;
  /** Tokens per block (default 16). */
  blockSize?: number;
  kvCacheType?: KVCacheType;
  /** What drafting one token costs relative to a one-token decode step of the target (measured at load: measureDecodeMs). */
  tokenCost: number;
}

export class ModelDrafter implements Drafter {
  readonly kv: KVCacheStorage;
  /** Set once measured (the engine worker measures it when the kernel threads are up). */
  tokenCost: number;
  private readonly free: number[];
  private readonly seqs = new Map<Sequence, DraftSeq>();
  private readonly argmax: (x: Float32Array, n: number) => number;

  constructor(
    readonly model: Model,
    opts: ModelDrafterOptions,
  ) {
    const k = model.transformer.kernels;
    this.kv = new KVCacheStorage(model.config, opts.numBlocks, opts.blockSize, k, opts.kvCacheType);
    this.tokenCost = opts.tokenCost;
    this.free = Array.from({ length: opts.numBlocks }, (_, i) => opts.numBlocks - 1 - i);
    this.argmax = k.argmax ? k.argmax.bind(k) : argmaxOf;
  }

  /** Sequences holding draft K/V, and the blocks they hold. */
  get numSequences(): number {
    return this.seqs.size;
  }
  get numFreeBlocks(): number {
    return this.free.length;
  }
  get numBlocks(): number {
    return this.kv.numBlocks;
  }

  draft(requests: readonly DraftRequest[]): number[][] {
    const out: number[][] = requests.map(() => []);
    const bs = this.kv.blockSize;
    const ctx = this.model.config.contextLength;
    // Who drafts, from where, how many tokens.
    const live: { i: number; st: DraftSeq; seq: Sequence; from: number; k: number }[] = [];
    for (const [i, { seq, k: asked }] of requests.entries()) {
      const len = seq.tokens.length;
      // The draft's last token is never fed: positions up to len + k − 2 need K/V.
      const k = Math.min(asked, ctx - len + 1);
      if (k <= 0) continue;
      let st = this.seqs.get(seq);
      if (st && st.base > len) {
        this.release(seq);
        st = undefined;
      }
      st ??= { blockTable: [], base: 0, fed: [] };
      this.seqs.set(seq, st);
      // The cache holds tokens[0, base) and then `fed`; keep the fed tokens the sequence took.
      let from = st.base;
      for (const t of st.fed) {
        if (from >= len || seq.tokens[from] !== t) break;
        from++;
      }
      // Fed but rejected: past `from`, overwritten below. The sequence's last token is never in the cache.
      from = Math.min(from, len - 1);
      const need = Math.ceil((len + k - 1) / bs);
      if (need - st.blockTable.length > this.free.length) {
        this.release(seq);
        continue;
      }
      while (st.blockTable.length < need) st.blockTable.push(this.free.pop()!);
      live.push({ i, st, seq, from, k });
    }
    if (live.length === 0) return out;
    const forward = (batch: BatchSeq[]) =>
      this.model.transformer.forward(this.kv, batch, { transientLogits: true });
    const V = this.model.config.vocabSize;
    // Catch up (the prompt the first time), one chunk per sequence; its last logits: the first token.
    let logits = forward(
      live.map(({ st, seq, from }) => ({
        tokens: seq.tokens.slice(from),
        pos: from,
        blockTable: st.blockTable,
        logits: "last",
      })),
    );
    for (const [j, d] of live.entries()) out[d.i]!.push(this.argmax(logits[j]!, V));
    // Then one position at a time, for the sequences that want more.
    for (let r = 1; ; r++) {
      const more = live.filter((d) => d.k > r);
      if (more.length === 0) break;
      logits = forward(
        more.map(({ i, st, seq }) => ({
          tokens: [out[i]![r - 1]!],
          pos: seq.tokens.length + r - 1,
          blockTable: st.blockTable,
          logits: "last",
        })),
      );
      for (const [j, d] of more.entries()) out[d.i]!.push(this.argmax(logits[j]!, V));
    }
    for (const { i, st, seq } of live) {
      st.base = seq.tokens.length;
      st.fed = out[i]!.slice(0, -1);
    }
    return out;
  }

  release(seq: Sequence): void {
    const st = this.seqs.get(seq);
    if (!st) return;
    this.seqs.delete(seq);
    for (let b = st.blockTable.length - 1; b >= 0; b--) this.free.push(st.blockTable[b]!);
  }

  reset(): void {
    for (const seq of [...this.seqs.keys()]) this.release(seq);
  }
}

function argmaxOf(x: Float32Array, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/**
 * Refuses a draft model whose vocabulary is not the target's: the same size and the same token
 * texts, id for id (draft tokens are verified as the target's ids).
 */
export function checkSameVocabulary(target: Model, draft: Model): void {
  const a = target.tokenizer;
  const b = draft.tokenizer;
  const differ = (why: string) =>
    new SpindleError(
      `the draft model ${draft.path} does not share the vocabulary of the model ${target.path}: ${why}`,
      "draft_vocabulary_mismatch",
    );
  if (a.vocabSize !== b.vocabSize || target.config.vocabSize !== draft.config.vocabSize) {
    throw differ(`${b.vocabSize} tokens against ${a.vocabSize}`);
  }
  for (let id = 0; id < a.vocabSize; id++) {
    if (a.tokenText(id) !== b.tokenText(id)) {
      throw differ(
        `token ${id} is ${JSON.stringify(b.tokenText(id))} against ${JSON.stringify(a.tokenText(id))}`,
      );
    }
  }
}

/**
 * Median times (ms) of steps of one sequence adding `shapes[i]` tokens (each with its logits, as a
 * verified draft has) at a short context, on a scratch KV cache of one block: the shapes timed in
 * turn, round after round, after two untimed rounds (the WebAssembly tiers up meanwhile), for at
 * least 3 and at most `rounds` rounds, stopping after `budgetMs` of timed work. What a draft model's
 * token cost (its decode step over the target's) and the cost of verifying a draft token
 * (engine-build.ts) are measured with after start.
 */
export function measureStepsMs(
  model: Model,
  shapes: readonly number[],
  rounds = 8,
  budgetMs = 1000,
): number[] {
  const per = shapes.reduce((a, b) => a + b, 0);
  const kv = new KVCacheStorage(model.config, 1, Math.max(16, (rounds + 2) * per), model.transformer.kernels);
  try {
    const times: number[][] = shapes.map(() => []);
    let pos = 0;
    let spent = 0;
    for (let r = 0; r < rounds + 2 && !(r >= 5 && spent > budgetMs); r++) {
      for (const [i, tokens] of shapes.entries()) {
        const ids = Array.from({ length: tokens }, (_, j) => (pos + j) % model.config.vocabSize);
        const seq: BatchSeq = { tokens: ids, pos, blockTable: [0], logits: tokens > 1 ? "all" : "last" };
        const t0 = performance.now();
        model.transformer.forward(kv, [seq], { transientLogits: true });
        const ms = performance.now() - t0;
        pos += tokens;
        if (r >= 2) {
          times[i]!.push(ms);
          spent += ms;
        }
      }
    }
    return times.map((t) => t.sort((x, y) => x - y)[t.length >> 1]!);
  } finally {
    kv.dispose();
  }
}

/** The median time (ms) of a one-token decode step of the model (measureStepsMs). */
export function measureDecodeMs(model: Model): number {
  return measureStepsMs(model, [1])[0]!;
}
