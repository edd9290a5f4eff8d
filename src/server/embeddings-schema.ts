import { badRequest } from "./errors.js";
import { parseOllamaModel } from "./ollama-schema.js";
import { checkIds, parseModel } from "./openai-schema.js";
import { given, intField, isObject, type Json } from "./route-helpers.js";

/**
 * Request validation for the embedding routes (routes/embeddings.ts): OpenAI's /v1/embeddings and
 * Ollama's /api/embed and /api/embeddings. Every message names the field; errors are ApiErrors,
 * which go out in the route's protocol's shape (errors.ts).
 */

/** OpenAI's limit on inputs per request. */
export const MAX_EMBEDDING_INPUTS = 2048;

export interface EmbeddingSchemaContext {
  modelName: string;
  vocabSize: number;
  contextLength: number;
  /** The length of the vectors the model computes (the only `dimensions` accepted). */
  embeddingLength: number;
}

/** One input: text to tokenize, or token ids as they are. */
export type EmbeddingInput = { text: string } | { ids: number[] };

export interface OpenAIEmbeddingRequest {
  model: string;
  inputs: EmbeddingInput[];
  encoding: "float" | "base64";
}

export interface OllamaEmbedRequest {
  model: string;
  /** Empty when the request has nothing to embed (Ollama then answers at once, with no vectors). */
  inputs: string[];
  /** Cut inputs longer than the context (Ollama's default) instead of refusing them. */
  truncate: boolean;
  /** The context the inputs must fit: options.num_ctx or the model's. */
  contextLength: number;
}

function requireObject(raw: unknown): Json {
  if (!isObject(raw)) throw badRequest("the request body must be a JSON object");
  return raw;
}

/** `dimensions`: only the model's own length, since these models cannot shorten their vectors. */
function checkDimensions(body: Json, sc: EmbeddingSchemaContext): void {
  const d = intField(body, "dimensions", 1);
  if (d !== undefined && d !== sc.embeddingLength) {
    throw badRequest(
      `dimensions ${d} is not supported: this model's embeddings have ${sc.embeddingLength} dimensions (leave it out or give ${sc.embeddingLength})`,
      "dimensions",
    );
  }
}

const isIds = (v: unknown): v is number[] =>
  Array.isArray(v) && v.length > 0 && v.every((t) => typeof t === "number");

/** input: a string, a list of strings, a list of token ids, or a list of lists of token ids; none empty. */
function parseOpenAIInputs(body: Json, vocabSize: number): EmbeddingInput[] {
  const v = body.input;
  const shape =
    "input must be a string, a list of strings, a list of token ids, or a list of lists of token ids";
  if (!given(v)) throw badRequest("input is required", "input");
  if (typeof v === "string") {
    if (v.length === 0) throw badRequest("input must not be an empty string", "input");
    return [{ text: v }];
  }
  if (!Array.isArray(v)) throw badRequest(shape, "input");
  if (v.length === 0) throw badRequest("input must not be an empty list", "input");
  if (v.length > MAX_EMBEDDING_INPUTS)
    throw badRequest(`input takes at most ${MAX_EMBEDDING_INPUTS} items; got ${v.length}`, "input");
  if (isIds(v)) return [{ ids: checkIds(v, vocabSize, "input") }];
  return v.map((x, i): EmbeddingInput => {
    if (typeof x === "string") {
      if (x.length === 0) throw badRequest(`input[${i}] must not be an empty string`, `input[${i}]`);
      return { text: x };
    }
    if (Array.isArray(x) && x.length === 0)
      throw badRequest(`input[${i}] must not be an empty list`, `input[${i}]`);
    if (isIds(x)) return { ids: checkIds(x, vocabSize, `input[${i}]`) };
    throw badRequest(shape, `input[${i}]`);
  });
}

/** POST /v1/embeddings: {model?, input, encoding_format?, dimensions?, user?}. */
export function parseOpenAIEmbeddings(raw: unknown, sc: EmbeddingSchemaContext): OpenAIEmbeddingRequest {
  const body = requireObject(raw);
  const model = parseModel(body, sc);
  const inputs = parseOpenAIInputs(body, sc.vocabSize);
  const f = body.encoding_format;
  if (given(f) && f !== "float" && f !== "base64")
    throw badRequest('encoding_format must be "float" or "base64"', "encoding_format");
  checkDimensions(body, sc);
  if (given(body.user) && typeof body.user !== "string") throw badRequest("user must be a string", "user");
  return { model, inputs, encoding: f === "base64" ? "base64" : "float" };
}

/** keep_alive: accepted and ignored (the one model stays loaded), but it must be a duration. */
function checkKeepAlive(body: Json): void {
  const ka = body.keep_alive;
  if (given(ka) && typeof ka !== "string" && typeof ka !== "number")
    throw badRequest("keep_alive must be a duration string or a number of seconds", "keep_alive");
}

/** options: an object whose num_ctx (if any) bounds the input; other options do not apply and are ignored. */
function contextOf(body: Json, sc: EmbeddingSchemaContext): number {
  const o = body.options ?? {};
  if (!isObject(o)) throw badRequest("options must be an object", "options");
  return intField(o, "num_ctx", 1, sc.contextLength, "options.num_ctx") ?? sc.contextLength;
}

/** POST /api/embed: {model, input (string or list of strings), truncate?, dimensions?, options?, keep_alive?}. */
export function parseOllamaEmbed(raw: unknown, sc: EmbeddingSchemaContext): OllamaEmbedRequest {
  const body = requireObject(raw);
  const model = parseOllamaModel(body, sc.modelName);
  checkKeepAlive(body);
  const v = body.input;
  let inputs: string[];
  if (!given(v) || v === "") inputs = [];
  else if (typeof v === "string") inputs = [v];
  else if (Array.isArray(v) && v.every((x) => typeof x === "string")) {
    if (v.length > MAX_EMBEDDING_INPUTS)
      throw badRequest(`input takes at most ${MAX_EMBEDDING_INPUTS} items; got ${v.length}`, "input");
    const empty = v.findIndex((x) => x.length === 0);
    if (empty >= 0) throw badRequest(`input[${empty}] is an empty string`, "input");
    inputs = v;
  } else throw badRequest("input must be a string or a list of strings", "input");
  const t = body.truncate;
  if (given(t) && typeof t !== "boolean") throw badRequest("truncate must be true or false", "truncate");
  checkDimensions(body, sc);
  return { model, inputs, truncate: t !== false, contextLength: contextOf(body, sc) };
}

/** POST /api/embeddings (Ollama's older route): {model, prompt, options?, keep_alive?}; never truncates. */
export function parseOllamaEmbeddings(raw: unknown, sc: EmbeddingSchemaContext): OllamaEmbedRequest {
  const body = requireObject(raw);
  const model = parseOllamaModel(body, sc.modelName);
  checkKeepAlive(body);
  const p = body.prompt;
  if (given(p) && typeof p !== "string") throw badRequest("prompt must be a string", "prompt");
  return { model, inputs: p ? [p as string] : [], truncate: false, contextLength: contextOf(body, sc) };
}
