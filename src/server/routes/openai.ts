import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { renderChat } from "../../chat/template.js";
import type { EngineEvent, FinishInfo } from "../../engine/engine.js";
import type { RequestStream } from "../../engine/engine-client.js";
import type { SampleResult } from "../../sampling/sampler.js";
import type { Tokenizer } from "../../tokenizer/index.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { ApiError, badRequest, errorBody, finishError, toApiError } from "../errors.js";
import type { GenerationParams } from "../generation.js";
import {
  type ChatRequest,
  type CommonRequest,
  type CompletionRequest,
  DEFAULT_COMPLETION_MAX_TOKENS,
  parseChatRequest,
  parseCompletionRequest,
} from "../openai-schema.js";
import { clientOf, clientSignal } from "../route-helpers.js";
import { endSSE, sendSSE, startSSE } from "../sse.js";

/**
 * The OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions, so that the
 * official SDKs work unchanged. Each choice (n per prompt, per prompt of a batch) is one engine
 * request, all started at once through ctx.service and read as one merged stream.
 *
 * Where OpenAI leaves room, Spindle does this:
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

// ---------------------------------------------------------------------------------------------
// Shared machinery: one engine request per choice, started together, read as one stream.

interface Choice {
  /** Index in the response's choices. */
  index: number;
  /** Which prompt it answers (usage counts each prompt once). */
  prompt: number;
  params: GenerationParams;
}

/**
 * Starts every choice's engine request. If one cannot start (queue full, context too long…) the ones
 * already started are aborted and drained, and the error is thrown.
 */
async function startAll(
  ctx: ServerContext,
  choices: Choice[],
  signal: AbortSignal,
): Promise<RequestStream[]> {
  const settled = await Promise.allSettled(choices.map((c) => ctx.service.start(c.params, signal)));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (!failed) return settled.map((s) => (s as PromiseFulfilledResult<RequestStream>).value);
  for (const s of settled) {
    if (s.status === "fulfilled") {
      s.value.abort("another choice of the same request could not start");
      // Reading it to the end releases its place in the service's counters.
      s.value.result().catch(() => {});
    }
  }
  throw failed.reason;
}

/**
 * The events of all streams as they come, tagged with the stream's position. Leaving early (break,
 * an error) aborts every stream that has not finished.
 */
async function* merge(streams: RequestStream[]): AsyncGenerator<[number, EngineEvent]> {
  const its = streams.map((s) => s[Symbol.asyncIterator]());
  const pending = new Map<number, Promise<[number, IteratorResult<EngineEvent>]>>();
  const pull = (i: number) =>
    pending.set(
      i,
      its[i]!.next().then((r) => [i, r]),
    );
  for (let i = 0; i < its.length; i++) pull(i);
  try {
    while (pending.size > 0) {
      const [i, r] = await Promise.race(pending.values());
      if (r.done) {
        pending.delete(i);
        continue;
      }
      // Pulled again even after its finish, so the stream's own bookkeeping runs to its end.
      pull(i);
      yield [i, r.value];
    }
  } finally {
    for (const [i, p] of pending) {
      p.catch(() => {});
      streams[i]!.abort("the request ended early");
      its[i]!.return?.()?.catch(() => {});
    }
  }
}

const failed = (f: FinishInfo | undefined) =>
  f !== undefined && (f.reason === "abort" || f.reason === "error");

function clientGone(): ApiError {
  return new ApiError(499, "the client closed the request", "invalid_request_error", null, "client_closed");
}

function samplingFor(req: CommonRequest, sampleIndex: number, engineLogprobs: number) {
  return {
    ...req.sampling,
    seed: req.seed === undefined ? undefined : req.seed + sampleIndex,
    logprobs: engineLogprobs,
  };
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

const finishReason = (f: FinishInfo) => (f.reason === "stop" ? "stop" : "length");

const tokenDecoder = new TextDecoder("utf-8", { ignoreBOM: true });

/** A token as text (control tokens shown, as in the output text; partial UTF-8 as U+FFFD). */
function tokenString(tok: Tokenizer, id: number): string {
  return tokenDecoder.decode(tok.tokenBytes(id, true));
}

/**
 * Runs a whole stream-less request: every choice to its end. Returns each choice's text, tokens,
 * logprobs and finish; throws the error of a choice that was aborted or failed.
 */
async function collect(
  streams: RequestStream[],
  signal: AbortSignal,
): Promise<{ text: string[]; tokens: number[][]; logprobs: SampleResult[][]; finish: FinishInfo[] }> {
  const text = streams.map(() => "");
  const tokens: number[][] = streams.map(() => []);
  const logprobs: SampleResult[][] = streams.map(() => []);
  const finish: (FinishInfo | undefined)[] = streams.map(() => undefined);
  for await (const [i, e] of merge(streams)) {
    text[i] += e.text;
    for (const t of e.tokens) tokens[i]!.push(t);
    if (e.logprobs) logprobs[i]!.push(...e.logprobs);
    if (e.finish) {
      finish[i] = e.finish;
      if (failed(e.finish)) break;
    }
  }
  if (signal.aborted) throw clientGone();
  const bad = finish.find(failed);
  if (bad) throw finishError(bad);
  if (finish.some((f) => f === undefined)) throw new ApiError(500, "a generation ended without finishing");
  return { text, tokens, logprobs, finish: finish as FinishInfo[] };
}

/**
 * Streams a request: waits for the first event (so that an early timeout or failure is still a plain
 * HTTP error), then opens the event stream and hands every event to `onEvent`. A choice aborted or
 * failed midway ends the stream with an error event. `open` runs once, right after the stream opens;
 * `close` once all choices finished normally (before [DONE]).
 */
async function streamEvents(
  ctx: ServerContext,
  reply: FastifyReply,
  streams: RequestStream[],
  signal: AbortSignal,
  hooks: {
    open(): void;
    onEvent(i: number, e: EngineEvent): void;
    close(finishes: FinishInfo[]): void;
  },
): Promise<FastifyReply> {
  const it = merge(streams);
  const finishes: (FinishInfo | undefined)[] = streams.map(() => undefined);
  let first: IteratorResult<[number, EngineEvent]>;
  try {
    first = await it.next();
  } catch (err) {
    await it.return(undefined);
    throw err;
  }
  if (signal.aborted) {
    await it.return(undefined);
    throw clientGone();
  }
  if (!first.done && failed(first.value[1].finish)) {
    await it.return(undefined);
    throw finishError(first.value[1].finish!);
  }
  startSSE(reply);
  try {
    hooks.open();
    let next = first;
    while (!next.done) {
      const [i, e] = next.value;
      if (e.finish) finishes[i] = e.finish;
      if (failed(e.finish)) {
        if (!signal.aborted) sendSSE(reply, errorBody(finishError(e.finish!)));
        break;
      }
      hooks.onEvent(i, e);
      next = await it.next();
    }
    if (finishes.every((f) => f !== undefined && !failed(f))) hooks.close(finishes as FinishInfo[]);
  } catch (err) {
    const e = toApiError(err);
    if (e.status >= 500 && !(err instanceof ApiError)) {
      ctx.log.error({ err }, "error while streaming a response");
    }
    sendSSE(reply, errorBody(e));
  } finally {
    await it.return(undefined);
    endSSE(reply);
  }
  return reply;
}

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
  const streams = await startAll(ctx, choices, signal);
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
        finish_reason: finishReason(out.finish[i]!),
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
          finish_reason: finish ? finishReason(finish) : null,
          ...ids,
        },
      ],
      ...usageNull,
    };
  };
  return streamEvents(ctx, reply, streams, signal, {
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

/** Renders the conversation with the model's template (ChatML without one) and tokenizes it. */
export function chatPrompt(model: LoadedModel, r: Pick<ChatRequest, "messages" | "templateVars">) {
  const tok = model.tokenizer;
  const bosText = tok.bos !== undefined ? tok.tokenText(tok.bos) : "";
  const eosText = tok.eos !== undefined ? tok.tokenText(tok.eos) : "";
  const text = renderChat({
    template: model.chatTemplate,
    messages: r.messages,
    bosToken: bosText,
    eosToken: eosText,
    addGenerationPrompt: true,
    extra: r.templateVars,
  });
  let ids = tok.encode(text, { addSpecial: false, parseSpecial: true });
  // Templates that write {{ bos_token }} themselves get no second one.
  if (tok.addBos && tok.bos !== undefined && !(bosText.length > 0 && text.startsWith(bosText))) {
    ids = [tok.bos, ...ids];
  }
  return { text, ids };
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
  const prompt = chatPrompt(model, r);
  if (prompt.ids.length === 0) throw badRequest("the rendered conversation is empty", "messages");
  const room = model.info.contextLength - prompt.ids.length;
  const maxTokens = r.maxTokens ?? Math.max(1, room);
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
      },
    });
  }
  ctx.service.checkContext(prompt.ids, maxTokens, "messages");

  const signal = clientSignal(req, reply);
  const streams = await startAll(ctx, choices, signal);
  const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
  const created = Math.floor(Date.now() / 1000);
  const head = { id, created, model: r.model, system_fingerprint: null };

  if (!r.stream) {
    const out = await collect(streams, signal);
    return {
      ...head,
      object: "chat.completion",
      choices: choices.map((c, i) => ({
        index: c.index,
        message: { role: "assistant", content: out.text[i], refusal: null },
        logprobs: r.logprobs ? chatLogprobs(tok, out.logprobs[i]!, r.topLogprobs) : null,
        finish_reason: finishReason(out.finish[i]!),
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
        finish_reason: finish ? finishReason(finish) : null,
      },
    ],
    ...usageNull,
  });
  return streamEvents(ctx, reply, streams, signal, {
    open() {
      for (let i = 0; i < choices.length; i++)
        sendSSE(reply, chunk(i, { role: "assistant", content: "" }, undefined));
    },
    onEvent(i, e) {
      const hasLogprobs = r.logprobs && (e.logprobs?.length ?? 0) > 0;
      if (e.text.length === 0 && !hasLogprobs && !e.finish) return;
      const delta = e.text.length > 0 || hasLogprobs ? { content: e.text } : {};
      sendSSE(reply, chunk(i, delta, hasLogprobs ? e.logprobs : undefined, e.finish));
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
