import { describe, expect, it } from "vitest";
import { defaultSamplingParams } from "../../src/sampling/params.js";
import { applyLogitBias, applyPenalties } from "../../src/sampling/penalties.js";

const base = [2, -1, 0.5, 3, 1];
// Last 5 of the history: [1, 2, 4, 4, 4] → counts {1: 1, 2: 1, 4: 3}; tokens 0 and 3 are outside the window.
const history = [0, 3, 1, 2, 4, 4, 4];
const off = { repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, penaltyLastN: 5 };

function run(p: Partial<typeof off>, h: number[] = history): number[] {
  const w = Float32Array.from(base);
  applyPenalties(w, base.length, h, { ...off, ...p });
  return Array.from(w);
}

function close(a: number[], b: number[]): void {
  expect(a).toHaveLength(b.length);
  for (let i = 0; i < a.length; i++) expect(a[i]).toBeCloseTo(b[i]!, 6);
}

describe("penalties", () => {
  it("repetition: positive logits divided, negative multiplied, once per distinct token", () => {
    close(run({ repetitionPenalty: 2 }), [2, -2, 0.25, 3, 0.5]);
    close(run({ repetitionPenalty: 0.5 }), [2, -0.5, 1, 3, 2]);
  });

  it("presence: subtracted once from each token present", () => {
    close(run({ presencePenalty: 0.75 }), [2, -1.75, -0.25, 3, 0.25]);
    close(run({ presencePenalty: -0.5 }), [2, -0.5, 1, 3, 1.5]);
  });

  it("frequency: subtracted count times", () => {
    close(run({ frequencyPenalty: 0.5 }), [2, -1.5, 0, 3, -0.5]);
  });

  it("all three: repetition first, then frequency and presence", () => {
    // token 1: -1 × 2 = -2, -0.5 - 0.25 → -2.75; token 2: 0.5 / 2 = 0.25 → -0.5; token 4: 1 / 2 → 0.5 - 1.5 - 0.25
    close(
      run({ repetitionPenalty: 2, frequencyPenalty: 0.5, presencePenalty: 0.25 }),
      [2, -2.75, -0.5, 3, -1.25],
    );
  });

  it("penaltyLastN: -1 is the whole history, 0 is off, larger than the history is all of it", () => {
    close(run({ presencePenalty: 1, penaltyLastN: -1 }), [1, -2, -0.5, 2, 0]);
    close(run({ presencePenalty: 1, penaltyLastN: 100 }), [1, -2, -0.5, 2, 0]);
    close(run({ presencePenalty: 1, penaltyLastN: 0 }), base);
    close(run({ presencePenalty: 1, penaltyLastN: 1 }), [2, -1, 0.5, 3, 0]);
  });

  it("ignores ids outside the vocabulary and works on typed histories", () => {
    close(run({ frequencyPenalty: 1, penaltyLastN: -1 }, [7, -1, 4, 4]), [2, -1, 0.5, 3, -1]);
    const w = Float32Array.from(base);
    applyPenalties(w, 5, Int32Array.from([4, 4]), { ...off, frequencyPenalty: 1 });
    expect(w[4]).toBe(-1);
  });

  it("defaults change nothing", () => {
    const d = defaultSamplingParams();
    const w = Float32Array.from(base);
    applyPenalties(w, 5, history, d);
    expect(Array.from(w)).toEqual(base);
  });
});

describe("logit bias", () => {
  it("adds to the logit; -Infinity bans", () => {
    const w = Float32Array.from(base);
    applyLogitBias(
      w,
      new Map([
        [0, 1.5],
        [3, -Infinity],
        [4, -2],
      ]),
    );
    expect(Array.from(w)).toEqual([3.5, -1, 0.5, -Infinity, -1]);
  });
});
