import { describe, expect, it } from "vitest";
import { loadModel } from "../../src/model/model.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

describe("load progress", () => {
  it("reports the weights read after each layer, rising to the model's weight bytes", () => {
    const calls: [number, number][] = [];
    const model = loadModel(testModel(STORIES_260K), {
      onProgress: (loaded, total) => calls.push([loaded, total]),
    });
    try {
      expect(calls).toHaveLength(model.config.nLayers);
      for (const [, total] of calls) expect(total).toBe(model.weightBytes);
      for (let i = 1; i < calls.length; i++) expect(calls[i]![0]).toBeGreaterThan(calls[i - 1]![0]);
      expect(calls.at(-1)![0]).toBe(model.weightBytes);
    } finally {
      void model.transformer.kernels.close?.();
    }
  });
});
