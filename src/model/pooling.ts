/**
 * Embeddings from a generative model: how a sequence's final hidden states (after the output
 * norm, one row of `dim` per position) become one vector, as the GGUF asks in
 * `<arch>.pooling_type` (llama.cpp's enum: -1 unspecified, 0 none, 1 mean, 2 cls, 3 last, 4 rank).
 *
 *   mean   the average of every position's row (the default when the file says none or nothing)
 *   cls    the first position's row
 *   last   the last position's row (Qwen3's embedding models)
 *
 * The pooled vector is L2-normalized, as llama-server and Ollama return it. A sequence may be
 * computed in several prefill chunks: `Pooler` takes each chunk's rows as they come.
 */

export type PoolingType = "mean" | "cls" | "last";

/** llama.cpp's `enum llama_pooling_type` values. */
export const LLAMA_POOLING = { unspecified: -1, none: 0, mean: 1, cls: 2, last: 3, rank: 4 } as const;

/**
 * The pooling a GGUF's `<arch>.pooling_type` value asks for: mean when absent, unspecified or
 * none (a generative model); undefined for rank (a reranker's classification head, not supported)
 * and values llama.cpp does not define.
 */
export function poolingFromGGUF(value: number | undefined): PoolingType | undefined {
  switch (value) {
    case undefined:
    case LLAMA_POOLING.unspecified:
    case LLAMA_POOLING.none:
    case LLAMA_POOLING.mean:
      return "mean";
    case LLAMA_POOLING.cls:
      return "cls";
    case LLAMA_POOLING.last:
      return "last";
    default:
      return undefined;
  }
}

/** Which of a prefill chunk's positions the forward pass must return final hidden states for. */
export type HiddenRows = "all" | "first" | "last";

/**
 * The rows a chunk of `count` positions starting at `pos` contributes to a sequence of `length`
 * tokens, or undefined when it contributes none (then the forward pass returns none for it).
 */
export function hiddenRowsFor(
  pooling: PoolingType,
  pos: number,
  count: number,
  length: number,
): HiddenRows | undefined {
  if (count === 0) return undefined;
  if (pooling === "mean") return "all";
  if (pooling === "cls") return pos === 0 ? "first" : undefined;
  return pos + count === length ? "last" : undefined;
}

/** One sequence's pooled vector, built chunk by chunk. */
export class Pooler {
  private readonly acc: Float64Array;
  private rows = 0;

  constructor(
    readonly pooling: PoolingType,
    readonly dim: number,
  ) {
    this.acc = new Float64Array(dim);
  }

  /** A chunk's rows (hiddenRowsFor's choice, row-major `n × dim`). */
  add(rows: Float32Array): void {
    const d = this.dim;
    const n = rows.length / d;
    if (this.pooling === "mean") {
      for (let r = 0; r < n; r++) for (let i = 0; i < d; i++) this.acc[i]! += rows[r * d + i]!;
      this.rows += n;
      return;
    }
    // cls and last: the one row their chunk returns.
    for (let i = 0; i < d; i++) this.acc[i] = rows[i]!;
    this.rows = 1;
  }

  /** Forgets what was added (a preempted sequence computes its prompt again). */
  reset(): void {
    this.acc.fill(0);
    this.rows = 0;
  }

  /** The pooled, L2-normalized vector (all zeros stay zeros). */
  result(): Float32Array {
    const out = new Float32Array(this.dim);
    if (this.rows === 0) return out;
    let sq = 0;
    for (let i = 0; i < this.dim; i++) sq += this.acc[i]! * this.acc[i]!;
    const norm = Math.sqrt(sq);
    // Mean then normalize = normalize the sum: the count cancels.
    if (norm > 0) for (let i = 0; i < this.dim; i++) out[i] = this.acc[i]! / norm;
    return out;
  }
}
