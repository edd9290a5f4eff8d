import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type GenerateRequestSchema,
  type GenerateResponse,
  type GenerateStreamResponse,
  InferenceService,
} from "../../src/server/rpc/gen/spindle/v1/inference_pb.js";
import { ajvValidator } from "../grammar/helpers.js";
import { expectInvalidArgument } from "../helpers/rpc.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { hermesToolModel } from "../helpers/tool-models.js";
import { waitFor } from "../helpers/wait.js";

/**
 * Tools over the RPC (GenerateRequest.tools, tool_choice, parallel_tool_calls; tool_calls on the
 * reply and as stream deltas; tool_calls and tool_call_id in the history), with the official
 * connect-node clients over gRPC and Connect, against a real server whose model is synthesized with
 * Spindle's Hermes-style tool template and random weights: every valid call it makes is the tool
 * grammar's doing (tool_choice `required` or a named function). The HTTP route is the reference:
 * the same conversation renders to the same prompt tokens, the same greedy reply to the same text.
 */

const MODEL = "hermes-rpc";
let srv: TestServer;

type Req = MessageInitShape<typeof GenerateRequestSchema>;

const weatherParams = {
  type: "object",
  properties: {
    city: { type: "string", minLength: 1, maxLength: 20 },
    unit: { type: "string", enum: ["celsius", "fahrenheit"] },
    days: { type: "integer", minimum: 1, maximum: 7 },
  },
  required: ["city", "unit"],
  additionalProperties: false,
};
const timeParams = {
  type: "object",
  properties: { zone: { type: "string", enum: ["UTC", "CET"] }, hour24: { type: "boolean" } },
  required: ["zone"],
  additionalProperties: false,
};
const PARAMS: Record<string, object> = { get_weather: weatherParams, get_time: timeParams };
const VALID: Record<string, (v: unknown) => boolean> = {
  get_weather: ajvValidator(weatherParams),
  get_time: ajvValidator(timeParams),
};

/** The tools as the RPC takes them (parameters as JSON text) and as /v1/chat/completions does. */
const rpcTools = Object.entries(PARAMS).map(([name, p]) => ({
  function: { name, description: `the ${name} function`, parameters: JSON.stringify(p) },
}));
const httpTools = Object.entries(PARAMS).map(([name, p]) => ({
  type: "function",
  function: { name, description: `the ${name} function`, parameters: p },
}));
const user = [{ role: "user", content: "What is the weather in Paris?" }];

function transports(s: TestServer): [string, Transport][] {
  return [
    ["gRPC", createGrpcTransport({ baseUrl: s.server.grpcUrl! })],
    ["Connect over HTTP/2", createConnectTransport({ baseUrl: s.server.grpcUrl!, httpVersion: "2" })],
    ["Connect over HTTP/1.1 (main port)", createConnectTransport({ baseUrl: s.url, httpVersion: "1.1" })],
  ];
}

async function httpChat(body: Record<string, unknown>) {
  const res = await fetch(`${srv.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as {
    choices: { message: { content: string | null; tool_calls?: unknown[] }; finish_reason: string }[];
    usage: { prompt_tokens: number };
  };
}

/** The ConnectError a call fails with (fails the test if it succeeds). */
/** A stream's calls put together by index (id and name from the first delta, arguments appended). */
function assemble(messages: GenerateStreamResponse[]) {
  const calls: { id: string; name: string; arguments: string }[] = [];
  for (const m of messages) {
    for (const d of m.toolCalls) {
      const c = calls[d.index];
      if (c === undefined) {
        // A call's first delta: its id and name, no arguments yet.
        expect(d.id).toMatch(/^call_/);
        expect(d.function?.name).not.toBe("");
        expect(d.function?.arguments).toBe("");
        expect(d.index).toBe(calls.length);
        calls[d.index] = { id: d.id, name: d.function!.name, arguments: "" };
      } else {
        expect(d.id).toBe("");
        expect(d.function?.name ?? "").toBe("");
        c.arguments += d.function?.arguments ?? "";
      }
    }
  }
  return calls;
}

/** Every call is to one of `names` and its arguments validate against its tool's schema (ajv). */
function expectValidCalls(calls: { name: string; arguments: string }[], names: string[]): void {
  expect(calls.length).toBeGreaterThan(0);
  for (const c of calls) {
    expect(names).toContain(c.name);
    expect(VALID[c.name]!(JSON.parse(c.arguments)), c.arguments).toBe(true);
  }
}

const wholeCalls = (r: GenerateResponse) =>
  r.toolCalls.map((c) => ({ id: c.id, name: c.function!.name, arguments: c.function!.arguments }));

beforeAll(async () => {
  srv = await startTestServer({
    modelName: MODEL,
    grpcPort: 0,
    shutdownTimeoutMs: 1000,
    backend: { kind: "local", modelPath: hermesToolModel(2048) },
  });
});
afterAll(async () => {
  await srv?.close();
});

describe("tool calls over the RPC", () => {
  const sampled = (seed: number) => ({
    messages: user,
    tools: rpcTools,
    maxTokens: 96,
    temperature: 1,
    seed: BigInt(seed),
  });

  for (const name of ["gRPC", "Connect over HTTP/2", "Connect over HTTP/1.1"]) {
    const client = () =>
      createClient(InferenceService, transports(srv).find(([n]) => n.startsWith(name))![1]);

    it(`${name}: tool_choice required, whole and streamed: valid calls, finish tool_calls, deltas equal the whole`, async () => {
      for (let seed = 0; seed < 4; seed++) {
        const req: Req = { ...sampled(seed), toolChoice: { choice: { case: "mode", value: "required" } } };
        const r = await client().generate(req);
        expect(r.finishReason).toBe("tool_calls");
        expect(r.text).toBe("");
        const whole = wholeCalls(r);
        expectValidCalls(whole, ["get_weather", "get_time"]);
        for (const c of whole) expect(c.id).toMatch(/^call_/);

        const messages: GenerateStreamResponse[] = [];
        for await (const m of client().generateStream(req)) messages.push(m);
        const final = messages.at(-1)!;
        expect(final.finishReason).toBe("tool_calls");
        expect(final.usage?.promptTokens).toBe(r.usage?.promptTokens);
        expect(final.usage?.completionTokens).toBe(r.usage?.completionTokens);
        expect(messages.map((m) => m.text).join("")).toBe("");
        const streamed = assemble(messages);
        expectValidCalls(streamed, ["get_weather", "get_time"]);
        // The same seed: the same calls (ids are new per reply).
        expect(streamed.map(({ id: _, ...c }) => c)).toEqual(whole.map(({ id: _, ...c }) => c));
        // The calls stream as they are written: more than one delta each.
        expect(messages.flatMap((m) => m.toolCalls).length).toBeGreaterThan(streamed.length);
      }
    }, 60_000);

    it(`${name}: a named function without parallel calls: exactly one call to it, valid, whole and streamed`, async () => {
      for (let seed = 0; seed < 3; seed++) {
        const req: Req = {
          ...sampled(seed),
          toolChoice: { choice: { case: "function", value: { name: "get_time" } } },
          parallelToolCalls: false,
        };
        const r = await client().generate(req);
        expect(r.finishReason).toBe("tool_calls");
        const whole = wholeCalls(r);
        expect(whole).toHaveLength(1);
        expectValidCalls(whole, ["get_time"]);
        const messages: GenerateStreamResponse[] = [];
        for await (const m of client().generateStream(req)) messages.push(m);
        expect(messages.at(-1)!.finishReason).toBe("tool_calls");
        const streamed = assemble(messages);
        expect(streamed).toHaveLength(1);
        expectValidCalls(streamed, ["get_time"]);
        expect(streamed[0]!.arguments).toBe(whole[0]!.arguments);
      }
    }, 60_000);
  }

  it("the prompt with tools is /v1/chat/completions' (same prompt tokens), and so is a greedy auto reply", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: srv.server.grpcUrl! }));
    const http = await httpChat({ messages: user, tools: httpTools, max_tokens: 12, temperature: 0 });
    const r = await client.generate({ messages: user, tools: rpcTools, maxTokens: 12, temperature: 0 });
    expect(r.usage?.promptTokens).toBe(http.usage.prompt_tokens);
    expect(r.text).toBe(http.choices[0]!.message.content);
    expect(r.finishReason).toBe(http.choices[0]!.finish_reason);
    expect(r.toolCalls).toHaveLength(0);
    // tool_choice none: the model does not see the tools, as without them.
    const none = await client.generate({
      messages: user,
      tools: rpcTools,
      toolChoice: { choice: { case: "mode", value: "none" } },
      maxTokens: 4,
    });
    const without = await client.generate({ messages: user, maxTokens: 4 });
    expect(none.usage?.promptTokens).toBe(without.usage?.promptTokens);
    expect(r.usage!.promptTokens).toBeGreaterThan(without.usage!.promptTokens + 40);
  });

  it("a two-step conversation: the reply's call and its result go back and render through the template", async () => {
    for (const [, transport] of transports(srv).slice(0, 2)) {
      const client = createClient(InferenceService, transport);
      const first = await client.generate({
        ...sampled(5),
        toolChoice: { choice: { case: "function", value: { name: "get_weather" } } },
        parallelToolCalls: false,
      });
      const call = first.toolCalls[0]!;
      expectValidCalls(wholeCalls(first), ["get_weather"]);
      const result = "sunny, 21 degrees";
      const history = [
        ...user,
        { role: "assistant", content: "", toolCalls: [call] },
        { role: "tool", content: result, toolCallId: call.id },
      ];
      const second = await client.generate({
        messages: history,
        tools: rpcTools,
        maxTokens: 8,
        temperature: 0,
      });
      // The same conversation on the HTTP route renders to the same prompt.
      const http = await httpChat({
        messages: [
          ...user,
          {
            role: "assistant",
            content: null,
            tool_calls: [
              {
                id: call.id,
                type: "function",
                function: { name: call.function!.name, arguments: call.function!.arguments },
              },
            ],
          },
          { role: "tool", tool_call_id: call.id, content: result },
        ],
        tools: httpTools,
        max_tokens: 8,
        temperature: 0,
      });
      expect(second.usage?.promptTokens).toBe(http.usage.prompt_tokens);
      // The call (its name and arguments) and the result are in the prompt.
      expect(second.usage!.promptTokens).toBeGreaterThan(first.usage!.promptTokens + 20);
      expect(second.text).toBe(http.choices[0]!.message.content ?? "");
      const tokenized = await fetch(`${srv.url}/tokenize`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ messages: [...user], tools: httpTools }),
      });
      expect(((await tokenized.json()) as { count: number }).count).toBe(first.usage?.promptTokens);
    }
  }, 60_000);

  it("bad tool fields are INVALID_ARGUMENT naming the field; the server stays up with no KV blocks held", async () => {
    const tool = rpcTools[0]!;
    const cases: [Req, string][] = [
      [
        { messages: user, tools: [{ function: { parameters: JSON.stringify(weatherParams) } }] },
        "tools[0].function.name",
      ],
      [{ messages: user, tools: [{}] }, "tools[0].function"],
      [{ messages: user, tools: [tool, tool] }, "tools[1].function.name"],
      [
        {
          messages: user,
          tools: [tool],
          toolChoice: { choice: { case: "function", value: { name: "nope" } } },
        },
        "tool_choice",
      ],
      [
        { messages: user, tools: [tool], toolChoice: { choice: { case: "mode", value: "sometimes" } } },
        "tool_choice.mode",
      ],
      [{ messages: user, toolChoice: { choice: { case: "mode", value: "required" } } }, "tool_choice"],
      [
        { messages: user, tools: [{ function: { name: "f", parameters: "{not json" } }] },
        "tools[0].function.parameters",
      ],
      [
        { messages: user, tools: [{ function: { name: "f", parameters: "[1, 2]" } }] },
        "tools[0].function.parameters",
      ],
      // A schema the grammar cannot enforce, found by the compiler in the engine.
      [
        {
          messages: user,
          tools: [{ function: { name: "f", parameters: '{"type": "object", "patternProperties": {}}' } }],
          toolChoice: { choice: { case: "mode", value: "required" } },
        },
        "tools[0].function.parameters.patternProperties",
      ],
      [
        {
          messages: user,
          tools: [tool],
          toolChoice: { choice: { case: "mode", value: "required" } },
          responseFormat: { format: { case: "jsonObject", value: true } },
        },
        "tool_choice",
      ],
      [{ prompt: "Once upon a time", tools: [tool] }, "tools"],
      [{ messages: [...user, { role: "tool", content: "42" }] }, "messages[1].tool_call_id"],
      [
        {
          messages: [
            ...user,
            { role: "user", content: "x", toolCalls: [{ id: "c", function: { name: "f" } }] },
          ],
        },
        "messages[1].tool_calls",
      ],
      [
        {
          messages: [
            ...user,
            { role: "assistant", content: "", toolCalls: [{ id: "c", function: { name: "" } }] },
          ],
        },
        "messages[1].tool_calls[0].function.name",
      ],
    ];
    for (const [, transport] of transports(srv).slice(0, 2)) {
      const client = createClient(InferenceService, transport);
      for (const [req, field] of cases) await expectInvalidArgument(client, req, field);
      const idle = async () => {
        const s = await engineStats(srv);
        return s.running === 0 && s.waiting === 0 && s.unfinished === 0 && s.kvUsage === 0;
      };
      expect(await waitFor(idle, 1000)).toBe(true);
      expect((await client.health({})).status).toBe("ok");
      const ok = await client.generate({
        messages: user,
        tools: [tool],
        toolChoice: { choice: { case: "mode", value: "required" } },
        maxTokens: 64,
      });
      expect(ok.toolCalls.length).toBeGreaterThan(0);
    }
  }, 60_000);
});
