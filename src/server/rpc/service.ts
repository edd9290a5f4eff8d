import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextKey,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import type { FinishInfo } from "../../protocol/events.js";
import { stopOrLength } from "../../protocol/events.js";
import type { SampleResult } from "../../sampling/sampler.js";
import type { Tokenizer } from "../../tokenizer/index.js";
import { admissionOf } from "../admission.js";
import { ChatChoiceOutput, type ChatOutputMode, type ChatPart } from "../chat-output.js";
import { chatSetup } from "../chat-request.js";
import { type Choice, choiceEvents, readChoices, startChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { embeddingModel, embeddingPrompt, embedPrompts } from "../embeddings.js";
import { parseOpenAIEmbeddings } from "../embeddings-schema.js";
import { ApiError, badRequest, GenerationEndedError, toApiError } from "../errors.js";
import { defaultMaxTokens } from "../generation.js";
import {
  checkIds,
  DEFAULT_COMPLETION_MAX_TOKENS,
  parseChatRequest,
  parseCompletionRequest,
  parseModel,
  samplingFor,
} from "../openai-schema.js";
import { logRejection, rejectionReason } from "../request-log.js";
import { tokenString } from "../route-helpers.js";
import { spindleVersion } from "../routes/ops.js";
import { structuredOutput } from "../structured-output.js";
import {
  type ChatMessage,
  type GenerateRequest,
  type GenerateResponseSchema,
  InferenceService,
  type TokenLogprobSchema,
  type Tool,
  type ToolCallDeltaSchema,
  type ToolChoice,
} from "./gen/spindle/v1/inference_pb.js";

/**
 * The RPC front door: spindle.v1.InferenceService (proto/spindle/v1/inference.proto), served by the
 * Connect libraries over gRPC, Connect and gRPC-Web (grpc-server.ts: --grpc-port; app.ts: the main
 * port). Like the HTTP routes it only translates: a GenerateRequest becomes the body the OpenAI
 * schema checks (the proto keeps OpenAI's field names, so every INVALID_ARGUMENT names the proto's
 * field), then choices (choices.ts) through ctx.service, so admission, queue cap, priorities,
 * timeouts, metrics and request logs are the HTTP API's. Authentication and the rate limit are
 * admission.ts's `Admission`, the same instance the HTTP hook asks.
 *
 * - prompt: tokenized with BOS as /v1/completions does; token_ids: as given; messages: the chat
 *   template (chat-prompt.ts). max_tokens defaults as there: 16, or the context's room for messages.
 * - response_format (structured output) goes through structured-output.ts like every route's field.
 * - Tools (messages only): tools, tool_choice, parallel_tool_calls and the history's tool_calls and
 *   tool_call_id become OpenAI's JSON (the proto keeps its shape and names; a tool's parameters are
 *   JSON text, parsed here), then go where /v1/chat/completions' go: tool-request.ts's checks, and
 *   chat-request.ts's chatSetup (the template with the tools, the tool grammar for required or a named
 *   function, the triggered one for auto). Every chat reply is read through chat-output.ts's
 *   ChatChoiceOutput, as the route's: its content is `text`, its calls `tool_calls` (streamed as
 *   ChatChoiceOutput.parts: a call's id and name, then its arguments' text), finish_reason
 *   "tool_calls" when it called tools. Reasoning stays in the text (the proto has no field for it),
 *   so a reply without tools is the model's text as before.
 * - Embed: the inputs checked by /v1/embeddings' schema (the proto keeps its field names) and embedded
 *   through embeddings.ts, as the HTTP route does.
 * - The client's cancel (or deadline) is HandlerContext.signal, the request's abort signal: the
 *   engine request is aborted at once and its KV blocks freed.
 * - Errors: ApiError statuses map to Connect codes (`rpcError`); retry delays travel as `retry-after`
 *   metadata in seconds. Every request refused before the engine writes one `rejected` log line.
 */

/** The client's address, set by whoever serves the routes (for rate limits and logs without API keys). */
export const kClientAddress = createContextKey<string>("unknown", { description: "client address" });

export function inferenceRoutes(ctx: ServerContext): (router: ConnectRouter) => void {
  const impl = inferenceService(ctx);
  return (router) => router.service(InferenceService, impl);
}

const CODES: Record<number, Code> = {
  400: Code.InvalidArgument,
  401: Code.Unauthenticated,
  403: Code.PermissionDenied,
  404: Code.NotFound,
  408: Code.DeadlineExceeded,
  413: Code.InvalidArgument,
  429: Code.ResourceExhausted,
  499: Code.Canceled,
  500: Code.Internal,
  501: Code.Unimplemented,
  502: Code.Unavailable,
  503: Code.Unavailable,
  504: Code.DeadlineExceeded,
};

/** An ApiError as a ConnectError: its status's code, its field in the message, Retry-After as metadata. */
export function rpcError(e: ApiError): ConnectError {
  const metadata = new Headers();
  if (e.retryAfter !== undefined) metadata.set("retry-after", String(e.retryAfter));
  const message = e.param !== null && !e.message.includes(e.param) ? `${e.param}: ${e.message}` : e.message;
  return new ConnectError(
    message,
    CODES[e.status] ?? (e.status >= 500 ? Code.Internal : Code.Unknown),
    metadata,
  );
}

const endpointOf = (hc: HandlerContext) => `/${hc.service.typeName}/${hc.method.name}`;

function inferenceService(ctx: ServerContext): ServiceImpl<typeof InferenceService> {
  const admission = admissionOf(ctx);

  /** Runs a handler's admission and body; anything thrown leaves as a ConnectError (and a `rejected` line). */
  async function call<T>(
    hc: HandlerContext,
    opts: { open?: boolean; generation?: boolean },
    body: (client: string, endpoint: string) => Promise<T>,
  ): Promise<T> {
    const endpoint = endpointOf(hc);
    let client = hc.values.get(kClientAddress);
    try {
      if (!opts.open) client = admission.client(hc.requestHeader.get("authorization") ?? undefined, client);
      if (opts.generation) admission.takeToken(client, endpoint);
      return await body(client, endpoint);
    } catch (err) {
      throw failure(err, endpoint, client);
    }
  }

  function failure(err: unknown, endpoint: string, client: string): ConnectError {
    if (err instanceof ConnectError) return err;
    const e = toApiError(err);
    if (e.status >= 500 && !(err instanceof ApiError))
      ctx.log.error({ err, endpoint }, "unhandled error while serving an RPC");
    // Not rejections: a generation that was admitted and then ended, a client that went away.
    if (!(err instanceof GenerationEndedError) && e.status !== 499) {
      logRejection(ctx.log, {
        status: e.status,
        reason: rejectionReason(e.status, e.code),
        ...(e.param !== null ? { param: e.param } : {}),
        method: "POST",
        endpoint,
        client,
      });
    }
    return rpcError(e);
  }

  /** Admits a GenerateRequest: its one choice, started (queued in the engine). */
  async function start(req: GenerateRequest, hc: HandlerContext, client: string, endpoint: string) {
    const model = ctx.service.model(endpoint);
    const c = choiceOf(ctx, model, req, client, endpoint);
    const streams = await startChoices(ctx, [c.choice], hc.signal);
    return { ...c, streams, tok: model.tokenizer };
  }

  return {
    generate(req, hc) {
      return call(hc, { generation: true }, async (client, endpoint) => {
        const { choice, streams, tok, wantLogprobs, mode } = await start(req, hc, client, endpoint);
        let text = "";
        const tokenIds: number[] = [];
        const samples: SampleResult[] = [];
        const [finish] = await readChoices(streams, hc.signal, (_i, e) => {
          text += e.text;
          tokenIds.push(...e.tokens);
          if (e.logprobs) samples.push(...e.logprobs);
        });
        const output = mode && new ChatChoiceOutput(mode);
        const message = output?.message(text);
        const out: MessageInitShape<typeof GenerateResponseSchema> = {
          text: message ? (message.content ?? "") : text,
          toolCalls: (message?.tool_calls ?? []).map((c) => ({
            id: c.id,
            function: { name: c.function.name, arguments: c.function.arguments },
          })),
          finishReason: output ? output.finishReason(finish!) : stopOrLength(finish!),
          tokenIds,
          logprobs: wantLogprobs ? logprobsOf(tok, samples, wantLogprobs) : [],
          usage: usageOf(choice, finish!),
          timings: timingsOf(finish!),
          model: ctx.opts.modelName,
        };
        return out;
      });
    },

    async *generateStream(req, hc) {
      const endpoint = endpointOf(hc);
      const started = await call(hc, { generation: true }, (client) => start(req, hc, client, endpoint));
      const { choice, streams, tok, wantLogprobs, mode } = started;
      const output = mode && new ChatChoiceOutput(mode);
      try {
        for await (const [, e] of choiceEvents(streams, hc.signal)) {
          const samples = wantLogprobs && e.logprobs ? e.logprobs : [];
          // A chat reply: its content and tool call deltas, as /v1/chat/completions streams them.
          const parts = output?.parts(e.text, e.finish !== undefined);
          const text = parts ? contentOf(parts) : e.text;
          const toolCalls = parts ? toolCallDeltas(parts) : [];
          if (text.length > 0 || toolCalls.length > 0 || e.tokens.length > 0 || samples.length > 0) {
            yield {
              text,
              toolCalls,
              tokenIds: e.tokens,
              logprobs: logprobsOf(tok, samples, wantLogprobs),
            };
          }
          if (e.finish) {
            yield {
              finishReason: output ? output.finishReason(e.finish) : stopOrLength(e.finish),
              usage: usageOf(choice, e.finish),
              timings: timingsOf(e.finish),
            };
          }
        }
      } catch (err) {
        // Admitted: the request's own `request` line tells how it ended.
        throw err instanceof ConnectError ? err : rpcError(toApiError(err));
      }
    },

    embed(req, hc) {
      return call(hc, { generation: true }, async (client, endpoint) => {
        const { m, sc } = embeddingModel(ctx, endpoint);
        const r = parseOpenAIEmbeddings(
          {
            ...(req.model !== "" ? { model: req.model } : {}),
            input: req.input.length === 1 ? req.input[0] : req.input,
            ...(req.dimensions !== undefined ? { dimensions: req.dimensions } : {}),
          },
          sc,
        );
        const param = (i: number) => (r.inputs.length === 1 ? "input" : `input[${i}]`);
        const prompts = r.inputs.map((input, i) => embeddingPrompt(m, input, param(i)));
        const vectors = await embedPrompts(ctx, { client, endpoint, signal: hc.signal }, prompts);
        const tokens = prompts.reduce((n, p) => n + p.ids.length, 0);
        return {
          data: vectors.map((v, index) => ({ index, embedding: [...v] })),
          model: r.model,
          usage: { promptTokens: tokens, completionTokens: 0, cachedTokens: 0 },
        };
      });
    },

    tokenize(req, hc) {
      return call(hc, {}, async (_client, endpoint) => {
        const m = ctx.service.model(endpoint);
        checkModel(ctx, req.model);
        const tokenIds = m.tokenizer.encode(req.text, { addSpecial: req.addSpecialTokens ?? true });
        return { tokenIds, count: tokenIds.length, maxModelLen: m.info.contextLength };
      });
    },

    listModels(_req, hc) {
      return call(hc, {}, async () => ({
        models: [
          { id: ctx.opts.modelName, ownedBy: "spindle", maxModelLen: ctx.model?.info.contextLength ?? 0 },
        ],
      }));
    },

    health(_req, hc) {
      // Open without a key, as GET /health is (probes).
      return call(hc, { open: true }, async () => {
        const unavailable = (status: string) =>
          new ConnectError(`the server is ${status}`, Code.Unavailable, new Headers({ "retry-after": "5" }));
        if (ctx.draining) throw unavailable("draining");
        const m = ctx.model;
        if (!m) throw unavailable("loading");
        return {
          status: "ok",
          model: ctx.opts.modelName,
          backend: m.info.kind,
          version: spindleVersion(),
          running: ctx.metrics.numRunning,
          waiting: ctx.metrics.numWaiting,
          inFlight: ctx.service.numInFlight,
          kvCacheUsage: ctx.metrics.kvCacheUsage,
          maxModelLen: m.info.contextLength,
        };
      });
    },
  };
}

/** An empty `model` is the served one; another is NOT_FOUND (through the OpenAI schema's check). */
function checkModel(ctx: ServerContext, model: string): void {
  parseModel({ model: model || ctx.opts.modelName }, { modelName: ctx.opts.modelName, vocabSize: 0 });
}

/**
 * A GenerateRequest as one choice: the OpenAI schema checks its fields (same names, same messages),
 * then the prompt is made as /v1/completions or /v1/chat/completions makes it.
 */
function choiceOf(
  ctx: ServerContext,
  model: LoadedModel,
  req: GenerateRequest,
  client: string,
  endpoint: string,
): { choice: Choice; wantLogprobs: number | undefined; mode?: ChatOutputMode } {
  const inputs = [
    req.prompt !== undefined ? "prompt" : undefined,
    req.tokenIds.length > 0 ? "token_ids" : undefined,
    req.messages.length > 0 ? "messages" : undefined,
  ].filter((x): x is string => x !== undefined);
  if (inputs.length !== 1) {
    throw badRequest(
      inputs.length === 0
        ? "prompt is required: give one of prompt, token_ids, messages"
        : `give only one of prompt, token_ids, messages (got ${inputs.join(", ")})`,
      inputs[1] ?? "prompt",
    );
  }
  const toolField = [
    req.tools.length > 0 ? "tools" : undefined,
    req.toolChoice !== undefined ? "tool_choice" : undefined,
    req.parallelToolCalls !== undefined ? "parallel_tool_calls" : undefined,
  ].find((x) => x !== undefined);
  if (toolField !== undefined && inputs[0] !== "messages") {
    throw badRequest(`${toolField} is only allowed with messages (tools are for chats)`, toolField);
  }
  const body: Record<string, unknown> = {
    model: req.model || ctx.opts.modelName,
    max_tokens: req.maxTokens,
    temperature: req.temperature,
    top_p: req.topP,
    top_k: req.topK,
    min_p: req.minP,
    seed: req.seed === undefined ? undefined : Number(req.seed),
    stop: req.stop,
    repetition_penalty: req.repetitionPenalty,
    frequency_penalty: req.frequencyPenalty,
    presence_penalty: req.presencePenalty,
    priority: req.priority,
    ignore_eos: req.ignoreEos,
  };
  const sc = { modelName: ctx.opts.modelName, vocabSize: model.info.vocabSize };
  const f = req.responseFormat?.format;
  const format =
    f?.case === "choice" ? { choice: f.value.choices } : f?.case ? { [snake(f.case)]: f.value } : {};
  const structured = structuredOutput({ response_format: format }, "rpc");
  const base = { client, endpoint, stopAtEog: !req.ignoreEos, structured };

  if (inputs[0] === "messages") {
    const r = parseChatRequest(
      {
        ...body,
        messages: req.messages.map(messageJson),
        ...toolsJson(req),
        logprobs: req.logprobs !== undefined,
        top_logprobs: req.logprobs,
      },
      sc,
    );
    const chat = chatSetup(model, r, structured);
    const prompt = chat.prompt;
    const params = {
      ...base,
      structured: chat.structured,
      prompt: prompt.ids,
      maxTokens: r.maxTokens ?? defaultMaxTokens(prompt.ids.length, model.info.contextLength),
      sampling: samplingFor(r, 0, r.logprobs ? Math.max(1, r.topLogprobs) : 0),
      stop: r.stop,
      priority: r.priority,
      promptText: prompt.text,
      fields: { prompt: "messages", maxTokens: "max_tokens" },
    };
    // Thinking stays in the text (the proto has no reasoning field), as before tools.
    const mode = { ...chat.mode, reasoning: false, startsThinking: false };
    return {
      choice: { index: 0, prompt: 0, params },
      wantLogprobs: r.logprobs ? r.topLogprobs : undefined,
      mode,
    };
  }

  if (inputs[0] === "prompt" && req.prompt === "") throw badRequest("prompt is empty", "prompt");
  if (inputs[0] === "token_ids") checkIds(req.tokenIds, model.info.vocabSize, "token_ids");
  const r = parseCompletionRequest(
    { ...body, prompt: inputs[0] === "prompt" ? req.prompt : req.tokenIds, logprobs: req.logprobs },
    sc,
  );
  const p = r.prompts[0]!;
  const ids =
    typeof p === "string" ? model.tokenizer.encode(p, { addSpecial: true, parseSpecial: false }) : p;
  if (ids.length === 0) throw badRequest("prompt is empty", inputs[0]!);
  const params = {
    ...base,
    prompt: ids,
    maxTokens: r.maxTokens ?? DEFAULT_COMPLETION_MAX_TOKENS,
    sampling: samplingFor(r, 0, r.logprobs !== undefined ? Math.max(1, r.logprobs) : 0),
    stop: r.stop,
    priority: r.priority,
    promptText: typeof p === "string" ? p : undefined,
    fields: { prompt: inputs[0]!, maxTokens: "max_tokens" },
  };
  return { choice: { index: 0, prompt: 0, params }, wantLogprobs: r.logprobs };
}

/** A ChatMessage as OpenAI's JSON message (parseMessages checks it, naming the proto's fields). */
function messageJson(m: ChatMessage): Record<string, unknown> {
  const calls = m.toolCalls;
  return {
    role: m.role,
    // An assistant turn that only calls tools has no content (OpenAI's null): proto3 sends "".
    content: m.role === "assistant" && calls.length > 0 && m.content === "" ? null : m.content,
    ...(m.name !== undefined ? { name: m.name } : {}),
    ...(calls.length > 0
      ? {
          tool_calls: calls.map((c) => ({
            id: c.id,
            type: "function",
            function: c.function && { name: c.function.name, arguments: c.function.arguments },
          })),
        }
      : {}),
    ...(m.toolCallId !== undefined ? { tool_call_id: m.toolCallId } : {}),
  };
}

/** The request's tool fields as OpenAI's JSON, for tool-request.ts's checks (same field names). */
function toolsJson(req: GenerateRequest): Record<string, unknown> {
  return {
    ...(req.tools.length > 0 ? { tools: req.tools.map(toolJson) } : {}),
    ...(req.toolChoice !== undefined ? { tool_choice: toolChoiceJson(req.toolChoice) } : {}),
    ...(req.parallelToolCalls !== undefined ? { parallel_tool_calls: req.parallelToolCalls } : {}),
  };
}

function toolJson(t: Tool, i: number): Record<string, unknown> {
  const f = t.function;
  if (f === undefined) return { type: "function" };
  const param = `tools[${i}].function.parameters`;
  let parameters: unknown;
  if (f.parameters !== undefined) {
    try {
      parameters = JSON.parse(f.parameters);
    } catch {
      throw badRequest(`${param} is not valid JSON: give a JSON Schema object as JSON text`, param);
    }
  }
  return {
    type: "function",
    function: {
      // proto3's empty name is a name not given.
      ...(f.name !== "" ? { name: f.name } : {}),
      ...(f.description !== undefined ? { description: f.description } : {}),
      ...(f.parameters !== undefined ? { parameters } : {}),
      ...(f.strict !== undefined ? { strict: f.strict } : {}),
    },
  };
}

function toolChoiceJson(c: ToolChoice): unknown {
  if (c.choice.case === "mode") {
    const mode = c.choice.value;
    if (mode !== "none" && mode !== "auto" && mode !== "required") {
      throw badRequest(
        `tool_choice.mode must be "none", "auto" or "required" (or give tool_choice.function); got ${JSON.stringify(mode)}`,
        "tool_choice.mode",
      );
    }
    return mode;
  }
  if (c.choice.case === "function") return { type: "function", function: { name: c.choice.value.name } };
  return {};
}

/** A chat chunk's content. */
const contentOf = (parts: ChatPart[]) => parts.map((p) => (p.kind === "content" ? p.text : "")).join("");

/** A chat chunk's tool call deltas: a call's id and name first, then its arguments' text. */
function toolCallDeltas(parts: ChatPart[]): MessageInitShape<typeof ToolCallDeltaSchema>[] {
  return parts.flatMap((p) => {
    if (p.kind === "call") return [{ index: p.index, id: p.id, function: { name: p.name, arguments: "" } }];
    if (p.kind === "arguments") return [{ index: p.index, function: { name: "", arguments: p.text } }];
    return [];
  });
}

/** A proto field's JSON name (jsonSchema) as its proto name (json_schema). */
const snake = (s: string) => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

function usageOf(c: Choice, f: FinishInfo) {
  return {
    promptTokens: c.params.prompt.length,
    completionTokens: f.completionTokens,
    cachedTokens: f.cachedTokens,
  };
}

/** The engine's timestamps (its performance.now() ms) as durations. */
function timingsOf(f: FinishInfo) {
  const t = f.times;
  const between = (a: number | undefined, b: number | undefined) =>
    a !== undefined && b !== undefined ? Math.max(0, b - a) : 0;
  return {
    queueWaitMs: between(t.arrival, t.firstScheduled),
    ttftMs: between(t.arrival, t.firstToken),
    decodeMs: between(t.firstToken, t.lastToken),
  };
}

function logprobsOf(
  tok: Tokenizer,
  samples: SampleResult[],
  k: number | undefined,
): MessageInitShape<typeof TokenLogprobSchema>[] {
  if (k === undefined) return [];
  return samples.map((s) => ({
    tokenId: s.token,
    token: tokenString(tok, s.token),
    logprob: s.logprob,
    topLogprobs: s.topLogprobs.slice(0, k).map((t) => ({
      tokenId: t.token,
      token: tokenString(tok, t.token),
      logprob: t.logprob,
    })),
  }));
}
