import { SpindleError } from "../errors.js";
import { KV_CACHE_TYPES, type KVCacheType } from "../kernels/kernels.js";
import type { ModelConfig } from "../model/config.js";
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_KV_CACHE_TYPE,
  KVCacheStorage,
  slidingWindowOf,
  windowLayerCount,
} from "../model/kv-cache.js";
import { DEFAULT_SCHEDULER_OPTIONS } from "./scheduler.js";

/**
 * How big the engine's KV pool is: what `spindle serve --kv-cache-memory / --num-blocks /
 * --block-size / --ctx-size / --kv-cache-type` ask for.
 */

/** The default KV cache budget when neither numBlocks nor kvCacheBytes is given. */
export const DEFAULT_KV_CACHE_BYTES = 256 * 1024 * 1024;

export interface KVSizing {
  numBlocks?: number;
  kvCacheBytes?: number;
  blockSize?: number;
  /** The element type: a byte budget holds twice as many f16 blocks as f32 ones (default f32). */
  kvCacheType?: KVCacheType;
  /**
   * `--ctx-size`: each sequence's context is capped to it (at most the model's), and without a
   * budget (numBlocks, kvCacheBytes) the pool holds at least one context of that many tokens.
   */
  contextLength?: number;
}

/** The context a sequence may fill: the model's, or `--ctx-size` when it is smaller. */
export function cappedContext(modelContext: number, ctxSize: number | undefined): number {
  if (ctxSize === undefined) return modelContext;
  if (!(Number.isInteger(ctxSize) && ctxSize >= 1)) {
    throw new SpindleError(`the context size must be a positive integer, got ${ctxSize}`);
  }
  return Math.min(modelContext, ctxSize);
}

/** `--kv-cache-type`'s value checked (default DEFAULT_KV_CACHE_TYPE). */
export function kvCacheType(type: string | undefined): KVCacheType {
  if (type === undefined) return DEFAULT_KV_CACHE_TYPE;
  if (!(KV_CACHE_TYPES as readonly string[]).includes(type))
    throw new SpindleError(`the KV cache type must be one of ${KV_CACHE_TYPES.join(", ")}, got "${type}"`);
  return type as KVCacheType;
}

/** The KV pools' sizes: blocks of the full-attention layers, and of the sliding-window layers' own pool. */
export interface KVPools {
  numBlocks: number;
  /** Only for a model that has a separate sliding-window pool (slidingWindowOf). */
  windowBlocks?: number;
}

/**
 * Blocks in the KV pool: `numBlocks` if given, else as many as `kvCacheBytes`
 * (default 256 MiB, or one full `contextLength` context when that is more) holds, but no more
 * than maxNumSeqs full contexts need.
 *
 * A model whose sliding-window layers have their own pool (Gemma: slidingWindowOf), where a
 * sequence holds only the blocks its window covers plus the step's new tokens: that pool gets what
 * maxNumSeqs sequences can hold there at once (a window each, and a step of maxNumBatchedTokens),
 * or, when the budget is smaller, what an even split gives (the same blocks as every other layer,
 * no fewer than without a pool of its own); the full-attention layers get the rest of the budget.
 * With `numBlocks` given, the sliding pool has at most that many.
 */
export function kvCachePools(
  config: Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim" | "contextLength"> &
    Partial<Pick<ModelConfig, "layerWindows">>,
  sizing: KVSizing,
  maxNumSeqs: number,
  maxNumBatchedTokens = DEFAULT_SCHEDULER_OPTIONS.maxNumBatchedTokens,
): KVPools {
  const blockSize = sizing.blockSize ?? DEFAULT_BLOCK_SIZE;
  const type = kvCacheType(sizing.kvCacheType);
  const perToken = KVCacheStorage.bytesPerToken(config, type);
  if (!(Number.isInteger(blockSize) && blockSize >= 1)) {
    throw new SpindleError(`the KV block size must be a positive integer, got ${blockSize}`);
  }
  const window = slidingWindowOf(config);
  const windowNeed =
    window === undefined
      ? undefined
      : maxNumSeqs * (Math.ceil((window - 1) / blockSize) + 2) + Math.ceil(maxNumBatchedTokens / blockSize);
  if (sizing.numBlocks !== undefined) {
    if (!(Number.isInteger(sizing.numBlocks) && sizing.numBlocks >= 1)) {
      throw new SpindleError(`the number of KV blocks must be a positive integer, got ${sizing.numBlocks}`);
    }
    return pools(sizing.numBlocks, windowNeed);
  }
  const context = cappedContext(config.contextLength, sizing.contextLength);
  const oneContext =
    sizing.contextLength !== undefined ? Math.ceil(context / blockSize) * blockSize * perToken : 0;
  const bytes = sizing.kvCacheBytes ?? Math.max(DEFAULT_KV_CACHE_BYTES, oneContext);
  const fit = KVCacheStorage.blocksForBudget(config, bytes, blockSize, type);
  if (!(fit >= 1)) {
    const block = perToken * blockSize;
    throw new SpindleError(
      `a KV cache of ${bytes} bytes holds no block (one ${type} block of ${blockSize} tokens takes ${block} bytes); raise --kv-cache-memory`,
      "kv_cache_too_small",
    );
  }
  const needed = Math.ceil(context / blockSize) * maxNumSeqs;
  if (windowNeed === undefined) return { numBlocks: Math.min(fit, needed) };
  // The sliding pool first (no more than an even split gives it), then the rest to the other layers.
  const windowBlocks = Math.min(fit, windowNeed);
  const layerBlock = KVCacheStorage.layerBytesPerToken(config, type) * blockSize;
  const windowed = windowLayerCount(config);
  const rest = Math.floor(
    (bytes - windowBlocks * windowed * layerBlock) / ((config.nLayers - windowed) * layerBlock),
  );
  return pools(Math.min(rest, needed), windowBlocks);
}

/** The pools for `numBlocks` full-attention blocks: a sliding pool never holds more than that. */
function pools(numBlocks: number, windowBlocks: number | undefined): KVPools {
  return windowBlocks === undefined
    ? { numBlocks }
    : { numBlocks, windowBlocks: Math.min(numBlocks, windowBlocks) };
}
