import type { AttentionOptions, AttentionSeq, Kernels, RopeParams } from "../kernels/kernels.js";
import type { ModelConfig } from "./config.js";
import { inWindowPool, type KVCacheStorage } from "./kv-cache.js";
import { moeFFN } from "./moe.js";
import type { HiddenRows } from "./pooling.js";
import type { ModelWeights } from "./weights.js";

/**
 * The batched forward pass of a Llama-family transformer (llama, qwen2, qwen3, phi3 — whose fused
 * projections weights.ts splits — and gemma2/gemma3: embedding scale, GeGLU, post-norms, soft-caps,
 * sliding-window layers with their own RoPE; see ModelConfig), and mixture-of-experts
 * feed-forward blocks (Mixtral-style llama, qwen2moe, qwen3moe: moe.ts).
 *
 * One call computes many sequences at once. Each brings its own new tokens
 * (a prefill chunk of many tokens, or one decode token), the position where
 * they start (= tokens already in its KV cache), and its block table. All new
 * tokens of all sequences are stacked into one "nTokens × dim" activation
 * matrix, so every weight matmul runs once per layer for the whole batch;
 * only attention is per sequence, over that sequence's own paged KV.
 */

export interface BatchSeq {
  tokens: ArrayLike<number>;
  /** Tokens of this sequence already in the KV cache; the new tokens take positions pos, pos+1, … */
  pos: number;
  /** Block ids covering positions 0 .. pos + tokens.length - 1. */
  blockTable: ArrayLike<number>;
  /**
   * The sliding-window layers' block ids when their pools are the sequence's own (KVCacheStorage's
   * windowBlocks; a Gemma model in the engine), else they use blockTable. Entries before the first
   * key the window shows are never read (the sequence may have given those blocks back).
   */
  windowTable?: ArrayLike<number>;
  /** Which new tokens need logits: the last (default), all (e.g. prompt logprobs), or none (a prefill chunk). */
  logits?: "last" | "all" | "none";
  /**
   * Which new tokens' final hidden states (after the output norm: what embeddings pool) to return
   * in ForwardOptions.hidden: all, the first, the last; none when left out.
   */
  hidden?: HiddenRows;
}

/**
 * Grow-only scratch buffers, reused across steps so a decode step allocates nothing. They come
 * from the kernels' own memory when the kernels offer it (allocFloat32), so the kernels work on
 * the activations in place instead of copying them in and out.
 */
class Scratch {
  private bufs = new Map<string, Float32Array>();
  constructor(private readonly kernels: Kernels) {}
  get(name: string, n: number): Float32Array {
    let b = this.bufs.get(name);
    if (!b || b.length < n) {
      const size = Math.max(n, (b?.length ?? 0) * 2);
      if (b) this.kernels.freeFloat32?.(b);
      b = this.kernels.allocFloat32?.(size) ?? new Float32Array(size);
      this.bufs.set(name, b);
    }
    return b;
  }
}

export interface ForwardOptions {
  /**
   * Return logits rows that are views of a buffer in the kernels' memory which the next forward
   * call overwrites (for a caller that samples before calling again, as the engine does): the LM
   * head writes them in place, with no copy and no new array per step. Batches wanting more than
   * TRANSIENT_MAX_ROWS rows get a fresh array anyway.
   */
  transientLogits?: boolean;
  /**
   * Filled, per sequence of the batch, with the final hidden rows it asked for (`BatchSeq.hidden`:
   * count × dim, after the output norm) or undefined. The rows are views of a buffer the next
   * forward call overwrites.
   */
  hidden?: (Float32Array | undefined)[];
}

/** The most logits rows a transient buffer holds (64 × a 152K vocabulary = 39 MB). */
const TRANSIENT_MAX_ROWS = 64;

export class Transformer {
  private scratch: Scratch;
  private scratchOf = (name: string, n: number) => this.scratch.get(name, n);
  /** Per layer: its RoPE and how its attention weighs the scores (scale, window, soft-cap). */
  private layerRope: RopeParams[];
  private layerAttn: AttentionOptions[];
  /** Per layer: whether its K/V lives in a sliding-window pool (and attends with BatchSeq.windowTable). */
  private inWindowPool: boolean[];

  constructor(
    readonly config: ModelConfig,
    readonly weights: ModelWeights,
    readonly kernels: Kernels,
  ) {
    this.scratch = new Scratch(kernels);
    const global = weights.ropeFreqs ? { ...config.rope, freqFactors: weights.ropeFreqs } : config.rope;
    this.layerRope = config.layerWindows.map((w) =>
      w !== undefined && config.ropeLocal ? config.ropeLocal : global,
    );
    this.inWindowPool = config.layerWindows.map((_, l) => inWindowPool(config, l));
    this.layerAttn = config.layerWindows.map((window) => {
      const o: AttentionOptions = {};
      if (config.attnScale !== 1 / Math.sqrt(config.headDim)) o.scale = config.attnScale;
      if (window !== undefined) o.window = window;
      if (config.attnSoftcap !== undefined) o.softcap = config.attnSoftcap;
      return o;
    });
  }

  /**
   * Runs the batch and returns, per sequence, its logits rows (count × vocab)
   * or undefined when it asked for none. New K/V are written into `kv`.
   */
  forward(
    kv: KVCacheStorage,
    batch: readonly BatchSeq[],
    opts: ForwardOptions = {},
  ): (Float32Array | undefined)[] {
    // The KV pools in the kernels' memory when they have one (a no-op after the first call).
    kv.useKernels(this.kernels);
    const c = this.config;
    const k = this.kernels;
    const w = this.weights;
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKVHeads * c.headDim;

    const seqs: AttentionSeq[] = [];
    // The sliding-window layers' view of the batch: the same rows, their own block tables.
    const windowSeqs: AttentionSeq[] = [];
    let n = 0;
    for (const s of batch) {
      const end = s.pos + s.tokens.length;
      for (const table of [s.blockTable, s.windowTable ?? s.blockTable]) {
        if (end > table.length * kv.blockSize)
          throw new RangeError(`block table of ${table.length} blocks cannot hold ${end} tokens`);
      }
      seqs.push({ row: n, count: s.tokens.length, pos: s.pos, blockTable: s.blockTable });
      windowSeqs.push({ ...seqs[seqs.length - 1]!, blockTable: s.windowTable ?? s.blockTable });
      n += s.tokens.length;
    }
    const ids = new Int32Array(n);
    const positions = new Int32Array(n);
    for (const [i, s] of batch.entries()) {
      const a = seqs[i]!;
      for (let j = 0; j < a.count; j++) {
        ids[a.row + j] = s.tokens[j]!;
        positions[a.row + j] = s.pos + j;
      }
    }

    const x = this.scratch.get("x", n * c.dim);
    const xn = this.scratch.get("xn", n * c.dim);
    const q = this.scratch.get("q", n * qDim);
    const kk = this.scratch.get("k", n * kvDim);
    const vv = this.scratch.get("v", n * kvDim);
    const att = this.scratch.get("att", n * qDim);
    const proj = this.scratch.get("proj", n * c.dim);

    k.getRows(w.tokenEmbd, ids, x);
    if (c.embedScale !== 1) k.scale(x, n * c.dim, c.embedScale);
    for (let l = 0; l < c.nLayers; l++) {
      const L = w.layers[l]!;
      const cache = kv.layers[l]!;
      const rope = this.layerRope[l]!;
      // Attention block.
      k.rmsnorm(x, L.attnNorm, n, c.dim, c.rmsEps, xn);
      if (k.matmulShared) k.matmulShared([L.wq, L.wk, L.wv], xn, n, [q, kk, vv]);
      else {
        k.matmul(L.wq, xn, n, q);
        k.matmul(L.wk, xn, n, kk);
        k.matmul(L.wv, xn, n, vv);
      }
      if (L.bq) k.addBias(q, L.bq, n);
      if (L.bk) k.addBias(kk, L.bk, n);
      if (L.bv) k.addBias(vv, L.bv, n);
      if (L.qNorm) k.rmsnorm(q, L.qNorm, n * c.nHeads, c.headDim, c.rmsEps, q);
      if (L.kNorm) k.rmsnorm(kk, L.kNorm, n * c.nKVHeads, c.headDim, c.rmsEps, kk);
      k.rope(q, n, c.nHeads, c.headDim, positions, rope);
      k.rope(kk, n, c.nKVHeads, c.headDim, positions, rope);
      const layerSeqs = this.inWindowPool[l] ? windowSeqs : seqs;
      k.storeKV(cache, kk, vv, layerSeqs);
      k.attention(cache, q, c.nHeads, layerSeqs, att, this.layerAttn[l]);
      k.matmul(L.wo, att, n, proj);
      if (L.attnPostNorm) k.rmsnorm(proj, L.attnPostNorm, n, c.dim, c.rmsEps, proj);
      k.addInPlace(x, proj, n * c.dim);
      // Feed-forward block (SwiGLU, or GeGLU for Gemma; a mixture of experts: see moe.ts).
      k.rmsnorm(x, L.ffnNorm, n, c.dim, c.rmsEps, xn);
      if (L.moe) moeFFN(k, this.scratchOf, c.moe!, L.moe, xn, n, c.dim, proj);
      else {
        const [wGate, wUp, wDown] = [L.wGate!, L.wUp!, L.wDown!];
        const gate = this.scratch.get("gate", n * c.ffnDim);
        const up = this.scratch.get("up", n * c.ffnDim);
        if (k.matmulShared) k.matmulShared([wGate, wUp], xn, n, [gate, up]);
        else {
          k.matmul(wGate, xn, n, gate);
          k.matmul(wUp, xn, n, up);
        }
        if (c.ffnActivation === "gelu") k.geglu(gate, up, n * c.ffnDim, gate);
        else k.swiglu(gate, up, n * c.ffnDim, gate);
        k.matmul(wDown, gate, n, proj);
      }
      if (L.ffnPostNorm) k.rmsnorm(proj, L.ffnPostNorm, n, c.dim, c.rmsEps, proj);
      k.addInPlace(x, proj, n * c.dim);
    }

    // Gather the rows that want logits, then the final norm and LM head on those rows only.
    const wanted: number[] = [];
    for (const [i, s] of batch.entries()) {
      const a = seqs[i]!;
      const mode = s.logits ?? "last";
      if (mode === "all") for (let j = 0; j < a.count; j++) wanted.push(a.row + j);
      else if (mode === "last" && a.count > 0) wanted.push(a.row + a.count - 1);
    }
    const m = wanted.length;
    const h = this.scratch.get("h", m * c.dim);
    for (let r = 0; r < m; r++) h.set(x.subarray(wanted[r]! * c.dim, (wanted[r]! + 1) * c.dim), r * c.dim);
    k.rmsnorm(h, w.outputNorm, m, c.dim, c.rmsEps, h);
    const logits =
      opts.transientLogits && m <= TRANSIENT_MAX_ROWS
        ? this.scratch.get("logits", m * c.vocabSize).subarray(0, m * c.vocabSize)
        : new Float32Array(m * c.vocabSize);
    if (m > 0) k.matmul(w.output, h, m, logits);
    if (m > 0 && c.finalSoftcap !== undefined) k.softcap(logits, m * c.vocabSize, c.finalSoftcap);
    if (opts.hidden) this.hiddenRows(batch, seqs, x, opts.hidden);

    const out: (Float32Array | undefined)[] = [];
    let r = 0;
    for (const [i, s] of batch.entries()) {
      const mode = s.logits ?? "last";
      const rows = mode === "all" ? seqs[i]!.count : mode === "last" && seqs[i]!.count > 0 ? 1 : 0;
      out.push(rows > 0 ? logits.subarray(r * c.vocabSize, (r + rows) * c.vocabSize) : undefined);
      r += rows;
    }
    return out;
  }

  /** The final-normed hidden rows each sequence asked for (BatchSeq.hidden), into `out`. */
  private hiddenRows(
    batch: readonly BatchSeq[],
    seqs: readonly AttentionSeq[],
    x: Float32Array,
    out: (Float32Array | undefined)[],
  ): void {
    const dim = this.config.dim;
    const spans: [number, number][] = batch.map((s, i) => {
      const a = seqs[i]!;
      if (!s.hidden || a.count === 0) return [a.row, 0];
      if (s.hidden === "all") return [a.row, a.count];
      return [s.hidden === "first" ? a.row : a.row + a.count - 1, 1];
    });
    const total = spans.reduce((t, [, n]) => t + n, 0);
    const hid = this.scratch.get("hidden", Math.max(1, total * dim));
    let r = 0;
    for (const [start, n] of spans) {
      hid.set(x.subarray(start * dim, (start + n) * dim), r * dim);
      r += n;
    }
    if (total > 0) this.kernels.rmsnorm(hid, this.weights.outputNorm, total, dim, this.config.rmsEps, hid);
    out.length = 0;
    r = 0;
    for (const [, n] of spans) {
      out.push(n > 0 ? hid.subarray(r * dim, (r + n) * dim) : undefined);
      r += n;
    }
  }
}
