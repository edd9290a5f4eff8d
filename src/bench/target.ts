import { SpindleError } from "../errors.js";
import { authHeaders, httpErrorReason, joinUrl } from "./client.js";

/**
 * What the benchmark learns about a target before it starts: the model to
 * ask for (first of GET /v1/models unless given) and whether it can count
 * tokens (POST /tokenize, as Spindle and vLLM serve it, or llama-server's
 * `{content}` form), so prompts can be built to exact token lengths.
 */

export class BenchTargetError extends SpindleError {}

const TIMEOUT_MS = 30_000;

async function getJson(url: string, apiKey: string | undefined, init: RequestInit = {}): Promise<unknown> {
  const r = await fetch(url, {
    ...init,
    headers: { ...authHeaders(apiKey), ...(init.headers as Record<string, string> | undefined) },
    signal: init.signal ?? AbortSignal.timeout(TIMEOUT_MS),
  });
  const text = await r.text();
  if (!r.ok) throw new BenchTargetError(httpErrorReason(r.status, text).detail);
  return JSON.parse(text) as unknown;
}

/** The id of the first model of GET /v1/models. */
export async function firstModel(baseUrl: string, apiKey: string | undefined): Promise<string> {
  let j: unknown;
  try {
    j = await getJson(joinUrl(baseUrl, "/v1/models"), apiKey);
  } catch (err) {
    throw new BenchTargetError(
      `cannot list the models of ${baseUrl} (GET /v1/models: ${(err as Error).message}); pass --model`,
    );
  }
  const data = (j as { data?: Array<{ id?: unknown }> }).data;
  const id = Array.isArray(data) ? data.find((m) => typeof m?.id === "string")?.id : undefined;
  if (typeof id !== "string") throw new BenchTargetError(`${baseUrl}/v1/models lists no model; pass --model`);
  return id;
}

/** Counts the tokens of a text (without special tokens). */
export type TokenCounter = (text: string) => Promise<number>;

/**
 * A token counter over the target's /tokenize, or undefined when it has none. Tries the
 * vLLM/Spindle request shape `{model, prompt, add_special_tokens: false}`, then llama-server's
 * `{content}`.
 */
export async function detectTokenizer(
  baseUrl: string,
  model: string,
  apiKey: string | undefined,
): Promise<TokenCounter | undefined> {
  const url = joinUrl(baseUrl, "/tokenize");
  const shapes: Array<(text: string) => Record<string, unknown>> = [
    (text) => ({ model, prompt: text, add_special_tokens: false }),
    (text) => ({ content: text, add_special: false }),
  ];
  const count = async (shape: (text: string) => Record<string, unknown>, text: string) => {
    const j = (await getJson(url, apiKey, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(shape(text)),
    })) as { tokens?: unknown; count?: unknown };
    if (Array.isArray(j.tokens)) return j.tokens.length;
    if (typeof j.count === "number") return j.count;
    throw new BenchTargetError("/tokenize answered without tokens");
  };
  for (const shape of shapes) {
    try {
      const n = await count(shape, "hello world");
      if (n > 0) return (text) => count(shape, text);
    } catch {
      // try the next shape
    }
  }
  return undefined;
}
