import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import { loadModel } from "../../src/model/model.js";
import { type SynthArch, type SynthShape, synthModel } from "../../src/model/synth.js";
import { testModel, VOCAB_PHI3 } from "../helpers/models.js";
import { compareWithLlamaCpp, tolerance } from "../helpers/parity.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * Phi-3 and Gemma 2/3 against llama.cpp, on small synthesized models with llama.cpp's tensor names
 * and metadata keys (compareWithLlamaCpp: log-probabilities after 1, 7 and 64 tokens, greedy steps).
 */

const dir = tempDir();

interface Case {
  label: string;
  arch: SynthArch;
  shape: SynthShape;
  type: GGMLType;
  vocab: string;
  /** A wider tolerance than the weight type's, with its reason. */
  tol?: number;
}

const phi3Base: SynthShape = {
  dim: 128,
  nLayers: 2,
  nHeads: 4,
  nKVHeads: 2,
  ffnDim: 256,
  contextLength: 256,
};

const cases: Case[] = [
  { label: "phi3 F32", arch: "phi3", shape: phi3Base, type: GGMLType.F32, vocab: VOCAB_PHI3 },
  { label: "phi3 Q8_0", arch: "phi3", shape: phi3Base, type: GGMLType.Q8_0, vocab: VOCAB_PHI3 },
  {
    // Context 256 > original 32: the long factors, on 16 of each head's 32 dims, with attn_factor.
    label: "phi3 LongRoPE (long factors), partial RoPE",
    arch: "phi3",
    shape: { ...phi3Base, ropeDim: 16, longRope: { originalContext: 32, attnFactor: 1.19 } },
    type: GGMLType.F32,
    vocab: VOCAB_PHI3,
  },
  {
    label: "phi3 LongRoPE (short factors)",
    arch: "phi3",
    shape: { ...phi3Base, longRope: { originalContext: 256, attnFactor: 1.19 } },
    type: GGMLType.F32,
    vocab: VOCAB_PHI3,
  },
];

describe("new architectures vs llama.cpp", () => {
  const results: string[] = [];
  for (const c of cases) {
    it(c.label, async () => {
      const out = join(dir, `${c.label.replace(/[^\w]+/g, "-")}.gguf`);
      synthModel({ arch: c.arch, shape: c.shape, type: c.type, vocabPath: testModel(c.vocab), out });
      const model = loadModel(out);
      expect(model.config.arch).toBe(c.arch);
      const r = await compareWithLlamaCpp(model, c.type, c.label, c.tol ?? tolerance(c.type));
      results.push(`${c.label}: ${r.compared}/16 greedy steps, max |Δ log p| ${r.maxDiff.toExponential(1)}`);
      expect(r.compared).toBeGreaterThanOrEqual(4);
    });
  }
  it("summary", () => {
    console.log(results.join("\n"));
  });
});
