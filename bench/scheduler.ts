/**
 * The control plane alone (issue 18 §5: "≥ 100k scheduled tokens per second, the scheduler never the
 * bottleneck"): the real EngineCore (scheduler, block manager, prefix cache, sequences, events) over
 * the simulated runner with a zero cost model, so a step costs only what the engine itself does
 * around the forward pass. Reports scheduled tokens (prefill + decode) per second of wall time.
 *
 *   npm run bench:scheduler -- [--requests 512] [--prompt 128] [--output 128] [--rounds 5]
 */
import { parseArgs } from "node:util";
import { EngineCore, VirtualClock } from "../src/engine/engine.js";
import { SimRunner } from "../src/engine/sim-runner.js";

const { values } = parseArgs({
  options: {
    requests: { type: "string", default: "512" },
    prompt: { type: "string", default: "128" },
    output: { type: "string", default: "128" },
    rounds: { type: "string", default: "5" },
    "max-num-seqs": { type: "string", default: "256" },
    "max-num-batched-tokens": { type: "string", default: "2048" },
  },
});
const n = Number(values.requests);
const promptLen = Number(values.prompt);
const outputLen = Number(values.output);
const zero = { baseMs: 0, perPrefillTokenMs: 0, perDecodeSeqMs: 0, perAttendedTokenMs: 0 };

function round(): { tokens: number; steps: number; ms: number } {
  const blocks = Math.ceil((promptLen + outputLen) / 16) * Number(values["max-num-seqs"]) + 16;
  const engine = new EngineCore(new SimRunner({ numBlocks: blocks, cost: zero, avoid: new Set([1, 2]) }), {
    clock: new VirtualClock(),
    maxNumSeqs: Number(values["max-num-seqs"]),
    maxNumBatchedTokens: Number(values["max-num-batched-tokens"]),
  });
  let seed = 1;
  const token = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return 3 + (seed % 31000);
  };
  for (let i = 0; i < n; i++) {
    engine.add({ id: `r${i}`, prompt: Array.from({ length: promptLen }, token), maxTokens: outputLen });
  }
  let steps = 0;
  const t0 = performance.now();
  while (engine.hasWork()) {
    engine.step();
    engine.takeEvents();
    steps++;
  }
  return { tokens: n * (promptLen + outputLen), steps, ms: performance.now() - t0 };
}

const rates: number[] = [];
for (let r = 0; r < Number(values.rounds); r++) {
  const { tokens, steps, ms } = round();
  const rate = (tokens / ms) * 1000;
  rates.push(rate);
  console.log(
    `round ${r + 1}: ${tokens} tokens in ${steps} steps, ${ms.toFixed(0)} ms: ${Math.round(rate)} scheduled tokens/s`,
  );
}
rates.sort((a, b) => a - b);
console.log(
  `median ${Math.round(rates[rates.length >> 1]!)} scheduled tokens/s (min ${Math.round(rates[0]!)}, max ${Math.round(rates.at(-1)!)})`,
);
