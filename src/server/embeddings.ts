import { setMaxListeners } from "node:events";
import { type Choice, readChoices, startChoices } from "./choices.js";
import type { LoadedModel, ServerContext } from "./context.js";
import type { EmbeddingInput, EmbeddingSchemaContext } from "./embeddings-schema.js";
import { ApiError, badRequest } from "./errors.js";

/**
 * The one path from any embedding front door (routes/embeddings.ts: OpenAI's and Ollama's routes;
 * rpc/service.ts: the Embed RPC) to the engine: each input becomes one choice of kind "embed"
 * (a prefill-only engine request), started and read through choices.ts and ctx.service like a
 * generation's, so admission, the queue cap, the context check, cancellation, metrics and the
 * request log are the same for embeddings.
 */

/** One input ready to embed: its tokens, its text (for --log-prompts) and the field that holds it. */
export interface EmbeddingPrompt {
  ids: number[];
  text?: string;
  /** The protocol's name of the input's field, for errors ("input", "input[3]", "prompt"). */
  param: string;
}

/** The model, when its backend computes embeddings (501 otherwise), and what the schemas check against. */
export function embeddingModel(
  ctx: ServerContext,
  endpoint: string,
): { m: LoadedModel; sc: EmbeddingSchemaContext } {
  const m = ctx.service.model(endpoint);
  const e = m.info.embeddings;
  if (!e) {
    throw new ApiError(
      501,
      `the ${m.info.kind} backend computes no embeddings (the local backend does)`,
      "invalid_request_error",
      null,
      "embeddings_unsupported",
    );
  }
  const sc = {
    modelName: ctx.opts.modelName,
    vocabSize: m.info.vocabSize,
    contextLength: m.info.contextLength,
    embeddingLength: e.length,
  };
  return { m, sc };
}

/** An input's tokens: text as llama-server tokenizes embedding inputs (BOS/EOS as the vocabulary asks, special tokens parsed), ids as given. */
export function embeddingPrompt(m: LoadedModel, input: EmbeddingInput, param: string): EmbeddingPrompt {
  if ("ids" in input) return { ids: input.ids, param };
  const ids = m.tokenizer.encode(input.text, { addSpecial: true, parseSpecial: true });
  if (ids.length === 0) throw badRequest(`${param} is empty once tokenized`, param);
  return { ids, text: input.text, param };
}

/** Embeds every prompt (one engine request each, started together) and returns the vectors in order. */
export async function embedPrompts(
  ctx: ServerContext,
  who: { client: string; endpoint: string; signal: AbortSignal },
  prompts: EmbeddingPrompt[],
): Promise<Float32Array[]> {
  const choices: Choice[] = prompts.map((p, i) => ({
    index: i,
    prompt: i,
    params: {
      kind: "embed",
      prompt: p.ids,
      maxTokens: 1,
      sampling: {},
      stop: [],
      stopAtEog: true,
      priority: 0,
      client: who.client,
      endpoint: who.endpoint,
      promptText: p.text,
      fields: { prompt: p.param, maxTokens: p.param },
    },
  }));
  // Every input's request listens to the one abort signal (up to MAX_EMBEDDING_INPUTS of them).
  setMaxListeners(choices.length + 10, who.signal);
  const streams = await startChoices(ctx, choices, who.signal);
  const vectors: (Float32Array | undefined)[] = prompts.map(() => undefined);
  await readChoices(streams, who.signal, (i, e) => {
    if (e.embedding) vectors[i] = e.embedding;
  });
  if (vectors.some((v) => v === undefined))
    throw new ApiError(500, "an embedding request ended without its vector");
  return vectors as Float32Array[];
}

/** A vector as OpenAI's base64 encoding: its float32 values' little-endian bytes. */
export const base64Of = (v: Float32Array) =>
  Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64");
