import { describe, expect, it } from "vitest";
import { createWasmKernelsSync } from "../../src/kernels/wasm-kernels.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { loadModel, type Model } from "../../src/model/model.js";
import { tuneSmallSplits } from "../../src/model/tune-splits.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

/** Next-token logits after a short prompt and two decode steps. */
function decode(model: Model): Float32Array[] {
  const kv = new KVCacheStorage(model.config, 4);
  const bt = [0, 1, 2, 3];
  const out = [
    model.transformer.forward(kv, [{ tokens: [1, 300, 42, 7], pos: 0, blockTable: bt }])[0]!.slice(),
  ];
  for (const [i, t] of [55, 66].entries())
    out.push(model.transformer.forward(kv, [{ tokens: [t], pos: 4 + i, blockTable: bt }])[0]!.slice());
  kv.dispose();
  return out;
}

describe("tuneSmallSplits: whether decode-sized matmuls use the kernel threads, by measurement", () => {
  it("times decode steps both ways, keeps the faster, and the logits do not depend on the choice", async () => {
    const kernels = createWasmKernelsSync({ threads: 2 });
    const model = loadModel(testModel(STORIES_260K), { kernels });
    const choice = await tuneSmallSplits(model);
    expect(choice).toBeDefined();
    expect(choice!.splitMs).toBeGreaterThan(0);
    expect(choice!.singleMs).toBeGreaterThan(0);
    expect(choice!.smallSplits).toBe(choice!.splitMs < choice!.singleMs);
    expect(kernels.smallSplits).toBe(choice!.smallSplits);
    kernels.smallSplits = true;
    const split = decode(model);
    kernels.smallSplits = false;
    expect(decode(model)).toEqual(split);
  });

  it("has nothing to choose with one thread or without WebAssembly kernels", async () => {
    const one = loadModel(testModel(STORIES_260K), { kernels: createWasmKernelsSync({ threads: 1 }) });
    expect(await tuneSmallSplits(one)).toBeUndefined();
  });
});
