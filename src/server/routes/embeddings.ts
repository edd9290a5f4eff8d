import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ServerContext } from "../context.js";
import { base64Of, embeddingModel, embeddingPrompt, embedPrompts } from "../embeddings.js";
import {
  type OllamaEmbedRequest,
  parseOllamaEmbed,
  parseOllamaEmbeddings,
  parseOpenAIEmbeddings,
} from "../embeddings-schema.js";
import { badRequest } from "../errors.js";
import { clientOf, clientSignal } from "../route-helpers.js";

/**
 * The embedding routes:
 *
 *   POST /v1/embeddings   OpenAI: {model?, input, encoding_format?, dimensions?} → {data: [{embedding}], usage}
 *   POST /api/embed       Ollama: {model, input, truncate?, options?, keep_alive?} → {embeddings, prompt_eval_count, …}
 *   POST /api/embeddings  Ollama's older route: {model, prompt} → {embedding}
 *
 * Each input is one engine request of kind "embed" (a prefill-only sequence, batched with
 * generation, its blocks freed as it finishes), started and read through embeddings.ts (choices.ts,
 * like every generation route's choices): admission (queue cap, loading, draining), auth, cancellation when
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

const who = (req: FastifyRequest, reply: FastifyReply, endpoint: string) => ({
  client: clientOf(req),
  endpoint,
  signal: clientSignal(req, reply),
});

async function openaiEmbeddings(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/v1/embeddings";
  const { m, sc } = embeddingModel(ctx, endpoint);
  const r = parseOpenAIEmbeddings(req.body, sc);
  const param = (i: number) => (r.inputs.length === 1 ? "input" : `input[${i}]`);
  const prompts = r.inputs.map((input, i) => embeddingPrompt(m, input, param(i)));
  const vectors = await embedPrompts(ctx, who(req, reply, endpoint), prompts);
  const tokens = prompts.reduce((n, p) => n + p.ids.length, 0);
  return {
    object: "list",
    data: vectors.map((v, index) => ({
      object: "embedding",
      index,
      // base64: the float32 values' little-endian bytes, as OpenAI sends them.
      embedding: r.encoding === "base64" ? base64Of(v) : [...v],
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
    let { ids } = embeddingPrompt(m, { text }, param);
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
  const vectors = prompts.length > 0 ? await embedPrompts(ctx, who(req, reply, endpoint), prompts) : [];
  if (legacy) return { embedding: vectors[0] ? [...vectors[0]] : [] };
  return {
    model: r.model,
    embeddings: vectors.map((v) => [...v]),
    total_duration: Math.round((performance.now() - start) * 1e6),
    load_duration: 0,
    prompt_eval_count: prompts.reduce((n, p) => n + p.ids.length, 0),
  };
}
