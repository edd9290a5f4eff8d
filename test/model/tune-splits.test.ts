import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import { referenceKernels } from "../../src/kernels/reference.js";
import type { WasmThreadPool } from "../../src/kernels/thread-pool.js";
import { createWasmKernelsSync, type WasmKernels } from "../../src/kernels/wasm-kernels.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { loadModel, type Model } from "../../src/model/model.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { tuneSmallSplits } from "../../src/model/tune-splits.js";
import { STORIES_260K, testModel, VOCAB_SPM } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * A model whose decode step has a matmul worth splitting: the tiny shape with the 32,000-token llama
 * vocabulary, so its LM head (32000 × 64) is past the kernels' minimum size for using threads while
 * everything else stays on the calling thread. (stories260K's matmuls are all below it: on that
 * model the split decision changes nothing.)
 */
let path: string;
let kernels: WasmKernels;
let model: Model;

beforeAll(() => {
  path = join(tempDir("spindle-tune-splits-"), "tiny-32k.gguf");
  synthModel({
    arch: "llama",
    shape: SHAPES.tiny!,
    type: GGMLType.Q8_0,
    vocabPath: testModel(VOCAB_SPM),
    out: path,
  });
  kernels = createWasmKernelsSync({ threads: 2 });
  model = loadModel(path, { kernels });
});
afterAll(async () => {
  await kernels?.close?.();
});

/** Next-token logits after a short prompt and two decode steps. */
function decode(m: Model): Float32Array[] {
  const kv = new KVCacheStorage(m.config, 4);
  const bt = [0, 1, 2, 3];
  const out = [m.transformer.forward(kv, [{ tokens: [1, 300, 42, 7], pos: 0, blockTable: bt }])[0]!.slice()];
  for (const [i, t] of [55, 66].entries())
    out.push(m.transformer.forward(kv, [{ tokens: [t], pos: 4 + i, blockTable: bt }])[0]!.slice());
  kv.dispose();
  return out;
}

/** How many kernel calls one decode step (after a prefill) hands to the thread pool. */
function pooledCallsPerDecodeStep(m: Model, k: WasmKernels): number {
  // The pool is private to the kernels: count its run() calls from outside, around one decode step.
  const pool = (k as unknown as { pool: WasmThreadPool }).pool;
  const kv = new KVCacheStorage(m.config, 1);
  try {
    m.transformer.forward(kv, [{ tokens: [1, 300, 42, 7], pos: 0, blockTable: [0] }]);
    const run = pool.run;
    let calls = 0;
    pool.run = (...a) => {
      calls++;
      return run.apply(pool, a);
    };
    try {
      m.transformer.forward(kv, [{ tokens: [55], pos: 4, blockTable: [0] }]);
    } finally {
      pool.run = run;
    }
    return calls;
  } finally {
    kv.dispose();
  }
}

describe("tuneSmallSplits: whether decode-sized matmuls use the kernel threads, by measurement", () => {
  it("the switch it sets decides whether a decode step uses the kernel threads", async () => {
    await kernels.ready();
    kernels.smallSplits = false;
    expect(pooledCallsPerDecodeStep(model, kernels)).toBe(0);
    kernels.smallSplits = true;
    expect(pooledCallsPerDecodeStep(model, kernels)).toBeGreaterThan(0);
  });

  it("applies the way it measured, and the logits are the same either way", async () => {
    const choice = await tuneSmallSplits(model);
    expect(choice).toBeDefined();
    expect(choice!.splitMs).toBeGreaterThan(0);
    expect(choice!.singleMs).toBeGreaterThan(0);
    // The kernels now work the way it reported, as a decode step shows.
    expect(kernels.smallSplits).toBe(choice!.smallSplits);
    expect(pooledCallsPerDecodeStep(model, kernels) > 0).toBe(choice!.smallSplits);
    kernels.smallSplits = true;
    const split = decode(model);
    kernels.smallSplits = false;
    expect(decode(model)).toEqual(split);
  });

  it("has nothing to choose with one thread or without WebAssembly kernels", async () => {
    const one = createWasmKernelsSync({ threads: 1 });
    try {
      expect(await tuneSmallSplits(loadModel(testModel(STORIES_260K), { kernels: one }))).toBeUndefined();
    } finally {
      await one.close?.();
    }
    const ref = loadModel(testModel(STORIES_260K), { kernels: referenceKernels });
    expect(await tuneSmallSplits(ref)).toBeUndefined();
  });
});
