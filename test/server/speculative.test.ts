import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { diffServer, ServerMetricsClient } from "../../src/bench/server-metrics.js";
import { GGMLType } from "../../src/gguf/types.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { runCli } from "../helpers/cli.js";
import { copierModel, copyPrompt } from "../helpers/copier.js";
import { STORIES_260K, testModel, VOCAB_SPM } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { tempDir } from "../helpers/tmp.js";
import { waitFor } from "../helpers/wait.js";

/**
 * Speculative decoding behind a real server: the same completions as a server without it, vLLM's
 * spec_decode counters on /metrics, and its flags checked at the command line. Drafts from prompt
 * lookup, and from a draft model (`--draft-model`): stories260K itself (every draft accepted) and a
 * random tiny model with its vocabulary (few accepted).
 */

const COPY = "Tom has a red ball. Tom has a red ball. Tom has a red ball. Tom has a red ball. Tom has";

let plain: TestServer;
let spec: TestServer;
let selfDraft: TestServer;
let randomDraft: TestServer;
const dir = tempDir("spindle-spec-");
/** A random tiny llama with the vocabulary of `vocab`. */
const synthDraft = (name: string, vocab: string) => {
  const out = join(dir, name);
  synthModel({ arch: "llama", shape: SHAPES.tiny!, type: GGMLType.F32, vocabPath: vocab, out, seed: 3 });
  return out;
};

beforeAll(async () => {
  const modelPath = testModel(STORIES_260K);
  plain = await startTestServer();
  spec = await startTestServer({
    backend: { kind: "local", modelPath, options: { speculative: { method: "ngram", numTokens: 4 } } },
  });
  // Drafting at no cost, so the draft model drafts whatever its acceptance.
  const draftServer = (draftModel: string) =>
    startTestServer({
      backend: {
        kind: "local",
        modelPath,
        options: {
          speculative: { method: "draft", draftModel, numTokens: 4, tokenCost: 0, draftTokenCost: 0 },
        },
      },
    });
  selfDraft = await draftServer(modelPath);
  randomDraft = await draftServer(synthDraft("random-draft.gguf", modelPath));
});
afterAll(async () => {
  await plain?.close();
  await spec?.close();
  await selfDraft?.close();
  await randomDraft?.close();
});

async function complete(srv: TestServer, body: Record<string, unknown>) {
  const res = await fetch(`${srv.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as {
    choices: { text: string; finish_reason: string; logprobs?: { tokens: string[] } }[];
    usage: { completion_tokens: number };
  };
}

const metric = (text: string, name: string) => {
  const line = text
    .split("\n")
    .find((l) => l.startsWith(`spindle_${name}{`) || l.startsWith(`spindle_${name} `));
  return line === undefined ? undefined : Number(line.trim().split(/\s+/).pop());
};

describe("speculative decoding through the server", () => {
  it("measures what verifying a draft token costs after start, unless --spec-token-cost gives it", () => {
    const costOf = (srv: TestServer) => srv.server.ctx.model!.info.details?.specVerifyCost;
    // A step of 1 + 4 tokens against one of 1 on this machine, per extra token, within 0.05…1.
    const measured = costOf(spec);
    expect(typeof measured).toBe("number");
    expect(measured).toBeGreaterThanOrEqual(0.05);
    expect(measured).toBeLessThanOrEqual(1);
    expect(costOf(selfDraft)).toBe(0);
    expect(costOf(plain)).toBeUndefined();
  });

  it("answers exactly as without it (greedy, n > 1 seeded, stop strings, logprobs) and counts drafts", async () => {
    const bodies = [
      { prompt: COPY, max_tokens: 60, temperature: 0 },
      { prompt: COPY, max_tokens: 40, temperature: 0, stop: ["ball."], logprobs: 2 },
      { prompt: COPY, max_tokens: 30, temperature: 0.8, seed: 11, n: 3 },
      { prompt: "Once upon a time", max_tokens: 50, temperature: 0 },
    ];
    const client = (await ServerMetricsClient.detect(spec.url))!;
    const before = await client.scrape();
    for (const body of bodies) {
      const [a, b] = await Promise.all([complete(plain, body), complete(spec, body)]);
      expect(b.choices).toEqual(a.choices);
      expect(b.usage.completion_tokens).toBe(a.usage.completion_tokens);
    }
    const text = await (await fetch(`${spec.url}/metrics`)).text();
    const drafts = metric(text, "spec_decode_num_drafts_total")!;
    const draftTokens = metric(text, "spec_decode_num_draft_tokens_total")!;
    const accepted = metric(text, "spec_decode_num_accepted_tokens_total")!;
    expect(drafts).toBeGreaterThan(0);
    expect(accepted).toBeGreaterThan(0);
    expect(accepted).toBeLessThanOrEqual(draftTokens);
    expect(text).toMatch(/spindle_spec_decode_num_accepted_tokens_per_pos_total\{position="0"/);
    // As `spindle bench` reads them.
    const run = diffServer("spindle", before, await client.scrape(), []);
    expect(run.specDecode).toEqual({ drafts, draftTokens, acceptedTokens: accepted });
    const json = (await (await fetch(`${spec.url}/metrics?format=json`)).json()) as {
      spec_decode: { num_drafts: number; num_accepted_tokens: number };
    };
    expect(json.spec_decode.num_drafts).toBe(drafts);
    expect(json.spec_decode.num_accepted_tokens).toBe(accepted);
    // The plain server drafts nothing.
    expect(metric(await (await fetch(`${plain.url}/metrics`)).text(), "spec_decode_num_drafts_total")).toBe(
      0,
    );
    const stats = await engineStats(spec);
    expect(stats.unfinished).toBe(0);
    expect(stats.freeBlocks).toBe(stats.numBlocks);
  });

  it("refuses bad speculative flags at the command line", async () => {
    const model = testModel(STORIES_260K);
    const bad = [
      ["--speculative", "eagle"],
      ["--speculative", "ngram", "--spec-tokens", "0"],
      ["--spec-tokens", "4"],
      ["--speculative", "ngram", "--spec-token-cost", "2"],
      ["--speculative", "ngram", "--backend", "llamacpp"],
      ["--speculative", "draft"],
      ["--speculative", "ngram", "--draft-model", model],
      ["--speculative", "off", "--draft-model", model],
      ["--speculative", "ngram", "--spec-draft-cost", "0.1"],
      ["--draft-model", model, "--spec-draft-cost", "-1"],
      ["--draft-model", model, "--backend", "sim"],
      ["--speculative", "draft", "--backend", "sim"],
    ];
    for (const args of bad) {
      const r = await runCli(["serve", "-m", model, "--port", "0", ...args]);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(
        /speculative|spec-tokens|spec-token-cost|draft-model|spec-draft-cost/,
      );
    }
  });

  it("refuses a draft model whose vocabulary is not the model's, naming both files", async () => {
    const model = testModel(STORIES_260K);
    const other = synthDraft("spm-draft.gguf", testModel(VOCAB_SPM));
    const r = await runCli(["serve", "-m", model, "--port", "0", "--log-level", "error", "-md", other]);
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(
      /the draft model \S*spm-draft\.gguf does not share the vocabulary of the model \S*stories260K\.gguf: 32000 tokens against 512/,
    );
  });
});

describe("speculative decoding with a draft model through the server", () => {
  const bodies = [
    { prompt: COPY, max_tokens: 60, temperature: 0 },
    { prompt: "Once upon a time", max_tokens: 50, temperature: 0, logprobs: 2 },
    { prompt: COPY, max_tokens: 30, temperature: 0.8, seed: 11, n: 3 },
    { prompt: "Lily saw a big dog", max_tokens: 40, temperature: 0, stop: ["dog."] },
  ];

  async function counters(srv: TestServer) {
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    return {
      drafts: metric(text, "spec_decode_num_drafts_total")!,
      draftTokens: metric(text, "spec_decode_num_draft_tokens_total")!,
      accepted: metric(text, "spec_decode_num_accepted_tokens_total")!,
    };
  }

  it("the model itself as the draft: the same completions, every greedy draft token accepted", async () => {
    // Greedy first: the draft model proposes exactly the model's own argmax.
    const greedy = bodies.filter((b) => b.temperature === 0);
    for (const body of greedy) {
      const [a, b] = await Promise.all([complete(plain, body), complete(selfDraft, body)]);
      expect(b.choices, JSON.stringify(body)).toEqual(a.choices);
      expect(b.usage.completion_tokens).toBe(a.usage.completion_tokens);
    }
    const c = await counters(selfDraft);
    expect(c.drafts).toBeGreaterThan(0);
    expect(c.accepted).toBe(c.draftTokens);
    // Sampled: the greedy draft is sometimes rejected, the seeded output is the same all the same.
    for (const body of bodies.filter((b) => b.temperature !== 0)) {
      const [a, b] = await Promise.all([complete(plain, body), complete(selfDraft, body)]);
      expect(b.choices, JSON.stringify(body)).toEqual(a.choices);
    }
    const after = await counters(selfDraft);
    expect(after.accepted).toBeGreaterThan(c.accepted);
    const stats = await engineStats(selfDraft);
    expect(stats.unfinished).toBe(0);
    expect(stats.freeBlocks).toBe(stats.numBlocks);
    expect(stats.draftCache).toEqual({
      numBlocks: stats.numBlocks,
      freeBlocks: stats.numBlocks,
      sequences: 0,
    });
  });

  it("a random draft model with the same vocabulary: few accepted, the same completions", async () => {
    for (const body of bodies) {
      const [a, b] = await Promise.all([complete(plain, body), complete(randomDraft, body)]);
      expect(b.choices, JSON.stringify(body)).toEqual(a.choices);
    }
    const c = await counters(randomDraft);
    expect(c.drafts).toBeGreaterThan(0);
    expect(c.accepted).toBeLessThan(c.draftTokens / 2);
  });

  it("a client that drops its stream mid-draft leaves no KV block and no draft cache behind", async () => {
    for (const srv of [selfDraft, randomDraft]) {
      const before = (await counters(srv)).drafts;
      const controller = new AbortController();
      const res = await fetch(`${srv.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt: COPY,
          max_tokens: 300,
          temperature: 0,
          stream: true,
          ignore_eos: true,
        }),
        signal: controller.signal,
      });
      const reader = res.body!.getReader();
      let events = 0;
      while (events < 6) {
        const { value, done } = await reader.read();
        if (done) break;
        events += new TextDecoder().decode(value).split("data:").length - 1;
      }
      const mid = await engineStats(srv);
      controller.abort();
      expect(mid.draftCache!.sequences).toBe(1);
      expect((await counters(srv)).drafts).toBeGreaterThan(before);
      const idle = async () => {
        const s = await engineStats(srv);
        return s.unfinished === 0 && s.draftCache!.sequences === 0;
      };
      expect(await waitFor(idle, 3000)).toBe(true);
      const s = await engineStats(srv);
      expect(s.freeBlocks).toBe(s.numBlocks);
      expect(s.draftCache!.freeBlocks).toBe(s.draftCache!.numBlocks);
    }
  });
});

describe("prompt lookup on a model that copies (synth-model --copier)", () => {
  let copier: TestServer | undefined;
  afterAll(async () => {
    await copier?.close();
  });

  // A fixed verification cost (the measured one varies with the machine), well below a step.
  it("drafts the passage again and nearly every draft token is accepted", async () => {
    const modelPath = copierModel();
    copier = await startTestServer({
      backend: {
        kind: "local",
        modelPath,
        options: { speculative: { method: "ngram", numTokens: 4, tokenCost: 0.5 } },
      },
    });
    const { passage, prompt } = copyPrompt();
    const r = await complete(copier, {
      prompt,
      max_tokens: 64,
      temperature: 0,
    });
    expect(r.choices[0]!.text.startsWith(`${passage}\n`)).toBe(true);
    const text = await (await fetch(`${copier.url}/metrics`)).text();
    const draftTokens = metric(text, "spec_decode_num_draft_tokens_total")!;
    const accepted = metric(text, "spec_decode_num_accepted_tokens_total")!;
    expect(accepted / draftTokens).toBeGreaterThan(0.9);
    // Most of the output came from accepted drafts: several tokens per step.
    expect(accepted).toBeGreaterThan(0.6 * r.usage.completion_tokens);
  });
});
