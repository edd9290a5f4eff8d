import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../../src/gguf/types.js";
import { generate } from "../../src/model/generate.js";
import { loadModel, type Model } from "../../src/model/model.js";
import { SHAPES, type SynthArch, synthModel } from "../../src/model/synth.js";
import { copierModel, copyPrompt } from "../helpers/copier.js";
import { llamaGreedy } from "../helpers/llamacpp.js";
import { STORIES_260K, testModel, VOCAB_GPT2 } from "../helpers/models.js";
import { compareWithLlamaCpp, KV_F16_TOLERANCE, tolerance } from "../helpers/parity.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * Synthesized models (random weights, real vocabularies) in every supported weight type,
 * compared with llama.cpp by their next-token log-probabilities and greedy steps
 * (test/helpers/parity.ts says how, and why each type's tolerance is what it is).
 */

const dir = tempDir();
const compare = async (model: Model, type: GGMLType, label?: string) =>
  (await compareWithLlamaCpp(model, type, label)).compared;

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

describe("the copier (synth-model --copier) vs llama.cpp", () => {
  it("continues a passage written out three times with the passage again, greedy on both sides", async () => {
    const out = copierModel();
    const model = loadModel(out);
    const tok = model.tokenizer;
    // The benchmark's copy workload: random common words, so some repeat (the circuit matches the
    // last two tokens, not one).
    const { passage: p, prompt: text } = copyPrompt();
    expect(new Set(p.split(" ")).size).toBeLessThan(30);
    const prompt = [tok.bos!, ...tok.encode(text)];
    const n = 48; // past the end of the passage, through the newline into the next copy
    const copied = [tok.bos!, ...tok.encode(`${p}\n${p}\n${p}\n${p}\n${p}`)].slice(
      prompt.length,
      prompt.length + n,
    );
    expect(prompt.length - 1).toBeLessThan(3 * n);
    const ours = generate(model, prompt, {
      maxTokens: n,
      stopAtEog: false,
      sampling: { temperature: 0 },
      kvCacheType: "f16",
    }).tokens;
    expect(ours).toEqual(copied);
    expect(await llamaGreedy(out, prompt, n, "F16")).toEqual(copied);
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

describe("f16 KV cache vs llama.cpp's F16 cache", () => {
  // The weight type's tolerance, widened by the f16 cache's (KV_F16_TOLERANCE says why).
  const cases: { arch: SynthArch; type: GGMLType }[] = [
    { arch: "llama", type: GGMLType.F32 },
    { arch: "llama", type: GGMLType.Q4_K },
    { arch: "qwen2", type: GGMLType.Q8_0 },
  ];
  for (const c of cases) {
    const tol = Math.max(tolerance(c.type), KV_F16_TOLERANCE);
    it(`${c.arch} ${typeName(c.type)}, f16 KV: logits within ${tol}, greedy agrees`, async () => {
      const out = join(dir, `kvf16-${c.arch}-${typeName(c.type)}.gguf`);
      // llama: rows of 256 (Q4_K's super-blocks); qwen2: the "other architectures" shape, GPT-2 vocabulary.
      const llama = c.arch === "llama";
      const shape = {
        dim: llama ? 256 : 128,
        nLayers: 2,
        nHeads: 4,
        nKVHeads: 2,
        ffnDim: 256,
        contextLength: 256,
      };
      const vocab = testModel(llama ? STORIES_260K : VOCAB_GPT2);
      synthModel({ arch: c.arch, shape, type: c.type, vocabPath: vocab, out });
      const r = await compareWithLlamaCpp(loadModel(out), c.type, `${typeName(c.type)} f16 KV`, tol, "f16");
      console.log(
        `f16 KV ${c.arch} ${typeName(c.type)}: max |Δ log p| ${r.maxDiff.toExponential(2)}, ${r.compared} greedy steps`,
      );
      expect(r.compared).toBeGreaterThanOrEqual(4);
    }, 180_000);
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

describe("Q3_K_M, Q2_K and IQ4_XS mixtures (llama.cpp's recipes) vs llama.cpp", () => {
  // 8 layers: IQ4_XS's first eighth is layer 0 (Q3_K_M's first sixteenth is none; synth.ts' rule);
  // 8 query heads on 2 KV heads: llama.cpp's n_gqa = 4, which sends Q2_K's and IQ4_XS's attn_v up.
  const shape = { dim: 256, nLayers: 8, nHeads: 8, nKVHeads: 2, ffnDim: 512, contextLength: 256 };
  const recipes = {
    Q3_K_M: {
      ftype: 12,
      base: "Q3_K",
      per: (l: number): Record<string, string> => ({
        attn_v: l < 2 ? "Q5_K" : "Q4_K",
        ffn_down: "Q4_K",
        attn_output: "Q4_K",
      }),
    },
    Q2_K: {
      ftype: 10,
      base: "Q2_K",
      per: (): Record<string, string> => ({ attn_v: "Q4_K", ffn_down: "Q3_K", attn_output: "Q3_K" }),
    },
    IQ4_XS: {
      ftype: 30,
      base: "IQ4_XS",
      per: (l: number): Record<string, string> => ({ attn_v: "Q5_K", ffn_down: l < 1 ? "Q5_K" : "IQ4_XS" }),
    },
  } as const;
  for (const [mix, r] of Object.entries(recipes)) {
    it(`${mix}: per-tensor types as llama-quantize assigns them; logits within 1e-1, greedy agrees`, async () => {
      const out = join(dir, `llama-mix-${mix}.gguf`);
      const rep = synthModel({
        arch: "llama",
        shape,
        type: mix as "Q3_K_M" | "Q2_K" | "IQ4_XS",
        vocabPath: testModel(STORIES_260K),
        out,
      });
      expect(rep.fallbacks).toEqual([]);
      const g = readGGUF(out);
      const type = (name: string) => typeName(g.tensor(name).type);
      expect(g.getNumber("general.file_type")).toBe(r.ftype);
      expect(type("output.weight")).toBe("Q6_K");
      expect(type("token_embd.weight")).toBe(r.base);
      for (let l = 0; l < shape.nLayers; l++) {
        const special = r.per(l);
        for (const t of ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"])
          expect(type(`blk.${l}.${t}.weight`), `blk.${l}.${t}`).toBe(special[t] ?? r.base);
      }
      g.close();
      const base = GGMLType[r.base as keyof typeof GGMLType];
      await compare(loadModel(out), base, mix);
    });
  }
});
