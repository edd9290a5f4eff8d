import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import { loadModel } from "../../src/model/model.js";
import { type SynthArch, type SynthShape, synthModel } from "../../src/model/synth.js";
import { testModel, VOCAB_GPT2, VOCAB_SPM } from "../helpers/models.js";
import { compareWithLlamaCpp, tolerance } from "../helpers/parity.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * Mixtures of experts against llama.cpp (compareWithLlamaCpp: log-probabilities after 1, 7 and 64
 * tokens, greedy steps), on small synthesized models with llama.cpp's stacked expert tensors:
 * Mixtral-style llama (top-2 of 8, weights renormalised over the two), qwen3moe (top-4 of 16,
 * renormalised, q/k norms) and qwen2moe (top-4 of 16, raw softmax weights, a sigmoid-gated shared
 * expert, Q/K/V biases).
 */

const dir = tempDir();

interface Case {
  label: string;
  arch: SynthArch;
  shape: SynthShape;
  type: GGMLType;
  vocab: string;
}

const base = { dim: 128, nLayers: 2, nHeads: 4, nKVHeads: 2, ffnDim: 256, contextLength: 256 };
const mixtral: SynthShape = { ...base, experts: { count: 8, used: 2, ffnDim: 128 } };
const qwen3: SynthShape = { ...base, experts: { count: 16, used: 4, ffnDim: 64 } };
const qwen2: SynthShape = { ...base, experts: { count: 16, used: 4, ffnDim: 64, sharedFfnDim: 192 } };

const cases: Case[] = [];
for (const type of [GGMLType.F32, GGMLType.Q8_0]) {
  const t = type === GGMLType.F32 ? "F32" : "Q8_0";
  cases.push(
    { label: `llama (Mixtral-style) ${t}`, arch: "llama", shape: mixtral, type, vocab: VOCAB_SPM },
    { label: `qwen3moe ${t}`, arch: "qwen3moe", shape: qwen3, type, vocab: VOCAB_GPT2 },
    { label: `qwen2moe ${t}`, arch: "qwen2moe", shape: qwen2, type, vocab: VOCAB_GPT2 },
  );
}

describe("mixtures of experts vs llama.cpp", () => {
  const results: string[] = [];
  for (const c of cases) {
    it(c.label, async () => {
      const out = join(dir, `${c.label.replace(/[^\w]+/g, "-")}.gguf`);
      synthModel({ arch: c.arch, shape: c.shape, type: c.type, vocabPath: testModel(c.vocab), out });
      const model = loadModel(out);
      expect(model.config.arch).toBe(c.arch);
      expect(model.config.moe).toMatchObject({
        nExperts: c.shape.experts!.count,
        nUsed: c.shape.experts!.used,
      });
      const r = await compareWithLlamaCpp(model, c.type, c.label, tolerance(c.type));
      results.push(`${c.label}: ${r.compared}/16 greedy steps, max |Δ log p| ${r.maxDiff.toExponential(1)}`);
      expect(r.compared).toBeGreaterThanOrEqual(4);
    });
  }
  it("summary", () => {
    console.log(results.join("\n"));
  });
});
