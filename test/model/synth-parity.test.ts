import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../../src/gguf/types.js";
import { generate } from "../../src/model/generate.js";
import { loadModel, type Model } from "../../src/model/model.js";
import { SHAPES, type SynthArch, synthModel } from "../../src/model/synth.js";
import { Rng } from "../../src/sampling/rng.js";
import { logitsAfter } from "../helpers/forward.js";
import { llamaGreedy, llamaNextProbs } from "../helpers/llamacpp.js";
import { argmax, logSoftmax, maxAbsDiffWhere, top2Margin } from "../helpers/logits.js";
import { STORIES_260K, testModel, VOCAB_GPT2 } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * Synthesized models (random weights, real vocabularies) in every supported weight type,
 * compared with llama.cpp by their next-token log-probabilities.
 *
 * Tolerances (max |Δ log p| over tokens llama.cpp gives p > 1e-6):
 * - F32: both sides compute in float32 (llama.cpp with an F32 KV cache here), differing only in
 *   summation order: 1e-4 (measured: 1-7e-6).
 * - F16 / BF16: llama.cpp rounds the activations to F16 / BF16 before each matmul (ggml's
 *   vec_dot for those types takes both operands in the same type); Spindle keeps them in float32.
 *   Rounding to 11 (8) significant bits gives about 5e-4 (4e-3) relative error per product, which
 *   accumulates over layers: 1e-2 / 3e-2 (measured: 1-2e-3 / 8e-3-1.3e-2).
 * - Quantized types: llama.cpp quantizes activations to 8-bit blocks for its integer dot products
 *   (Q8_0, one scale per 32 values, for the legacy types; Q8_K, one scale per 256, for the K-quants);
 *   Spindle uses float activations against the same dequantized weights. An 8-bit step is 1/127 of
 *   the block's max, a few percent of a logit's scale (logits here have std ≈ 1) after two layers:
 *   1e-1 (measured: 3-7e-2). A layout mistake in any type gives differences of order 1.
 * Greedy: llama.cpp generates 16 tokens greedily; at each step, given the same history (its tokens so
 * far), Spindle's argmax must be llama.cpp's token wherever Spindle's top-2 logit margin is above twice
 * the type's tolerance (so the errors above cannot flip it). Random weights give thin margins at some
 * steps; those are skipped, and at least 40% of all steps must have been compared.
 */

const dir = tempDir();
const rng = new Rng(7);
const randomPrompt = (n: number, vocab: number, bos: number) => [
  bos,
  ...Array.from({ length: n - 1 }, () => 3 + (rng.nextU32() % (vocab - 3))),
];

const TOLERANCE: Partial<Record<GGMLType, number>> = {
  [GGMLType.F32]: 1e-4,
  [GGMLType.F16]: 1e-2,
  [GGMLType.BF16]: 3e-2,
};
const tolerance = (t: GGMLType) => TOLERANCE[t] ?? 1e-1;

/** `type` sets the tolerance; `label` names it in failures. */
async function compare(model: Model, type: GGMLType, label = typeName(type)) {
  const V = model.config.vocabSize;
  const bos = model.tokenizer.bos ?? 1;
  for (const len of [1, 7, 64]) {
    const prompt = randomPrompt(len, V, bos);
    const ours = logSoftmax(logitsAfter(model, prompt));
    const theirs = (await llamaNextProbs(model.path, prompt, V)).map(Math.log);
    const diff = maxAbsDiffWhere(ours, theirs, (i) => theirs[i]! > Math.log(1e-6));
    expect(diff, `${label} prompt of ${len}`).toBeLessThan(tolerance(type));
  }
  // Greedy for 16 steps, step by step on llama.cpp's own history.
  const prompt = randomPrompt(7, V, bos);
  const theirs = await llamaGreedy(model.path, prompt, 16);
  let compared = 0;
  for (let i = 0; i < 16; i++) {
    const logits = logitsAfter(model, [...prompt, ...theirs.slice(0, i)]);
    if (top2Margin(logits) < 2 * tolerance(type)) continue;
    expect(argmax(logits), `${label} greedy step ${i}`).toBe(theirs[i]);
    compared++;
  }
  // Spindle's own greedy run agrees up to the first thin step.
  const ours = generate(model, prompt, {
    maxTokens: 16,
    stopAtEog: false,
    sampling: { temperature: 0 },
  }).tokens;
  for (let i = 0; i < 16; i++) {
    if (top2Margin(logitsAfter(model, [...prompt, ...ours.slice(0, i)])) < 2 * tolerance(type)) break;
    expect(ours[i], `${label} own greedy step ${i}`).toBe(theirs[i]);
  }
  return compared;
}

describe("synthesized llama in every weight type vs llama.cpp", () => {
  const types = SUPPORTED_WEIGHT_TYPES;
  let totalCompared = 0;
  for (const type of types) {
    it(`${typeName(type)}: logits within ${tolerance(type)}, greedy agrees`, async () => {
      const out = join(dir, `llama-${typeName(type)}.gguf`);
      // Every dimension a multiple of 256, so each matrix really is stored in `type`.
      const r = synthModel({
        arch: "llama",
        shape: SHAPES.k256!,
        type,
        vocabPath: testModel(STORIES_260K),
        out,
      });
      expect(r.fallbacks).toEqual([]);
      totalCompared += await compare(loadModel(out), type);
    });
  }
  it("compared a meaningful number of greedy steps", () => {
    expect(totalCompared).toBeGreaterThanOrEqual(Math.ceil(types.length * 16 * 0.4));
  });
});

describe("other architectures vs llama.cpp", () => {
  const cases: { arch: SynthArch; type: GGMLType; tied: boolean }[] = [
    { arch: "qwen2", type: GGMLType.F32, tied: false },
    { arch: "qwen2", type: GGMLType.Q8_0, tied: true },
    { arch: "qwen3", type: GGMLType.F32, tied: true },
  ];
  for (const c of cases) {
    it(`${c.arch} ${typeName(c.type)}${c.tied ? " (tied embeddings)" : ""}`, async () => {
      const out = join(dir, `${c.arch}-${typeName(c.type)}.gguf`);
      const shape = { dim: 128, nLayers: 2, nHeads: 4, nKVHeads: 2, ffnDim: 256, contextLength: 256 };
      synthModel({ arch: c.arch, shape, type: c.type, vocabPath: testModel(VOCAB_GPT2), out, tied: c.tied });
      const model = loadModel(out);
      expect(model.config.rope.style).toBe("neox");
      expect(model.config.tiedEmbeddings).toBe(c.tied);
      await compare(model, c.type);
    });
  }
});

describe("Q4_K_M mixture (llama.cpp's recipe) vs llama.cpp", () => {
  it("per-tensor types with llama.cpp's fallbacks; logits within 1e-1, greedy agrees", async () => {
    const out = join(dir, "llama-Q4_K_M.gguf");
    // 64-wide rows take no 256-blocks (Q4_K → Q5_0, Q6_K → Q8_0); ffn_down's 256-wide rows do.
    const shape = { dim: 64, nLayers: 8, nHeads: 4, nKVHeads: 2, ffnDim: 256, contextLength: 256 };
    const r = synthModel({ arch: "llama", shape, type: "Q4_K_M", vocabPath: testModel(STORIES_260K), out });
    const g = readGGUF(out);
    const type = (name: string) => typeName(g.tensor(name).type);
    expect(g.getNumber("general.file_type")).toBe(15);
    expect(type("token_embd.weight")).toBe("Q5_0");
    expect(type("output.weight")).toBe("Q8_0");
    const moreBits = [0, 3, 6, 7]; // 8 layers: l < 1, l >= 7, (l - 1) % 3 == 2
    for (let l = 0; l < 8; l++) {
      const more = moreBits.includes(l);
      for (const t of ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"])
        expect(type(`blk.${l}.${t}.weight`), `blk.${l}.${t}`).toBe("Q5_0");
      expect(type(`blk.${l}.attn_v.weight`), `blk.${l}.attn_v`).toBe(more ? "Q8_0" : "Q5_0");
      expect(type(`blk.${l}.ffn_down.weight`), `blk.${l}.ffn_down`).toBe(more ? "Q6_K" : "Q4_K");
    }
    g.close();
    expect(r.fallbacks.length).toBe(1 + 1 + 8 * 6); // all but ffn_down
    await compare(loadModel(out), GGMLType.Q4_K, "Q4_K_M");
  });
});
