import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { templateUsesTools } from "../../chat/tool-format.js";
import type { RequestStream } from "../../protocol/event-stream.js";
import type { FinishInfo } from "../../protocol/events.js";
import { stopOrLength } from "../../protocol/events.js";
import { chatPrompt } from "../chat-prompt.js";
import { chatSetup } from "../chat-request.js";
import { type Choice, readChoices, startChoices, streamChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { badRequest, ollamaErrorBody } from "../errors.js";
import { defaultMaxTokens } from "../generation.js";
import { OllamaChatOutput } from "../ollama-chat-output.js";
import { ollamaModelFacts } from "../ollama-model.js";
import {
  OLLAMA_DEFAULTS,
  type OllamaCommon,
  parseOllamaChat,
  parseOllamaGenerate,
  parseOllamaModel,
} from "../ollama-schema.js";
import { clientOf, clientSignal, isObject } from "../route-helpers.js";
import { NDJSON, sendSSE } from "../sse.js";
import type { StructuredOutput } from "../structured-output.js";
import { spindleVersion } from "./ops.js";

/**
 * Ollama's API, so that Ollama clients (the official `ollama` npm package, tools that speak to
 * "an Ollama") work unchanged against Spindle:
 *
 *   GET|HEAD /            "Ollama is running" (clients probe it; behind --api-key like every route
 *                         but /health and /metrics)
 *   POST /api/generate    {model, prompt, system?, raw?, stream?, options?} → NDJSON stream (default)
 *                         or one object with `response`
 *   POST /api/chat        {model, messages, stream?, options?} → the same with `message`
 *   GET  /api/tags        the served model
 *   POST /api/show        {model} → details, model_info, template, parameters
 *   GET  /api/ps          the served model, loaded
 *   GET  /api/version     {version}: Spindle's
 *   POST /api/embed, /api/embeddings   in routes/embeddings.ts, beside OpenAI's /v1/embeddings
 *
 * Generation goes through the same choice machinery as every route (choices.ts, ctx.service):
 * admission, auth, priorities, cancellation, metrics and request logs are those of
 * /v1/chat/completions. Errors under /api/ have Ollama's shape, `{"error": "..."}`, with a 4xx/5xx
 * status; once a stream has begun, an error is one last NDJSON line `{"error": "..."}`.
 *
 * Decisions where Spindle differs from Ollama or Ollama leaves room:
 * - model: the server serves one model; its name and the name with `:latest` are accepted (tags
 *   and ps list it as `<name>:latest`); any other name is 404 `model "x" not found`. A request with
 *   an empty prompt (generate) or no messages (chat) answers at once with done_reason "load", as
 *   Ollama does to preload a model.
 * - Sampling defaults are Ollama's (temperature 0.8, top_k 40, top_p 0.9, min_p 0,
 *   repeat_penalty 1.1, repeat_last_n 64); options.seed ≥ 0 seeds the sampler, -1 (Ollama's default)
 *   is random. presence_penalty and frequency_penalty are supported. Hardware and runtime options
 *   (num_gpu, num_thread, use_mmap, num_keep, …) and unknown options are accepted and ignored, as
 *   Ollama ignores unknown ones; mirostat ≠ 0, tfs_z ≠ 1 and typical_p ≠ 1 are refused (400).
 * - options.num_predict: ≥ 1 is the most tokens to generate, capped by the room the context leaves
 *   (Ollama never refuses it, so neither does Spindle: done_reason is then "length"); -1 (no limit)
 *   and -2 (fill the context) both mean the room the context leaves; 0 and other negatives are a 400.
 * - options.num_ctx: above the model's context length is a 400; below it, it is the request's context:
 *   a prompt of num_ctx tokens or more is a 400 naming options.num_ctx (Ollama would truncate the
 *   prompt; Spindle never drops input silently), and generation stops when num_ctx is filled.
 * - format ("json" or a JSON schema) constrains the output (structured-output.ts).
 * - /api/chat's tools (OpenAI's function shape, checked by tool-request.ts) reach the model through
 *   its template (chat-prompt.ts); Ollama has no tool_choice, so the model decides (OpenAI's `auto`,
 *   not enforced). Calls in the template's format become message.tool_calls
 *   `[{function: {name, arguments: {...}}}]` (ollama-chat-output.ts), streamed whole in the line of
 *   the text that completed them; done_reason stays "stop". Role "tool" messages (with `tool_name`)
 *   and assistant tool_calls render back. tools on /api/generate are a 400. think (other than false), logprobs/top_logprobs, suffix, images
 *   (top-level or in a message), template (a per-request template override), a non-empty `context` (the
 *   deprecated token array; send the conversation to /api/chat instead) are 400s too. keep_alive is accepted and ignored: the one model stays loaded.
 * - raw: true tokenizes the prompt as it is (special tokens parsed, BOS added as the model asks;
 *   `system` with raw is a 400, since nothing would render it); otherwise the prompt (and `system`) is rendered as a conversation with the model's chat template,
 *   exactly as /api/chat and /v1/chat/completions render it (chat-prompt.ts).
 * - Counts and durations (nanoseconds) come from the engine's own clock (FinishInfo.times):
 *   total_duration arrival → finish; load_duration 0 (the model is loaded before the server is
 *   ready); prompt_eval_count the prompt's tokens (prefix-cache hits included);
 *   prompt_eval_duration first scheduled → first token (the prefill); eval_count the tokens generated;
 *   eval_duration first token → last token. done_reason is "stop" (end of generation or a stop
 *   string) or "length". The deprecated `context` array is not returned.
 * - /api/show: details and model_info are read from the GGUF's header (ollama-model.ts); `template` is
 *   the GGUF's own chat template (Jinja, not Ollama's Go template syntax); `parameters` lists the
 *   defaults Spindle applies; capabilities is ["completion"], with "tools" when the template reads tools.
 * - /api/ps: size is the GGUF's size plus the KV cache's, size_vram 0 (Spindle computes on the CPU),
 *   expires_at far in the future (never unloaded, as Ollama says for keep_alive -1); Spindle adds
 *   `backend` and, for the engine backends, `kv_cache` {type, bytes, blocks, tokens, usage 0..1} (`spindle ps`).
 */

/** The model as tags and ps list it: its name with Ollama's default tag unless it has one. */
const listedName = (name: string) => (name.includes(":") ? name : `${name}:latest`);

const ns = (from: number | undefined, to: number | undefined) =>
  from === undefined || to === undefined ? 0 : Math.max(0, Math.round((to - from) * 1e6));

/** The final line's counts and durations (nanoseconds), from the engine's clock. */
export function ollamaStats(f: FinishInfo) {
  const t = f.times;
  return {
    done_reason: stopOrLength(f),
    total_duration: ns(t.arrival, t.finished ?? t.lastToken),
    load_duration: 0,
    prompt_eval_count: f.promptTokens,
    prompt_eval_duration: ns(t.firstScheduled, t.firstToken),
    eval_count: f.completionTokens,
    eval_duration: ns(t.firstToken, t.lastToken),
  };
}

export function registerOllamaRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.get("/", async (_req, reply) => reply.type("text/plain; charset=utf-8").send("Ollama is running"));
  app.get("/api/version", async () => ({ version: spindleVersion() }));
  app.get("/api/tags", async () => {
    const m = ctx.service.model("/api/tags");
    return { models: [await modelEntry(ctx, m)] };
  });
  app.get("/api/ps", async () => {
    const m = ctx.service.model("/api/ps");
    const entry = await modelEntry(ctx, m);
    const d = m.info.details;
    const kv = d.kvCacheBytes;
    return {
      models: [
        {
          name: entry.name,
          model: entry.model,
          size: entry.size + (typeof kv === "number" ? kv : 0),
          digest: entry.digest,
          details: entry.details,
          // Never unloaded: Go's "now + the longest duration", as Ollama reports for keep_alive -1.
          expires_at: new Date(Date.now() + 292 * 365.25 * 24 * 3600 * 1000).toISOString(),
          size_vram: 0,
          context_length: m.info.contextLength,
          // Spindle's: the KV pool and how full it is (`spindle ps`); absent for backends without one.
          ...(typeof kv === "number"
            ? {
                kv_cache: {
                  ...(typeof d.kvCacheType === "string" ? { type: d.kvCacheType } : {}),
                  bytes: kv,
                  blocks: Number(d.numBlocks),
                  tokens: Number(d.numBlocks) * Number(d.blockSize),
                  // A Gemma model's sliding-window layers' own pool: each sequence holds its window there.
                  ...(typeof d.windowBlocks === "number"
                    ? { sliding_window: { window: d.slidingWindow, blocks: d.windowBlocks } }
                    : {}),
                  usage: ctx.metrics.kvCacheUsage,
                },
              }
            : {}),
          backend: m.info.kind,
        },
      ],
    };
  });
  app.post("/api/show", async (req) => {
    const body = req.body;
    if (!isObject(body)) throw badRequest("the request body must be a JSON object");
    // Older clients send `name`.
    parseOllamaModel(
      body,
      ctx.opts.modelName,
      body.model === undefined && body.name !== undefined ? "name" : "model",
    );
    const m = ctx.service.model("/api/show");
    const facts = ollamaModelFacts(m);
    const d = OLLAMA_DEFAULTS;
    return {
      modelfile: `# Served by Spindle ${spindleVersion()}\nFROM ${facts.fileName ?? ctx.opts.modelName}\n`,
      parameters: [
        `temperature ${d.temperature}`,
        `top_k ${d.top_k}`,
        `top_p ${d.top_p}`,
        `repeat_penalty ${d.repeat_penalty}`,
        `repeat_last_n ${d.repeat_last_n}`,
      ].join("\n"),
      template: m.chatTemplate ?? "",
      details: details(facts),
      model_info: { "general.architecture": facts.family, ...facts.modelInfo },
      capabilities: templateUsesTools(m.chatTemplate) ? ["completion", "tools"] : ["completion"],
      modified_at: facts.modifiedAt,
    };
  });
  app.post("/api/generate", (req, reply) => generate(ctx, req, reply));
  app.post("/api/chat", (req, reply) => chat(ctx, req, reply));
}

function details(f: ReturnType<typeof ollamaModelFacts>) {
  return {
    parent_model: "",
    format: "gguf",
    family: f.family,
    families: [f.family],
    parameter_size: f.parameterSize,
    quantization_level: f.quantizationLevel,
  };
}

async function modelEntry(ctx: ServerContext, m: LoadedModel) {
  const facts = ollamaModelFacts(m);
  const name = listedName(ctx.opts.modelName);
  return {
    name,
    model: name,
    modified_at: facts.modifiedAt,
    size: facts.size,
    digest: await facts.digest(),
    details: details(facts),
  };
}

/** The request's token budget: options.num_ctx (or the model's context) bounds prompt and output. */
function budget(r: OllamaCommon, promptLength: number, model: LoadedModel, promptField: string): number {
  const ctxLen = r.numCtx ?? model.info.contextLength;
  if (r.numCtx !== undefined && promptLength >= r.numCtx) {
    throw badRequest(
      `the ${promptField} has ${promptLength} tokens, which does not fit options.num_ctx (${r.numCtx} tokens)`,
      "options.num_ctx",
      "context_length_exceeded",
    );
  }
  const room = defaultMaxTokens(promptLength, ctxLen);
  return r.numPredict === undefined ? room : Math.min(r.numPredict, room);
}

interface Run {
  endpoint: "/api/generate" | "/api/chat";
  r: OllamaCommon;
  prompt: { ids: number[]; text: string };
  promptField: string;
  /** The whole reply's text field: generate's `response`, chat's `message`. */
  body(text: string): Record<string, unknown>;
  /** The stream lines' text fields for the next piece of text (with `finish`, the reply's end). */
  lines(text: string, finish: boolean): Record<string, unknown>[];
  /** The last line's text field. */
  last: Record<string, unknown>;
  /** What constrains the output, where it is not the request's `format` alone (chat's tools). */
  structured?: StructuredOutput;
}

async function run(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply, model: LoadedModel, x: Run) {
  const { r, prompt } = x;
  const choice: Choice = {
    index: 0,
    prompt: 0,
    params: {
      prompt: prompt.ids,
      maxTokens: budget(r, prompt.ids.length, model, x.promptField),
      sampling: r.sampling,
      stop: r.stop,
      stopAtEog: true,
      priority: 0,
      client: clientOf(req),
      endpoint: x.endpoint,
      promptText: prompt.text,
      fields: { prompt: x.promptField, maxTokens: "options.num_predict" },
      structured: "structured" in x ? x.structured : r.structured,
    },
  };
  const signal = clientSignal(req, reply);
  const streams: RequestStream[] = await startChoices(ctx, [choice], signal);
  const head = () => ({ model: r.model, created_at: new Date().toISOString() });

  if (!r.stream) {
    let text = "";
    const [finish] = await readChoices(streams, signal, (_i, e) => {
      text += e.text;
    });
    return { ...head(), ...x.body(text), done: true, ...ollamaStats(finish!) };
  }
  return streamChoices(ctx, reply, streams, signal, {
    framing: NDJSON,
    doneMarker: false,
    open() {},
    onEvent(_i, e) {
      for (const line of x.lines(e.text, e.finish !== undefined))
        sendSSE(reply, { ...head(), ...line, done: false });
      if (e.finish) sendSSE(reply, { ...head(), ...x.last, done: true, ...ollamaStats(e.finish) });
    },
    close() {},
    errorEvent: ollamaErrorBody,
  });
}

/** The answer to a request with nothing to generate from: Ollama's "model loaded" reply. */
const loaded = (model: string, body: Record<string, unknown>) => ({
  model,
  created_at: new Date().toISOString(),
  ...body,
  done: true,
  done_reason: "load",
});

async function generate(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/api/generate";
  const model = ctx.service.model(endpoint);
  const r = parseOllamaGenerate(req.body, {
    modelName: ctx.opts.modelName,
    contextLength: model.info.contextLength,
  });
  if (r.prompt === "") return loaded(r.model, { response: "" });
  const prompt = r.raw
    ? { ids: model.tokenizer.encode(r.prompt, { addSpecial: true, parseSpecial: true }), text: r.prompt }
    : chatPrompt(model, {
        messages: [
          ...(r.system !== undefined ? [{ role: "system", content: r.system }] : []),
          { role: "user", content: r.prompt },
        ],
      });
  if (prompt.ids.length === 0) throw badRequest("the prompt is empty once tokenized", "prompt");
  return run(ctx, req, reply, model, {
    endpoint,
    r,
    prompt,
    promptField: "prompt",
    body: (text) => ({ response: text }),
    lines: (text) => (text.length > 0 ? [{ response: text }] : []),
    last: { response: "" },
  });
}

async function chat(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply) {
  const endpoint = "/api/chat";
  const model = ctx.service.model(endpoint);
  const r = parseOllamaChat(req.body, {
    modelName: ctx.opts.modelName,
    contextLength: model.info.contextLength,
  });
  if (r.messages.length === 0) return loaded(r.model, { message: { role: "assistant", content: "" } });
  // Ollama's tools are always `auto`: calls in the model's own format become tool_calls, a grammar
  // engaging where a call starts (formats with a text trigger); a `format` wins over it. Reasoning
  // stays in the content, as before.
  const { prompt, mode, structured } = chatSetup(
    model,
    { messages: r.messages, toolRequest: r.tools },
    r.structured,
  );
  const output = new OllamaChatOutput({ ...mode, reasoning: false, startsThinking: false });
  return run(ctx, req, reply, model, {
    endpoint,
    r,
    prompt,
    promptField: "messages",
    structured,
    body: (text) => ({ message: output.message(text) }),
    lines: (text, finish) => output.lines(text, finish).map((message) => ({ message })),
    last: { message: { role: "assistant", content: "" } },
  });
}
