import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ChatMessage } from "../../chat/template.js";
import type { FinishInfo } from "../../protocol/events.js";
import type { SamplingParams } from "../../sampling/params.js";
import { chatPrompt } from "../chat-prompt.js";
import { type Choice, readChoices, startChoices, streamChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { type ApiError, badRequest, errorBody } from "../errors.js";
import { defaultMaxTokens } from "../generation.js";
import { parseModel } from "../openai-schema.js";
import { boolField, clientOf, clientSignal, given, intField, isObject, type Json } from "../route-helpers.js";
import { sendSSE, TYPED_SSE } from "../sse.js";
import { type StructuredOutput, structuredOutput } from "../structured-output.js";

/**
 * OpenAI's Responses API, POST /v1/responses, for text generation, so that clients built on it
 * (the AI SDK's default `openai(...)` provider, OpenAI's SDKs' `responses.create`) work unchanged.
 * Like every generation route it goes through choices.ts and ctx.service (one choice), so
 * admission, auth, cancellation, timeouts, metrics and logs are those of /v1/chat/completions.
 *
 * What Spindle does:
 * - input: a string (one user message) or a list of message items `{role, content}` (an optional
 *   `type: "message"`), content a string or parts `{type: "input_text", text}` (`output_text` in
 *   assistant turns). Other item or part types (images, files, item_reference, function calls…)
 *   are a 400 naming the field. `instructions` is a system message before the input; "developer"
 *   renders as "system". The conversation is rendered with the chat template (chat-prompt.ts)
 *   exactly as /v1/chat/completions renders the same messages.
 * - max_output_tokens: ≥ 1; left out, the room the context leaves after the prompt (as chat).
 *   temperature (0..2) and top_p (0..1]; top_k is taken too, as on the other routes.
 * - store: Spindle keeps no responses. `store: true` is a 400 (`store`), absent or false is
 *   accepted (the AI SDK sends no `store` unless asked); so `previous_response_id` can name no
 *   response and is a 400 naming it, as are `conversation` and `background: true`.
 * - Refused, never ignored (400 naming the field): tools (non-empty), tool_choice other than
 *   "none"/"auto", reasoning, include (non-empty), top_logprobs > 0,
 *   truncation "auto". metadata, user, service_tier, parallel_tool_calls, prompt_cache_key,
 *   safety_identifier are accepted and have no effect.
 * - status: "completed" when generation stopped by itself (end of text or a stop), "incomplete"
 *   with `incomplete_details: {reason: "max_output_tokens"}` when it ran out of tokens.
 * - stream: server-sent events with `event: <type>` lines and a `sequence_number` in each: created,
 *   in_progress, output_item.added, content_part.added, output_text.delta…, output_text.done,
 *   content_part.done, output_item.done, then response.completed or response.incomplete; no
 *   `[DONE]`. An error before the first token is a plain HTTP error; after it, one `error` event
 *   (`{type: "error", code, message, param}`) ends the stream.
 * - usage: input_tokens (the prompt), output_tokens, total_tokens, cached_tokens (prefix-cache
 *   hit), reasoning_tokens 0.
 */

export function registerResponsesRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/responses", (req, reply) => responses(ctx, req, reply));
}

export interface ResponsesRequest {
  model: string;
  messages: ChatMessage[];
  instructions: string | null;
  maxOutputTokens: number | undefined;
  sampling: Partial<SamplingParams>;
  stream: boolean;
  /** text.format json_object / json_schema (structured-output.ts). */
  structured: StructuredOutput | undefined;
  /** text.format as the response echoes it. */
  textFormat: unknown;
}

const ROLES = new Set(["user", "system", "developer", "assistant"]);

function parseInput(body: Json): ChatMessage[] {
  const input = body.input;
  if (!given(input)) throw badRequest("input is required", "input");
  if (typeof input === "string") return [{ role: "user", content: input }];
  if (!Array.isArray(input) || input.length === 0) {
    throw badRequest("input must be a string or a non-empty list of message items", "input");
  }
  return input.map((item, i): ChatMessage => {
    const param = `input[${i}]`;
    if (!isObject(item)) throw badRequest(`${param} must be a message item {role, content}`, param);
    if (given(item.type) && item.type !== "message") {
      throw badRequest(
        `${param} has type ${JSON.stringify(item.type)}: only message items are supported`,
        `${param}.type`,
      );
    }
    const role = item.role;
    if (typeof role !== "string" || !ROLES.has(role)) {
      throw badRequest(
        `${param}.role must be one of user, system, developer, assistant; got ${JSON.stringify(role ?? null)}`,
        `${param}.role`,
      );
    }
    const content = item.content;
    const partType = role === "assistant" ? "output_text" : "input_text";
    let parts: ChatMessage["content"];
    if (typeof content === "string") parts = content;
    else if (Array.isArray(content)) {
      parts = content.map((part, j) => {
        const type = isObject(part) ? part.type : undefined;
        if (type !== partType) {
          throw badRequest(
            `${param}.content[${j}] has type ${JSON.stringify(type ?? null)}: only "${partType}" parts are supported in ${role} messages`,
            `${param}.content[${j}].type`,
          );
        }
        const text = (part as Json).text;
        if (typeof text !== "string") {
          throw badRequest(`${param}.content[${j}].text must be a string`, `${param}.content[${j}].text`);
        }
        return { type: "text" as const, text };
      });
    } else {
      throw badRequest(`${param}.content must be a string or a list of text parts`, `${param}.content`);
    }
    return { role: role === "developer" ? "system" : role, content: parts };
  });
}

function refuse(body: Json, key: string, why: string, harmless: (v: unknown) => boolean = () => false) {
  if (given(body[key]) && !harmless(body[key])) throw badRequest(`${key} is not supported: ${why}`, key);
}

export function parseResponsesRequest(raw: unknown, sc: { modelName: string }): ResponsesRequest {
  if (!isObject(raw)) throw badRequest("the request body must be a JSON object");
  const body = raw;
  const model = parseModel(body, { modelName: sc.modelName, vocabSize: 0 });
  if (body.store === true) {
    throw badRequest(
      "store is not supported: Spindle keeps no responses; send store: false or leave it out",
      "store",
    );
  }
  boolField(body, "store");
  refuse(body, "previous_response_id", "Spindle keeps no responses (store is not supported)");
  refuse(body, "conversation", "Spindle keeps no conversations");
  refuse(body, "background", "responses run in the foreground only", (v) => v === false);
  refuse(body, "tools", "Spindle does not do tool calling", (v) => Array.isArray(v) && v.length === 0);
  refuse(body, "tool_choice", "Spindle does not do tool calling", (v) => v === "none" || v === "auto");
  refuse(body, "reasoning", "Spindle serves no reasoning options");
  refuse(body, "include", "no extra output fields are available", (v) => Array.isArray(v) && v.length === 0);
  refuse(body, "top_logprobs", "logprobs are not available through this API", (v) => v === 0);
  refuse(body, "truncation", "a prompt longer than the context is a 400", (v) => v === "disabled");
  if (given(body.text) && !isObject(body.text)) throw badRequest("text must be an object", "text");
  const structured = structuredOutput(body, "responses");
  const textFormat = structured && isObject(body.text) ? body.text.format : { type: "text" };
  let instructions: string | null = null;
  if (given(body.instructions)) {
    if (typeof body.instructions !== "string")
      throw badRequest("instructions must be a string", "instructions");
    instructions = body.instructions;
  }
  const input = parseInput(body);
  const messages: ChatMessage[] =
    instructions !== null ? [{ role: "system", content: instructions }, ...input] : input;
  const sampling: Partial<SamplingParams> = {};
  if (given(body.temperature)) {
    const t = body.temperature;
    if (typeof t !== "number" || !Number.isFinite(t) || t < 0 || t > 2) {
      throw badRequest("temperature must be a number between 0 and 2", "temperature");
    }
    sampling.temperature = t;
  }
  if (given(body.top_p)) {
    const p = body.top_p;
    if (typeof p !== "number" || !Number.isFinite(p) || p <= 0 || p > 1) {
      throw badRequest("top_p must be a number greater than 0 and at most 1", "top_p");
    }
    sampling.topP = p;
  }
  const topK = intField(body, "top_k", -1);
  if (topK !== undefined) sampling.topK = topK;
  return {
    model,
    messages,
    instructions,
    maxOutputTokens: intField(body, "max_output_tokens", 1),
    sampling,
    stream: boolField(body, "stream") ?? false,
    structured,
    textFormat,
  };
}

async function responses(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/v1/responses";
  const model: LoadedModel = ctx.service.model(endpoint);
  const r = parseResponsesRequest(req.body, { modelName: ctx.opts.modelName });
  const prompt = chatPrompt(model, { messages: r.messages });
  if (prompt.ids.length === 0) throw badRequest("the rendered conversation is empty", "input");
  const maxTokens = r.maxOutputTokens ?? defaultMaxTokens(prompt.ids.length, model.info.contextLength);
  const choice: Choice = {
    index: 0,
    prompt: 0,
    params: {
      prompt: prompt.ids,
      maxTokens,
      sampling: { ...r.sampling, logprobs: 0 },
      stop: [],
      stopAtEog: true,
      priority: 0,
      client: clientOf(req),
      endpoint,
      promptText: prompt.text,
      fields: { prompt: "input", maxTokens: "max_output_tokens" },
      structured: r.structured,
    },
  };

  const signal = clientSignal(req, reply);
  const streams = await startChoices(ctx, [choice], signal);
  const id = `resp_${randomUUID().replaceAll("-", "")}`;
  const msgId = `msg_${randomUUID().replaceAll("-", "")}`;
  const createdAt = Math.floor(Date.now() / 1000);

  const usage = (f: FinishInfo) => ({
    input_tokens: prompt.ids.length,
    input_tokens_details: { cached_tokens: f.cachedTokens },
    output_tokens: f.completionTokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: prompt.ids.length + f.completionTokens,
  });
  const status = (f: FinishInfo) => (f.reason === "stop" ? "completed" : "incomplete");
  const part = (text: string) => ({ type: "output_text", text, annotations: [] as never[] });
  const message = (text: string, st: string, f?: FinishInfo) => ({
    type: "message",
    id: msgId,
    status: st,
    role: "assistant",
    content: f ? [part(text)] : [],
  });
  const responseObject = (text: string, f: FinishInfo | undefined) => ({
    id,
    object: "response",
    created_at: createdAt,
    status: f ? status(f) : "in_progress",
    error: null,
    incomplete_details: f && status(f) === "incomplete" ? { reason: "max_output_tokens" } : null,
    instructions: r.instructions,
    max_output_tokens: r.maxOutputTokens ?? null,
    model: r.model,
    output: f ? [message(text, status(f), f)] : [],
    parallel_tool_calls: false,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    store: false,
    temperature: r.sampling.temperature ?? null,
    text: { format: r.textFormat },
    tool_choice: "none",
    tools: [],
    top_p: r.sampling.topP ?? null,
    truncation: "disabled",
    usage: f ? usage(f) : null,
    metadata: {},
  });

  if (!r.stream) {
    let text = "";
    const [finish] = await readChoices(streams, signal, (_i, e) => {
      text += e.text;
    });
    return responseObject(text, finish!);
  }

  let seq = 0;
  let text = "";
  const send = (type: string, fields: Json) => sendSSE(reply, { type, sequence_number: seq++, ...fields });
  const at = { item_id: msgId, output_index: 0, content_index: 0 };
  return streamChoices(ctx, reply, streams, signal, {
    framing: TYPED_SSE,
    doneMarker: false,
    errorEvent: (e: ApiError) => {
      const { error } = errorBody(e);
      return {
        type: "error",
        sequence_number: seq++,
        code: error.code ?? error.type,
        message: error.message,
        param: error.param,
      };
    },
    open() {
      send("response.created", { response: responseObject("", undefined) });
      send("response.in_progress", { response: responseObject("", undefined) });
      send("response.output_item.added", { output_index: 0, item: message("", "in_progress") });
      send("response.content_part.added", { ...at, part: part("") });
    },
    onEvent(_i, e) {
      if (e.text.length === 0) return;
      text += e.text;
      send("response.output_text.delta", { ...at, delta: e.text, logprobs: [] });
    },
    close([f]) {
      send("response.output_text.done", { ...at, text, logprobs: [] });
      send("response.content_part.done", { ...at, part: part(text) });
      send("response.output_item.done", { output_index: 0, item: message(text, status(f!), f) });
      send(status(f!) === "completed" ? "response.completed" : "response.incomplete", {
        response: responseObject(text, f),
      });
    },
  });
}
