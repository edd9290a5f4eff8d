export {
  BAN_BIAS,
  defaultSamplingParams,
  MAX_LOGPROBS,
  SamplingParamError,
  type SamplingParams,
  validateSamplingParams,
} from "./params.js";
export { applyLogitBias, applyPenalties, type PenaltyParams } from "./penalties.js";
export { Rng, randomSeed } from "./rng.js";
export { type SampleResult, Sampler, selectTopK, type TokenLogprob } from "./sampler.js";
export { StopMatcher, type StopPush } from "./stop.js";
