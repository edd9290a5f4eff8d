import { SpindleError } from "../errors.js";
import type { ModelConfig } from "../model/config.js";
import { DEFAULT_BLOCK_SIZE, KVCacheStorage } from "../model/kv-cache.js";

/** How big the engine's KV pool is: what `spindle serve --kv-cache-memory / --num-blocks / --block-size` ask for. */

/** The default KV cache budget when neither numBlocks nor kvCacheBytes is given. */
export const DEFAULT_KV_CACHE_BYTES = 256 * 1024 * 1024;

export interface KVSizing {
  numBlocks?: number;
  kvCacheBytes?: number;
  blockSize?: number;
}

/**
 * Blocks in the KV pool: `numBlocks` if given, else as many as `kvCacheBytes`
 * (default 256 MiB) holds, but no more than maxNumSeqs full contexts need.
 */
export function kvCacheBlocks(
  config: Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim" | "contextLength">,
  sizing: KVSizing,
  maxNumSeqs: number,
): number {
  const blockSize = sizing.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!(Number.isInteger(blockSize) && blockSize >= 1)) {
    throw new SpindleError(`the KV block size must be a positive integer, got ${blockSize}`);
  }
  if (sizing.numBlocks !== undefined) {
    if (!(Number.isInteger(sizing.numBlocks) && sizing.numBlocks >= 1)) {
      throw new SpindleError(`the number of KV blocks must be a positive integer, got ${sizing.numBlocks}`);
    }
    return sizing.numBlocks;
  }
  const bytes = sizing.kvCacheBytes ?? DEFAULT_KV_CACHE_BYTES;
  const fit = KVCacheStorage.blocksForBudget(config, bytes, blockSize);
  if (!(fit >= 1)) {
    const block = KVCacheStorage.bytesPerToken(config) * blockSize;
    throw new SpindleError(
      `a KV cache of ${bytes} bytes holds no block (one block of ${blockSize} tokens takes ${block} bytes); raise --kv-cache-memory`,
      "kv_cache_too_small",
    );
  }
  const needed = Math.ceil(config.contextLength / blockSize) * maxNumSeqs;
  return Math.min(fit, needed);
}
