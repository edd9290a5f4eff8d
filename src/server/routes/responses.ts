import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ChatMessage } from "../../chat/template.js";
import type { FinishInfo } from "../../protocol/events.js";
import type { SamplingParams } from "../../sampling/params.js";
import { ChatChoiceOutput, type OpenAIToolCall } from "../chat-output.js";
import { chatSetup } from "../chat-request.js";
import { type Choice, readChoices, startChoices, streamChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { type ApiError, badRequest, errorBody } from "../errors.js";
import { defaultMaxTokens } from "../generation.js";
import { parseModel } from "../openai-schema.js";
import { parseResponsesTools, responsesToolOutput } from "../responses-tools.js";
import { boolField, clientOf, clientSignal, given, intField, isObject, type Json } from "../route-helpers.js";
import { sendSSE, TYPED_SSE } from "../sse.js";
import { type StructuredOutput, structuredOutput } from "../structured-output.js";
import type { ToolRequest } from "../tool-request.js";

/**
 * OpenAI's Responses API, POST /v1/responses, for text generation, so that clients built on it
 * (the AI SDK's default `openai(...)` provider, OpenAI's SDKs' `responses.create`) work unchanged.
 * Like every generation route it goes through choices.ts and ctx.service (one choice), so
 * admission, auth, cancellation, timeouts, metrics and logs are those of /v1/chat/completions.
 *
 * What Spindle does:
 * - input: a string (one user message) or a list of message items `{role, content}` (an optional
 *   `type: "message"`), content a string or parts `{type: "input_text", text}` (`output_text` in
 *   assistant turns), and `function_call` `{call_id, name, arguments}` / `function_call_output`
 *   `{call_id, output}` items, rendered as an assistant turn's tool_calls (consecutive calls join the
 *   assistant turn before them) and a `tool` message. Other item or part types (images, files,
 *   item_reference…) are a 400 naming the field. `instructions` is a system message before the input; "developer"
 *   renders as "system". The conversation is rendered with the chat template (chat-prompt.ts)
 *   exactly as /v1/chat/completions renders the same messages.
 * - max_output_tokens: ≥ 1; left out, the room the context leaves after the prompt (as chat).
 *   temperature (0..2) and top_p (0..1]; top_k is taken too, as on the other routes.
 * - store: Spindle keeps no responses. `store: true` is a 400 (`store`), absent or false is
 *   accepted (the AI SDK sends no `store` unless asked); so `previous_response_id` can name no
 *   response and is a 400 naming it, as are `conversation` and `background: true`.
 * - tools: function tools `{type: "function", name, description, parameters, strict}`, tool_choice
 *   ("none", "auto", "required", `{type: "function", name}`) and parallel_tool_calls, read and
 *   enforced as on /v1/chat/completions (responses-tools.ts; errors name `tools[i].name`,
 *   `tool_choice.name`…); a tool grammar with text.format is a 400. Calls become `function_call`
 *   output items `{id: "fc_…", call_id, name, arguments, status}` after any text's message item;
 *   streamed, each is output_item.added (arguments ""), function_call_arguments.delta…,
 *   function_call_arguments.done, output_item.done. Thinking stays in the text (no reasoning items).
 * - Refused, never ignored (400 naming the field): hosted tools (web_search…), reasoning, include
 *   (non-empty), top_logprobs > 0, truncation "auto". metadata, user, service_tier,
 *   prompt_cache_key, safety_identifier are accepted and have no effect.
 * - status: "completed" when generation stopped by itself (end of text or a stop), "incomplete"
 *   with `incomplete_details: {reason: "max_output_tokens"}` when it ran out of tokens.
 * - stream: server-sent events with `event: <type>` lines and a `sequence_number` in each: created,
 *   in_progress, (for text) output_item.added, content_part.added, output_text.delta…, output_text.done,
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
  /** tools, tool_choice, parallel_tool_calls in the chat form (responses-tools.ts). */
  tools: ToolRequest | undefined;
  /** tools as the response echoes them (the flat form given). */
  toolsEcho: unknown[];
}

const ROLES = new Set(["user", "system", "developer", "assistant"]);

function parseInput(body: Json): ChatMessage[] {
  const input = body.input;
  if (!given(input)) throw badRequest("input is required", "input");
  if (typeof input === "string") return [{ role: "user", content: input }];
  if (!Array.isArray(input) || input.length === 0) {
    throw badRequest("input must be a string or a non-empty list of message items", "input");
  }
  const messages: ChatMessage[] = [];
  input.forEach((item, i) => {
    const param = `input[${i}]`;
    if (isObject(item) && (item.type === "function_call" || item.type === "function_call_output")) {
      const str = (key: string) => {
        if (typeof item[key] !== "string")
          throw badRequest(`${param}.${key} must be a string`, `${param}.${key}`);
        return item[key] as string;
      };
      const callId = str("call_id");
      if (item.type === "function_call_output") {
        messages.push({ role: "tool", tool_call_id: callId, content: str("output") });
        return;
      }
      const call = {
        id: callId,
        type: "function",
        function: { name: str("name"), arguments: str("arguments") },
      };
      // Calls right after an assistant turn (or another call) are that turn's tool_calls.
      const last = messages.at(-1);
      if (last?.role === "assistant") last.tool_calls = [...((last.tool_calls as unknown[]) ?? []), call];
      else messages.push({ role: "assistant", content: null, tool_calls: [call] });
      return;
    }
    messages.push(messageItem(item, param));
  });
  return messages;
}

function messageItem(item: unknown, param: string): ChatMessage {
  if (!isObject(item)) throw badRequest(`${param} must be a message item {role, content}`, param);
  if (given(item.type) && item.type !== "message") {
    throw badRequest(
      `${param} has type ${JSON.stringify(item.type)}: only message, function_call and function_call_output items are supported`,
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
  const tools = parseResponsesTools(body);
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
    tools,
    toolsEcho: tools && Array.isArray(body.tools) ? body.tools : [],
  };
}

const newId = (prefix: string) => `${prefix}_${randomUUID().replaceAll("-", "")}`;

/** A tool call as a Responses `function_call` output item. */
const functionCallItem = (id: string, call: OpenAIToolCall, status: string) => ({
  type: "function_call",
  id,
  call_id: call.id,
  name: call.function.name,
  arguments: call.function.arguments,
  status,
});

async function responses(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/v1/responses";
  const model: LoadedModel = ctx.service.model(endpoint);
  const r = parseResponsesRequest(req.body, { modelName: ctx.opts.modelName });
  // As on /v1/chat/completions; the reply is split into text and tool calls as chat does, and
  // thinking stays in the text (this route has no reasoning items).
  const setup = chatSetup(model, { messages: r.messages, toolRequest: r.tools }, r.structured, {
    messagesField: "input",
    toolOutput: responsesToolOutput,
  });
  const { prompt, structured } = setup;
  const mode = { ...setup.mode, reasoning: false, startsThinking: false };
  const output = new ChatChoiceOutput(mode);
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
      structured,
    },
  };

  const signal = clientSignal(req, reply);
  const streams = await startChoices(ctx, [choice], signal);
  const id = newId("resp");
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
  const message = (msgId: string, text: string, st: string, done: boolean) => ({
    type: "message",
    id: msgId,
    status: st,
    role: "assistant",
    content: done ? [part(text)] : [],
  });
  const choiceEcho = (c: ToolRequest["choice"] | undefined) =>
    c === undefined ? "none" : typeof c === "object" ? { type: "function", name: c.name } : c;
  const responseObject = (items: Json[], f: FinishInfo | undefined) => ({
    id,
    object: "response",
    created_at: createdAt,
    status: f ? status(f) : "in_progress",
    error: null,
    incomplete_details: f && status(f) === "incomplete" ? { reason: "max_output_tokens" } : null,
    instructions: r.instructions,
    max_output_tokens: r.maxOutputTokens ?? null,
    model: r.model,
    output: f ? items : [],
    parallel_tool_calls: r.tools?.parallel ?? true,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    store: false,
    temperature: r.sampling.temperature ?? null,
    text: { format: r.textFormat },
    tool_choice: choiceEcho(r.tools?.choice),
    tools: r.toolsEcho,
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
    const f = finish!;
    const msg = output.message(text);
    const calls = msg.tool_calls ?? [];
    const items: Json[] = [];
    if (calls.length === 0 || (msg.content ?? "").length > 0) {
      items.push(message(newId("msg"), msg.content ?? "", status(f), true));
    }
    for (const c of calls) items.push(functionCallItem(newId("fc"), c, "completed"));
    return responseObject(items, f);
  }

  // Streamed, each output item in turn: a message item (opened at the first text that is not only
  // white space before a call), then each function_call item as its name and arguments arrive.
  let seq = 0;
  const send = (type: string, fields: Json) => sendSSE(reply, { type, sequence_number: seq++, ...fields });
  const items: Json[] = [];
  let msg: { id: string; index: number; text: string } | undefined;
  let pending = "";
  let call: { index: number; item: ReturnType<typeof functionCallItem> } | undefined;
  const openMessage = () => {
    msg = { id: newId("msg"), index: items.length, text: "" };
    items.push(message(msg.id, "", "in_progress", false));
    send("response.output_item.added", { output_index: msg.index, item: items[msg.index] });
    send("response.content_part.added", {
      item_id: msg.id,
      output_index: msg.index,
      content_index: 0,
      part: part(""),
    });
  };
  const addText = (t: string) => {
    if (!msg) openMessage();
    msg!.text += t;
    const at = { item_id: msg!.id, output_index: msg!.index, content_index: 0 };
    send("response.output_text.delta", { ...at, delta: t, logprobs: [] });
  };
  const closeMessage = (st: string) => {
    if (!msg) return;
    const at = { item_id: msg.id, output_index: msg.index, content_index: 0 };
    send("response.output_text.done", { ...at, text: msg.text, logprobs: [] });
    send("response.content_part.done", { ...at, part: part(msg.text) });
    items[msg.index] = message(msg.id, msg.text, st, true);
    send("response.output_item.done", { output_index: msg.index, item: items[msg.index] });
    msg = undefined;
  };
  const closeCall = () => {
    if (!call) return;
    const { index, item } = call;
    send("response.function_call_arguments.done", {
      item_id: item.id,
      output_index: index,
      name: item.name,
      arguments: item.arguments,
    });
    items[index] = { ...item, status: "completed" };
    send("response.output_item.done", { output_index: index, item: items[index] });
    call = undefined;
  };
  const onDelta = (d: Record<string, unknown>) => {
    if (typeof d.content === "string") {
      const t = pending + d.content;
      // White space before (or between) calls is no message of its own.
      if (!msg && (mode.tools !== undefined || call) && t.trim().length === 0) pending = t;
      else {
        pending = "";
        closeCall();
        addText(t);
      }
    }
    const [c] = (d.tool_calls as { id?: string; function: { name?: string; arguments: string } }[]) ?? [];
    if (!c) return;
    if (c.id !== undefined) {
      closeMessage("completed");
      closeCall();
      pending = "";
      const item = functionCallItem(
        newId("fc"),
        { id: c.id, type: "function", function: { name: c.function.name ?? "", arguments: "" } },
        "in_progress",
      );
      call = { index: items.length, item };
      items.push(item);
      send("response.output_item.added", { output_index: call.index, item: { ...item } });
    }
    if (call && c.function.arguments) {
      call.item.arguments += c.function.arguments;
      send("response.function_call_arguments.delta", {
        item_id: call.item.id,
        output_index: call.index,
        delta: c.function.arguments,
      });
    }
  };
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
      send("response.created", { response: responseObject([], undefined) });
      send("response.in_progress", { response: responseObject([], undefined) });
      if (mode.tools === undefined) openMessage();
    },
    onEvent(_i, e) {
      for (const d of output.deltas(e.text, e.finish !== undefined)) onDelta(d);
    },
    close([f]) {
      closeCall();
      if (items.length === 0) {
        openMessage();
        if (pending) addText(pending);
      }
      closeMessage(status(f!));
      send(status(f!) === "completed" ? "response.completed" : "response.incomplete", {
        response: responseObject(items, f),
      });
    },
  });
}
