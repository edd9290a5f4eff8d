import { describe, expect, it } from "vitest";
import { cappedContext, kvCacheBlocks, kvCacheType } from "../../src/engine/kv-sizing.js";
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
    expect(kvCacheBlocks(LLAMA_1B, {}, 64)).toBe(defaultFit);
    // 32K context for one sequence: more than the default budget, so the pool grows to hold it.
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 32768 }, 1)).toBe(2048);
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 32768 }, 8)).toBe(2048);
    // A small context: the default budget, capped at what maxNumSeqs contexts of it need.
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 1000 }, 1)).toBe(63);
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 1024 }, 64)).toBe(Math.min(defaultFit, 64 * 64));
    // An explicit budget wins over the one-context minimum.
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 32768, kvCacheBytes: 64 << 20 }, 1)).toBe(
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
    const f32 = kvCacheBlocks(LLAMA_1B, { kvCacheBytes: 256 << 20, kvCacheType: "f32" }, 64);
    const f16 = kvCacheBlocks(LLAMA_1B, { kvCacheBytes: 256 << 20, kvCacheType: "f16" }, 64);
    expect(f32).toBe(256);
    expect(f16).toBe(512);
    expect(kvCacheBlocks(LLAMA_1B, { kvCacheBytes: 256 << 20 }, 64)).toBe(
      DEFAULT_KV_CACHE_TYPE === "f16" ? f16 : f32,
    );
    // One full context with --ctx-size and no budget: 32768 tokens are 2048 blocks of either type.
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 32768, kvCacheType: "f32" }, 1)).toBe(2048);
    // The smallest budget: one f16 block fits where no f32 block does.
    const f16Block = 16 * 32768;
    expect(kvCacheBlocks(LLAMA_1B, { kvCacheBytes: f16Block, kvCacheType: "f16" }, 1)).toBe(1);
    expect(() => kvCacheBlocks(LLAMA_1B, { kvCacheBytes: f16Block, kvCacheType: "f32" }, 1)).toThrow(
      /one f32 block of 16 tokens takes 1048576 bytes/,
    );
  });

  it("names the types it takes", () => {
    expect(kvCacheType(undefined)).toBe(DEFAULT_KV_CACHE_TYPE);
    expect(kvCacheType("f32")).toBe("f32");
    expect(() => kvCacheType("q8_0")).toThrow(/one of f16, f32, got "q8_0"/);
  });
});
