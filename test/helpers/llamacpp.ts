/**
 * The outside reference: llama.cpp through the node-llama-cpp package (prebuilt
 * CPU binary from npm). Tests ask it for tokenizations, greedy continuations and
 * next-token distributions in the same run, instead of pasting expected values.
 */
import { statSync } from "node:fs";
import type { Llama, LlamaModel, Token } from "node-llama-cpp";

let llamaPromise: Promise<Llama> | undefined;
const models = new Map<string, Promise<LlamaModel>>();

export async function llama(): Promise<Llama> {
  llamaPromise ??= import("node-llama-cpp").then((m) =>
    m.getLlama({ gpu: false, build: "never", logLevel: m.LlamaLogLevel.error }),
  );
  return llamaPromise;
}

/**
 * Loads (once per file version) a model; `vocabOnly` for tokenizer-only files. The key carries the
 * file's size and modification time: a test that writes a new model where an earlier one was gets
 * the new one, not the old one cached under the same path.
 */
export async function llamaModel(path: string, vocabOnly = false): Promise<LlamaModel> {
  const st = statSync(path);
  const key = `${path}|${st.size}|${st.mtimeMs}|${vocabOnly}`;
  let m = models.get(key);
  if (!m) {
    m = llama().then((l) => l.loadModel({ modelPath: path, vocabOnly, gpuLayers: 0 }));
    models.set(key, m);
  }
  return m;
}

/** llama.cpp's token ids for `text`, without BOS; `special` parses special-token text. */
export async function llamaTokenize(path: string, text: string, special = false): Promise<number[]> {
  const model = await llamaVocabModel(path);
  return [...model.tokenize(text, special)];
}

/**
 * llama.cpp's text for `ids` (llama_detokenize without remove_special; `special` renders
 * control tokens). Note llama.cpp cleans up tokenization spaces for vocabularies that ask for it.
 */
export async function llamaDetokenize(
  path: string,
  ids: readonly number[],
  special = false,
): Promise<string> {
  const model = await llamaVocabModel(path);
  return model.detokenize(ids as Token[], special);
}

let quietLoads = 0;
let heldLogs: [import("node-llama-cpp").LlamaLogLevel, string][] = [];
let savedLogger: ((level: import("node-llama-cpp").LlamaLogLevel, message: string) => void) | undefined;

/**
 * Like llamaModel(path, true), but quiet: loading a tokenizer-only GGUF makes llama.cpp log
 * "missing tensor 'token_embd.weight'" / "failed to load model" although the vocabulary loads.
 * Logs are held during the load and printed only if the load fails.
 */
export async function llamaVocabModel(path: string): Promise<LlamaModel> {
  const key = `${path}|true`;
  let m = models.get(key);
  if (!m) {
    m = llama().then(async (l) => {
      if (quietLoads++ === 0) {
        savedLogger = l.logger;
        l.logger = (level, message) => void heldLogs.push([level, message]);
      }
      try {
        return await l.loadModel({ modelPath: path, vocabOnly: true, gpuLayers: 0 });
      } catch (e) {
        for (const [level, message] of heldLogs) savedLogger?.(level, message);
        heldLogs = [];
        throw e;
      } finally {
        if (--quietLoads === 0) {
          l.logger = savedLogger!;
          heldLogs = [];
        }
      }
    });
    models.set(key, m);
  }
  return m;
}

/** llama.cpp's KV cache type: F32 (as close to plain float32 as it gets) or F16 (its default). */
export type LlamaKvType = "F32" | "F16";

/**
 * A context with an F32 (or `kvType`) KV cache and no flash attention, so llama.cpp's arithmetic
 * is as close to plain float32 as it gets (its default F16 cache adds error: the F16 cases compare
 * Spindle's f16 cache with it).
 */
async function withSequence<T>(
  path: string,
  contextSize: number,
  fn: (seq: import("node-llama-cpp").LlamaContextSequence) => Promise<T>,
  kvType: LlamaKvType = "F32",
): Promise<T> {
  const model = await llamaModel(path);
  const ctx = await model.createContext({
    contextSize: Math.max(64, contextSize),
    batchSize: Math.max(64, contextSize),
    threads: 2,
    flashAttention: false,
    experimentalKvCacheKeyType: kvType,
    experimentalKvCacheValueType: kvType,
  });
  try {
    return await fn(ctx.getSequence());
  } finally {
    await ctx.dispose();
  }
}

/** llama.cpp's greedy continuation of `tokens` (BOS included by the caller): exactly n tokens, EOS not special. */
export async function llamaGreedy(
  path: string,
  tokens: number[],
  n: number,
  kvType: LlamaKvType = "F32",
): Promise<number[]> {
  return withSequence(
    path,
    tokens.length + n + 8,
    async (seq) => {
      const out: number[] = [];
      // yieldEogToken: an end-of-generation token is a greedy step like any other (by default the
      // evaluation ends without it, and a shorter list than asked for comes back).
      for await (const t of seq.evaluate(tokens as Token[], { temperature: 0, yieldEogToken: true })) {
        out.push(t);
        if (out.length >= n) break;
      }
      return out;
    },
    kvType,
  );
}

/** llama.cpp's next-token distribution after `tokens`: the softmax of the raw logits, over the whole vocabulary. */
export async function llamaNextProbs(
  path: string,
  tokens: number[],
  vocabSize: number,
  kvType: LlamaKvType = "F32",
): Promise<Float64Array> {
  // The distribution comes with a sampled token (temperature 1, nothing cut). yieldEogToken: an
  // end-of-generation token is yielded like any other (by default node-llama-cpp ends the
  // evaluation without it; resampling then failed 20 times in a row on a random-weight model whose
  // distribution puts most of its mass there).
  const probs = await withSequence(
    path,
    tokens.length + 8,
    async (seq) => {
      const it = seq.evaluateWithMetadata(
        tokens as Token[],
        { probabilities: true },
        { temperature: 1, topK: 0, topP: 1, minP: 0, yieldEogToken: true },
      );
      const r = await it.next();
      await it.return();
      if (r.done) return undefined;
      const out = new Float64Array(vocabSize);
      for (const [t, p] of r.value.probabilities) out[t] = p;
      return out;
    },
    kvType,
  );
  if (!probs) throw new Error("llama.cpp produced no token");
  return probs;
}

/**
 * llama.cpp's embedding of exactly `tokens` (node-llama-cpp's embedding context: pooled as the
 * GGUF's `<arch>.pooling_type` says, last token when it says none; not normalized). node-llama-cpp
 * adds BOS/EOS only where the vocabulary wants them and they are missing, so tokens from Spindle's
 * tokenizer (which adds them alike) go through unchanged.
 */
export async function llamaEmbedding(path: string, tokens: number[], threads = 2): Promise<Float64Array> {
  const model = await llamaModel(path);
  const ctx = await model.createEmbeddingContext({
    contextSize: Math.max(64, tokens.length + 8),
    batchSize: Math.max(64, tokens.length + 8),
    threads,
  });
  try {
    const e = await ctx.getEmbeddingFor(tokens as Token[]);
    return Float64Array.from(e.vector);
  } finally {
    await ctx.dispose();
  }
}

/** Cosine similarity of two vectors of the same length. */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! * a[i]!;
    bb += b[i]! * b[i]!;
  }
  return ab / Math.sqrt(aa * bb);
}
