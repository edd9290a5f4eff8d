import { setMaxListeners } from "node:events";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { type Choice, readChoices, startChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import {
  type EmbeddingInput,
  type EmbeddingSchemaContext,
  type OllamaEmbedRequest,
  parseOllamaEmbed,
  parseOllamaEmbeddings,
  parseOpenAIEmbeddings,
} from "../embeddings-schema.js";
import { ApiError, badRequest } from "../errors.js";
import { clientOf, clientSignal } from "../route-helpers.js";

/**
 * The embedding routes:
 *
 *   POST /v1/embeddings   OpenAI: {model?, input, encoding_format?, dimensions?} → {data: [{embedding}], usage}
 *   POST /api/embed       Ollama: {model, input, truncate?, options?, keep_alive?} → {embeddings, prompt_eval_count, …}
 *   POST /api/embeddings  Ollama's older route: {model, prompt} → {embedding}
 *
 * Each input is one engine request of kind "embed" (a prefill-only sequence, batched with
 * generation, its blocks freed as it finishes), started and read through choices.ts like every
 * generation route's choices: admission (queue cap, loading, draining), auth, cancellation when
 * the client goes away, metrics and the request log are the same. The vector is the model's final
 * hidden state pooled as its GGUF says (src/model/pooling.ts) and L2-normalized.
 *
 * Decisions:
 * - Text is tokenized as llama-server tokenizes embedding inputs: BOS/EOS added as the vocabulary
 *   asks, special-token text parsed. OpenAI's token-id inputs are used as they are.
 * - An empty string or list is a 400 on /v1/embeddings (as OpenAI); on /api/embed an absent or empty
 *   `input` answers at once with no vectors, as Ollama does (an empty string inside a list is a 400).
 * - Too long for the context: a 400 on /v1/embeddings; /api/embed cuts the input to the context
 *   (options.num_ctx or the model's) unless `truncate: false`, which makes it a 400, as Ollama does;
 *   /api/embeddings never cuts.
 * - `dimensions` is accepted only equal to the model's embedding length (these models cannot
 *   shorten their vectors): anything else is a 400.
 * - Backends that compute no embeddings (llamacpp, openai) answer 501.
 */

export function registerEmbeddingRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/embeddings", (req, reply) => openaiEmbeddings(ctx, req, reply));
  app.post("/api/embed", (req, reply) => ollamaEmbed(ctx, req, reply, "/api/embed"));
  app.post("/api/embeddings", (req, reply) => ollamaEmbed(ctx, req, reply, "/api/embeddings"));
}

/** The model, when its backend computes embeddings; 501 otherwise. */
function embeddingModel(
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

/** One input's tokens: text as llama-server tokenizes embedding inputs, ids as given. */
function tokensOf(m: LoadedModel, input: EmbeddingInput, param: string): { ids: number[]; text?: string } {
  if ("ids" in input) return { ids: input.ids };
  const ids = m.tokenizer.encode(input.text, { addSpecial: true, parseSpecial: true });
  if (ids.length === 0) throw badRequest(`${param} is empty once tokenized`, param);
  return { ids, text: input.text };
}

/** Starts one embedding request per input and reads every vector, in input order. */
async function embed(
  ctx: ServerContext,
  req: FastifyRequest,
  reply: FastifyReply,
  endpoint: string,
  prompts: { ids: number[]; text?: string; param: string }[],
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
      client: clientOf(req),
      endpoint,
      promptText: p.text,
      fields: { prompt: p.param, maxTokens: p.param },
    },
  }));
  const signal = clientSignal(req, reply);
  // Every input's request listens to the one client signal (up to MAX_EMBEDDING_INPUTS of them).
  setMaxListeners(choices.length + 10, signal);
  const streams = await startChoices(ctx, choices, signal);
  const vectors: (Float32Array | undefined)[] = prompts.map(() => undefined);
  await readChoices(streams, signal, (i, e) => {
    if (e.embedding) vectors[i] = e.embedding;
  });
  if (vectors.some((v) => v === undefined))
    throw new ApiError(500, "an embedding request ended without its vector");
  return vectors as Float32Array[];
}

async function openaiEmbeddings(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/v1/embeddings";
  const { m, sc } = embeddingModel(ctx, endpoint);
  const r = parseOpenAIEmbeddings(req.body, sc);
  const param = (i: number) => (r.inputs.length === 1 ? "input" : `input[${i}]`);
  const prompts = r.inputs.map((input, i) => ({ ...tokensOf(m, input, param(i)), param: param(i) }));
  const vectors = await embed(ctx, req, reply, endpoint, prompts);
  const tokens = prompts.reduce((n, p) => n + p.ids.length, 0);
  return {
    object: "list",
    data: vectors.map((v, index) => ({
      object: "embedding",
      index,
      // base64: the float32 values' little-endian bytes, as OpenAI sends them.
      embedding:
        r.encoding === "base64"
          ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64")
          : [...v],
    })),
    model: r.model,
    usage: { prompt_tokens: tokens, total_tokens: tokens },
  };
}

async function ollamaEmbed(
  ctx: ServerContext,
  req: FastifyRequest,
  reply: FastifyReply,
  endpoint: "/api/embed" | "/api/embeddings",
) {
  const start = performance.now();
  const { m, sc } = embeddingModel(ctx, endpoint);
  const legacy = endpoint === "/api/embeddings";
  const r: OllamaEmbedRequest = legacy ? parseOllamaEmbeddings(req.body, sc) : parseOllamaEmbed(req.body, sc);
  const field = legacy ? "prompt" : "input";
  const prompts = r.inputs.map((text, i) => {
    const param = r.inputs.length === 1 ? field : `${field}[${i}]`;
    let { ids } = tokensOf(m, { text }, param);
    if (ids.length > r.contextLength) {
      if (!r.truncate) {
        throw badRequest(
          `the ${param} has ${ids.length} tokens, more than the context length (${r.contextLength})`,
          param,
          "context_length_exceeded",
        );
      }
      ids = ids.slice(0, r.contextLength);
    }
    return { ids, text, param };
  });
  const vectors = prompts.length > 0 ? await embed(ctx, req, reply, endpoint, prompts) : [];
  if (legacy) return { embedding: vectors[0] ? [...vectors[0]] : [] };
  return {
    model: r.model,
    embeddings: vectors.map((v) => [...v]),
    total_duration: Math.round((performance.now() - start) * 1e6),
    load_duration: 0,
    prompt_eval_count: prompts.reduce((n, p) => n + p.ids.length, 0),
  };
}
