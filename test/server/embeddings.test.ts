import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { Ollama } from "ollama";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InferenceService } from "../../src/server/rpc/gen/spindle/v1/inference_pb.js";
import { storiesWithPooling } from "../helpers/embedding-models.js";
import { cosine, llamaEmbedding } from "../helpers/llamacpp.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { tempDir } from "../helpers/tmp.js";
import { waitFor } from "../helpers/wait.js";

/**
 * The embedding routes against a real server on 127.0.0.1 (stories260K with mean pooling written
 * into its metadata): the official `openai` SDK's `embeddings.create` (float, and its default base64)
 * and the official `ollama` client's `embed` / `embeddings`, unmodified, and the Embed RPC over gRPC
 * and Connect; vectors equal to llama.cpp's
 * (cosine ≥ 0.999); every input shape; embeddings in the same engine steps as greedy generation,
 * whose output does not change; nothing left in the engine after requests and after a client abort.
 */

const dir = tempDir("spindle-embed-srv-");
const modelPath = storiesWithPooling(dir, "mean");
let srv: TestServer;
let model: string;
let openai: OpenAI;
let ollama: Ollama;

const TEXTS = [
  "Once upon a time, there was a little girl.",
  "The dog ran to the park",
  "Lily liked red balls.",
];

beforeAll(async () => {
  srv = await startTestServer({
    backend: { kind: "local", modelPath },
    grpcPort: 0,
    shutdownTimeoutMs: 1000,
  });
  model = srv.server.ctx.opts.modelName;
  openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
  ollama = new Ollama({ host: srv.url });
});
afterAll(async () => {
  await srv?.close();
});

const tokenize = (text: string) => srv.server.ctx.model!.tokenizer.encode(text);
const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

async function expectEngineEmpty() {
  expect(
    await waitFor(async () => {
      const s = await engineStats(srv);
      return s.unfinished === 0 && s.kvUsage === 0;
    }, 2000),
  ).toBe(true);
}

describe("/v1/embeddings with the openai SDK", () => {
  it("float and base64 (the SDK's default, which it decodes) give the same unit vectors, equal to llama.cpp's", async () => {
    const f = await openai.embeddings.create({ model, input: TEXTS, encoding_format: "float" });
    const b = await openai.embeddings.create({ model, input: TEXTS });
    expect(f.object).toBe("list");
    expect(f.model).toBe(model);
    expect(f.data.map((d) => d.index)).toEqual([0, 1, 2]);
    const tokens = TEXTS.reduce((n, t) => n + tokenize(t).length, 0);
    expect(f.usage).toEqual({ prompt_tokens: tokens, total_tokens: tokens });
    for (const [i, d] of f.data.entries()) {
      expect(d.object).toBe("embedding");
      expect(d.embedding).toHaveLength(64);
      expect(norm(d.embedding)).toBeCloseTo(1, 5);
      expect(b.data[i]!.embedding).toEqual([...Float32Array.from(d.embedding)]);
      const ref = await llamaEmbedding(modelPath, tokenize(TEXTS[i]!));
      expect(cosine(d.embedding, ref)).toBeGreaterThanOrEqual(0.999);
    }
    // Different texts, different vectors.
    expect(cosine(f.data[0]!.embedding, f.data[1]!.embedding)).toBeLessThan(0.99);
  });

  it("token ids and lists of them embed as the text they tokenize", async () => {
    const text = await openai.embeddings.create({ model, input: TEXTS[0]!, encoding_format: "float" });
    const ids = await openai.embeddings.create({
      model,
      input: tokenize(TEXTS[0]!),
      encoding_format: "float",
    });
    const lists = await openai.embeddings.create({
      model,
      input: [tokenize(TEXTS[1]!), tokenize(TEXTS[0]!)],
      encoding_format: "float",
    });
    expect(ids.data[0]!.embedding).toEqual(text.data[0]!.embedding);
    expect(lists.data[1]!.embedding).toEqual(text.data[0]!.embedding);
    expect(lists.usage.prompt_tokens).toBe(tokenize(TEXTS[0]!).length + tokenize(TEXTS[1]!).length);
  });

  it("model may be left out; dimensions equal to the model's is accepted", async () => {
    const res = await fetch(`${srv.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ input: "hello", dimensions: 64 }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { model: string; data: { embedding: number[] }[] };
    expect(body.model).toBe(model);
    expect(body.data[0]!.embedding).toHaveLength(64);
  });
});

describe("Ollama's embedding routes with the ollama client", () => {
  it("embed: the same vectors as /v1/embeddings, with Ollama's counts and durations", async () => {
    const o = await ollama.embed({ model, input: TEXTS, keep_alive: "5m", options: { num_ctx: 512 } });
    const f = await openai.embeddings.create({ model, input: TEXTS, encoding_format: "float" });
    expect(o.model).toBe(model);
    expect(o.embeddings).toHaveLength(3);
    for (const [i, v] of o.embeddings.entries()) expect(v).toEqual(f.data[i]!.embedding);
    expect(o.prompt_eval_count).toBe(f.usage.prompt_tokens);
    expect(Number.isSafeInteger(o.total_duration)).toBe(true);
    expect(o.total_duration).toBeGreaterThan(0);
    const one = await ollama.embed({ model, input: TEXTS[0]! });
    expect(one.embeddings[0]).toEqual(o.embeddings[0]);
  });

  it("embed truncates an input longer than the context unless truncate is false", async () => {
    const long = "Once upon a time there was a little girl. ".repeat(40);
    expect(tokenize(long).length).toBeGreaterThan(64);
    const cut = await ollama.embed({ model, input: long, options: { num_ctx: 64 } });
    expect(cut.prompt_eval_count).toBe(64);
    const ids = tokenize(long).slice(0, 64);
    const same = await openai.embeddings.create({ model, input: ids, encoding_format: "float" });
    expect(cut.embeddings[0]).toEqual(same.data[0]!.embedding);
    await expect(
      ollama.embed({ model, input: long, truncate: false, options: { num_ctx: 64 } }),
    ).rejects.toThrow(/context length \(64\)/);
  });

  it("an empty input answers at once with no vectors, as Ollama does", async () => {
    expect((await ollama.embed({ model, input: [] })).embeddings).toEqual([]);
    expect((await ollama.embed({ model, input: "" })).embeddings).toEqual([]);
  });

  it("embeddings (the older route): one vector for the prompt", async () => {
    const r = await ollama.embeddings({ model, prompt: TEXTS[0]! });
    const f = await openai.embeddings.create({ model, input: TEXTS[0]!, encoding_format: "float" });
    expect(r.embedding).toEqual(f.data[0]!.embedding);
  });
});

describe("embeddings in the engine beside generation", () => {
  const completion = () =>
    openai.completions.create({ model, prompt: "Once upon a time", max_tokens: 48, temperature: 0 });

  it("greedy generation's output is the same alone and while 32 embeddings run in the same steps", async () => {
    const alone = (await completion()).choices[0]!.text;
    const inputs = Array.from({ length: 32 }, (_, i) => `${TEXTS[i % 3]!} ${"and then ".repeat(i)}`);
    const aloneVectors = await openai.embeddings.create({ model, input: inputs, encoding_format: "float" });
    const before = (await engineStats(srv)).steps;
    const [mixed, vectors] = await Promise.all([
      completion(),
      openai.embeddings.create({ model, input: inputs, encoding_format: "float" }),
      completion(),
    ]);
    expect(mixed.choices[0]!.text).toBe(alone);
    for (const [i, d] of vectors.data.entries()) expect(d.embedding).toEqual(aloneVectors.data[i]!.embedding);
    // Fewer steps than requests run one by one would take: they shared steps.
    expect((await engineStats(srv)).steps - before).toBeLessThan(48 * 2 + 32);
    await expectEngineEmpty();
  });

  it("counts each input as a finished request in the metrics, with its prompt tokens", async () => {
    type Snap = { request_success_total: Record<string, number>; prompt_tokens_total: number };
    const snap = async () => (await (await fetch(`${srv.url}/metrics?format=json`)).json()) as Snap;
    const before = await snap();
    await openai.embeddings.create({ model, input: ["count me", "and me"], encoding_format: "float" });
    const after = await snap();
    expect((after.request_success_total.stop ?? 0) - (before.request_success_total.stop ?? 0)).toBe(2);
    expect(after.prompt_tokens_total - before.prompt_tokens_total).toBe(
      tokenize("count me").length + tokenize("and me").length,
    );
    await expectEngineEmpty();
  });

  it("a client that goes away mid-request aborts its embeddings and frees their blocks", async () => {
    const long = "Once upon a time there was a little girl who liked to play. ".repeat(25);
    const ac = new AbortController();
    const req = fetch(`${srv.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, input: Array.from({ length: 64 }, (_, i) => `${i} ${long}`) }),
      signal: ac.signal,
    }).catch(() => undefined);
    expect(await waitFor(async () => (await engineStats(srv)).kvUsage > 0, 5000)).toBe(true);
    ac.abort();
    await req;
    await expectEngineEmpty();
    const snap = (await (await fetch(`${srv.url}/metrics?format=json`)).json()) as {
      client_aborts_total: number;
    };
    expect(snap.client_aborts_total).toBeGreaterThan(0);
  });
});

describe("the Embed RPC", () => {
  it("over gRPC and Connect: the vectors and usage of /v1/embeddings; bad input is INVALID_ARGUMENT naming the field", async () => {
    const f = await openai.embeddings.create({ model, input: TEXTS, encoding_format: "float" });
    for (const transport of [
      createGrpcTransport({ baseUrl: srv.server.grpcUrl! }),
      createConnectTransport({ baseUrl: srv.url, httpVersion: "1.1" }),
    ]) {
      const client = createClient(InferenceService, transport);
      const r = await client.embed({ input: TEXTS });
      expect(r.model).toBe(model);
      expect(r.usage?.promptTokens).toBe(f.usage.prompt_tokens);
      expect(r.data.map((d) => d.index)).toEqual([0, 1, 2]);
      for (const [i, d] of r.data.entries()) expect(d.embedding).toEqual(f.data[i]!.embedding);
      const err = await client.embed({ input: [""] }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      expect((err as ConnectError).rawMessage).toMatch(/input/);
    }
    await expectEngineEmpty();
  });
});

describe("a backend that computes no embeddings", () => {
  it("llamacpp: 501 in each protocol's shape, naming the backend", async () => {
    const other = await startTestServer({
      backend: { kind: "llamacpp", modelPath: testModel(STORIES_260K) },
    });
    try {
      const post = (path: string, body: unknown) =>
        fetch(`${other.url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
      const o = await post("/v1/embeddings", { input: "hi" });
      expect(o.status).toBe(501);
      expect(((await o.json()) as { error: { code: string; message: string } }).error).toMatchObject({
        code: "embeddings_unsupported",
        message: expect.stringMatching(/llamacpp backend/),
      });
      const a = await post("/api/embed", { model: other.server.ctx.opts.modelName, input: "hi" });
      expect(a.status).toBe(501);
      expect(await a.json()).toEqual({
        error: expect.stringMatching(/llamacpp backend computes no embeddings/),
      });
    } finally {
      await other.close();
    }
  });
});
