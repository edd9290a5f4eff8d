import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * Bad requests of every kind get the right status and an OpenAI-shaped error naming the field
 * (`param`), with a one-line message and never a stack trace (under Ollama's /api/: Ollama's shape,
 * `{"error": "..."}`); and none of them leaves anything behind in the engine (no running or waiting
 * request, no KV block in use).
 */

type Json = Record<string, unknown>;

interface Case {
  name: string;
  method?: "GET" | "POST";
  path: string;
  /** A JSON object (sent with application/json), or raw bytes/text sent as they are. */
  body?: Json | string | Buffer;
  headers?: Record<string, string>;
  status: number;
  type: string;
  /** Expected error.param; undefined = not checked. */
  param?: string | null;
  code?: string;
  /** Extra check of the message (tokens and context named, …). */
  message?: RegExp;
  /** The error's shape: OpenAI's (default), or llama-server's on its native routes (no param). */
  shape?: "llama-server";
}

let srv: TestServer;
let model: string;
let contextLength: number;
let longPrompt: string;

const completion = (extra: Json): Json => ({ model, prompt: "Once upon a time", max_tokens: 4, ...extra });
const chat = (extra: Json): Json => ({
  model,
  messages: [{ role: "user", content: "Tell me a story." }],
  max_tokens: 4,
  ...extra,
});
const tgi = (extra: Json, params: Json = {}): Json => ({
  inputs: "Once upon a time",
  parameters: { max_new_tokens: 4, ...params },
  ...extra,
});

const llama = (extra: Json): Json => ({ prompt: "Once upon a time", n_predict: 4, ...extra });

const responses = (extra: Json): Json => ({
  model,
  input: "Tell me a story.",
  max_output_tokens: 4,
  ...extra,
});

const FN_TOOL = { type: "function", function: { name: "f", parameters: { type: "object" } } };

const RESP = "/v1/responses";
const C = "/v1/completions";
const LLAMA = "/completion";
const TOK = "/tokenize";
const CHAT = "/v1/chat/completions";
const GEN = "/generate";
const INVALID = "invalid_request_error";

function cases(): Case[] {
  const bad = (name: string, path: string, body: Json, param: string | null, status = 400): Case => ({
    name,
    path,
    body,
    status,
    type: status === 404 ? "not_found_error" : INVALID,
    param,
  });
  const invalidUtf8 = Buffer.concat([
    Buffer.from(`{"model":"${model}","prompt":"Once upon `),
    Buffer.from([0xc3, 0x28, 0xff]),
    Buffer.from(`a time","max_tokens":4}`),
  ]);
  return [
    // Wrong types and out-of-range values, completions.
    bad("prompt is a number", C, completion({ prompt: 5 }), "prompt"),
    bad("temperature is a string", C, completion({ temperature: "0.5" }), "temperature"),
    bad("temperature is the string NaN", C, completion({ temperature: "NaN" }), "temperature"),
    bad("temperature above 2", C, completion({ temperature: 3 }), "temperature"),
    bad("max_tokens is a string", C, completion({ max_tokens: "10" }), "max_tokens"),
    bad("max_tokens -1", C, completion({ max_tokens: -1 }), "max_tokens"),
    bad("max_tokens 0", C, completion({ max_tokens: 0 }), "max_tokens"),
    bad("max_tokens 10^9", C, completion({ max_tokens: 1e9 }), "max_tokens"),
    bad("n is 1.5", C, completion({ n: 1.5 }), "n"),
    bad("n is 0", C, completion({ n: 0 }), "n"),
    bad("n is 1000", C, completion({ n: 1000 }), "n"),
    bad("stop is a number", C, completion({ stop: 7 }), "stop"),
    bad("logit_bias is an array", C, completion({ logit_bias: [] }), "logit_bias"),
    bad("top_p is 2", C, completion({ top_p: 2 }), "top_p"),
    bad("top_k is -3", C, completion({ top_k: -3 }), "top_k"),
    bad("min_p is 1.5", C, completion({ min_p: 1.5 }), "min_p"),
    bad("presence_penalty is 5", C, completion({ presence_penalty: 5 }), "presence_penalty"),
    bad("seed is a string", C, completion({ seed: "x" }), "seed"),
    bad("logprobs is 50", C, completion({ logprobs: 50 }), "logprobs"),
    bad("unknown model", C, completion({ model: "gpt-17" }), "model", 404),
    {
      name: "prompt longer than the context",
      path: C,
      body: completion({ prompt: longPrompt }),
      status: 400,
      type: INVALID,
      param: "prompt",
      code: "context_length_exceeded",
      message: new RegExp(`${contextLength}.*\\d+ tokens`),
    },
    // Chat.
    bad("messages is a string", CHAT, chat({ messages: "hi" }), "messages"),
    bad("messages is empty", CHAT, chat({ messages: [] }), "messages"),
    bad("unknown role", CHAT, chat({ messages: [{ role: "wizard", content: "hi" }] }), "messages[0].role"),
    bad("message without content", CHAT, chat({ messages: [{ role: "user" }] }), "messages[0].content"),
    bad(
      "image_url content part",
      CHAT,
      chat({
        messages: [
          { role: "user", content: [{ type: "image_url", image_url: { url: "http://example.com/a.png" } }] },
        ],
      }),
      "messages[0].content",
    ),
    bad("top_logprobs is 30", CHAT, chat({ logprobs: true, top_logprobs: 30 }), "top_logprobs"),
    // Structured output: shapes the server checks (the compiler's own errors are in structured-output tests).
    bad(
      "response_format json_schema without json_schema",
      CHAT,
      chat({ response_format: { type: "json_schema" } }),
      "response_format.json_schema",
    ),
    bad(
      "response_format type xml",
      C,
      completion({ response_format: { type: "xml" } }),
      "response_format.type",
    ),
    bad(
      "response_format schema is a string",
      CHAT,
      chat({ response_format: { type: "json_schema", json_schema: { name: "x", schema: "object" } } }),
      "response_format.json_schema.schema",
    ),
    bad("completions guided_json is not JSON", C, completion({ guided_json: "{not json" }), "guided_json"),
    bad("completions grammar is a number", C, completion({ grammar: 5 }), "grammar"),
    bad(
      "chat structured_outputs.json is a number",
      CHAT,
      chat({ structured_outputs: { json: 5 } }),
      "structured_outputs.json",
    ),
    bad(
      "chat structured_outputs unknown key",
      CHAT,
      chat({ structured_outputs: { yaml: "a: b" } }),
      "structured_outputs.yaml",
    ),
    bad("chat guided_regex empty", CHAT, chat({ guided_regex: "" }), "guided_regex"),
    bad("chat guided_choice empty", CHAT, chat({ guided_choice: [] }), "guided_choice"),
    bad("chat guided_grammar is a list", CHAT, chat({ guided_grammar: ["root"] }), "guided_grammar"),
    bad("chat json_schema is a string", CHAT, chat({ json_schema: "object" }), "json_schema"),
    // What the grammar compiler refuses, named down to the keyword (the engine compiles at submit).
    {
      ...bad(
        "response_format: an unsupported format",
        CHAT,
        chat({
          response_format: {
            type: "json_schema",
            json_schema: {
              name: "x",
              schema: { type: "object", properties: { card: { type: "string", format: "credit-card" } } },
            },
          },
        }),
        "response_format.json_schema.schema.properties.card.format",
      ),
      code: "invalid_grammar",
      message: /credit-card/,
    },
    {
      ...bad(
        "guided_json: an unsupported keyword",
        C,
        completion({ guided_json: { type: "object", patternProperties: { "^x": { type: "string" } } } }),
        "guided_json.patternProperties",
      ),
      code: "invalid_grammar",
    },
    {
      ...bad(
        "guided_json: an unknown type",
        C,
        completion({ guided_json: { type: "strin" } }),
        "guided_json.type",
      ),
      code: "invalid_grammar",
    },
    {
      ...bad("guided_regex: unbalanced", CHAT, chat({ guided_regex: "([a-z]+" }), "guided_regex"),
      code: "invalid_grammar",
    },
    {
      ...bad("guided_grammar: bad GBNF", CHAT, chat({ guided_grammar: "root ::= (" }), "guided_grammar"),
      code: "invalid_grammar",
    },
    {
      ...bad(
        "structured_outputs.grammar: Lark with an unsupported directive",
        CHAT,
        chat({ structured_outputs: { grammar: 'start: "a" X\n%declare X' } }),
        "structured_outputs.grammar",
      ),
      code: "invalid_grammar",
      message: /%declare is not supported \(line 2, column 1\)/,
    },
    {
      ...bad(
        "guided_grammar: Lark using an undefined rule",
        C,
        completion({ guided_grammar: "start: item+\nitem: NAME\n%import common.CNAME" }),
        "guided_grammar",
      ),
      code: "invalid_grammar",
      message: /terminal NAME is used but not defined/,
    },
    {
      ...bad(
        "two structured-output fields",
        CHAT,
        chat({ response_format: { type: "json_object" }, guided_json: { type: "object" } }),
        "guided_json",
      ),
      code: "conflicting_fields",
    },
    {
      ...bad(
        "structured_outputs with two constraints",
        C,
        completion({ structured_outputs: { regex: "a+", choice: ["a"] } }),
        "structured_outputs.choice",
      ),
      code: "conflicting_fields",
    },
    bad(
      "chat: a tool without a name",
      CHAT,
      chat({ tools: [{ type: "function", function: { parameters: { type: "object" } } }] }),
      "tools[0].function.name",
    ),
    bad("chat: two tools of one name", CHAT, chat({ tools: [FN_TOOL, FN_TOOL] }), "tools[1].function.name"),
    bad(
      "chat: tool_choice names an unknown function",
      CHAT,
      chat({ tools: [FN_TOOL], tool_choice: { type: "function", function: { name: "g" } } }),
      "tool_choice",
    ),
    bad("chat: tool_choice without tools", CHAT, chat({ tool_choice: "auto" }), "tool_choice"),
    bad(
      "chat: a required tool whose parameters the grammar cannot enforce",
      CHAT,
      chat({
        tools: [
          {
            type: "function",
            function: { name: "f", parameters: { type: "object", patternProperties: {} } },
          },
        ],
        tool_choice: "required",
      }),
      "tools[0].function.parameters.patternProperties",
    ),
    bad(
      "chat: parallel_tool_calls is a string",
      CHAT,
      chat({ tools: [FN_TOOL], parallel_tool_calls: "no" }),
      "parallel_tool_calls",
    ),
    bad(
      "chat: a tool message without tool_call_id",
      CHAT,
      chat({
        messages: [
          { role: "user", content: "hi" },
          { role: "tool", content: "42" },
        ],
      }),
      "messages[1].tool_call_id",
    ),
    bad(
      "chat: assistant tool_calls with object arguments",
      CHAT,
      chat({
        messages: [
          { role: "user", content: "hi" },
          {
            role: "assistant",
            content: null,
            tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: {} } }],
          },
        ],
      }),
      "messages[1].tool_calls[0].function.arguments",
    ),
    bad(
      "chat: tool_calls on a user message",
      CHAT,
      chat({ messages: [{ role: "user", content: "hi", tool_calls: [] }] }),
      "messages[0].tool_calls",
    ),
    bad("chat temperature is a string", CHAT, chat({ temperature: "0.5" }), "temperature"),
    bad("chat max_tokens 10^9", CHAT, chat({ max_tokens: 1e9 }), "max_tokens"),
    bad("chat unknown model", CHAT, chat({ model: "gpt-17" }), "model", 404),
    // TGI.
    {
      name: "generate: inputs is a number",
      path: GEN,
      body: tgi({ inputs: 5 }),
      status: 400,
      type: INVALID,
      param: "inputs",
    },
    {
      name: "generate: temperature is a string",
      path: GEN,
      body: tgi({}, { temperature: "0.5" }),
      status: 400,
      type: INVALID,
      param: "parameters.temperature",
    },
    {
      name: "generate: max_new_tokens -1",
      path: GEN,
      body: tgi({}, { max_new_tokens: -1 }),
      status: 400,
      type: INVALID,
      param: "parameters.max_new_tokens",
    },
    {
      name: "generate: inputs longer than the context",
      path: GEN,
      body: tgi({ inputs: longPrompt }),
      status: 400,
      type: INVALID,
      param: "inputs",
      code: "context_length_exceeded",
      message: new RegExp(`${contextLength}`),
    },
    bad(
      "generate: grammar of type ebnf",
      GEN,
      tgi({}, { grammar: { type: "ebnf", value: "x" } }),
      "parameters.grammar.type",
    ),
    bad(
      "generate: json grammar not JSON",
      GEN,
      tgi({}, { grammar: { type: "json", value: "{" } }),
      "parameters.grammar.value",
    ),
    // The simple /generate body.
    bad("generate: simple max_tokens beside inputs", GEN, { inputs: "Once", max_tokens: 4 }, "max_tokens"),
    bad(
      "generate: simple temperature beside parameters",
      GEN,
      { prompt: "Once", parameters: {}, temperature: 0 },
      "temperature",
    ),
    bad("generate: simple max_tokens is a string", GEN, { prompt: "Once", max_tokens: "10" }, "max_tokens"),
    bad("generate: simple temperature 5", GEN, { prompt: "Once", temperature: 5 }, "temperature"),
    bad("generate: simple stop is a number", GEN, { prompt: "Once", max_tokens: 4, stop: 3 }, "stop"),
    bad("generate: simple prompt is a number", GEN, { prompt: 5, max_tokens: 4 }, "prompt"),
    {
      name: "generate: simple prompt longer than the context",
      path: GEN,
      body: { prompt: longPrompt, max_tokens: 4 },
      status: 400,
      type: INVALID,
      param: "prompt",
      code: "context_length_exceeded",
    },
    // /tokenize's chat and llama-server forms.
    bad("tokenize: messages is a string", TOK, { messages: "hi" }, "messages"),
    bad(
      "tokenize: message with an unknown role",
      TOK,
      { messages: [{ role: "x", content: "hi" }] },
      "messages[0].role",
    ),
    bad(
      "tokenize: messages and prompt",
      TOK,
      { messages: [{ role: "user", content: "hi" }], prompt: "hi" },
      "prompt",
    ),
    bad(
      "tokenize: add_generation_prompt is a string",
      TOK,
      { messages: [{ role: "user", content: "hi" }], add_generation_prompt: "yes" },
      "add_generation_prompt",
    ),
    bad("tokenize: content is a number", TOK, { content: 5 }, "content"),
    bad("tokenize: with_pieces is a string", TOK, { content: "hi", with_pieces: "yes" }, "with_pieces"),
    // llama-server's /completion: its own error shape.
    ...(
      [
        ["completion: prompt is a number", llama({ prompt: 5 })],
        ["completion: prompt is an empty list", llama({ prompt: [] })],
        ["completion: prompt holds a token id beyond the vocabulary", llama({ prompt: [1, 10 ** 7] })],
        ["completion: no prompt", { n_predict: 4 }],
        ["completion: n_predict 0", llama({ n_predict: 0 })],
        ["completion: n_predict -2", llama({ n_predict: -2 })],
        ["completion: n_predict is a string", llama({ n_predict: "5" })],
        ["completion: temperature is a string", llama({ temperature: "hot" })],
        ["completion: temperature 5", llama({ temperature: 5 })],
        ["completion: top_p 2", llama({ top_p: 2 })],
        ["completion: stop is a number", llama({ stop: 3 })],
        ["completion: n_probs 5", llama({ n_probs: 5 })],
        ["completion: grammar is a number", llama({ grammar: 5 })],
        ["completion: grammar that does not parse", llama({ grammar: "root ::= (" })],
        [
          "completion: json_schema with an unsupported keyword",
          llama({ json_schema: { type: "object", if: {} } }),
        ],
        [
          "completion: grammar and json_schema",
          llama({ grammar: 'root ::= "a"', json_schema: { type: "string" } }),
        ],
        ["completion: stream is a string", llama({ stream: "yes" })],
        ["completion: n_predict beyond the context", llama({ n_predict: 10 ** 6 })],
      ] as const
    ).map(
      ([name, body]): Case => ({
        name,
        path: LLAMA,
        body,
        status: 400,
        type: INVALID,
        shape: "llama-server",
      }),
    ),
    {
      name: "completion: prompt longer than the context",
      path: LLAMA,
      body: llama({ prompt: longPrompt }),
      status: 400,
      type: INVALID,
      shape: "llama-server",
      message: new RegExp(`${contextLength}`),
    },
    {
      name: "completion: truncated JSON",
      path: LLAMA,
      body: "{",
      status: 400,
      type: INVALID,
      shape: "llama-server",
    },
    {
      name: "completion: wrong content type",
      path: LLAMA,
      body: JSON.stringify(llama({})),
      headers: { "content-type": "text/plain" },
      status: 415,
      type: INVALID,
      shape: "llama-server",
    },
    // Bodies that are not a JSON object.
    {
      name: "NaN literal (not JSON)",
      path: C,
      body: `{"model":"${model}","prompt":"Once","temperature":NaN}`,
      status: 400,
      type: INVALID,
      param: null,
      code: "invalid_json",
    },
    {
      name: "truncated JSON",
      path: C,
      body: '{"model":',
      status: 400,
      type: INVALID,
      param: null,
      code: "invalid_json",
    },
    {
      name: "truncated JSON (chat)",
      path: CHAT,
      body: "{",
      status: 400,
      type: INVALID,
      code: "invalid_json",
    },
    {
      name: "truncated JSON (generate)",
      path: GEN,
      body: "{",
      status: 400,
      type: INVALID,
      code: "invalid_json",
    },
    { name: "JSON array body", path: C, body: "[1, 2]", status: 400, type: INVALID, param: null },
    { name: "JSON string body", path: CHAT, body: '"hello"', status: 400, type: INVALID, param: null },
    { name: "empty body", path: C, body: "", status: 400, type: INVALID, param: null },
    {
      name: "no body at all",
      path: C,
      body: undefined,
      headers: {},
      status: 400,
      type: INVALID,
      param: null,
    },
    {
      name: "invalid UTF-8 bytes",
      path: C,
      body: invalidUtf8,
      status: 400,
      type: INVALID,
      param: null,
      message: /UTF-8/,
    },
    {
      name: "10 MB body",
      path: C,
      body: JSON.stringify(completion({ prompt: "a".repeat(10 * 1024 * 1024) })),
      status: 413,
      type: INVALID,
      param: null,
    },
    {
      name: "wrong content type",
      path: C,
      body: JSON.stringify(completion({})),
      headers: { "content-type": "text/plain" },
      status: 415,
      type: INVALID,
      param: null,
    },
    {
      name: "form content type",
      path: GEN,
      body: "inputs=hello",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      status: 415,
      type: INVALID,
    },
    {
      name: "gzip content encoding",
      path: C,
      body: JSON.stringify(completion({})),
      headers: { "content-type": "application/json", "content-encoding": "gzip" },
      status: 415,
      type: INVALID,
    },
    // Routes.
    { name: "unknown route", method: "GET", path: "/v1/engines", status: 404, type: "not_found_error" },
    { name: "unknown POST route", path: "/v1/edits", body: {}, status: 404, type: "not_found_error" },
    { name: "wrong method", method: "GET", path: C, status: 404, type: "not_found_error" },
    { name: "malformed URL", method: "GET", path: "/v1/%zz", status: 400, type: INVALID },
    // /v1/responses (OpenAI's Responses API).
    bad("responses: input missing", RESP, { model, max_output_tokens: 4 }, "input"),
    bad("responses: input is a number", RESP, responses({ input: 5 }), "input"),
    bad("responses: input is an empty list", RESP, responses({ input: [] }), "input"),
    bad("responses: input item not an object", RESP, responses({ input: ["hi"] }), "input[0]"),
    bad(
      "responses: input item of another type",
      RESP,
      responses({ input: [{ type: "item_reference", id: "msg_1" }] }),
      "input[0].type",
    ),
    bad(
      "responses: bad role",
      RESP,
      responses({ input: [{ role: "robot", content: "hi" }] }),
      "input[0].role",
    ),
    bad(
      "responses: image part",
      RESP,
      responses({
        input: [{ role: "user", content: [{ type: "input_image", image_url: "http://x/y.png" }] }],
      }),
      "input[0].content[0].type",
    ),
    bad(
      "responses: part text not a string",
      RESP,
      responses({ input: [{ role: "user", content: [{ type: "input_text", text: 1 }] }] }),
      "input[0].content[0].text",
    ),
    bad("responses: instructions a number", RESP, responses({ instructions: 3 }), "instructions"),
    bad("responses: max_output_tokens 0", RESP, responses({ max_output_tokens: 0 }), "max_output_tokens"),
    bad(
      "responses: max_output_tokens a string",
      RESP,
      responses({ max_output_tokens: "4" }),
      "max_output_tokens",
    ),
    bad(
      "responses: max_output_tokens beyond the context",
      RESP,
      responses({ max_output_tokens: 1e6 }),
      "max_output_tokens",
    ),
    bad("responses: temperature above 2", RESP, responses({ temperature: 3 }), "temperature"),
    bad("responses: top_p 0", RESP, responses({ top_p: 0 }), "top_p"),
    bad("responses: stream a string", RESP, responses({ stream: "yes" }), "stream"),
    bad(
      "responses: tool without a name",
      RESP,
      responses({ tools: [{ type: "function", parameters: {} }] }),
      "tools[0].name",
    ),
    bad(
      "responses: tool of another type",
      RESP,
      responses({ tools: [{ type: "web_search" }] }),
      "tools[0].type",
    ),
    bad(
      "responses: tool parameters not an object",
      RESP,
      responses({ tools: [{ type: "function", name: "f", parameters: 3 }] }),
      "tools[0].parameters",
    ),
    bad(
      "responses: tool_choice names an unknown function",
      RESP,
      responses({
        tools: [{ type: "function", name: "f", parameters: {} }],
        tool_choice: { type: "function", name: "g" },
      }),
      "tool_choice.name",
    ),
    bad(
      "responses: tool_choice required without tools",
      RESP,
      responses({ tool_choice: "required" }),
      "tool_choice",
    ),
    bad(
      "responses: function_call item without call_id",
      RESP,
      responses({ input: [{ type: "function_call", name: "f", arguments: "{}" }] }),
      "input[0].call_id",
    ),
    bad(
      "responses: function_call_output with a non-string output",
      RESP,
      responses({ input: [{ type: "function_call_output", call_id: "call_1", output: 5 }] }),
      "input[0].output",
    ),
    bad(
      "responses: text.format type xml",
      RESP,
      responses({ text: { format: { type: "xml" } } }),
      "text.format.type",
    ),
    bad(
      "responses: text.format schema is a number",
      RESP,
      responses({ text: { format: { type: "json_schema", name: "x", schema: 3 } } }),
      "text.format.schema",
    ),
    bad("responses: reasoning refused", RESP, responses({ reasoning: { effort: "high" } }), "reasoning"),
    bad("responses: store true refused", RESP, responses({ store: true }), "store"),
    bad(
      "responses: unknown previous_response_id",
      RESP,
      responses({ previous_response_id: "resp_123" }),
      "previous_response_id",
    ),
    bad(
      "responses: include refused",
      RESP,
      responses({ include: ["message.output_text.logprobs"] }),
      "include",
    ),
    bad("responses: another model", RESP, responses({ model: "gpt-4o" }), "model", 404),
    bad("embeddings: no input", EMB, { model }, "input"),
    bad("embeddings: empty string", EMB, { model, input: "" }, "input"),
    bad("embeddings: empty list", EMB, { model, input: [] }, "input"),
    bad("embeddings: an empty string in the list", EMB, { model, input: ["a", ""] }, "input[1]"),
    bad("embeddings: input a number", EMB, { model, input: 3 }, "input"),
    bad("embeddings: input an object", EMB, { model, input: { text: "a" } }, "input"),
    bad("embeddings: mixed list", EMB, { model, input: ["a", 3] }, "input[1]"),
    bad("embeddings: token id out of vocabulary", EMB, { model, input: [1, 99999] }, "input"),
    bad(
      "embeddings: negative token id",
      EMB,
      {
        model,
        input: [
          [1, 2],
          [1, -1],
        ],
      },
      "input[1]",
    ),
    bad("embeddings: fractional token id", EMB, { model, input: [1, 2.5] }, "input"),
    {
      ...bad("embeddings: longer than the context", EMB, { model, input: longPrompt }, "input"),
      code: "context_length_exceeded",
      message: /context length/,
    },
    bad(
      "embeddings: bad encoding_format",
      EMB,
      { model, input: "a", encoding_format: "int8" },
      "encoding_format",
    ),
    bad("embeddings: dimensions not the model's", EMB, { model, input: "a", dimensions: 8 }, "dimensions"),
    bad("embeddings: dimensions a string", EMB, { model, input: "a", dimensions: "64" }, "dimensions"),
    bad("embeddings: user a number", EMB, { model, input: "a", user: 1 }, "user"),
    bad("embeddings: another model", EMB, { model: "text-embedding-3-small", input: "a" }, "model", 404),
  ];
}

const EMB = "/v1/embeddings";

interface OllamaCase {
  name: string;
  method?: "GET" | "POST";
  path: string;
  body?: Json | string;
  headers?: Record<string, string>;
  status: number;
  /** What the message must say (the field it names, …). */
  message: RegExp;
}

const OGEN = "/api/generate";
const OCHAT = "/api/chat";

function ollamaCases(): OllamaCase[] {
  const gen = (extra: Json, options: Json = {}): Json => ({
    model,
    prompt: "Once upon a time",
    stream: false,
    options: { num_predict: 4, ...options },
    ...extra,
  });
  const ochat = (extra: Json, options: Json = {}): Json => ({
    model,
    messages: [{ role: "user", content: "Tell me a story." }],
    stream: false,
    options: { num_predict: 4, ...options },
    ...extra,
  });
  const bad = (name: string, path: string, body: Json, message: RegExp, status = 400): OllamaCase => ({
    name,
    path,
    body,
    status,
    message,
  });
  return [
    { name: "invalid JSON (generate)", path: OGEN, body: '{"model":', status: 400, message: /JSON/ },
    { name: "invalid JSON (chat)", path: OCHAT, body: "{", status: 400, message: /JSON/ },
    { name: "JSON array body (chat)", path: OCHAT, body: "[1]", status: 400, message: /object/ },
    bad("missing model", OGEN, { prompt: "hi" }, /^model is required$/),
    bad("model is a number", OCHAT, ochat({ model: 5 }), /model/),
    bad("unknown model", OGEN, gen({ model: "llama3" }), /^model "llama3" not found$/, 404),
    bad("unknown model (chat)", OCHAT, ochat({ model: "qwen:7b" }), /^model "qwen:7b" not found$/, 404),
    bad("prompt is a number", OGEN, gen({ prompt: 5 }), /^prompt must be a string/),
    bad("stream is a string", OGEN, gen({ stream: "yes" }), /^stream must be true or false/),
    bad("messages not a list", OCHAT, ochat({ messages: "hi" }), /^messages must be a list/),
    bad("message is a string", OCHAT, ochat({ messages: ["hi"] }), /^messages\[0\]/),
    bad(
      "unknown role",
      OCHAT,
      ochat({ messages: [{ role: "wizard", content: "hi" }] }),
      /messages\[0\]\.role/,
    ),
    bad(
      "a tool without a name",
      OCHAT,
      ochat({ tools: [{ type: "function", function: { parameters: { type: "object" } } }] }),
      /^tools\[0\]\.function\.name is required/,
    ),
    bad(
      "tools is an object",
      OCHAT,
      ochat({ tools: { type: "function", function: { name: "f" } } }),
      /^tools must be an array/,
    ),
    bad("content is a number", OCHAT, ochat({ messages: [{ role: "user", content: 5 }] }), /content/),
    bad(
      "message images",
      OCHAT,
      ochat({ messages: [{ role: "user", content: "what is this?", images: ["aGVsbG8="] }] }),
      /messages\[0\]\.images is not supported/,
    ),
    bad(
      "message tool_calls",
      OCHAT,
      ochat({
        messages: [
          { role: "assistant", content: "", tool_calls: [{ function: { name: "f", arguments: "{}" } }] },
        ],
      }),
      /^messages\[0\]\.tool_calls\[0\]\.function\.arguments must be an object/,
    ),
    bad(
      "tool_calls on a user message",
      OCHAT,
      ochat({ messages: [{ role: "user", content: "", tool_calls: [{ function: { name: "f" } }] }] }),
      /^messages\[0\]\.tool_calls is only allowed on assistant messages/,
    ),
    bad("options is a list", OGEN, gen({ options: [] }), /^options must be an object/),
    bad(
      "temperature is 'hot'",
      OGEN,
      gen({}, { temperature: "hot" }),
      /^options\.temperature must be a number/,
    ),
    bad(
      "temperature 5",
      OCHAT,
      ochat({}, { temperature: 5 }),
      /^options\.temperature must be between 0 and 2/,
    ),
    bad("top_k is 1.5", OGEN, gen({}, { top_k: 1.5 }), /^options\.top_k must be an integer/),
    bad("top_p is 3", OGEN, gen({}, { top_p: 3 }), /^options\.top_p/),
    bad("repeat_penalty 0", OGEN, gen({}, { repeat_penalty: 0 }), /^options\.repeat_penalty/),
    bad("seed is a string", OGEN, gen({}, { seed: "x" }), /^options\.seed must be an integer/),
    bad("stop is a number", OGEN, gen({}, { stop: 5 }), /^options\.stop must be a list of strings/),
    bad("num_predict 0", OGEN, gen({}, { num_predict: 0 }), /^options\.num_predict must be ≥ 1, or -1/),
    bad("num_predict -3", OCHAT, ochat({}, { num_predict: -3 }), /^options\.num_predict/),
    bad(
      "num_ctx above the model's",
      OGEN,
      gen({}, { num_ctx: 10 ** 6 }),
      /^options\.num_ctx must be between 1 and/,
    ),
    bad("mirostat 2", OGEN, gen({}, { mirostat: 2 }), /^options\.mirostat is not supported/),
    bad("format yaml", OGEN, gen({ format: "yaml" }), /^format must be "json" or a JSON schema/),
    bad("format is a number (chat)", OCHAT, ochat({ format: 5 }), /^format must be a JSON schema/),
    bad(
      "format schema with an unsupported keyword",
      OGEN,
      gen({ format: { type: "object", dependentSchemas: {} } }),
      /^format\.dependentSchemas: unsupported keyword/,
    ),
    bad(
      "tools on /api/generate",
      OGEN,
      gen({ tools: [{ type: "function", function: { name: "f", parameters: { type: "object" } } }] }),
      /^tools is not supported/,
    ),
    bad("think true", OCHAT, ochat({ think: true }), /^think is not supported/),
    bad("suffix", OGEN, gen({ suffix: "The end." }), /^suffix is not supported/),
    bad("images", OGEN, gen({ images: ["aGVsbG8="] }), /^images is not supported/),
    bad("context tokens", OGEN, gen({ context: [1, 2, 3] }), /^context is not supported/),
    bad("template override", OGEN, gen({ template: "{{ .Prompt }}" }), /^template is not supported/),
    bad("keep_alive is an object", OGEN, gen({ keep_alive: {} }), /^keep_alive must be/),
    bad(
      "prompt longer than the context",
      OGEN,
      gen({ prompt: longPrompt }),
      new RegExp(`${contextLength} tokens`),
    ),
    bad(
      "messages longer than the context",
      OCHAT,
      ochat({ messages: [{ role: "user", content: longPrompt }] }),
      new RegExp(`${contextLength} tokens`),
    ),
    bad("prompt longer than num_ctx", OGEN, gen({}, { num_ctx: 3 }), /options\.num_ctx \(3 tokens\)/),
    bad("show: missing model", "/api/show", {}, /^model is required$/),
    bad("show: unknown model", "/api/show", { model: "llama3" }, /^model "llama3" not found$/, 404),
    {
      name: "wrong content type",
      path: OGEN,
      body: JSON.stringify(gen({})),
      headers: { "content-type": "text/plain" },
      status: 415,
      message: /content type/,
    },
    { name: "unknown /api/ route", method: "GET", path: "/api/pull", status: 404, message: /no route/ },
    { name: "wrong method", method: "GET", path: OCHAT, status: 404, message: /no route/ },
    bad("embed: missing model", OEMBED, { input: "hi" }, /^model is required$/),
    bad("embed: unknown model", OEMBED, { model: "nomic-embed-text", input: "hi" }, /not found/, 404),
    bad("embed: input a number", OEMBED, { model, input: 3 }, /^input must be a string or a list of strings/),
    bad(
      "embed: token ids",
      OEMBED,
      { model, input: [1, 2, 3] },
      /^input must be a string or a list of strings/,
    ),
    bad(
      "embed: an empty string in the list",
      OEMBED,
      { model, input: ["a", ""] },
      /input\[1\] is an empty string/,
    ),
    bad(
      "embed: truncate a string",
      OEMBED,
      { model, input: "a", truncate: "no" },
      /^truncate must be true or false/,
    ),
    bad(
      "embed: longer than the context, truncate false",
      OEMBED,
      { model, input: longPrompt, truncate: false },
      new RegExp(`more than the context length \\(${contextLength}\\)`),
    ),
    bad(
      "embed: longer than num_ctx, truncate false",
      OEMBED,
      { model, input: "Once upon a time", truncate: false, options: { num_ctx: 2 } },
      /context length \(2\)/,
    ),
    bad(
      "embed: options not an object",
      OEMBED,
      { model, input: "a", options: 3 },
      /^options must be an object/,
    ),
    bad(
      "embed: num_ctx above the model's",
      OEMBED,
      { model, input: "a", options: { num_ctx: 1e7 } },
      /num_ctx/,
    ),
    bad("embed: keep_alive an object", OEMBED, { model, input: "a", keep_alive: {} }, /^keep_alive/),
    bad(
      "embed: dimensions not the model's",
      OEMBED,
      { model, input: "a", dimensions: 8 },
      /^dimensions 8 is not supported/,
    ),
    bad("embeddings: prompt a number", "/api/embeddings", { model, prompt: 3 }, /^prompt must be a string/),
    bad(
      "embeddings: longer than the context",
      "/api/embeddings",
      { model, prompt: longPrompt },
      /more than the context length/,
    ),
  ];
}

const OEMBED = "/api/embed";

function expectOllamaError(res: { status: number; headers: Headers; text: string }, c: OllamaCase): void {
  expect(res.status, res.text).toBe(c.status);
  expect(res.headers.get("content-type")).toMatch(/^application\/json/);
  expect(res.text).not.toMatch(/\n\s+at /);
  const body = JSON.parse(res.text) as Record<string, unknown>;
  expect(Object.keys(body)).toEqual(["error"]);
  expect(typeof body.error).toBe("string");
  const message = body.error as string;
  expect(message).not.toMatch(/[\r\n]/);
  expect(message).toMatch(c.message);
}

async function send(
  c: Case | OllamaCase,
  base = srv.url,
): Promise<{ status: number; headers: Headers; text: string }> {
  const headers: Record<string, string> = { ...c.headers };
  let body: string | Buffer | undefined;
  if (c.body === undefined) body = undefined;
  else if (typeof c.body === "string" || Buffer.isBuffer(c.body)) body = c.body;
  else body = JSON.stringify(c.body);
  if (body !== undefined && c.headers?.["content-type"] === undefined)
    headers["content-type"] = "application/json";
  const res = await fetch(base + c.path, { method: c.method ?? "POST", headers, body });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** llama-server's error shape: {error: {code: <status>, message, type}}. */
function expectLlamaServerError(
  res: { status: number; headers: Headers; text: string },
  c: Pick<Case, "status" | "type" | "message">,
): void {
  expect(res.status, res.text).toBe(c.status);
  expect(res.headers.get("content-type")).toMatch(/^application\/json/);
  expect(res.text).not.toMatch(/\n\s+at /);
  const body = JSON.parse(res.text) as { error: Record<string, unknown> };
  expect(Object.keys(body)).toEqual(["error"]);
  const e = body.error;
  expect(Object.keys(e).sort()).toEqual(["code", "message", "type"]);
  expect(e.code).toBe(c.status);
  expect(e.type).toBe(c.type);
  expect(typeof e.message).toBe("string");
  expect((e.message as string).trim().length).toBeGreaterThan(0);
  expect(e.message).not.toMatch(/[\r\n]/);
  if (c.message) expect(e.message).toMatch(c.message);
}

function expectOpenAIError(
  res: { status: number; headers: Headers; text: string },
  c: Pick<Case, "status" | "type" | "param" | "code" | "message">,
): void {
  expect(res.status, res.text).toBe(c.status);
  expect(res.headers.get("content-type")).toMatch(/^application\/json/);
  expect(res.text).not.toMatch(/\n\s+at /); // no stack trace, anywhere
  const body = JSON.parse(res.text) as { error: Record<string, unknown> };
  expect(Object.keys(body)).toEqual(["error"]);
  const e = body.error;
  expect(Object.keys(e).sort()).toEqual(["code", "message", "param", "type"]);
  expect(e.type).toBe(c.type);
  if (c.param !== undefined) expect(e.param).toBe(c.param);
  else expect(e.param === null || typeof e.param === "string").toBe(true);
  if (c.code !== undefined) expect(e.code).toBe(c.code);
  expect(typeof e.message).toBe("string");
  const message = e.message as string;
  expect(message.trim().length).toBeGreaterThan(0);
  expect(message).not.toMatch(/[\r\n]/);
  if (c.message) expect(message).toMatch(c.message);
}

beforeAll(async () => {
  srv = await startTestServer();
  model = srv.server.ctx.opts.modelName;
  const m = srv.server.ctx.model!;
  contextLength = m.info.contextLength;
  longPrompt = "Once upon a time there was a little girl. ".repeat(Math.ceil(contextLength / 4));
  expect(m.tokenizer.encode(longPrompt).length).toBeGreaterThan(contextLength);
});
afterAll(async () => {
  await srv?.close();
});

describe("bad input", () => {
  it("has at least 30 cases", () => {
    expect(cases().length).toBeGreaterThanOrEqual(30);
  });

  it("a good request still works (the table is not failing for a trivial reason)", async () => {
    const res = await send({ name: "ok", path: C, body: completion({}), status: 200, type: "" });
    expect(res.status, res.text).toBe(200);
  });

  it("gets the right status, type and param for every bad input", async () => {
    const failures: string[] = [];
    for (const c of cases()) {
      const res = await send(c);
      try {
        if (c.shape === "llama-server") expectLlamaServerError(res, c);
        else expectOpenAIError(res, c);
      } catch (err) {
        failures.push(
          `${c.name}: ${(err as Error).message.split("\n")[0]} — got ${res.status} ${res.text.slice(0, 300)}`,
        );
      }
    }
    expect(failures).toEqual([]);
  });

  it("Ollama's routes: the right status and Ollama's error shape for every bad input", async () => {
    expect(ollamaCases().length).toBeGreaterThanOrEqual(30);
    const ok = await send({
      name: "ok",
      path: OGEN,
      body: { model, prompt: "Once", stream: false, options: { num_predict: 2 } },
      status: 200,
      message: /./,
    });
    expect(ok.status, ok.text).toBe(200);
    const failures: string[] = [];
    for (const c of ollamaCases()) {
      const res = await send(c);
      try {
        expectOllamaError(res, c);
      } catch (err) {
        failures.push(
          `${c.name}: ${(err as Error).message.split("\n")[0]} — got ${res.status} ${res.text.slice(0, 300)}`,
        );
      }
    }
    expect(failures).toEqual([]);
  });

  it("refuses a missing or wrong API key with 401 when the server has keys", async () => {
    const keyed = await startTestServer({ apiKeys: ["bad-input-secret-key"] });
    try {
      const body = { model: keyed.server.ctx.opts.modelName, prompt: "Once", max_tokens: 2 };
      expectOpenAIError(await send({ name: "no key", path: C, body, status: 401, type: "" }, keyed.url), {
        status: 401,
        type: "authentication_error",
        param: null,
        code: "missing_api_key",
      });
      const wrong = await send(
        {
          name: "wrong key",
          path: C,
          body,
          headers: { authorization: "Bearer nope" },
          status: 401,
          type: "",
        },
        keyed.url,
      );
      expectOpenAIError(wrong, {
        status: 401,
        type: "authentication_error",
        param: null,
        code: "invalid_api_key",
      });
      // llama-server's routes answer in its shape, admission included.
      const llamaNoKey = await send(
        { name: "no key (llama-server)", path: LLAMA, body: llama({}), status: 401, type: "" },
        keyed.url,
      );
      expectLlamaServerError(llamaNoKey, { status: 401, type: "authentication_error" });
      // Ollama's routes answer in Ollama's shape.
      const ollama = await send(
        {
          name: "no key (ollama)",
          path: OCHAT,
          body: { model: body.model, messages: [] },
          status: 401,
          message: /./,
        },
        keyed.url,
      );
      expectOllamaError(ollama, { name: "", path: OCHAT, status: 401, message: /key/i });
    } finally {
      await keyed.close();
    }
  });

  it("malformed HTTP gets an OpenAI-shaped 400 too", async () => {
    const { port } = new URL(srv.url);
    const raw = await new Promise<string>((resolve, reject) => {
      const sock = connect(Number(port), "127.0.0.1", () => sock.write("NOT HTTP AT ALL\r\n\r\n"));
      let data = "";
      sock.on("data", (b: Buffer) => (data += b.toString()));
      sock.on("close", () => resolve(data));
      sock.on("error", reject);
    });
    const [head, body] = raw.split("\r\n\r\n");
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(head).toMatch(/content-type: application\/json/i);
    const e = (JSON.parse(body!) as { error: Record<string, unknown> }).error;
    expect(e).toMatchObject({ type: INVALID, param: null });
    expect(typeof e.message).toBe("string");
  });

  it("a body that stops arriving gets an OpenAI-shaped 408 once --body-timeout-ms has passed", async () => {
    const slow = await startTestServer({ bodyTimeoutMs: 300 });
    try {
      const { port } = new URL(slow.url);
      const raw = await new Promise<string>((resolve, reject) => {
        const body = JSON.stringify(completion({}));
        const sock = connect(Number(port), "127.0.0.1", () =>
          sock.write(
            `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 20)}`,
          ),
        );
        let data = "";
        sock.on("data", (b: Buffer) => (data += b.toString()));
        sock.on("close", () => resolve(data));
        sock.on("error", reject);
      });
      const [head, body] = raw.split("\r\n\r\n");
      expect(head).toMatch(/^HTTP\/1\.1 408 /);
      expect(head).toMatch(/connection: close/i);
      const e = (JSON.parse(body!) as { error: Record<string, unknown> }).error;
      expect(e).toMatchObject({ type: INVALID, param: null, code: "request_timeout" });
      expect(e.message).toMatch(/^[^\r\n]+$/);
    } finally {
      await slow.close();
    }
  });

  it("leaves nothing behind: /health is 200, no request running or waiting, no KV block in use", async () => {
    const health = await fetch(`${srv.url}/health`);
    expect(health.status).toBe(200);
    const stats = await engineStats(srv);
    expect(stats.running).toBe(0);
    expect(stats.waiting).toBe(0);
    expect(stats.unfinished).toBe(0);
    expect(stats.kvUsage).toBe(0);
    expect(srv.server.ctx.service.numInFlight).toBe(0);
    expect(srv.server.ctx.service.numWaiting).toBe(0);
    const metrics = await fetch(`${srv.url}/metrics?format=json`);
    expect(metrics.status).toBe(200);
    const snap = (await metrics.json()) as Record<string, unknown>;
    expect(snap.num_requests_running).toBe(0);
    expect(snap.num_requests_waiting).toBe(0);
    expect(snap.kv_cache_usage_perc).toBe(0);
  });
});
