import { SpindleError } from "../errors.js";
import type { KVCacheType } from "../kernels/kernels.js";
import type { EngineEvent } from "../protocol/events.js";
import { RequestOutput } from "../protocol/output.js";
import { type SamplingParams, validateSamplingParams } from "../sampling/params.js";
import { Sampler } from "../sampling/sampler.js";
import { DEFAULT_BLOCK_SIZE, KVCacheStorage } from "./kv-cache.js";
import type { Model } from "./model.js";

/**
 * Generation for one sequence, start to finish, in the calling thread: the
 * path behind `spindle generate` and the model tests. Serving goes through the
 * engine instead (many sequences, a shared paged cache, off the main thread);
 * both call the same Transformer.forward.
 */

export interface GenerateOptions {
  maxTokens: number;
  sampling?: Partial<SamplingParams>;
  stop?: string[];
  /** Called with each piece of new text as soon as it is safe to show. */
  onText?: (text: string) => void;
  /** Stop at end-of-generation tokens (default true). */
  stopAtEog?: boolean;
  /** The KV cache's element type (default DEFAULT_KV_CACHE_TYPE). */
  kvCacheType?: KVCacheType;
}

export interface GenerateResult {
  promptTokens: number[];
  tokens: number[];
  text: string;
  finishReason: "stop" | "length" | "error";
  promptMs: number;
  generateMs: number;
}

export function generate(model: Model, prompt: string | number[], opts: GenerateOptions): GenerateResult {
  const tok = model.tokenizer;
  const promptTokens = typeof prompt === "string" ? tok.encode(prompt, { addSpecial: true }) : prompt;
  if (promptTokens.length === 0) throw new SpindleError("the prompt is empty");
  const total = promptTokens.length + opts.maxTokens;
  if (total > model.config.contextLength) {
    throw new SpindleError(
      `prompt (${promptTokens.length} tokens) plus max tokens (${opts.maxTokens}) exceeds the context of ${model.config.contextLength}`,
    );
  }
  const numBlocks = Math.ceil(total / DEFAULT_BLOCK_SIZE);
  const kv = new KVCacheStorage(model.config, numBlocks, DEFAULT_BLOCK_SIZE, undefined, opts.kvCacheType);
  const blockTable = Array.from({ length: numBlocks }, (_, i) => i);
  const k = model.transformer.kernels;
  const sampler = new Sampler(validateSamplingParams(opts.sampling ?? {}), model.config.vocabSize, k);
  const output = new RequestOutput(
    { prompt: promptTokens, maxTokens: opts.maxTokens, stop: opts.stop, stopAtEog: opts.stopAtEog },
    tok,
    model.config.contextLength,
    { arrival: performance.now() },
  );
  const history = [...promptTokens];
  const tokens: number[] = [];
  let text = "";
  const emit = (ev: EngineEvent) => {
    if (ev.text.length === 0) return;
    text += ev.text;
    opts.onText?.(ev.text);
  };

  try {
    return run();
  } finally {
    // The KV pools live in the kernels' memory: give them back now rather than at garbage collection.
    kv.dispose();
  }

  function run(): GenerateResult {
    const t0 = performance.now();
    // Each step's logits are sampled before the next forward: they may stay in the kernels' memory.
    let logits = model.transformer.forward(kv, [{ tokens: promptTokens, pos: 0, blockTable }], {
      transientLogits: true,
    })[0]!;
    const t1 = performance.now();
    for (;;) {
      const { token } = sampler.sample(logits, history);
      const ev: EngineEvent = { id: "generate", tokens, text: "" };
      if (output.accept(token, undefined, performance.now(), ev)) history.push(token);
      if (output.done) {
        // Text held back (half a character, a possible stop-string prefix) is released at the end.
        output.finish(ev, performance.now());
        emit(ev);
        break;
      }
      emit(ev);
      logits = model.transformer.forward(kv, [{ tokens: [token], pos: history.length - 1, blockTable }], {
        transientLogits: true,
      })[0]!;
    }
    return {
      promptTokens,
      tokens,
      text,
      finishReason: output.done!.reason,
      promptMs: t1 - t0,
      generateMs: performance.now() - t1,
    };
  }
}
