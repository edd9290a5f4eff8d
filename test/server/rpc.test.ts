import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type GenerateResponse,
  type GenerateStreamResponse,
  InferenceService,
} from "../../src/server/rpc/gen/spindle/v1/inference_pb.js";
import { expectInvalidArgument, failure } from "../helpers/rpc.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

/**
 * spindle.v1.InferenceService with the official Connect clients for Node, against a real server:
 * gRPC over HTTP/2 on --grpc-port, Connect over HTTP/2 there and over HTTP/1.1 on the main port,
 * gRPC-Web over HTTP/1.1 on the main port. The answers are the HTTP API's (same greedy text, same
 * usage), admission is the HTTP API's (keys, rate limit, queue cap), and a cancelled stream frees
 * its engine request within a second.
 */

const PROMPT = "Once upon a time";
const MAX_TOKENS = 24;

async function completion(url: string, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as {
    choices: { text: string; finish_reason: string }[];
    usage: { prompt_tokens: number; completion_tokens: number };
  };
}

function transports(s: TestServer): [string, Transport][] {
  const grpcUrl = s.server.grpcUrl!;
  return [
    ["gRPC over HTTP/2 (--grpc-port)", createGrpcTransport({ baseUrl: grpcUrl })],
    ["Connect over HTTP/2 (--grpc-port)", createConnectTransport({ baseUrl: grpcUrl, httpVersion: "2" })],
    ["Connect over HTTP/1.1 (main port)", createConnectTransport({ baseUrl: s.url, httpVersion: "1.1" })],
    ["gRPC-Web over HTTP/1.1 (main port)", createGrpcWebTransport({ baseUrl: s.url, httpVersion: "1.1" })],
  ];
}

/** The ConnectError a call fails with (fails the test if it succeeds). */
describe("the RPC service", () => {
  let srv: TestServer;
  let greedy: Awaited<ReturnType<typeof completion>>;
  beforeAll(async () => {
    srv = await startTestServer({ grpcPort: 0, shutdownTimeoutMs: 1000 });
    greedy = await completion(srv.url, {
      model: srv.server.ctx.opts.modelName,
      prompt: PROMPT,
      max_tokens: MAX_TOKENS,
      temperature: 0,
      ignore_eos: true,
    });
  });
  afterAll(async () => {
    await srv?.close();
  });

  it("serves gRPC on its own port", () => {
    expect(srv.server.grpcUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(srv.server.grpcUrl).not.toBe(srv.url);
  });

  for (const name of ["gRPC", "Connect over HTTP/2", "Connect over HTTP/1.1", "gRPC-Web"]) {
    const transport = () => transports(srv).find(([n]) => n.startsWith(name))![1];

    it(`${name}: Generate gives /v1/completions' greedy text, usage and timings`, async () => {
      const client = createClient(InferenceService, transport());
      const r = await client.generate({
        prompt: PROMPT,
        maxTokens: MAX_TOKENS,
        temperature: 0,
        ignoreEos: true,
      });
      expect(r.text).toBe(greedy.choices[0]!.text);
      expect(r.text.length).toBeGreaterThan(0);
      expect(r.finishReason).toBe("length");
      expect(r.tokenIds).toHaveLength(MAX_TOKENS);
      expect(r.model).toBe(srv.server.ctx.opts.modelName);
      expect(r.usage?.promptTokens).toBe(greedy.usage.prompt_tokens);
      expect(r.usage?.completionTokens).toBe(MAX_TOKENS);
      const t = r.timings!;
      expect(t.ttftMs).toBeGreaterThan(0);
      expect(t.ttftMs).toBeGreaterThanOrEqual(t.queueWaitMs);
      expect(t.decodeMs).toBeGreaterThan(0);
    });

    it(`${name}: GenerateStream's chunks make the same text, then one final message`, async () => {
      const client = createClient(InferenceService, transport());
      const messages: GenerateStreamResponse[] = [];
      for await (const m of client.generateStream({
        prompt: PROMPT,
        maxTokens: MAX_TOKENS,
        temperature: 0,
        ignoreEos: true,
      })) {
        messages.push(m);
      }
      const final = messages.at(-1)!;
      const chunks = messages.slice(0, -1);
      expect(chunks.length).toBeGreaterThan(1);
      expect(chunks.map((m) => m.text).join("")).toBe(greedy.choices[0]!.text);
      expect(chunks.flatMap((m) => m.tokenIds)).toHaveLength(MAX_TOKENS);
      expect(chunks.every((m) => m.finishReason === "" && m.usage === undefined)).toBe(true);
      expect(final.text).toBe("");
      expect(final.finishReason).toBe("length");
      expect(final.usage?.promptTokens).toBe(greedy.usage.prompt_tokens);
      expect(final.usage?.completionTokens).toBe(MAX_TOKENS);
      expect(final.timings!.ttftMs).toBeGreaterThan(0);
    });
  }

  it("token ids and logprobs: the same tokens as from the text, each with its alternatives", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: srv.server.grpcUrl! }));
    const tok = await client.tokenize({ text: PROMPT });
    const r = await client.generate({
      tokenIds: tok.tokenIds,
      maxTokens: MAX_TOKENS,
      temperature: 0,
      ignoreEos: true,
      logprobs: 3,
    });
    expect(r.text).toBe(greedy.choices[0]!.text);
    expect(r.logprobs).toHaveLength(MAX_TOKENS);
    expect(r.logprobs.map((l) => l.tokenId)).toEqual(r.tokenIds);
    for (const l of r.logprobs) {
      expect(l.logprob).toBeLessThanOrEqual(0);
      expect(l.topLogprobs).toHaveLength(3);
      // Greedy: the sampled token is the most likely one.
      expect(l.topLogprobs[0]!.tokenId).toBe(l.tokenId);
    }
  });

  it("chat messages: the text /v1/chat/completions gives", async () => {
    const messages = [{ role: "user", content: "Tell me a story" }];
    const res = await fetch(`${srv.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: srv.server.ctx.opts.modelName,
        messages,
        max_tokens: 12,
        temperature: 0,
      }),
    });
    const chat = (await res.json()) as { choices: { message: { content: string } }[] };
    const client = createClient(
      InferenceService,
      createConnectTransport({ baseUrl: srv.url, httpVersion: "1.1" }),
    );
    const r = await client.generate({ messages, maxTokens: 12, temperature: 0 });
    expect(r.text).toBe(chat.choices[0]!.message.content);
  });

  for (const name of ["gRPC", "Connect over HTTP/1.1"]) {
    it(`${name}: a stream cancelled midway is gone from the engine within 1 s`, async () => {
      const client = createClient(InferenceService, transports(srv).find(([n]) => n.startsWith(name))![1]);
      const controller = new AbortController();
      let chunks = 0;
      let finished = false;
      const err = await failure(
        (async () => {
          for await (const m of client.generateStream(
            { prompt: PROMPT, maxTokens: 1000, ignoreEos: true },
            { signal: controller.signal },
          )) {
            if (m.finishReason !== "") finished = true;
            if (++chunks === 3) {
              expect((await engineStats(srv)).running).toBe(1);
              controller.abort();
            }
          }
        })(),
      );
      expect(err.code).toBe(Code.Canceled);
      // Messages already on their way may still be read after the cancel; never the final one.
      expect(chunks).toBeGreaterThanOrEqual(3);
      expect(finished).toBe(false);
      const idle = async () => {
        const s = await engineStats(srv);
        return s.running === 0 && s.waiting === 0 && s.unfinished === 0 && s.kvUsage === 0;
      };
      expect(await waitFor(idle, 1000)).toBe(true);
    });
  }

  it("a Lark grammar in response_format holds the output to its language", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: srv.server.grpcUrl! }));
    const lark = '?start: answer "!"\nanswer: "yes" | "no" | "maybe" DIGIT\n%import common.DIGIT';
    const r = await client.generate({
      prompt: PROMPT,
      maxTokens: 20,
      temperature: 0,
      responseFormat: { format: { case: "lark", value: lark } },
    });
    expect(r.finishReason).toBe("stop");
    expect(r.text).toMatch(/^(yes|no|maybe[0-9])!$/);
  });

  it("invalid arguments are INVALID_ARGUMENT naming the field", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: srv.server.grpcUrl! }));
    const cases: [Parameters<typeof client.generate>[0], string][] = [
      [{ prompt: PROMPT, maxTokens: 0 }, "max_tokens"],
      [{ tokenIds: [1, 10_000_000] }, "token_ids"],
      [{ prompt: "" }, "prompt"],
      [{}, "prompt"],
      [{ prompt: PROMPT, temperature: -0.5 }, "temperature"],
      [{ prompt: PROMPT, topP: 0 }, "top_p"],
      [{ prompt: PROMPT, tokenIds: [1] }, "token_ids"],
      [{ messages: [{ role: "wizard", content: "hi" }] }, "messages[0].role"],
      [{ prompt: PROMPT, maxTokens: 100_000 }, "max_tokens"],
      // Structured output: a shape the server refuses, and a regex the engine cannot compile.
      [
        { prompt: PROMPT, responseFormat: { format: { case: "jsonSchema", value: "{not json" } } },
        "response_format.json_schema",
      ],
      [
        { prompt: PROMPT, responseFormat: { format: { case: "regex", value: "([a-z]+" } } },
        "response_format",
      ],
      [
        { prompt: PROMPT, responseFormat: { format: { case: "lark", value: "start: x\n%declare x" } } },
        "response_format.lark: %declare is not supported (line 2, column 1)",
      ],
    ];
    // A stream is refused before its first message, alike.
    for (const [req, field] of cases) await expectInvalidArgument(client, req, field);
    const notFound = await failure(client.generate({ model: "no-such-model", prompt: PROMPT }));
    expect(notFound.code).toBe(Code.NotFound);
  });

  it("Tokenize, ListModels and Health answer as /tokenize, /v1/models and /health do", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: srv.server.grpcUrl! }));
    const http = (await (
      await fetch(`${srv.url}/tokenize`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: PROMPT }),
      })
    ).json()) as { tokens: number[]; max_model_len: number };
    const tok = await client.tokenize({ text: PROMPT });
    expect(tok.tokenIds).toEqual(http.tokens);
    expect(tok.count).toBe(http.tokens.length);
    expect(tok.maxModelLen).toBe(http.max_model_len);
    const noBos = await client.tokenize({ text: PROMPT, addSpecialTokens: false });
    expect(noBos.tokenIds.length).toBeLessThanOrEqual(tok.tokenIds.length);

    const models = await client.listModels({});
    expect(models.models.map((m) => m.id)).toEqual([srv.server.ctx.opts.modelName]);
    expect(models.models[0]!.maxModelLen).toBe(http.max_model_len);

    const health = await client.health({});
    expect(health.status).toBe("ok");
    expect(health.model).toBe(srv.server.ctx.opts.modelName);
    expect(health.backend).toBe("local");
    expect(health.maxModelLen).toBe(http.max_model_len);
  });
});

describe("RPC admission", () => {
  let srv: TestServer | undefined;
  afterAll(async () => {
    await srv?.close();
  });

  it("API keys in the authorization metadata: missing or wrong is UNAUTHENTICATED; Health is open", async () => {
    srv = await startTestServer({ grpcPort: 0, apiKeys: ["sekret"], shutdownTimeoutMs: 1000 });
    for (const [, transport] of transports(srv)) {
      const client = createClient(InferenceService, transport);
      const req = { prompt: PROMPT, maxTokens: 4 };
      expect((await failure(client.generate(req))).code).toBe(Code.Unauthenticated);
      const wrong = { headers: { authorization: "Bearer nope" } };
      expect((await failure(client.generate(req, wrong))).code).toBe(Code.Unauthenticated);
      expect((await failure(client.listModels({}))).code).toBe(Code.Unauthenticated);
      const right = { headers: { authorization: "Bearer sekret" } };
      expect((await client.generate(req, right)).usage?.completionTokens).toBeGreaterThan(0);
      expect((await client.health({})).status).toBe("ok");
    }
    await srv.close();
    srv = undefined;
  });

  it("over the rate limit is RESOURCE_EXHAUSTED with retry-after; HTTP and RPC share a client's bucket", async () => {
    srv = await startTestServer({
      grpcPort: 0,
      apiKeys: ["sekret"],
      rateLimit: { perSecond: 0.01, burst: 2 },
      shutdownTimeoutMs: 1000,
    });
    const auth = { authorization: "Bearer sekret" };
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: srv.server.grpcUrl! }));
    await completion(srv.url, { model: srv.server.ctx.opts.modelName, prompt: PROMPT, max_tokens: 2 }, auth);
    await client.generate({ prompt: PROMPT, maxTokens: 2 }, { headers: auth });
    const err = await failure(client.generate({ prompt: PROMPT, maxTokens: 2 }, { headers: auth }));
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(err.metadata.get("retry-after")).toMatch(/^[1-9]\d*$/);
    // Tokenize takes no token.
    expect((await client.tokenize({ text: PROMPT }, { headers: auth })).count).toBeGreaterThan(0);
    await srv.close();
    srv = undefined;
  });

  it("queue full is UNAVAILABLE with retry-after; the admitted requests complete", async () => {
    srv = await startTestServer({ grpcPort: 0, maxQueue: 1, shutdownTimeoutMs: 1000 });
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: srv.server.grpcUrl! }));
    const outcomes = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        client
          .generate({ prompt: PROMPT, maxTokens: 48, ignoreEos: true, temperature: 0.8, seed: BigInt(i) })
          .then(
            (r) => r,
            (err: unknown) => err as ConnectError,
          ),
      ),
    );
    const refused = outcomes.filter((o): o is ConnectError => o instanceof ConnectError);
    const served = outcomes.filter((o) => !(o instanceof ConnectError)) as GenerateResponse[];
    expect(refused.length).toBeGreaterThan(0);
    expect(served.length).toBeGreaterThan(0);
    for (const e of refused) {
      expect(e.code).toBe(Code.Unavailable);
      expect(e.metadata.get("retry-after")).toMatch(/^[1-9]\d*$/);
    }
    for (const r of served) expect(r.usage?.completionTokens).toBe(48);
  });
});
