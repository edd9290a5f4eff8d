import { describe, expect, it } from "vitest";
import { cappedContext, kvCachePools, kvCacheType } from "../../src/engine/kv-sizing.js";
import { SpindleError } from "../../src/errors.js";
import { DEFAULT_KV_CACHE_TYPE, KVCacheStorage } from "../../src/model/kv-cache.js";

/** Llama-3.2-1B's attention shape and trained context: 16 layers, 8 KV heads of 64, 131072 tokens. */
const LLAMA_1B = { nLayers: 16, nKVHeads: 8, headDim: 64, contextLength: 131072 };

describe("--ctx-size: the context cap and the KV pool it sizes", () => {
  it("caps the context at the model's, and refuses a size that is not a positive integer", () => {
    expect(cappedContext(2048, undefined)).toBe(2048);
    expect(cappedContext(2048, 512)).toBe(512);
    expect(cappedContext(2048, 8192)).toBe(2048);
    expect(() => cappedContext(2048, 0)).toThrow(SpindleError);
    expect(() => cappedContext(2048, 1.5)).toThrow(/positive integer/);
  });

  it("without a budget the pool holds at least one full context; never more than maxNumSeqs contexts", () => {
    const perBlock = KVCacheStorage.bytesPerToken(LLAMA_1B) * 16;
    const defaultFit = Math.floor((256 << 20) / perBlock);
    // No --ctx-size: the 256 MiB default, far less than one 128K context.
    expect(kvCachePools(LLAMA_1B, {}, 64).numBlocks).toBe(defaultFit);
    // 32K context for one sequence: more than the default budget, so the pool grows to hold it.
    expect(kvCachePools(LLAMA_1B, { contextLength: 32768 }, 1).numBlocks).toBe(2048);
    expect(kvCachePools(LLAMA_1B, { contextLength: 32768 }, 8).numBlocks).toBe(2048);
    // A small context: the default budget, capped at what maxNumSeqs contexts of it need.
    expect(kvCachePools(LLAMA_1B, { contextLength: 1000 }, 1).numBlocks).toBe(63);
    expect(kvCachePools(LLAMA_1B, { contextLength: 1024 }, 64).numBlocks).toBe(Math.min(defaultFit, 64 * 64));
    // An explicit budget wins over the one-context minimum.
    expect(kvCachePools(LLAMA_1B, { contextLength: 32768, kvCacheBytes: 64 << 20 }, 1).numBlocks).toBe(
      Math.floor((64 << 20) / perBlock),
    );
  });
});

describe("--kv-cache-type: the same bytes hold twice the f16 blocks", () => {
  it("f16 takes 2 bytes per element, f32 4: a budget holds twice the blocks in f16", () => {
    // Llama-3.2-1B: 16 layers × 8 KV heads × 64 × (K and V) = 16384 elements per token.
    expect(KVCacheStorage.bytesPerToken(LLAMA_1B, "f32")).toBe(65536);
    expect(KVCacheStorage.bytesPerToken(LLAMA_1B, "f16")).toBe(32768);
    expect(KVCacheStorage.bytesPerToken(LLAMA_1B)).toBe(
      KVCacheStorage.bytesPerToken(LLAMA_1B, DEFAULT_KV_CACHE_TYPE),
    );
    const f32 = kvCachePools(LLAMA_1B, { kvCacheBytes: 256 << 20, kvCacheType: "f32" }, 64).numBlocks;
    const f16 = kvCachePools(LLAMA_1B, { kvCacheBytes: 256 << 20, kvCacheType: "f16" }, 64).numBlocks;
    expect(f32).toBe(256);
    expect(f16).toBe(512);
    expect(kvCachePools(LLAMA_1B, { kvCacheBytes: 256 << 20 }, 64).numBlocks).toBe(
      DEFAULT_KV_CACHE_TYPE === "f16" ? f16 : f32,
    );
    // One full context with --ctx-size and no budget: 32768 tokens are 2048 blocks of either type.
    expect(kvCachePools(LLAMA_1B, { contextLength: 32768, kvCacheType: "f32" }, 1).numBlocks).toBe(2048);
    // The smallest budget: one f16 block fits where no f32 block does.
    const f16Block = 16 * 32768;
    expect(kvCachePools(LLAMA_1B, { kvCacheBytes: f16Block, kvCacheType: "f16" }, 1).numBlocks).toBe(1);
    expect(() => kvCachePools(LLAMA_1B, { kvCacheBytes: f16Block, kvCacheType: "f32" }, 1).numBlocks).toThrow(
      /one f32 block of 16 tokens takes 1048576 bytes/,
    );
  });

  it("names the types it takes", () => {
    expect(kvCacheType(undefined)).toBe(DEFAULT_KV_CACHE_TYPE);
    expect(kvCacheType("f32")).toBe("f32");
    expect(() => kvCacheType("q8_0")).toThrow(/one of f16, f32, got "q8_0"/);
  });
});

/**
 * Gemma-3-1B's attention shape: 26 layers of 1 KV head of 256, every 6th global (4 layers), the
 * other 22 sliding over 512 tokens; 2048 bytes per token and layer in f32, 32 KiB per 16-token block.
 */
const GEMMA3_1B = {
  nLayers: 26,
  nKVHeads: 1,
  headDim: 256,
  contextLength: 32768,
  layerWindows: Array.from({ length: 26 }, (_, l) => (l % 6 < 5 ? 512 : undefined)),
};

describe("a Gemma model's sliding-window pool", () => {
  const layerBlock = KVCacheStorage.layerBytesPerToken(GEMMA3_1B) * 16;
  const budget = (p: { numBlocks: number; windowBlocks?: number }) =>
    (p.numBlocks * 4 + p.windowBlocks! * 22) * layerBlock;

  it("holds a window per sequence and a step; the other layers get the rest of the budget", () => {
    // 4 sequences: (⌈511/16⌉ + 2) blocks each, and a 512-token step (32 blocks).
    const p = kvCachePools(GEMMA3_1B, {}, 4, 512);
    expect(p.windowBlocks).toBe(4 * 34 + 32);
    expect(p.numBlocks).toBe(Math.floor(((256 << 20) - 168 * 22 * layerBlock) / (4 * layerBlock)));
    // 3.6 times the context of an even split, in the same bytes.
    const even = KVCacheStorage.blocksForBudget(GEMMA3_1B, 256 << 20);
    expect(p.numBlocks / even).toBeGreaterThan(3.5);
    expect(budget(p)).toBeLessThanOrEqual(256 << 20);
  });

  it("never fewer blocks than an even split: a small budget for many sequences is one", () => {
    const even = KVCacheStorage.blocksForBudget(GEMMA3_1B, 256 << 20);
    // 64 sequences would need 2208 window blocks: more than the budget's 315 of each.
    expect(kvCachePools(GEMMA3_1B, {}, 64, 512)).toEqual({ numBlocks: even, windowBlocks: even });
    const big = kvCachePools(GEMMA3_1B, { kvCacheBytes: 4 * 2 ** 30 }, 64, 512);
    expect(big.windowBlocks).toBe(64 * 34 + 32);
    expect(big.numBlocks).toBeGreaterThan(4 * KVCacheStorage.blocksForBudget(GEMMA3_1B, 4 * 2 ** 30));
    expect(budget(big)).toBeLessThanOrEqual(4 * 2 ** 30);
  });

  it("with --num-blocks, the window pool has at most that many; other models have none", () => {
    expect(kvCachePools(GEMMA3_1B, { numBlocks: 100 }, 1, 512)).toEqual({
      numBlocks: 100,
      windowBlocks: 34 + 32,
    });
    expect(kvCachePools(GEMMA3_1B, { numBlocks: 40 }, 1, 512)).toEqual({ numBlocks: 40, windowBlocks: 40 });
    expect(kvCachePools(LLAMA_1B, { numBlocks: 40 }, 1, 512)).toEqual({ numBlocks: 40 });
  });
});
