import { parseArgs } from "node:util";
import { STRUCTURED_SCHEMA } from "../src/bench/workload.js";
import { EngineCore } from "../src/engine/engine.js";
import { ModelRunner } from "../src/engine/runner.js";
import { loadModel } from "../src/model/model.js";

/**
 * What jump-forward gains: the same constrained requests through the engine with and without it
 * (EngineOptions.jumpForwardMaxBatch: always against never), interleaved, reporting wall time, engine steps, output tokens and
 * the tokens accepted without sampling.
 *
 *   npm run bench:jump-forward -- MODEL.gguf [--requests 16] [--schema forced|story] [--rounds 2]
 *
 * `forced`: an object of five required keys with long names and short bounded values, where most of
 * the text is forced; `story`: `spindle bench --structured`'s schema (free strings, mostly sampled).
 */

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    requests: { type: "string", default: "16" },
    schema: { type: "string", default: "forced" },
    rounds: { type: "string", default: "2" },
  },
});
const path = positionals[0];
if (!path)
  throw new Error(
    "usage: bench/jump-forward.ts MODEL.gguf [--requests N] [--schema forced|story] [--rounds N]",
  );
const N = Number(values.requests);
const rounds = Number(values.rounds);
const FORCED = {
  type: "object",
  properties: {
    customer_identifier: { type: "integer", minimum: 0, maximum: 9 },
    subscription_is_active: { type: "boolean" },
    preferred_contact_method: { enum: ["electronic_mail", "telephone_call"] },
    account_verification_status: { enum: ["verified_by_document", "pending_review"] },
    marketing_emails_opt_in: { type: "boolean" },
  },
  required: [
    "customer_identifier",
    "subscription_is_active",
    "preferred_contact_method",
    "account_verification_status",
    "marketing_emails_opt_in",
  ],
  additionalProperties: false,
};
const schema = values.schema === "story" ? STRUCTURED_SCHEMA : FORCED;

const model = loadModel(path);
const tok = model.tokenizer;

function run(jumpForward: boolean, seed: number) {
  const engine = new EngineCore(new ModelRunner(model, 2048), {
    tokenizer: tok,
    jumpForwardMaxBatch: jumpForward ? Infinity : 0,
  });
  for (let i = 0; i < N; i++) {
    const prompt = [
      tok.bos!,
      ...tok.encode(`Request ${seed}-${i}: the answer as JSON.`, { addSpecial: false }),
    ];
    engine.add({
      id: `r${i}`,
      prompt,
      maxTokens: 160,
      sampling: { temperature: 1, seed: seed * 1000 + i },
      grammar: { type: "json_schema", schema },
    });
  }
  let tokens = 0;
  let stops = 0;
  const t0 = performance.now();
  while (engine.hasWork()) {
    for (const e of engine.step()) {
      tokens += e.tokens.length;
      if (e.finish?.reason === "stop") stops++;
    }
  }
  const ms = performance.now() - t0;
  return {
    jumpForward,
    ms: Math.round(ms),
    steps: engine.steps,
    tokens,
    forced: engine.totalForcedTokens,
    stops,
  };
}

run(true, 0); // warm-up: the grammar compiles, the kernel threads start
const rows: ReturnType<typeof run>[] = [];
for (let r = 1; r <= rounds; r++)
  for (const jf of r % 2 ? [true, false] : [false, true]) rows.push(run(jf, r));
console.table(rows);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const on = median(rows.filter((r) => r.jumpForward).map((r) => r.ms));
const off = median(rows.filter((r) => !r.jumpForward).map((r) => r.ms));
console.log(`median wall time: ${off} ms without jump-forward, ${on} ms with it (${(off / on).toFixed(2)}×)`);
