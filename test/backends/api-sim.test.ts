import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { apiSuite, MODEL } from "./api-suite.js";

// The simulator speaks stories260K's tokenizer but computes nothing: its greedy text is its own.
apiSuite({
  backend: "sim",
  sameAsLocal: false,
  // Its per-token latency is simulated, so rounds are slow, and nothing in it can race.
  concurrentRounds: 6,
  start: () =>
    startTestServer({ modelName: MODEL, backend: { kind: "sim", modelPath: testModel(STORIES_260K) } }),
});

describe("sim backend over HTTP", () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer({
      modelName: MODEL,
      backend: { kind: "sim", modelPath: testModel(STORIES_260K) },
    });
  });
  afterAll(() => srv?.close());

  const complete = async (body: Record<string, unknown>) => {
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: "Once upon a time", max_tokens: 20, ...body }),
    });
    return ((await r.json()) as { choices: { text: string }[] }).choices[0]!.text;
  };

  it("with a fixed seed the token stream is deterministic; without one it varies", async () => {
    const a = await complete({ temperature: 1, seed: 7 });
    expect(await complete({ temperature: 1, seed: 7 })).toBe(a);
    expect(await complete({ temperature: 1, seed: 8 })).not.toBe(a);
    const unseeded = await Promise.all([complete({ temperature: 1 }), complete({ temperature: 1 })]);
    expect(unseeded[0]).not.toBe(unseeded[1]);
  });

  it("runs the real scheduler: its engine steps and KV usage show in the metrics", async () => {
    await Promise.all(
      Array.from({ length: 6 }, (_, i) => complete({ temperature: 0, prompt: `Story ${i}` })),
    );
    const m = (await (await fetch(`${srv.url}/metrics?format=json`)).json()) as {
      engine_steps_total: number;
      batch_size: { mean: number | null };
    };
    expect(m.engine_steps_total).toBeGreaterThan(0);
    expect(m.batch_size.mean).toBeGreaterThan(1.5);
  });
});
