import { describe, expect, it } from "vitest";
import { SpindleError } from "../../src/errors.js";
import {
  defaultSamplingParams,
  type SamplingParamError,
  type SamplingParams,
  validateSamplingParams,
} from "../../src/sampling/params.js";

function err(p: Partial<SamplingParams>): SamplingParamError {
  try {
    validateSamplingParams(p);
  } catch (e) {
    expect(e).toBeInstanceOf(SpindleError);
    return e as SamplingParamError;
  }
  throw new Error(`accepted ${JSON.stringify(p)}`);
}

describe("validateSamplingParams", () => {
  it("fills defaults", () => {
    expect(validateSamplingParams({})).toEqual(defaultSamplingParams());
    expect(defaultSamplingParams()).toEqual({
      temperature: 1,
      topK: 0,
      topP: 1,
      minP: 0,
      repetitionPenalty: 1,
      presencePenalty: 0,
      frequencyPenalty: 0,
      penaltyLastN: 64,
      logitBias: undefined,
      seed: undefined,
      logprobs: 0,
    });
    const p = validateSamplingParams({ temperature: 0.2, topK: -1, seed: 7 });
    expect(p.temperature).toBe(0.2);
    expect(p.topK).toBe(-1);
    expect(p.seed).toBe(7);
    expect(p.topP).toBe(1);
  });

  it("names the field in a one-line message", () => {
    expect(err({ temperature: 2.5 }).message).toBe("temperature must be between 0 and 2");
    expect(err({ temperature: -0.1 }).message).toBe("temperature must be between 0 and 2");
    expect(err({ temperature: Number.NaN }).message).toBe("temperature must be a number");
    expect(err({ topP: 1.01 }).message).toBe("top_p must be between 0 and 1");
    expect(err({ minP: -0.5 }).message).toBe("min_p must be between 0 and 1");
    expect(err({ topK: 2.5 }).message).toBe("top_k must be an integer");
    expect(err({ repetitionPenalty: 0 }).message).toBe("repetition_penalty must be a positive number");
    expect(err({ presencePenalty: 3 }).message).toBe("presence_penalty must be between -2 and 2");
    expect(err({ frequencyPenalty: -2.5 }).message).toBe("frequency_penalty must be between -2 and 2");
    expect(err({ penaltyLastN: -2 }).param).toBe("penalty_last_n");
    expect(err({ logprobs: 21 }).message).toBe("logprobs must be between 0 and 20");
    expect(err({ seed: 1.5 }).message).toBe("seed must be an integer");
    expect(err({ logitBias: new Map([[-1, 1]]) }).param).toBe("logit_bias");
    expect(err({ logitBias: new Map([[5, 101]]) }).message).toBe(
      "logit_bias value for token 5 must be between -100 and 100",
    );
    expect(err({ temperature: "1" as unknown as number }).message).toBe("temperature must be a number");
    expect(err({ topP: 2 }).code).toBe("invalid_request_error");
  });

  it("a bias of -100 or below becomes a ban; an empty map is no map", () => {
    const p = validateSamplingParams({
      logitBias: new Map([
        [1, -100],
        [2, -Infinity],
        [3, 5],
      ]),
    });
    expect([...p.logitBias!]).toEqual([
      [1, -Infinity],
      [2, -Infinity],
      [3, 5],
    ]);
    expect(validateSamplingParams({ logitBias: new Map() }).logitBias).toBeUndefined();
  });
});
