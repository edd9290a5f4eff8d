import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { type GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../gguf/types.js";
import { generate } from "../model/generate.js";
import { loadModel } from "../model/model.js";
import { resolveModel } from "../model/resolve.js";
import { SHAPES, synthModel } from "../model/synth.js";
import { quantize, rowBytes } from "../quant/index.js";
import { Rng } from "../sampling/rng.js";
import type { Kernels, WeightMatrix } from "./kernels.js";
import { referenceKernels } from "./reference.js";
import { createWasmKernels } from "./wasm-kernels.js";

/**
 * `npm run bench:kernels`: a quick measurement, not a test. Prints matmul GFLOP/s per weight type
 * for one token (matvec) and a batch of tokens, reference vs WebAssembly, then `generate` tok/s on a
 * synthesized stories15M-shaped model with each kernel set. Each figure is the best of a few timed
 * trials (the machine may be shared).
 *
 *   node dist/kernels/bench-kernels.js [--rows 576] [--cols 1536] [--tokens 16] [--types Q8_0,Q4_K]
 *                                      [--model-type Q8_0] [--gen-tokens 64] [--no-generate]
 */

const TYPES = SUPPORTED_WEIGHT_TYPES;

function typeByName(name: string): GGMLType {
  const t = TYPES.find((t) => typeName(t) === name.toUpperCase());
  if (t === undefined) throw new Error(`unknown type ${name}`);
  return t;
}

/** Best rate over `trials` runs of about `ms` each: work units per second. */
function bestRate(fn: () => void, work: number, trials = 15, ms = 40): number {
  fn();
  let best = 0;
  for (let k = 0; k < trials; k++) {
    let n = 0;
    const t0 = performance.now();
    let t1 = t0;
    do {
      fn();
      n++;
      t1 = performance.now();
    } while (t1 - t0 < ms);
    best = Math.max(best, (n * work) / ((t1 - t0) / 1000));
  }
  return best;
}

function randomMatrix(rng: Rng, type: GGMLType, rows: number, cols: number): WeightMatrix {
  const f = new Float32Array(rows * cols);
  const s = 1 / Math.sqrt(cols);
  for (let i = 0; i < f.length; i++) f[i] = (rng.next() * 2 - 1) * s;
  return { name: "bench", type, rows, cols, data: quantize(type, f, cols), rowBytes: rowBytes(type, cols) };
}

function matmulTable(kernels: Kernels[], types: GGMLType[], rows: number, cols: number, batch: number): void {
  const rng = new Rng(1);
  const header = ["type", ...kernels.flatMap((k) => [`${k.name} 1 tok`, `${k.name} ${batch} tok`])];
  process.stdout.write(`matmul ${rows}×${cols}, GFLOP/s (2·rows·cols per token)\n`);
  const pad = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(6) : c.padStart(18))).join("");
  process.stdout.write(`${pad(header)}\n`);
  for (const type of types) {
    const w = randomMatrix(rng, type, rows, cols);
    const cells: string[] = [typeName(type)];
    for (const k of kernels) {
      for (const n of [1, batch]) {
        const x = new Float32Array(n * cols);
        for (let i = 0; i < x.length; i++) x[i] = rng.next() * 2 - 1;
        const out = new Float32Array(n * rows);
        const rate = bestRate(
          () => k.matmul(w, x, n, out),
          2 * rows * cols * n,
          k.name === "reference" ? 3 : 5,
        );
        cells.push((rate / 1e9).toFixed(2));
      }
    }
    process.stdout.write(`${pad(cells)}\n`);
  }
}

async function generateTable(type: GGMLType, tokens: number): Promise<void> {
  process.env.SPINDLE_MODELS ??= resolve(import.meta.dirname, "../../../shared/models");
  const dir = mkdtempSync(join(tmpdir(), "spindle-bench-kernels-"));
  try {
    const path = join(dir, "stories15M.gguf");
    synthModel({
      arch: "llama",
      shape: SHAPES.stories15M!,
      type,
      vocabPath: resolveModel("vocab/ggml-vocab-llama-spm.gguf"),
      out: path,
      seed: 1,
    });
    process.stdout.write(`\ngenerate, synthesized stories15M ${typeName(type)} (${tokens} tokens, greedy)\n`);
    const prompt = "Once upon a time, there was a little girl named Lily who loved to";
    for (const kernels of [referenceKernels, await createWasmKernels()]) {
      const model = loadModel(path, { kernels });
      const run = () =>
        generate(model, prompt, { maxTokens: tokens, stopAtEog: false, sampling: { temperature: 0 } });
      run(); // warm up (and copy the weights into WebAssembly memory)
      let best = { prompt: 0, gen: 0 };
      for (let i = 0; i < 3; i++) {
        const r = run();
        best = {
          prompt: Math.max(best.prompt, (r.promptTokens.length * 1000) / r.promptMs),
          gen: Math.max(best.gen, (r.tokens.length * 1000) / r.generateMs),
        };
      }
      process.stdout.write(
        `${kernels.name.padStart(10)}: prompt ${best.prompt.toFixed(1)} tok/s, generation ${best.gen.toFixed(1)} tok/s\n`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rows: { type: "string", default: "576" },
      cols: { type: "string", default: "1536" },
      tokens: { type: "string", default: "16" },
      types: { type: "string" },
      "model-type": { type: "string", default: "Q8_0" },
      "gen-tokens": { type: "string", default: "64" },
      "no-generate": { type: "boolean", default: false },
      "no-reference": { type: "boolean", default: false },
    },
  });
  const types = values.types ? values.types.split(",").map(typeByName) : [...TYPES];
  const wasm = await createWasmKernels();
  const kernels = values["no-reference"] ? [wasm] : [referenceKernels, wasm];
  matmulTable(kernels, types, Number(values.rows), Number(values.cols), Number(values.tokens));
  if (!values["no-generate"])
    await generateTable(typeByName(values["model-type"]!), Number(values["gen-tokens"]));
}

await main();
