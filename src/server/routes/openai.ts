import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { RequestStream } from "../../protocol/event-stream.js";
import type { FinishInfo } from "../../protocol/events.js";
import { stopOrLength } from "../../protocol/events.js";
import type { SampleResult } from "../../sampling/sampler.js";
import type { Tokenizer } from "../../tokenizer/index.js";
import { ChatChoiceOutput } from "../chat-output.js";
import { chatSetup } from "../chat-request.js";
import { type Choice, readChoices, startChoices, streamChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { ApiError, badRequest, errorBody } from "../errors.js";
import { defaultMaxTokens } from "../generation.js";
import {
  type ChatRequest,
  type CompletionRequest,
  DEFAULT_COMPLETION_MAX_TOKENS,
  parseChatRequest,
  parseCompletionRequest,
  samplingFor,
} from "../openai-schema.js";
import { clientOf, clientSignal, tokenString } from "../route-helpers.js";
import { sendSSE } from "../sse.js";

/**
 * The OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions, so that the
 * official SDKs work unchanged. Each choice (n per prompt, per prompt of a batch) is one engine
 * request, all started at once through ctx.service and read as one merged stream.
 *
 * Where OpenAI leaves room, Spindle does this:
 * - model: may be left out (as vLLM and llama-server allow): the response names the served model.
 *   Any other name is a 404 `model_not_found`.
 * - max_tokens: /v1/completions defaults to 16 (OpenAI's default); chat defaults to whatever room
 *   the context leaves after the prompt. A prompt plus max_tokens beyond the context is a 400.
 * - n: 1..16 per prompt, and the request's choices in all must fit the queue (--max-queue).
 *   With a seed, choice i (per prompt) samples with seed + i: the choices differ and are reproducible.
 * - echo: supported without logprobs (the prompt text, or the decoded ids, goes before the
 *   completion; streamed as its own first chunk); echo with logprobs is a 400.
 * - Timeouts (--queue-timeout-ms, --request-timeout-ms) and shutdown abort the engine request. Before
 *   anything was sent (always for non-streaming requests, whatever was generated so far): 504
 *   `{type: "server_error", code: "timeout"}` (503 `shutting_down` for a shutdown). Once a stream has
 *   begun: one `data: {"error": {...}}` event, then `data: [DONE]`. An engine error is the same
 *   with 500. A client that disconnects aborts its engine requests at once.
 * - usage: prompt_tokens counts each prompt once (not once per choice); completion_tokens sums every
 *   choice; cached_tokens is, per prompt, its first choice's prefix-cache hit.
 * - logprobs are the raw model distribution's (before temperature and penalties; see sampler.ts).
 *   Completions: top_logprobs holds the `logprobs` most likely tokens plus the sampled one (OpenAI's
 *   "up to logprobs+1"); tokens that are partial UTF-8 read as U+FFFD in token strings.
 * - Roles: "developer" is rendered as "system" (chat templates rarely know it).
 * - Structured output (response_format, vLLM's structured_outputs and guided_*, llama-server's
 *   json_schema and grammar) is read by structured-output.ts and enforced by the engine; every choice
 *   of the request is held to it.
 * - vLLM's extensions on /v1/completions: `return_token_ids` adds `token_ids` to each choice (all of
 *   them; streamed: the chunk's, with a chunk for every step that produced tokens even when its text is
 *   held back) and `prompt_token_ids` (streamed: on each choice's first chunk); the ids are the
 *   completion's only (echo or not), without the end-of-generation token. `return_tokens_as_token_ids`
 *   names logprob tokens and top_logprobs keys "token_id:N".
 */

const CREATED = Math.floor(Date.now() / 1000);

export function registerOpenAIRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const modelObject = () => ({
    id: ctx.opts.modelName,
    object: "model" as const,
    created: CREATED,
    owned_by: "spindle",
    max_model_len: ctx.model?.info.contextLength ?? null,
  });
  app.get("/v1/models", async () => ({ object: "list", data: [modelObject()] }));
  app.get("/v1/models/*", async (req) => {
    const id = decodeURIComponent((req.params as { "*": string })["*"]);
    if (id !== ctx.opts.modelName) {
      throw new ApiError(
        404,
        `the model \`${id}\` does not exist`,
        "not_found_error",
        "model",
        "model_not_found",
      );
    }
    return modelObject();
  });
  app.post("/v1/completions", (req, reply) => completions(ctx, req, reply));
  app.post("/v1/chat/completions", (req, reply) => chatCompletions(ctx, req, reply));
}

/** Each choice's text, tokens and logprobs, gathered for a whole (not streamed) response. */
async function collect(streams: RequestStream[], signal: AbortSignal) {
  const text = streams.map(() => "");
  const tokens: number[][] = streams.map(() => []);
  const logprobs: SampleResult[][] = streams.map(() => []);
  const finish = await readChoices(streams, signal, (i, e) => {
    text[i] += e.text;
    for (const t of e.tokens) tokens[i]!.push(t);
    if (e.logprobs) logprobs[i]!.push(...e.logprobs);
  });
  return { text, tokens, logprobs, finish };
}

function checkChoiceCount(ctx: ServerContext, total: number): void {
  if (total > ctx.opts.maxQueue) {
    throw badRequest(
      `this request asks for ${total} choices but the server queues at most ${ctx.opts.maxQueue} requests`,
      "n",
    );
  }
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

function usageOf(choices: Choice[], finishes: (FinishInfo | undefined)[]): Usage {
  let prompt = 0;
  let completion = 0;
  let cached = 0;
  const seen = new Set<number>();
  choices.forEach((c, i) => {
    const f = finishes[i];
    completion += f?.completionTokens ?? 0;
    if (!seen.has(c.prompt)) {
      seen.add(c.prompt);
      prompt += c.params.prompt.length;
      cached += f?.cachedTokens ?? 0;
    }
  });
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: cached },
  };
}

const tokenDecoder = new TextDecoder("utf-8", { ignoreBOM: true });

// ---------------------------------------------------------------------------------------------
// /v1/completions

interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

/**
 * Completions logprobs for some tokens; `offset` is the text offset of the first one (advanced).
 * `asIds` (vLLM's return_tokens_as_token_ids) names tokens "token_id:N" instead of their text; the
 * offsets still count text.
 */
function completionLogprobs(
  tok: Tokenizer,
  samples: SampleResult[],
  k: number,
  offset: { at: number },
  asIds = false,
): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  const name = (id: number) => (asIds ? `token_id:${id}` : tokenString(tok, id));
  for (const s of samples) {
    const str = name(s.token);
    out.tokens.push(str);
    out.token_logprobs.push(s.logprob);
    const top: Record<string, number> = {};
    for (const t of s.topLogprobs.slice(0, k)) {
      const key = name(t.token);
      if (!(key in top)) top[key] = t.logprob;
    }
    if (!(str in top)) top[str] = s.logprob;
    out.top_logprobs.push(top);
    out.text_offset.push(offset.at);
    offset.at += asIds ? tokenString(tok, s.token).length : str.length;
  }
  return out;
}

async function completions(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/v1/completions";
  const model: LoadedModel = ctx.service.model(endpoint);
  const tok = model.tokenizer;
  const r: CompletionRequest = parseCompletionRequest(req.body, {
    modelName: ctx.opts.modelName,
    vocabSize: model.info.vocabSize,
  });
  checkChoiceCount(ctx, r.prompts.length * r.n);
  const maxTokens = r.maxTokens ?? DEFAULT_COMPLETION_MAX_TOKENS;
  const wantLogprobs = r.logprobs !== undefined;
  const engineLogprobs = wantLogprobs ? Math.max(1, r.logprobs!) : 0;
  const prompts = r.prompts.map((p, i) => {
    const ids = typeof p === "string" ? tok.encode(p, { addSpecial: true, parseSpecial: false }) : p;
    if (ids.length === 0) {
      throw badRequest(`prompt${r.prompts.length > 1 ? `[${i}]` : ""} is empty`, "prompt");
    }
    return { ids, text: typeof p === "string" ? p : undefined };
  });
  const choices: Choice[] = [];
  prompts.forEach((p, pi) => {
    for (let s = 0; s < r.n; s++) {
      choices.push({
        index: choices.length,
        prompt: pi,
        params: {
          prompt: p.ids,
          maxTokens,
          sampling: samplingFor(r, s, engineLogprobs),
          stop: r.stop,
          stopAtEog: r.stopAtEog,
          priority: r.priority,
          client: clientOf(req),
          endpoint,
          promptText: p.text,
          structured: r.structured,
        },
      });
    }
  });
  const echoText = (c: Choice) => {
    if (!r.echo) return "";
    const p = prompts[c.prompt]!;
    return p.text ?? tok.decode(p.ids, { skipSpecial: true });
  };

  const signal = clientSignal(req, reply);
  const streams = await startChoices(ctx, choices, signal);
  const id = `cmpl-${randomUUID().replaceAll("-", "")}`;
  const created = Math.floor(Date.now() / 1000);
  const head = { id, object: "text_completion" as const, created, model: r.model };

  if (!r.stream) {
    const out = await collect(streams, signal);
    return {
      ...head,
      choices: choices.map((c, i) => ({
        index: c.index,
        text: echoText(c) + out.text[i],
        logprobs: wantLogprobs
          ? completionLogprobs(tok, out.logprobs[i]!, r.logprobs!, { at: 0 }, r.tokensAsIds)
          : null,
        finish_reason: stopOrLength(out.finish[i]!),
        ...(r.returnTokenIds ? { prompt_token_ids: prompts[c.prompt]!.ids, token_ids: out.tokens[i] } : {}),
      })),
      usage: usageOf(choices, out.finish),
    };
  }

  const offsets = choices.map(() => ({ at: 0 }));
  // return_token_ids: the prompt's ids go with each choice's first chunk (as vLLM does).
  const promptSent = choices.map(() => false);
  const usageNull = r.includeUsage ? { usage: null } : {};
  const chunk = (
    i: number,
    text: string,
    samples: SampleResult[] | undefined,
    finish: FinishInfo | undefined,
    tokens: number[] = [],
  ) => {
    let ids = {};
    if (r.returnTokenIds) {
      const prompt = promptSent[i] ? {} : { prompt_token_ids: prompts[choices[i]!.prompt]!.ids };
      promptSent[i] = true;
      ids = { ...prompt, token_ids: tokens };
    }
    return {
      ...head,
      choices: [
        {
          index: choices[i]!.index,
          text,
          logprobs: wantLogprobs
            ? completionLogprobs(tok, samples ?? [], r.logprobs!, offsets[i]!, r.tokensAsIds)
            : null,
          finish_reason: finish ? stopOrLength(finish) : null,
          ...ids,
        },
      ],
      ...usageNull,
    };
  };
  return streamChoices(ctx, reply, streams, signal, {
    errorEvent: errorBody,
    open() {
      if (!r.echo) return;
      for (const [i, c] of choices.entries()) sendSSE(reply, chunk(i, echoText(c), [], undefined));
    },
    onEvent(i, e) {
      const hasLogprobs = wantLogprobs && (e.logprobs?.length ?? 0) > 0;
      // With return_token_ids every event that has tokens is a chunk, even when its text is held back.
      const hasIds = r.returnTokenIds && e.tokens.length > 0;
      if (e.text.length === 0 && !hasLogprobs && !hasIds && !e.finish) return;
      sendSSE(reply, chunk(i, e.text, e.logprobs, e.finish, e.tokens));
    },
    close(finishes) {
      if (r.includeUsage) sendSSE(reply, { ...head, choices: [], usage: usageOf(choices, finishes) });
    },
  });
}

// ---------------------------------------------------------------------------------------------
// /v1/chat/completions

interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

function chatLogprobs(tok: Tokenizer, samples: SampleResult[], k: number) {
  const entry = (id: number, logprob: number): ChatTokenLogprob => {
    const bytes = tok.tokenBytes(id, true);
    return { token: tokenDecoder.decode(bytes), logprob, bytes: Array.from(bytes) };
  };
  return {
    content: samples.map((s) => ({
      ...entry(s.token, s.logprob),
      top_logprobs: s.topLogprobs.slice(0, k).map((t) => entry(t.token, t.logprob)),
    })),
    refusal: null,
  };
}

async function chatCompletions(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/v1/chat/completions";
  const model: LoadedModel = ctx.service.model(endpoint);
  const tok = model.tokenizer;
  const r: ChatRequest = parseChatRequest(req.body, {
    modelName: ctx.opts.modelName,
    vocabSize: model.info.vocabSize,
  });
  checkChoiceCount(ctx, r.n);
  // The prompt with the tools, how replies are read, the tool grammar or structured output.
  const { prompt, mode, structured } = chatSetup(model, r, r.structured);
  const maxTokens = r.maxTokens ?? defaultMaxTokens(prompt.ids.length, model.info.contextLength);
  const engineLogprobs = r.logprobs ? Math.max(1, r.topLogprobs) : 0;
  const choices: Choice[] = [];
  for (let s = 0; s < r.n; s++) {
    choices.push({
      index: s,
      prompt: 0,
      params: {
        prompt: prompt.ids,
        maxTokens,
        sampling: samplingFor(r, s, engineLogprobs),
        stop: r.stop,
        stopAtEog: r.stopAtEog,
        priority: r.priority,
        client: clientOf(req),
        endpoint,
        promptText: prompt.text,
        fields: { prompt: "messages", maxTokens: "max_tokens" },
        structured,
      },
    });
  }

  const signal = clientSignal(req, reply);
  const streams = await startChoices(ctx, choices, signal);
  const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
  const created = Math.floor(Date.now() / 1000);
  const head = { id, created, model: r.model, system_fingerprint: null };

  const outputs = choices.map(() => new ChatChoiceOutput(mode));

  if (!r.stream) {
    const out = await collect(streams, signal);
    return {
      ...head,
      object: "chat.completion",
      choices: choices.map((c, i) => ({
        index: c.index,
        message: outputs[i]!.message(out.text[i]),
        logprobs: r.logprobs ? chatLogprobs(tok, out.logprobs[i]!, r.topLogprobs) : null,
        finish_reason: outputs[i]!.finishReason(out.finish[i]!),
      })),
      usage: usageOf(choices, out.finish),
    };
  }

  const usageNull = r.includeUsage ? { usage: null } : {};
  const chunk = (
    i: number,
    delta: Record<string, unknown>,
    samples: SampleResult[] | undefined,
    finish?: FinishInfo,
  ) => ({
    ...head,
    object: "chat.completion.chunk",
    choices: [
      {
        index: choices[i]!.index,
        delta,
        logprobs: r.logprobs && samples ? chatLogprobs(tok, samples, r.topLogprobs) : null,
        finish_reason: finish ? outputs[i]!.finishReason(finish) : null,
      },
    ],
    ...usageNull,
  });
  return streamChoices(ctx, reply, streams, signal, {
    errorEvent: errorBody,
    open() {
      for (let i = 0; i < choices.length; i++)
        sendSSE(reply, chunk(i, { role: "assistant", content: "" }, undefined));
    },
    onEvent(i, e) {
      const hasLogprobs = r.logprobs && (e.logprobs?.length ?? 0) > 0;
      const deltas = outputs[i]!.deltas(e.text, e.finish !== undefined);
      // Logprobs go with the first chunk of the event, the finish with its last.
      if (deltas.length === 0 && (hasLogprobs || e.finish)) deltas.push(hasLogprobs ? { content: "" } : {});
      deltas.forEach((delta, k) => {
        const samples = k === 0 && hasLogprobs ? e.logprobs : undefined;
        sendSSE(reply, chunk(i, delta, samples, k === deltas.length - 1 ? e.finish : undefined));
      });
    },
    close(finishes) {
      if (r.includeUsage) {
        sendSSE(reply, {
          ...head,
          object: "chat.completion.chunk",
          choices: [],
          usage: usageOf(choices, finishes),
        });
      }
    },
  });
}
