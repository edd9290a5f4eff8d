import { describe, expect, it } from "vitest";
import { generate } from "../../src/model/generate.js";
import { loadModel } from "../../src/model/model.js";
import { logitsAfter } from "../helpers/forward.js";
import { llamaGreedy, llamaNextProbs, llamaTokenize } from "../helpers/llamacpp.js";
import { logSoftmax, maxAbsDiffWhere } from "../helpers/logits.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

const path = testModel(STORIES_260K);
const model = loadModel(path);

describe("stories260K (trained llama, GQA, SPM) against llama.cpp", () => {
  it("greedy continuation of 'Once upon a time' for 32 tokens equals llama.cpp's, token for token", async () => {
    const prompt = model.tokenizer.encode("Once upon a time");
    // Same prompt ids as llama.cpp (BOS + its tokenization).
    expect(prompt).toEqual([model.tokenizer.bos, ...(await llamaTokenize(path, "Once upon a time"))]);
    const ours = generate(model, prompt, { maxTokens: 32, stopAtEog: false, sampling: { temperature: 0 } });
    const theirs = await llamaGreedy(path, prompt, 32);
    expect(ours.tokens).toEqual(theirs);
    expect(ours.text.length).toBeGreaterThan(40);
  });

  it("next-token distribution matches llama.cpp within 2e-3 in log-probability", async () => {
    for (const text of ["Once upon a time", "Lily and Ben went to the park. They saw a big dog"]) {
      const prompt = model.tokenizer.encode(text);
      const ours = logSoftmax(logitsAfter(model, prompt));
      const theirs = (await llamaNextProbs(path, prompt, model.config.vocabSize)).map(Math.log);
      // Compare where llama.cpp's probability is not vanishing (below 1e-6 the f32 softmax is all rounding).
      expect(maxAbsDiffWhere(ours, theirs, (i) => theirs[i]! > Math.log(1e-6))).toBeLessThan(2e-3);
    }
  });
});
