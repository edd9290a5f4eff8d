import { createOpenAI } from "@ai-sdk/openai";
import { generateText, isStepCount, jsonSchema, streamText, tool } from "ai";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { hermesToolModel } from "../helpers/tool-models.js";

/**
 * Enforced tool calls through the official clients, unmodified, against a real server: a model
 * synthesized with Spindle's Hermes-style tool template and random weights, so every valid call
 * it makes is the grammar's doing (tool_choice `required` or a named function). The AI SDK
 * (`.chat(...)`, the chat-completions provider) runs `generateText` with tools over two steps,
 * feeding the tool's result back; the openai SDK makes the call directly, whole and streamed.
 */

const MODEL = "hermes-tools";
let srv: TestServer;

const weatherParams = {
  type: "object",
  properties: {
    city: { type: "string", minLength: 1, maxLength: 20 },
    unit: { type: "string", enum: ["celsius", "fahrenheit"] },
  },
  required: ["city", "unit"],
  additionalProperties: false,
} as const;
const timeParams = {
  type: "object",
  properties: { zone: { type: "string", enum: ["UTC", "CET"] }, hour24: { type: "boolean" } },
  required: ["zone"],
  additionalProperties: false,
} as const;

beforeAll(async () => {
  const path = hermesToolModel(2048);
  srv = await startTestServer({ modelName: MODEL, backend: { kind: "local", modelPath: path } });
});
afterAll(async () => {
  await srv?.close();
});

const provider = () => createOpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x" });

/** A check by hand of what the grammar must guarantee for weatherParams. */
function validWeather(input: unknown): boolean {
  const v = input as Record<string, unknown>;
  return (
    typeof v === "object" &&
    v !== null &&
    Object.keys(v).every((k) => k === "city" || k === "unit") &&
    typeof v.city === "string" &&
    // JSON Schema's lengths count code points, not UTF-16 units (a random model writes astral ones).
    [...v.city].length >= 1 &&
    [...v.city].length <= 20 &&
    (v.unit === "celsius" || v.unit === "fahrenheit")
  );
}
function validTime(input: unknown): boolean {
  const v = input as Record<string, unknown>;
  return (
    typeof v === "object" &&
    v !== null &&
    Object.keys(v).every((k) => k === "zone" || k === "hour24") &&
    (v.zone === "UTC" || v.zone === "CET") &&
    (v.hour24 === undefined || typeof v.hour24 === "boolean")
  );
}

describe("AI SDK generateText with tools (chat completions provider)", () => {
  it("toolChoice required: a valid call; its result is fed back in a second step", async () => {
    const executed: unknown[] = [];
    const result = await generateText({
      model: provider().chat(MODEL),
      prompt: "What is the weather in Paris?",
      tools: {
        get_weather: tool({
          description: "Current weather in a city",
          inputSchema: jsonSchema<{ city: string; unit: string }>(weatherParams),
          execute: async (input) => {
            executed.push(input);
            return { temperature: 21, sky: "sunny" };
          },
        }),
        get_time: tool({
          description: "The time now",
          inputSchema: jsonSchema<{ zone: string; hour24?: boolean }>(timeParams),
          execute: async () => "12:00",
        }),
      },
      toolChoice: "required",
      providerOptions: { openai: { parallelToolCalls: false } },
      maxOutputTokens: 64,
      temperature: 1,
      seed: 7,
      // The second step answers with the result in its prompt, without calling again.
      prepareStep: ({ stepNumber }) => (stepNumber === 1 ? { toolChoice: "none" } : undefined),
      stopWhen: isStepCount(2),
      include: { requestBody: true },
    });
    expect(result.steps.length).toBe(2);
    const first = result.steps[0]!;
    expect(first.finishReason).toBe("tool-calls");
    expect(first.toolCalls.length).toBeGreaterThanOrEqual(1);
    for (const c of first.toolCalls) {
      expect(["get_weather", "get_time"]).toContain(c.toolName);
      expect(
        c.toolName === "get_weather" ? validWeather(c.input) : validTime(c.input),
        JSON.stringify(c.input),
      ).toBe(true);
    }
    expect(first.toolResults.length).toBe(first.toolCalls.length);
    expect(executed.length + first.toolCalls.filter((c) => c.toolName === "get_time").length).toBe(
      first.toolCalls.length,
    );
    const second = result.steps[1]!;
    expect(second.toolCalls.length).toBe(0);
    expect(second.finishReason).toBe("length");
    // The second request carried the assistant's calls and their results, and the server took them.
    const sent = (
      typeof second.request.body === "string" ? JSON.parse(second.request.body) : second.request.body
    ) as {
      messages: { role: string; tool_call_id?: string; tool_calls?: { id: string }[] }[];
    };
    const ids = first.toolCalls.map((c) => c.toolCallId);
    expect(sent.messages.find((m) => m.role === "assistant")?.tool_calls?.map((c) => c.id)).toEqual(ids);
    expect(sent.messages.filter((m) => m.role === "tool").map((m) => m.tool_call_id)).toEqual(ids);
    expect(second.usage.inputTokens!).toBeGreaterThan(0);
  });

  it("a named tool, streamed: the call is to that tool, and valid", async () => {
    const result = streamText({
      model: provider().chat(MODEL),
      prompt: "What time is it?",
      tools: {
        get_weather: tool({ inputSchema: jsonSchema(weatherParams) }),
        get_time: tool({ inputSchema: jsonSchema(timeParams) }),
      },
      toolChoice: { type: "tool", toolName: "get_time" },
      providerOptions: { openai: { parallelToolCalls: false } },
      maxOutputTokens: 64,
      temperature: 1,
      seed: 3,
    });
    const calls = await result.toolCalls;
    expect(await result.finishReason).toBe("tool-calls");
    expect(calls.length).toBeGreaterThanOrEqual(1);
    for (const c of calls) {
      expect(c.toolName).toBe("get_time");
      expect(validTime(c.input), JSON.stringify(c.input)).toBe(true);
    }
  });
});

describe("openai SDK tools", () => {
  const client = () => new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x" });
  const tools: OpenAI.Chat.Completions.ChatCompletionTool[] = [
    { type: "function", function: { name: "get_weather", parameters: weatherParams } },
    { type: "function", function: { name: "get_time", parameters: timeParams } },
  ];

  it("tool_choice required, several seeds: every reply is calls with valid arguments, finish_reason tool_calls", async () => {
    for (let seed = 0; seed < 6; seed++) {
      const r = await client().chat.completions.create({
        model: MODEL,
        messages: [{ role: "user", content: "Weather in Paris, and the time?" }],
        tools,
        tool_choice: "required",
        parallel_tool_calls: seed % 2 === 0,
        // Random weights: with parallel calls the model may go on adding calls for a while.
        max_tokens: seed % 2 === 0 ? 400 : 96,
        temperature: 1,
        seed,
      });
      const c = r.choices[0]!;
      expect(c.finish_reason).toBe("tool_calls");
      const calls = c.message.tool_calls ?? [];
      expect(calls.length).toBeGreaterThanOrEqual(1);
      if (seed % 2 === 1) expect(calls.length).toBe(1);
      for (const call of calls) {
        expect(call.id).toMatch(/^call_/);
        expect(call.type).toBe("function");
        if (call.type !== "function") continue;
        const args = JSON.parse(call.function.arguments);
        expect(
          call.function.name === "get_weather" ? validWeather(args) : validTime(args),
          JSON.stringify(args),
        ).toBe(true);
      }
    }
  });

  it("a named function, streamed: tool_calls deltas (index, id and name first, then arguments) join to a valid call", async () => {
    const stream = await client().chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Weather in Paris?" }],
      tools,
      tool_choice: { type: "function", function: { name: "get_weather" } },
      parallel_tool_calls: false,
      max_tokens: 96,
      temperature: 1,
      seed: 11,
      stream: true,
    });
    const byIndex = new Map<number, { id?: string; name?: string; args: string }>();
    let finish: string | null = null;
    for await (const chunk of stream) {
      const ch = chunk.choices[0];
      if (!ch) continue;
      for (const d of ch.delta.tool_calls ?? []) {
        const entry = byIndex.get(d.index) ?? { args: "" };
        if (!byIndex.has(d.index)) {
          // The first delta of a call carries its id and name.
          expect(d.id).toMatch(/^call_/);
          expect(d.function?.name).toBe("get_weather");
        }
        if (d.id) entry.id = d.id;
        if (d.function?.name) entry.name = d.function.name;
        entry.args += d.function?.arguments ?? "";
        byIndex.set(d.index, entry);
      }
      if (ch.finish_reason) finish = ch.finish_reason;
    }
    expect(finish).toBe("tool_calls");
    expect(byIndex.size).toBeGreaterThanOrEqual(1);
    for (const call of byIndex.values()) expect(validWeather(JSON.parse(call.args)), call.args).toBe(true);
    const s = await engineStats(srv);
    expect(s.running + s.waiting).toBe(0);
  });
});

describe("a tool schema the grammar cannot enforce", () => {
  it("is a 400 naming the tool's field (required or named), fast, and the server goes on", async () => {
    const post = (body: Record<string, unknown>) =>
      fetch(`${srv.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: MODEL,
          messages: [{ role: "user", content: "hi" }],
          max_tokens: 8,
          ...body,
        }),
      });
    const odd = {
      type: "function",
      function: {
        name: "odd",
        parameters: {
          type: "object",
          properties: { x: { type: "string" } },
          patternProperties: { "^y": {} },
        },
      },
    };
    const fine = { type: "function", function: { name: "fine", parameters: weatherParams } };
    for (const tool_choice of ["required", { type: "function", function: { name: "odd" } }]) {
      const t0 = performance.now();
      const res = await post({ tools: [fine, odd], tool_choice });
      expect(performance.now() - t0).toBeLessThan(2000);
      expect(res.status).toBe(400);
      const j = (await res.json()) as { error: { param: string; message: string } };
      expect(j.error.param).toBe("tools[1].function.parameters.patternProperties");
      expect(j.error.message).toMatch(/unsupported keyword/);
    }
    // With auto nothing is enforced, so nothing is compiled: the same tools are fine.
    expect((await post({ tools: [fine, odd], tool_choice: "auto" })).status).toBe(200);
    // A tool grammar and another structured-output field conflict.
    const both = await post({
      tools: [fine],
      tool_choice: "required",
      response_format: { type: "json_object" },
    });
    expect(both.status).toBe(400);
    expect(((await both.json()) as { error: { param: string } }).error.param).toBe("tool_choice");
    const s = await engineStats(srv);
    expect(s.running + s.waiting).toBe(0);
  });
});

describe("tools on the Responses API", () => {
  const weatherTools = {
    get_weather: tool({
      description: "Current weather in a city",
      inputSchema: jsonSchema<{ city: string; unit: string }>(weatherParams),
      execute: async () => ({ temperature: 21, sky: "sunny" }),
    }),
    get_time: tool({
      description: "The time now",
      inputSchema: jsonSchema<{ zone: string; hour24?: boolean }>(timeParams),
      execute: async () => "12:00",
    }),
  };

  it("AI SDK (default Responses provider), toolChoice required: a valid call, its result fed back in a second step", async () => {
    const result = await generateText({
      model: provider()(MODEL),
      prompt: "What is the weather in Paris?",
      tools: weatherTools,
      toolChoice: "required",
      providerOptions: { openai: { parallelToolCalls: false } },
      maxOutputTokens: 64,
      temperature: 1,
      prepareStep: ({ stepNumber }) => (stepNumber === 1 ? { toolChoice: "none" } : undefined),
      stopWhen: isStepCount(2),
      include: { requestBody: true },
    });
    expect(result.steps.length).toBe(2);
    const first = result.steps[0]!;
    expect(first.finishReason).toBe("tool-calls");
    expect(first.toolCalls.length).toBe(1);
    const c = first.toolCalls[0]!;
    expect(
      c.toolName === "get_weather" ? validWeather(c.input) : validTime(c.input),
      JSON.stringify(c.input),
    ).toBe(true);
    expect(first.toolResults.length).toBe(1);
    const second = result.steps[1]!;
    expect(second.toolCalls.length).toBe(0);
    // The second request carried the call and its result as input items, and the server took them.
    const sent = (
      typeof second.request.body === "string" ? JSON.parse(second.request.body) : second.request.body
    ) as { input: { type?: string; call_id?: string }[] };
    expect(sent.input.filter((i) => i.type === "function_call").map((i) => i.call_id)).toEqual([
      c.toolCallId,
    ]);
    expect(sent.input.filter((i) => i.type === "function_call_output").map((i) => i.call_id)).toEqual([
      c.toolCallId,
    ]);
    expect(second.usage.inputTokens!).toBeGreaterThan(0);
  });

  const client = () => new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x" });
  const tools: OpenAI.Responses.FunctionTool[] = [
    { type: "function", name: "get_weather", parameters: weatherParams, strict: true },
    { type: "function", name: "get_time", parameters: timeParams, strict: true },
  ];

  it("openai SDK responses.create, tool_choice required: function_call items with valid arguments", async () => {
    for (let seed = 0; seed < 3; seed++) {
      const r = await client().responses.create({
        model: MODEL,
        input: "Weather in Paris, and the time?",
        tools,
        tool_choice: "required",
        parallel_tool_calls: false,
        max_output_tokens: 96,
        temperature: 1,
      });
      expect(r.status).toBe("completed");
      expect(r.output.length).toBe(1);
      const item = r.output[0]!;
      expect(item.type).toBe("function_call");
      if (item.type !== "function_call") continue;
      expect(item.id).toMatch(/^fc_/);
      expect(item.call_id).toMatch(/^call_/);
      expect(item.status).toBe("completed");
      const args = JSON.parse(item.arguments);
      expect(item.name === "get_weather" ? validWeather(args) : validTime(args), JSON.stringify(args)).toBe(
        true,
      );
      expect(r.tool_choice).toBe("required");
      expect(r.tools.map((t) => (t.type === "function" ? t.name : t.type))).toEqual([
        "get_weather",
        "get_time",
      ]);
    }
  });

  it("function_call and function_call_output input items render through the template", async () => {
    const user = { role: "user" as const, content: "Weather in Paris?" };
    const call = {
      type: "function_call" as const,
      call_id: "call_abc",
      name: "get_weather",
      arguments: '{"city":"Paris","unit":"celsius"}',
    };
    const result = {
      type: "function_call_output" as const,
      call_id: "call_abc",
      output: "21 degrees, sunny",
    };
    const tokens = async (input: OpenAI.Responses.ResponseInputItem[]) =>
      (await client().responses.create({ model: MODEL, input, max_output_tokens: 1 })).usage!.input_tokens;
    const plain = await tokens([user]);
    const withCall = await tokens([user, call]);
    const withResult = await tokens([user, call, result]);
    expect(withCall).toBeGreaterThan(plain + 8);
    expect(withResult).toBeGreaterThan(withCall + 4);
    // The same conversation through chat completions renders to the same prompt.
    const chat = await client().chat.completions.create({
      model: MODEL,
      messages: [
        user,
        {
          role: "assistant",
          content: null,
          tool_calls: [
            { id: "call_abc", type: "function", function: { name: call.name, arguments: call.arguments } },
          ],
        },
        { role: "tool", tool_call_id: "call_abc", content: result.output },
      ],
      max_tokens: 1,
    });
    expect(chat.usage!.prompt_tokens).toBe(withResult);
  });

  it("openai SDK responses.create, a named function, streamed: the function_call event sequence", async () => {
    const stream = await client().responses.create({
      model: MODEL,
      input: "Weather in Paris?",
      tools,
      tool_choice: { type: "function", name: "get_weather" },
      parallel_tool_calls: false,
      max_output_tokens: 96,
      temperature: 1,
      stream: true,
    });
    const types: string[] = [];
    const seqs: number[] = [];
    let args = "";
    let added: OpenAI.Responses.ResponseOutputItem | undefined;
    let done: OpenAI.Responses.ResponseFunctionCallArgumentsDoneEvent | undefined;
    let final: OpenAI.Responses.Response | undefined;
    for await (const e of stream) {
      types.push(e.type);
      seqs.push(e.sequence_number);
      if (e.type === "response.output_item.added") added = e.item;
      if (e.type === "response.function_call_arguments.delta") {
        expect(e.item_id).toBe(added?.id);
        expect(e.output_index).toBe(0);
        args += e.delta;
      }
      if (e.type === "response.function_call_arguments.done") done = e;
      if (e.type === "response.completed") final = e.response;
    }
    expect(seqs).toEqual(seqs.map((_, i) => i));
    const deltas = types.filter((t) => t === "response.function_call_arguments.delta").length;
    expect(deltas).toBeGreaterThanOrEqual(1);
    expect(types).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      ...Array(deltas).fill("response.function_call_arguments.delta"),
      "response.function_call_arguments.done",
      "response.output_item.done",
      "response.completed",
    ]);
    expect(added?.type).toBe("function_call");
    if (added?.type === "function_call") {
      expect(added.name).toBe("get_weather");
      expect(added.arguments).toBe("");
    }
    expect(done?.arguments).toBe(args);
    expect(validWeather(JSON.parse(args)), args).toBe(true);
    const item = final?.output[0];
    expect(item?.type === "function_call" && item.arguments).toBe(args);
    const s = await engineStats(srv);
    expect(s.running + s.waiting).toBe(0);
  });

  it("parallel calls, streamed: one function_call item after another, each closed before the next opens", async () => {
    for (let seed = 0; seed < 3; seed++) {
      const stream = await client().responses.create({
        model: MODEL,
        input: "Weather in Paris, and the time?",
        tools,
        tool_choice: "required",
        max_output_tokens: 400,
        temperature: 1,
        stream: true,
      });
      const args = new Map<string, string>();
      let open: string | undefined;
      let final: OpenAI.Responses.Response | undefined;
      for await (const e of stream) {
        if (e.type === "response.output_item.added") {
          expect(open).toBeUndefined();
          expect(e.output_index).toBe(args.size);
          open = e.item.id!;
          args.set(open, "");
        }
        if (e.type === "response.function_call_arguments.delta") {
          expect(e.item_id).toBe(open);
          args.set(open!, args.get(open!)! + e.delta);
        }
        if (e.type === "response.function_call_arguments.done") expect(e.arguments).toBe(args.get(open!));
        if (e.type === "response.output_item.done") {
          expect(e.item.id).toBe(open);
          open = undefined;
        }
        if (e.type === "response.completed" || e.type === "response.incomplete") final = e.response;
      }
      expect(open).toBeUndefined();
      expect(args.size).toBeGreaterThanOrEqual(1);
      expect(final?.output.map((o) => o.id)).toEqual([...args.keys()]);
      if (final?.status === "completed") {
        for (const o of final.output) {
          if (o.type !== "function_call") throw new Error(`unexpected ${o.type}`);
          const a = JSON.parse(o.arguments);
          expect(o.name === "get_weather" ? validWeather(a) : validTime(a), `${o.name} ${o.arguments}`).toBe(
            true,
          );
        }
      }
    }
  });

  it("tool_choice auto, streamed: the model's text comes as a message item, and matches the whole reply", async () => {
    const stream = await client().responses.create({
      model: MODEL,
      input: "Tell me a story.",
      tools,
      tool_choice: "auto",
      max_output_tokens: 12,
      temperature: 0,
      stream: true,
    });
    const types: string[] = [];
    let text = "";
    let final: OpenAI.Responses.Response | undefined;
    for await (const e of stream) {
      types.push(e.type);
      if (e.type === "response.output_text.delta") text += e.delta;
      if (e.type === "response.incomplete" || e.type === "response.completed") final = e.response;
    }
    expect(types.slice(0, 4)).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
    ]);
    expect(types).not.toContain("response.function_call_arguments.delta");
    const whole = await client().responses.create({
      model: MODEL,
      input: "Tell me a story.",
      tools,
      tool_choice: "auto",
      max_output_tokens: 12,
      temperature: 0,
    });
    expect(whole.output_text).toBe(text);
    const item = final?.output[0];
    expect(item?.type === "message" && item.content[0]?.type === "output_text" && item.content[0].text).toBe(
      text,
    );
  });

  it("a Responses tool's schema the grammar cannot enforce, or a grammar with text.format: a 400 naming the Responses path", async () => {
    const post = (body: Record<string, unknown>) =>
      fetch(`${srv.url}/v1/responses`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, input: "hi", max_output_tokens: 8, ...body }),
      });
    const odd = {
      type: "function",
      name: "odd",
      parameters: { type: "object", properties: { x: { type: "string" } }, patternProperties: { "^y": {} } },
    };
    const res = await post({ tools: [tools[0], odd], tool_choice: "required" });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { param: string } }).error.param).toBe(
      "tools[1].parameters.patternProperties",
    );
    const both = await post({ tools, tool_choice: "required", text: { format: { type: "json_object" } } });
    expect(both.status).toBe(400);
    expect(((await both.json()) as { error: { param: string } }).error.param).toBe("tool_choice");
  });
});
