import { describe, expect, it } from "vitest";
import { generate } from "../../src/model/generate.js";
import { loadModel } from "../../src/model/model.js";
import { logitsAfter } from "../helpers/forward.js";
import { llamaGreedy, llamaNextProbs, llamaTokenize } from "../helpers/llamacpp.js";
import { logSoftmax, maxAbsDiffWhere } from "../helpers/logits.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { KV_F16_TOLERANCE } from "../helpers/parity.js";

const path = testModel(STORIES_260K);
const model = loadModel(path);

describe("stories260K (trained llama, GQA, SPM) against llama.cpp", () => {
  // Each KV cache type against llama.cpp's same type (F32, F16); the f16 bound is llama.cpp's extra
  // f16 rounding of q and the attention weights (test/helpers/parity.ts, KV_F16_TOLERANCE).
  const cases = [
    { kv: "f32", llama: "F32", tol: 2e-3 },
    { kv: "f16", llama: "F16", tol: KV_F16_TOLERANCE },
  ] as const;
  for (const c of cases) {
    it(`${c.kv} KV cache: greedy continuation of 'Once upon a time' for 32 tokens equals llama.cpp's (${c.llama} cache), token for token`, async () => {
      const prompt = model.tokenizer.encode("Once upon a time");
      // Same prompt ids as llama.cpp (BOS + its tokenization).
      expect(prompt).toEqual([model.tokenizer.bos, ...(await llamaTokenize(path, "Once upon a time"))]);
      const ours = generate(model, prompt, {
        maxTokens: 32,
        stopAtEog: false,
        sampling: { temperature: 0 },
        kvCacheType: c.kv,
      });
      const theirs = await llamaGreedy(path, prompt, 32, c.llama);
      expect(ours.tokens).toEqual(theirs);
      expect(ours.text.length).toBeGreaterThan(40);
    });

    it(`${c.kv} KV cache: next-token distribution matches llama.cpp's (${c.llama} cache) within ${c.tol} in log-probability`, async () => {
      for (const text of ["Once upon a time", "Lily and Ben went to the park. They saw a big dog"]) {
        const prompt = model.tokenizer.encode(text);
        const ours = logSoftmax(logitsAfter(model, prompt, c.kv));
        const theirs = (await llamaNextProbs(path, prompt, model.config.vocabSize, c.llama)).map(Math.log);
        // Compare where llama.cpp's probability is not vanishing (below 1e-6 the f32 softmax is all rounding).
        const d = maxAbsDiffWhere(ours, theirs, (i) => theirs[i]! > Math.log(1e-6));
        console.log(`stories260K ${c.kv}: ${text.slice(0, 12)} max |Δ log p| ${d.toExponential(2)}`);
        expect(d).toBeLessThan(c.tol);
      }
    });
  }
});
