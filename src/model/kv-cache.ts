import type { PagedKV } from "../kernels/kernels.js";
import type { ModelConfig } from "./config.js";

/** Default tokens per KV block (vLLM's default too). */
export const DEFAULT_BLOCK_SIZE = 16;

/**
 * The KV cache's memory: for every layer, one K pool and one V pool of
 * `numBlocks` fixed-size blocks, allocated once. Which blocks a sequence owns
 * is its block table (a list of block ids, position p lives in block
 * table[p / blockSize], slot p % blockSize); handing blocks out, sharing and
 * freeing them is the engine's block manager's job, not this class's.
 */
export class KVCacheStorage {
  readonly layers: PagedKV[];

  constructor(
    readonly config: Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim">,
    readonly numBlocks: number,
    readonly blockSize = DEFAULT_BLOCK_SIZE,
  ) {
    const perLayer = numBlocks * blockSize * config.nKVHeads * config.headDim;
    this.layers = Array.from({ length: config.nLayers }, () => ({
      blockSize,
      nKVHeads: config.nKVHeads,
      headDim: config.headDim,
      k: new Float32Array(perLayer),
      v: new Float32Array(perLayer),
    }));
  }

  /** Bytes one token takes across all layers (K and V, float32). */
  static bytesPerToken(config: Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim">): number {
    return 2 * config.nLayers * config.nKVHeads * config.headDim * 4;
  }

  /** How many blocks fit in a memory budget. */
  static blocksForBudget(
    config: Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim">,
    bytes: number,
    blockSize = DEFAULT_BLOCK_SIZE,
  ): number {
    return Math.floor(bytes / (KVCacheStorage.bytesPerToken(config) * blockSize));
  }

  get capacityTokens(): number {
    return this.numBlocks * this.blockSize;
  }
}
