import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { ajvValidator } from "../grammar/helpers.js";
import { testModel, VOCAB_SPM } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { tempDir } from "../helpers/tmp.js";
import { CALL_TOKENS, hermesCallTokenModel, hermesToolModel } from "../helpers/tool-models.js";

/**
 * Tools on /v1/chat/completions against a real server: a model synthesized with Spindle's
 * Hermes-style tool template (`synth-model --chat-template hermes`), and stories260K (no template:
 * ChatML and the instruction fallback). With random weights the model writes no tool call of its
 * own, so these check what reaches the model (prompt tokens: the tools, or not with tool_choice
 * none), the response shapes, the tool history, and that streaming and whole responses agree.
 */

const MODEL = "tools-tiny";
let srv: TestServer;
let plain: TestServer;
let thinking: TestServer;

/** A template that opens the assistant's thinking itself, as DeepSeek-R1 distills' do (written here). */
const THINKING_TEMPLATE =
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | replace('</think>', '') }}<|im_end|>\n{% endfor %}" +
  "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

type Json = Record<string, unknown>;

interface ToolCallOut {
  id?: string;
  index?: number;
  type?: string;
  function: { name?: string; arguments: string };
}
interface Message {
  role: string;
  content: string | null;
  tool_calls?: ToolCallOut[];
  reasoning_content?: string;
}
interface ChatJson {
  choices: { message: Message; finish_reason: string }[];
  usage: { prompt_tokens: number; completion_tokens: number };
  error: { param: string | null; type: string; message: string };
}
interface ChunkJson {
  choices: { delta: Partial<Message> & { tool_calls?: ToolCallOut[] }; finish_reason: string | null }[];
}

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const user = [{ role: "user", content: "What is the weather in Paris?" }];

beforeAll(async () => {
  const path = hermesToolModel();
  srv = await startTestServer({ modelName: MODEL, backend: { kind: "local", modelPath: path } });
  plain = await startTestServer({ modelName: "stories260K" });
  const thinker = join(tempDir("spindle-think-"), "think-tiny.gguf");
  synthModel({
    arch: "llama",
    shape: SHAPES.tiny!,
    type: GGMLType.F32,
    vocabPath: testModel(VOCAB_SPM),
    out: thinker,
    chatTemplate: THINKING_TEMPLATE,
  });
  thinking = await startTestServer({ modelName: "think", backend: { kind: "local", modelPath: thinker } });
});
afterAll(async () => {
  await srv?.close();
  await plain?.close();
  await thinking?.close();
});

async function chat(body: Json, server = srv) {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ max_tokens: 8, temperature: 0, ...body }),
  });
  return { status: res.status, json: (await res.json()) as ChatJson };
}

async function chatStream(body: Json, server = srv) {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ max_tokens: 8, temperature: 0, ...body, stream: true }),
  });
  expect(res.status).toBe(200);
  const text = await res.text();
  const events = text
    .split("\n\n")
    .filter((b) => b.startsWith("data: ") && b !== "data: [DONE]")
    .map((b) => JSON.parse(b.slice(6)) as ChunkJson);
  expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
  return events;
}

describe("tools reach the model through its chat template", () => {
  it("auto: the template's tools section is in the prompt; the reply is an assistant message", async () => {
    const none = await chat({ messages: user });
    const auto = await chat({ messages: user, tools: [weather] });
    expect(auto.status).toBe(200);
    expect(auto.json.usage.prompt_tokens).toBeGreaterThan(none.json.usage.prompt_tokens + 40);
    const c = auto.json.choices[0]!;
    expect(c.message.role).toBe("assistant");
    expect(typeof c.message.content).toBe("string");
    expect(c.message.tool_calls).toBeUndefined();
    expect(c.finish_reason).toBe("length");
  });

  it("tool_choice none: the model does not see the tools and answers exactly as without them", async () => {
    const without = await chat({ messages: user });
    const none = await chat({
      messages: user,
      tools: [weather],
      tool_choice: "none",
      parallel_tool_calls: false,
    });
    expect(none.status).toBe(200);
    expect(none.json.usage.prompt_tokens).toBe(without.json.usage.prompt_tokens);
    expect(none.json.choices[0].message.content).toBe(without.json.choices[0].message.content);
  });

  it("a conversation with a call and its result renders back through the template", async () => {
    const messages = [
      ...user,
      {
        role: "assistant",
        content: null,
        tool_calls: [
          {
            id: "call_1",
            type: "function",
            function: { name: "get_weather", arguments: '{"city":"Paris"}' },
          },
        ],
      },
      { role: "tool", tool_call_id: "call_1", content: "sunny, 21 degrees" },
    ];
    const first = await chat({ messages: user, tools: [weather] });
    const second = await chat({ messages, tools: [weather] });
    expect(second.status).toBe(200);
    // The call (name and arguments) and the result are in the prompt.
    expect(second.json.usage.prompt_tokens).toBeGreaterThan(first.json.usage.prompt_tokens + 20);
  });

  it("streaming with tools: role first, the same content as the whole response, the same finish", async () => {
    const body = { messages: user, tools: [weather], tool_choice: "auto", max_tokens: 12 };
    const whole = await chat(body);
    const events = await chatStream(body);
    expect(events[0].choices[0].delta).toEqual({ role: "assistant", content: "" });
    const content = events.map((e) => e.choices[0]?.delta?.content ?? "").join("");
    expect(content).toBe(whole.json.choices[0].message.content);
    const last = events.filter((e) => e.choices[0]?.finish_reason);
    expect(last.map((e) => e.choices[0].finish_reason)).toEqual([whole.json.choices[0].finish_reason]);
    expect(events.some((e) => e.choices[0]?.delta?.tool_calls)).toBe(false);
  });

  it("/tokenize counts the chat prompt with its tools, as the chat route renders it", async () => {
    const res = await fetch(`${srv.url}/tokenize`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: user, tools: [weather] }),
    });
    const tok = (await res.json()) as { count: number };
    const auto = await chat({ messages: user, tools: [weather] });
    expect(tok.count).toBe(auto.json.usage.prompt_tokens);
  });

  it("a model without a template (stories260K, ChatML): the instruction fallback lists the tools", async () => {
    const without = await chat({ messages: user }, plain);
    const withTools = await chat({ messages: user, tools: [weather] }, plain);
    expect(withTools.status).toBe(200);
    expect(withTools.json.usage.prompt_tokens).toBeGreaterThan(without.json.usage.prompt_tokens + 40);
  });

  it("the openai SDK, unmodified: tools with tool_choice auto", async () => {
    const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x" });
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "What is the weather in Paris?" }],
      tools: [weather as OpenAI.Chat.Completions.ChatCompletionTool],
      tool_choice: "auto",
      max_tokens: 8,
    });
    expect(r.choices[0]!.message.role).toBe("assistant");
    expect(["length", "stop", "tool_calls"]).toContain(r.choices[0]!.finish_reason);
  });

  it("bad tool fields are 400s naming the field, and leave nothing behind", async () => {
    const cases: [Json, string][] = [
      [{ tools: [{ type: "function", function: { description: "no name" } }] }, "tools[0].function.name"],
      [{ tools: [weather, weather] }, "tools[1].function.name"],
      [{ tools: [weather], tool_choice: { type: "function", function: { name: "nope" } } }, "tool_choice"],
      [{ tools: [weather], tool_choice: "sometimes" }, "tool_choice"],
      [{ tool_choice: "required" }, "tool_choice"],
      [{ tools: [weather], parallel_tool_calls: "yes" }, "parallel_tool_calls"],
      [
        { tools: [{ type: "function", function: { name: "f", parameters: "x" } }] },
        "tools[0].function.parameters",
      ],
      [{ messages: [...user, { role: "tool", content: "42" }] }, "messages[1].tool_call_id"],
      [
        {
          messages: [
            ...user,
            {
              role: "assistant",
              content: null,
              tool_calls: [{ id: "c", function: { name: "f", arguments: {} } }],
            },
          ],
        },
        "messages[1].tool_calls[0].function.arguments",
      ],
    ];
    for (const [extra, param] of cases) {
      const r = await chat({ messages: user, ...extra });
      expect(r.status, JSON.stringify(extra)).toBe(400);
      expect(r.json.error.param).toBe(param);
      expect(r.json.error.type).toBe("invalid_request_error");
    }
    const s = await engineStats(srv);
    expect(s.running + s.waiting).toBe(0);
  });
});

describe("tool_choice auto: the tool grammar engages where a call starts", () => {
  // Bounded arguments, so that a call the (biased) random model starts must end.
  const forecast = {
    type: "function",
    function: {
      name: "forecast",
      parameters: {
        type: "object",
        properties: {
          city: { type: "string", minLength: 1, maxLength: 6 },
          unit: { enum: ["c", "f"] },
          days: { type: "integer", minimum: 1, maximum: 7 },
        },
        required: ["city", "days"],
        additionalProperties: false,
      },
    },
  };
  const weatherBounded = {
    ...weather,
    function: { ...weather.function, parameters: forecast.function.parameters },
  };
  const valid = ajvValidator(forecast.function.parameters);

  // A Hermes model whose vocabulary has `<tool_call>` as one token (as Qwen's has): a logit bias on it
  // makes the random model start calls, which the grammar must then make valid.
  let qwenish: TestServer;
  beforeAll(async () => {
    qwenish = await startTestServer({
      modelName: "hermes-tok",
      backend: { kind: "local", modelPath: hermesCallTokenModel() },
    });
  });
  afterAll(async () => {
    await qwenish?.close();
  });
  const biased = (parallel: boolean, seed: number, tools: unknown[] = [forecast, weatherBounded]) => ({
    messages: user,
    tools,
    parallel_tool_calls: parallel,
    n: 8,
    seed,
    temperature: 1,
    max_tokens: 96,
    logit_bias: { [String(CALL_TOKENS.open)]: 6 },
  });

  /** JSON.parse, or undefined for text that is not JSON (a call cut short). */
  const parsed = (text: string): unknown => {
    try {
      return JSON.parse(text);
    } catch {
      return undefined;
    }
  };

  it("random weights, biased towards <tool_call>: every call written validates (ajv), whole and streamed", async () => {
    let calls = 0;
    for (const parallel of [true, false]) {
      const res = await chat(biased(parallel, parallel ? 7 : 8), qwenish);
      expect(res.status, JSON.stringify(res.json.error)).toBe(200);
      for (const c of res.json.choices) {
        const tc = c.message.tool_calls ?? [];
        if (c.finish_reason === "tool_calls") expect(tc.length).toBeGreaterThan(0);
        if (!parallel) expect(tc.length).toBeLessThanOrEqual(1);
        // A call that streams as it is written and is cut off by max_tokens stays a call, its
        // arguments cut short (as OpenAI returns them with finish_reason "length"): every other call
        // is whole and valid.
        for (const [i, call] of tc.entries()) {
          expect(["get_weather", "forecast"]).toContain(call.function.name);
          const args = parsed(call.function.arguments);
          if (args === undefined) {
            expect(c.finish_reason === "length" && i === tc.length - 1, call.function.arguments).toBe(true);
            continue;
          }
          calls++;
          expect(valid(args), call.function.arguments).toBe(true);
        }
        // The trigger is left in the content only as the start of a call cut off by max_tokens.
        if ((c.message.content ?? "").includes("<tool_call>")) expect(c.finish_reason).toBe("length");
      }
    }
    expect(calls).toBeGreaterThan(4);
    // Streamed: the calls' deltas put together validate too.
    const events = await chatStream(biased(true, 9), qwenish);
    const args = new Map<string, string>();
    const lastCall = new Map<number, string>();
    const cutOff = new Set<number>();
    for (const e of events) {
      const ch = e.choices[0] as { index?: number; finish_reason?: string | null } | undefined;
      const choice = ch?.index ?? 0;
      if (ch?.finish_reason === "length") cutOff.add(choice);
      for (const d of e.choices[0]?.delta.tool_calls ?? []) {
        const key = `${choice}:${d.index}`;
        args.set(key, (args.get(key) ?? "") + d.function.arguments);
        lastCall.set(choice, key);
      }
    }
    let whole = 0;
    for (const [key, a] of args) {
      const v = parsed(a);
      if (v === undefined) {
        const choice = Number(key.split(":")[0]);
        expect(cutOff.has(choice) && lastCall.get(choice) === key, a).toBe(true);
        continue;
      }
      whole++;
      expect(valid(v), a).toBe(true);
    }
    expect(whole).toBeGreaterThan(0);
  }, 120_000);

  it("the same biased requests without tools write the trigger freely, and without a grammar after it", async () => {
    const res = await chat({ ...biased(true, 7), tools: undefined, parallel_tool_calls: undefined }, qwenish);
    expect(res.status).toBe(200);
    const texts = res.json.choices.map((c) => c.message.content ?? "");
    expect(texts.join("")).toContain("<tool_call>");
    // Random weights write no valid call on their own.
    const bodies = texts.flatMap((t) => t.split("<tool_call>").slice(1));
    expect(bodies.some((b) => !/^\s*\{"name":/.test(b))).toBe(true);
  }, 120_000);
});

describe("reasoning: a template whose prompt opens <think>", () => {
  it("the reply (cut off while thinking) is reasoning_content, in the message and in the deltas", async () => {
    const body = { messages: user, max_tokens: 10 };
    const whole = await chat(body, thinking);
    expect(whole.status).toBe(200);
    const m = whole.json.choices[0]!.message;
    expect(m.reasoning_content!.length).toBeGreaterThan(0);
    expect(m.content).toBe("");
    const events = await chatStream(body, thinking);
    const reasoning = events.map((e) => e.choices[0]?.delta?.reasoning_content ?? "").join("");
    expect(reasoning).toBe(m.reasoning_content);
    expect(events.every((e) => !e.choices[0]?.delta?.content)).toBe(true);
  });

  it("a model that does not think has no reasoning_content", async () => {
    const r = await chat({ messages: user });
    expect(r.json.choices[0]!.message.reasoning_content).toBeUndefined();
  });
});
