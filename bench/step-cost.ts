import { KVCacheStorage } from "../src/model/kv-cache.js";
import { loadModel } from "../src/model/model.js";

/**
 * What a batched step costs by its shape: the forward pass alone (no sampling, no engine) over rows
 * of one token (decode) and rows of several (a grammar's forced tokens, a draft), each row at
 * position 200 of its own sequence. Where time per token stays flat as rows gain tokens, the step is
 * compute-bound, and one row's extra tokens lengthen every other row's step by what they cost — the
 * reason jump-forward and speculation stop above DEFAULT_MAX_BATCH running sequences
 * (src/engine/speculation.ts). Medians of 7 interleaved rounds.
 *
 *   npm run bench:step-cost -- MODEL.gguf
 */

const path = process.argv[2];
if (!path) throw new Error("usage: bench/step-cost.ts MODEL.gguf");
const model = loadModel(path);
const BLOCK = 16;
const POS = 200;
const shapes: Record<string, number[]> = {
  "1x1": [1],
  "1x4": [4],
  "4x1": Array(4).fill(1),
  "2x1+2x4": [1, 1, 4, 4],
  "32x1": Array(32).fill(1),
  "16x1+16x3": [...Array(16).fill(1), ...Array(16).fill(3)],
  "32x2": Array(32).fill(2),
  "64x1": Array(64).fill(1),
};
const rows = Math.max(...Object.values(shapes).map((s) => s.length));
const blocksPer = Math.ceil((POS + 8) / BLOCK);
const kv = new KVCacheStorage(model.config, rows * blocksPer, BLOCK, model.transformer.kernels);
const table = (r: number) => Array.from({ length: blocksPer }, (_, b) => r * blocksPer + b);
const items = (lens: number[]) =>
  lens.map((n, r) => ({
    tokens: Array.from({ length: n }, (_, i) => 100 + ((r * 7 + i) % 1000)),
    pos: POS,
    blockTable: table(r),
    logits: "last" as const,
  }));
const times = new Map<string, number[]>();
for (let round = 0; round < 7; round++) {
  for (const [name, lens] of Object.entries(shapes)) {
    const t0 = performance.now();
    model.transformer.forward(kv, items(lens), { transientLogits: true });
    times.set(name, [...(times.get(name) ?? []), performance.now() - t0]);
  }
}
console.log("shape        tokens  step ms  ms/token");
for (const [name, lens] of Object.entries(shapes)) {
  const t = times.get(name)!.sort((a, b) => a - b)[3]!;
  const n = lens.reduce((a, b) => a + b, 0);
  console.log(
    `${name.padEnd(12)} ${String(n).padStart(6)} ${t.toFixed(1).padStart(8)} ${(t / n).toFixed(2).padStart(9)}`,
  );
}
await model.transformer.kernels.close?.();
