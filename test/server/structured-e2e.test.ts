import { Ajv2020 } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { schemaFiles } from "../grammar/helpers.js";
import { TINY_RANDOM, testModel } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * Structured output end to end, with the real grammar compiler, through a real server on a
 * random-weight model (llama-2-tiny-random: on its own it writes noise, so every valid output is the
 * grammar's doing): every output that finishes with `stop` validates against its schema (ajv), for
 * varied schemas, greedy and sampled, n > 1, 16 requests at once, with preemption forced by a small KV
 * cache, and with aborts; waves of 32 mixed requests over 50+ schemas (the benchmark's, the ones
 * below, generated ones), constrained and free, streamed and whole, required tool calls, aborts; the other dialects (regex, choice, GBNF, TGI, Ollama, llama-server, the
 * Responses API); nothing leaks.
 */

const ajv = new Ajv2020({ strict: false, allErrors: true });
(addFormats as unknown as (a: Ajv2020) => void)(ajv);

type Json = Record<string, unknown>;

const str = (maxLength = 12) => ({ type: "string", maxLength });
/** Bounded schemas (every string, array and number is bounded), so a random model's output ends. */
const SCHEMAS: Json[] = [
  { type: "object", properties: { name: str() }, required: ["name"], additionalProperties: false },
  {
    type: "object",
    properties: { age: { type: "integer", minimum: 0, maximum: 120 }, ok: { type: "boolean" } },
    required: ["age", "ok"],
    additionalProperties: false,
  },
  { type: "object", properties: { color: { enum: ["red", "green", "blue"] } }, required: ["color"] },
  {
    type: "object",
    properties: { tags: { type: "array", items: str(8), minItems: 1, maxItems: 3 } },
    required: ["tags"],
    additionalProperties: false,
  },
  {
    type: "object",
    properties: {
      user: {
        type: "object",
        properties: { id: { type: "integer", minimum: 1, maximum: 9999 }, email: str(20) },
        required: ["id", "email"],
        additionalProperties: false,
      },
      active: { type: "boolean" },
    },
    required: ["user", "active"],
    additionalProperties: false,
  },
  { type: "array", items: { type: "integer", minimum: -5, maximum: 5 }, minItems: 2, maxItems: 4 },
  {
    type: "object",
    properties: { kind: { const: "point" }, x: { type: "number", minimum: 0, maximum: 1 } },
    required: ["kind", "x"],
    additionalProperties: false,
  },
  {
    type: "object",
    properties: { value: { anyOf: [{ type: "integer", minimum: 0, maximum: 9 }, { type: "null" }] } },
    required: ["value"],
    additionalProperties: false,
  },
  {
    type: "object",
    properties: { code: { type: "string", pattern: "^[A-Z]{2}[0-9]{3}$" } },
    required: ["code"],
    additionalProperties: false,
  },
  {
    $defs: {
      item: {
        type: "object",
        properties: { n: { type: "integer", minimum: 0, maximum: 3 } },
        required: ["n"],
        additionalProperties: false,
      },
    },
    type: "object",
    properties: { first: { $ref: "#/$defs/item" }, second: { $ref: "#/$defs/item" } },
    required: ["first", "second"],
    additionalProperties: false,
  },
  { type: ["integer", "null"], minimum: 0, maximum: 100 },
  { enum: ["yes", "no", "maybe"] },
];

/** The grammar benchmark's schemas (bench/grammar-schemas): API payloads, configs, function calls. */
function benchSchemas(): Json[] {
  return schemaFiles().map((f) => f.schema as Json);
}

/** `n` generated object schemas, each a different mix of bounded types. */
function generatedSchemas(n: number): Json[] {
  const kinds: ((i: number) => Json)[] = [
    (i) => ({ type: "integer", minimum: -i, maximum: i * 7 + 3 }),
    (i) => ({ enum: [`a${i}`, `b${i}`, i, null] }),
    (i) => ({ type: "string", minLength: 1, maxLength: 3 + (i % 9) }),
    (i) => ({ type: "array", items: { type: "boolean" }, maxItems: 1 + (i % 3) }),
    (i) => ({ type: "number", minimum: 0, maximum: 10 + i }),
    (i) => ({ type: "string", format: ["date", "uuid", "ipv4"][i % 3] }),
  ];
  return Array.from({ length: n }, (_, i) => {
    const properties: Json = {};
    for (let p = 0; p < 1 + (i % 4); p++) properties[`f${p}`] = kinds[(i + p) % kinds.length]!(i + p);
    return {
      type: "object",
      properties,
      required: Object.keys(properties).slice(0, 1 + (i % 2)),
      additionalProperties: false,
    };
  });
}

let srv: TestServer;
let model: string;
const post = async (path: string, body: unknown, signal?: AbortSignal) => {
  const res = await fetch(`${srv.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  return { status: res.status, body: (await res.json()) as Json };
};

function expectValid(schema: Json, text: string, what: string): void {
  let value: unknown;
  expect(() => (value = JSON.parse(text)), `${what}: ${text}`).not.toThrow();
  const validate = ajv.compile(schema);
  expect(validate(value), `${what}: ${text} ${JSON.stringify(validate.errors)}`).toBe(true);
}

/** Token ids whose text is "}" (possibly with a space before it). */
function closingTokens(): number[] {
  const tok = srv.server.ctx.model!.tokenizer;
  const ids: number[] = [];
  for (let t = 0; t < tok.vocabSize; t++) {
    if (!tok.isControl(t) && /^\s*\}$/.test(new TextDecoder().decode(tok.tokenBytes(t, false)))) ids.push(t);
  }
  expect(ids.length).toBeGreaterThan(0);
  return ids;
}

async function expectNothingLeft(): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const s = await engineStats(srv);
    if (s.unfinished === 0 && s.kvUsage === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const s = await engineStats(srv);
  expect(s).toMatchObject({ running: 0, waiting: 0, unfinished: 0, kvUsage: 0 });
  expect(srv.server.ctx.service.numInFlight).toBe(0);
}

beforeAll(async () => {
  // A small KV cache (16-token blocks): 16 requests at once must preempt.
  srv = await startTestServer({
    backend: { kind: "local", modelPath: testModel(TINY_RANDOM), numBlocks: 40 },
  });
  model = srv.server.ctx.opts.modelName;
});
afterAll(async () => {
  await srv?.close();
});

describe("structured output end to end (real compiler, random weights)", () => {
  it("every stop output validates: varied schemas, greedy and sampled, n > 1, 16 at once, preemption", async () => {
    const before = (await engineStats(srv)).totalPreemptions;
    const jobs = SCHEMAS.flatMap((schema, i) =>
      [0, 1].map(async (variant) => {
        const sampled = variant === 1;
        const r = await post("/v1/chat/completions", {
          model,
          messages: [{ role: "user", content: `Give me JSON number ${i}.` }],
          max_tokens: 200,
          n: sampled ? 2 : 1,
          temperature: sampled ? 1 : 0,
          seed: sampled ? i : undefined,
          response_format: { type: "json_schema", json_schema: { name: `s${i}`, schema, strict: true } },
        });
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        const choices = r.body.choices as { message: { content: string }; finish_reason: string }[];
        let stops = 0;
        for (const c of choices) {
          if (c.finish_reason === "stop") {
            stops++;
            expectValid(schema, c.message.content, `schema ${i} ${sampled ? "sampled" : "greedy"}`);
          }
        }
        return stops;
      }),
    );
    const stops = (await Promise.all(jobs)).reduce((a, b) => a + b, 0);
    // Bounded schemas: nearly all finish.
    expect(stops).toBeGreaterThanOrEqual(SCHEMAS.length * 2);
    expect((await engineStats(srv)).totalPreemptions).toBeGreaterThan(before);
    await expectNothingLeft();
  });

  it("/v1/completions and streaming: json_object, the streamed text joins to valid JSON", async () => {
    const r = await post("/v1/completions", {
      model,
      prompt: "JSON:",
      max_tokens: 300,
      temperature: 0,
      response_format: { type: "json_object" },
    });
    expect(r.status).toBe(200);
    const c = (r.body.choices as { text: string; finish_reason: string }[])[0]!;
    if (c.finish_reason === "stop") expect(typeof JSON.parse(c.text)).toBe("object");
    const schema = SCHEMAS[4]!;
    const res = await fetch(`${srv.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: "stream it" }],
        max_tokens: 200,
        stream: true,
        guided_json: schema,
      }),
    });
    let text = "";
    let finish: string | null = null;
    for (const line of (await res.text()).split("\n")) {
      if (!line.startsWith("data: {")) continue;
      const chunk = JSON.parse(line.slice(6)) as {
        choices: { delta: { content?: string }; finish_reason: string | null }[];
      };
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("stop");
    expectValid(schema, text, "streamed");
  });

  it("regex, choice and GBNF (vLLM's fields), TGI, llama-server, Ollama and the Responses API", async () => {
    const chat = (extra: Json) =>
      post("/v1/chat/completions", {
        model,
        messages: [{ role: "user", content: "x" }],
        max_tokens: 60,
        ...extra,
      });
    const content = (b: Json) => (b.choices as { message: { content: string } }[])[0]!.message.content;
    expect(content((await chat({ guided_regex: "[a-c]{2,4}-[0-9]{3}" })).body)).toMatch(
      /^[a-c]{2,4}-[0-9]{3}$/,
    );
    expect(["alpha", "beta", "gamma delta"]).toContain(
      content((await chat({ structured_outputs: { choice: ["alpha", "beta", "gamma delta"] } })).body),
    );
    expect(content((await chat({ guided_grammar: 'root ::= ("ab" | "cd") [0-9]' })).body)).toMatch(
      /^(ab|cd)[0-9]$/,
    );
    const tgi = await post("/generate", {
      inputs: "x",
      parameters: { max_new_tokens: 60, grammar: { type: "regex", value: "(yes|no)!" } },
    });
    expect((tgi.body as { generated_text: string }).generated_text).toMatch(/^(yes|no)!$/);
    const llama = await post("/completion", { prompt: "x", n_predict: 200, json_schema: SCHEMAS[1] });
    expectValid(SCHEMAS[1]!, (llama.body as { content: string }).content, "llama-server");
    const ollama = await post("/api/generate", {
      model,
      prompt: "x",
      stream: false,
      format: SCHEMAS[1],
      options: { num_predict: 200 },
    });
    expect(ollama.body.done_reason).toBe("stop");
    expectValid(SCHEMAS[1]!, (ollama.body as { response: string }).response, "ollama");
    const resp = await post("/v1/responses", {
      model,
      input: "x",
      max_output_tokens: 200,
      text: { format: { type: "json_schema", name: "p", schema: SCHEMAS[0], strict: true } },
    });
    const out = (resp.body.output as { content: { text: string }[] }[])[0]!.content[0]!.text;
    expectValid(SCHEMAS[0]!, out, "responses");
    expect(resp.body.text).toEqual({
      format: { type: "json_schema", name: "p", schema: SCHEMAS[0], strict: true },
    });
  });

  it("max_tokens cuts a constrained output short with length and the partial text", async () => {
    const r = await post("/v1/completions", {
      model,
      prompt: "x",
      max_tokens: 3,
      guided_json: SCHEMAS[4],
    });
    const c = (r.body.choices as { text: string; finish_reason: string }[])[0]!;
    expect(c.finish_reason).toBe("length");
    expect(c.text.startsWith('{"user":')).toBe(true);
  });

  it("32 mixed requests at once over 50+ schemas: constrained and free, streamed and whole, tools, aborts, preemption", async () => {
    const before = (await engineStats(srv)).totalPreemptions;
    // The benchmark's real-world-like schemas, the bounded ones above, and generated ones.
    const schemas: Json[] = [...SCHEMAS, ...benchSchemas(), ...generatedSchemas(12)];
    expect(schemas.length).toBeGreaterThanOrEqual(50);
    const weather = {
      type: "function",
      function: { name: "get_weather", parameters: SCHEMAS[4] },
    };
    let validated = 0;
    let refused = 0;
    let aborted = 0;
    /** One request; its outputs that end with stop (or tool_calls) are checked against their schema. */
    const one = async (k: number): Promise<void> => {
      const schema = schemas[k % schemas.length]!;
      const kind = k % 8 === 5 ? "free" : k % 8 === 6 ? "tools" : "schema";
      const stream = k % 3 === 0;
      const ac = new AbortController();
      const abortMe = k % 8 === 7;
      if (abortMe) setTimeout(() => ac.abort(), 30 + (k % 5) * 20);
      const body: Json = {
        model,
        messages: [{ role: "user", content: `Request ${k}.` }],
        max_tokens: 96,
        temperature: k % 2 === 0 ? 0 : 1,
        seed: k,
        stream,
        ...(kind === "schema"
          ? { response_format: { type: "json_schema", json_schema: { name: `s${k}`, schema } } }
          : {}),
        ...(kind === "tools" ? { tools: [weather], tool_choice: "required" } : {}),
      };
      let res: Response;
      try {
        res = await fetch(`${srv.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
          signal: ac.signal,
        });
      } catch {
        aborted++;
        return;
      }
      let content = "";
      let finish: string | null = null;
      const calls: string[] = [];
      try {
        if (res.status === 400) {
          // A schema the compiler refuses (a keyword it does not support): a 400 naming the field.
          const err = (await res.json()) as { error: { param: string; code: string } };
          expect(err.error.code, JSON.stringify(err)).toBe("invalid_grammar");
          expect(err.error.param).toMatch(/^response_format/);
          refused++;
          return;
        }
        expect(res.status).toBe(200);
        if (stream) {
          for (const line of (await res.text()).split("\n")) {
            if (!line.startsWith("data: {")) continue;
            const c = (
              JSON.parse(line.slice(6)) as {
                choices: {
                  delta: {
                    content?: string;
                    tool_calls?: { index: number; function: { arguments?: string } }[];
                  };
                  finish_reason: string | null;
                }[];
              }
            ).choices[0];
            content += c?.delta.content ?? "";
            for (const d of c?.delta.tool_calls ?? [])
              calls[d.index] = (calls[d.index] ?? "") + (d.function.arguments ?? "");
            finish = c?.finish_reason ?? finish;
          }
        } else {
          const c = ((await res.json()) as Json).choices as {
            message: { content: string | null; tool_calls?: { function: { arguments: string } }[] };
            finish_reason: string;
          }[];
          content = c[0]!.message.content ?? "";
          for (const t of c[0]!.message.tool_calls ?? []) calls.push(t.function.arguments);
          finish = c[0]!.finish_reason;
        }
      } catch (err) {
        if (abortMe) {
          aborted++;
          return;
        }
        throw err;
      }
      if (kind === "schema" && finish === "stop") {
        expectValid(schema, content, `request ${k} (schema ${k % schemas.length})`);
        validated++;
      }
      if (kind === "tools" && finish === "tool_calls") {
        expect(calls.length).toBeGreaterThan(0);
        for (const a of calls) expectValid(SCHEMAS[4]!, a, `request ${k} (tool call)`);
        validated++;
      }
    };
    // Waves of 32 concurrent requests until every schema has been asked for.
    const total = Math.ceil(schemas.length / 24) * 32;
    for (let wave = 0; wave * 32 < total; wave++)
      await Promise.all(Array.from({ length: 32 }, (_, i) => one(wave * 32 + i)));
    expect(validated).toBeGreaterThan(total / 4);
    expect(refused).toBeLessThan(6);
    expect(aborted).toBeGreaterThan(0);
    expect((await engineStats(srv)).totalPreemptions).toBeGreaterThan(before);
    await expectNothingLeft();
  }, 120_000);

  it("aborted constrained requests free everything", async () => {
    const controllers = Array.from({ length: 6 }, () => new AbortController());
    const sent = controllers.map((ac, i) =>
      fetch(`${srv.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model,
          messages: [{ role: "user", content: `abort ${i}` }],
          max_tokens: 400,
          stream: true,
          response_format: { type: "json_object" },
        }),
        signal: ac.signal,
      }).then((res) => res.body?.getReader().read()),
    );
    await new Promise((r) => setTimeout(r, 50));
    for (const ac of controllers) ac.abort();
    await Promise.allSettled(sent);
    await expectNothingLeft();
  });

  it("the openai SDK's chat.completions.parse with a zod schema", async () => {
    const { z } = await import("zod");
    const { zodResponseFormat } = await import("openai/helpers/zod");
    const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
    const Person = z.object({
      name: z.string().max(10),
      age: z.number().int().min(0).max(99),
      admin: z.boolean(),
    });
    const r = await client.chat.completions.parse({
      model,
      messages: [{ role: "user", content: "a person" }],
      max_tokens: 200,
      response_format: zodResponseFormat(Person, "person"),
    });
    const parsed = r.choices[0]!.message.parsed;
    expect(Person.parse(parsed)).toEqual(parsed);
  });

  it("the AI SDK's generateObject and streamObject (Responses API and chat providers)", async () => {
    const { z } = await import("zod");
    const { generateObject, streamObject } = await import("ai");
    const { createOpenAI } = await import("@ai-sdk/openai");
    const provider = createOpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x" });
    const schema = z.object({ city: z.string().max(10), rainy: z.boolean() });
    for (const m of [provider(model), provider.chat(model)]) {
      const { object } = await generateObject({
        model: m,
        schema,
        prompt: "weather",
        maxOutputTokens: 200,
        maxRetries: 0,
      });
      expect(schema.parse(object)).toEqual(object);
      const s = streamObject({ model: m, schema, prompt: "weather", maxOutputTokens: 200, maxRetries: 0 });
      let partials = 0;
      for await (const _ of s.partialObjectStream) partials++;
      expect(partials).toBeGreaterThan(0);
      const streamed = await s.object;
      expect(schema.parse(streamed)).toEqual(streamed);
    }
  });

  it("LangChain's withStructuredOutput: jsonSchema, functionCalling and jsonMode", async () => {
    const { ChatOpenAI } = await import("@langchain/openai");
    const llm = new ChatOpenAI({
      model,
      apiKey: "x",
      configuration: { baseURL: `${srv.url}/v1` },
      maxTokens: 200,
      temperature: 0,
      maxRetries: 0,
    });
    const schema = {
      title: "answer",
      type: "object",
      properties: { verdict: { enum: ["yes", "no"] }, score: { type: "integer", minimum: 0, maximum: 10 } },
      required: ["verdict", "score"],
      additionalProperties: false,
    };
    const viaSchema = await llm.withStructuredOutput(schema, { method: "jsonSchema" }).invoke("judge");
    expectValid(schema, JSON.stringify(viaSchema), "langchain jsonSchema");
    // functionCalling: the schema as a tool that tool_choice names, so the tool grammar enforces it.
    const viaTool = await llm.withStructuredOutput(schema, { method: "functionCalling" }).invoke("judge");
    expectValid(schema, JSON.stringify(viaTool), "langchain functionCalling");
    // jsonMode asks for any JSON object (json_object): a random model's strings may never close, so a
    // logit_bias toward "}" (which the mask composes with) ends the object soon.
    const close = closingTokens();
    const viaMode = await new ChatOpenAI({
      model,
      apiKey: "x",
      configuration: { baseURL: `${srv.url}/v1` },
      maxTokens: 200,
      temperature: 0,
      maxRetries: 0,
      logitBias: Object.fromEntries(close.map((t) => [String(t), 20])),
    })
      .withStructuredOutput(schema, { method: "jsonMode" })
      .invoke("judge, in JSON");
    expect(typeof viaMode).toBe("object");
    expect(viaMode).not.toBeNull();
  });

  it("leaves nothing behind; the forced tokens show in the metrics", async () => {
    await expectNothingLeft();
    const snap = (await (await fetch(`${srv.url}/metrics?format=json`)).json()) as Json;
    // Required keys' names and punctuation were forced (jump-forward) in the runs above.
    expect(snap.jump_forward_tokens_total).toBeGreaterThan(50);
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    expect(text).toMatch(/jump_forward_tokens_total\{[^}]*\} [1-9]/);
  });
});
