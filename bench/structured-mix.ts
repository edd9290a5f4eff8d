import { parseArgs } from "node:util";
import { STRUCTURED_SCHEMA } from "../src/bench/workload.js";
import { EngineCore } from "../src/engine/engine.js";
import { ModelRunner } from "../src/engine/runner.js";
import { loadModel } from "../src/model/model.js";

/**
 * Jump-forward's effect on the requests beside a constrained one, in the engine alone (no HTTP, no
 * client on the same cores): a closed loop of `--requests` requests at `--concurrency`, 128-token
 * prompts, 64 output tokens each (or 32–96 with `--varied`), greedy, no EOS. Four modes run
 * interleaved per round: `base` (nothing constrained), and half of the requests constrained by
 * `spindle bench --structured`'s schema with jump-forward `gated` (the default,
 * jumpForwardMaxBatch 4), `always` or `never`. Per mode: wall time, output tok/s, engine steps,
 * tokens computed per step, the unconstrained and constrained requests' median TPOT, the
 * unconstrained requests' median TTFT and end-to-end latency, and the tokens jump-forward accepted.
 *
 *   npm run bench:structured-mix -- MODEL.gguf [--concurrency 16] [--requests 48] [--rounds 2] [--varied]
 */

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    concurrency: { type: "string", default: "16" },
    requests: { type: "string", default: "48" },
    rounds: { type: "string", default: "2" },
    varied: { type: "boolean", default: false },
  },
});
const path = positionals[0];
if (!path) {
  throw new Error(
    "usage: bench/structured-mix.ts MODEL.gguf [--concurrency N] [--requests N] [--rounds N] [--varied]",
  );
}
const concurrency = Number(values.concurrency);
const requests = Number(values.requests);
const rounds = Number(values.rounds);
const varied = values.varied;
const model = loadModel(path);

const MODES = ["base", "gated", "always", "never"] as const;
type Mode = (typeof MODES)[number];
const GATE: Record<Mode, number> = { base: 4, gated: 4, always: Infinity, never: 0 };

const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[xs.length >> 1]! : NaN);
const ms = (x: number) => Math.round(x * 10) / 10;

function run(mode: Mode, round: number) {
  const engine = new EngineCore(new ModelRunner(model, 1024), {
    tokenizer: model.tokenizer,
    jumpForwardMaxBatch: GATE[mode],
  });
  const arrived = new Map<string, number>();
  const first = new Map<string, number>();
  const tpot: Record<"s" | "u", number[]> = { s: [], u: [] };
  const ttft: number[] = [];
  const e2e: number[] = [];
  let added = 0;
  let tokens = 0;
  const add = () => {
    const i = added++;
    const constrained = mode !== "base" && i % 2 === 1;
    const id = `${constrained ? "s" : "u"}${i}`;
    arrived.set(id, performance.now());
    engine.add({
      id,
      prompt: Array.from({ length: 128 }, (_, k) => 1000 + ((i * 131 + k * 7 + round * 17) % 20000)),
      maxTokens: varied ? 32 + ((i * 37) % 65) : 64,
      stopAtEog: false,
      sampling: { temperature: 0 },
      grammar: constrained ? { type: "json_schema", schema: STRUCTURED_SCHEMA } : undefined,
    });
  };
  for (let i = 0; i < concurrency; i++) add();
  const t0 = performance.now();
  let steps = 0;
  let stepTokens = 0;
  while (engine.hasWork()) {
    const events = engine.step();
    steps++;
    stepTokens += engine.lastStep.prefillTokens + engine.lastStep.decodeTokens;
    const now = performance.now();
    for (const e of events) {
      tokens += e.tokens.length;
      if (!first.has(e.id) && e.tokens.length > 0) first.set(e.id, now);
      if (!e.finish) continue;
      const n = e.finish.completionTokens;
      const cls = e.id[0] as "s" | "u";
      if (n > 1) tpot[cls].push((now - first.get(e.id)!) / (n - 1));
      if (cls === "u") {
        ttft.push(first.get(e.id)! - arrived.get(e.id)!);
        e2e.push(now - arrived.get(e.id)!);
      }
      if (added < requests) add();
    }
  }
  const wall = performance.now() - t0;
  return {
    mode,
    round,
    ms: Math.round(wall),
    tokPerS: ms((tokens / wall) * 1000),
    steps,
    tokensPerStep: ms(stepTokens / steps),
    tpotU: ms(median(tpot.u)),
    tpotS: ms(median(tpot.s)),
    ttftU: ms(median(ttft)),
    e2eU: ms(median(e2e)),
    forced: engine.totalForcedTokens,
  };
}

run("always", -1); // warm-up: the grammar compiles, the kernel threads start
const rows: ReturnType<typeof run>[] = [];
for (let r = 0; r < rounds; r++) {
  for (const mode of r % 2 ? [...MODES].reverse() : MODES) {
    rows.push(run(mode, r));
    console.log(JSON.stringify(rows[rows.length - 1]));
  }
}
console.table(rows);
await model.transformer.kernels.close?.();
