import { type Message, Ollama } from "ollama";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HERMES_TOOL_TEMPLATE } from "../../src/chat/hermes-template.js";
import { chatOutputMode } from "../../src/server/chat-output.js";
import { OllamaChatOutput } from "../../src/server/ollama-chat-output.js";
import { parseToolRequest } from "../../src/server/tool-request.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { hermesToolModel } from "../helpers/tool-models.js";

/**
 * Tools on Ollama's /api/chat. Ollama has no tool_choice (the model decides, not enforced), and a
 * synthesized model's random weights do not write calls, so the reply's shaping is tested from
 * the text a model writes (the Hermes format) through OllamaChatOutput, and the official `ollama`
 * client, unmodified, checks against a real server that tools and a tool conversation are
 * accepted and reach the prompt exactly as the same conversation in OpenAI's shape does.
 */

const MODEL = "hermes-tools";
let srv: TestServer;
let ollama: Ollama;

const weather = {
  type: "function" as const,
  function: {
    name: "get_weather",
    description: "The weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" as const } },
      required: ["city"],
    },
  },
};

beforeAll(async () => {
  const path = hermesToolModel(2048);
  srv = await startTestServer({ modelName: MODEL, backend: { kind: "local", modelPath: path } });
  ollama = new Ollama({ host: srv.url });
});
afterAll(async () => {
  await srv?.close();
});

const hermesOutput = () =>
  new OllamaChatOutput(chatOutputMode(HERMES_TOOL_TEMPLATE, "", parseToolRequest({ tools: [weather] })));

const CALLS =
  'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n' +
  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen"}}\n</tool_call>';

describe("Ollama's message from the model's text", () => {
  it("turns Hermes calls into tool_calls with arguments as objects", () => {
    expect(hermesOutput().message(CALLS)).toEqual({
      role: "assistant",
      content: "Let me look.",
      tool_calls: [
        { function: { name: "get_weather", arguments: { city: "Oslo" } } },
        { function: { name: "get_weather", arguments: { city: "Bergen" } } },
      ],
    });
  });

  it("leaves plain text as content", () => {
    expect(hermesOutput().message("It is sunny.")).toEqual({ role: "assistant", content: "It is sunny." });
  });

  it("streams content as it comes and each call whole, once", () => {
    for (const size of [1, 3, 7, 1000]) {
      const out = hermesOutput();
      const lines = [];
      for (let i = 0; i < CALLS.length; i += size) {
        lines.push(...out.lines(CALLS.slice(i, i + size), i + size >= CALLS.length));
      }
      const content = lines.map((l) => l.content).join("");
      const calls = lines.flatMap((l) => l.tool_calls ?? []);
      expect(content.trim()).toBe("Let me look.");
      expect(calls).toEqual([
        { function: { name: "get_weather", arguments: { city: "Oslo" } } },
        { function: { name: "get_weather", arguments: { city: "Bergen" } } },
      ]);
      // No call is split over lines: each line with calls holds them complete.
      for (const l of lines) for (const c of l.tool_calls ?? []) expect(c.function.name).toBe("get_weather");
    }
  });
});

describe("tools on /api/chat with the ollama client", () => {
  // tool_name: the field Ollama's tool results carry (the client's Message type may lack it).
  const history = [
    { role: "user", content: "What is the weather in Oslo?" },
    {
      role: "assistant",
      content: "",
      tool_calls: [{ function: { name: "get_weather", arguments: { city: "Oslo" } } }],
    },
    { role: "tool", content: '{"temperature": 21}', tool_name: "get_weather" },
  ] as Message[];
  const openaiHistory = [
    history[0]!,
    {
      role: "assistant",
      content: "",
      tool_calls: [
        { id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Oslo"}' } },
      ],
    },
    { role: "tool", content: '{"temperature": 21}', tool_call_id: "call_1" },
  ];

  it("says the model has the tools capability", async () => {
    const show = await ollama.show({ model: MODEL });
    expect(show.capabilities).toContain("tools");
  });

  it("renders the tools and a tool conversation as the OpenAI route does", async () => {
    const options = { num_predict: 2, temperature: 0 };
    const withTools = await ollama.chat({
      model: MODEL,
      messages: history,
      tools: [weather],
      options,
    });
    expect(withTools.done).toBe(true);
    expect(withTools.done_reason).toMatch(/^(stop|length)$/);
    expect(withTools.message.role).toBe("assistant");
    const without = await ollama.chat({ model: MODEL, messages: history, options });
    expect(withTools.prompt_eval_count).toBeGreaterThan(without.prompt_eval_count + 20);

    const openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x" });
    const same = await openai.chat.completions.create({
      model: MODEL,
      messages: openaiHistory as OpenAI.ChatCompletionMessageParam[],
      tools: [weather],
      max_tokens: 2,
      temperature: 0,
    });
    expect(withTools.prompt_eval_count).toBe(same.usage!.prompt_tokens);
  });

  it("streams a reply to a request with tools", async () => {
    const stream = await ollama.chat({
      model: MODEL,
      messages: [{ role: "user", content: "What is the weather in Oslo?" }],
      tools: [weather],
      stream: true,
      options: { num_predict: 8 },
    });
    const parts = [];
    for await (const part of stream) parts.push(part);
    expect(parts.at(-1)!.done).toBe(true);
    expect(parts.slice(0, -1).every((p) => !p.done && p.message.role === "assistant")).toBe(true);
    expect(parts.at(-1)!.eval_count).toBeGreaterThan(0);
  });
});
