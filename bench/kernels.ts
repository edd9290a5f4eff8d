import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../src/gguf/types.js";
import type { AttentionSeq, Kernels, PagedKV, WeightMatrix } from "../src/kernels/kernels.js";
import { referenceKernels } from "../src/kernels/reference.js";
import { relaxedDot } from "../src/kernels/wasm-imports.js";
import {
  createWasmKernels,
  relaxedSimdAvailable,
  type WasmBuild,
  type WasmKernels,
} from "../src/kernels/wasm-kernels.js";
import { generate } from "../src/model/generate.js";
import { loadModel } from "../src/model/model.js";
import { resolveModel } from "../src/model/resolve.js";
import { SHAPES, synthModel } from "../src/model/synth.js";
import { quantize, rowBytes } from "../src/quant/index.js";
import { Rng } from "../src/sampling/rng.js";

/**
 * `npm run bench:kernels`: a quick measurement, not a test. Prints, per kernel and weight type,
 * GFLOP/s and GB/s (bytes of weights, or of KV cache, read per call) for the reference and the
 * WebAssembly kernels (both builds, SIMD128 and relaxed SIMD, where this Node runs the latter), next to this machine class's single-thread limits; then `generate` tok/s on a
 * synthesized stories15M-shaped model with each kernel set. Each figure is the best of a few timed
 * trials (the machine may be shared): compare figures of one run, not across runs.
 *
 *   npm run bench:kernels -- [--rows 2048] [--cols 2048] [--tokens 8] [--types Q8_0,Q4_K]
 *                            [--model-type Q8_0] [--gen-tokens 128] [--no-generate] [--no-reference]
 */

const USAGE = `usage: npm run bench:kernels -- [--rows 2048] [--cols 2048] [--tokens 8] [--types Q8_0,Q4_K]
           [--model-type Q8_0] [--gen-tokens 128] [--no-generate] [--no-reference]

GFLOP/s and GB/s per kernel and weight type for the reference and WebAssembly kernels, then
generate tok/s on a synthesized stories15M-shaped model with each kernel set.`;

/** Single-thread limits measured on the development machine class (a Xeon with AVX-512). */
const LIMITS = {
  /** f32 matrix × vector in WebAssembly SIMD, weights streamed from DRAM. */
  f32MatvecGflops: 15.6,
  /** DRAM bandwidth one thread gets. */
  dramGBs: 14,
  /** WebAssembly SIMD int8 block dot products (i16 widening, i32x4.dot_i16x8_s), operands in cache. */
  int8DotGops: 23,
};

const TYPES = SUPPORTED_WEIGHT_TYPES;
const FLOAT_TYPES = new Set<GGMLType>([GGMLType.F32, GGMLType.F16, GGMLType.BF16]);

function typeByName(name: string): GGMLType {
  const t = TYPES.find((t) => typeName(t) === name.toUpperCase());
  if (t === undefined) throw new Error(`unknown type ${name}`);
  return t;
}

/** Best rate over `trials` runs of about `ms` each: work units per second. */
function bestRate(fn: () => void, work: number, trials = 9, ms = 40): number {
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

/** "reference", "wasm-simd", "wasm-relaxed": a kernel set and, for WebAssembly, its build. */
function label(k: Kernels): string {
  const build = (k as Partial<WasmKernels>).build;
  return build === undefined ? k.name : `${k.name}-${build}`;
}

const pad = (cells: string[], first = 7, rest = 22) =>
  cells.map((c, i) => (i === 0 ? c.padEnd(first) : c.padStart(rest))).join("");

/** An activation array in the kernels' memory when they have one (as the forward pass allocates them). */
function activations(k: Kernels, n: number, rng: Rng): Float32Array {
  const a = k.allocFloat32?.(n) ?? new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.next() * 2 - 1;
  return a;
}

function matmulTable(kernels: Kernels[], types: GGMLType[], rows: number, cols: number, batch: number): void {
  const rng = new Rng(1);
  process.stdout.write(
    `matmul ${rows}×${cols}: GFLOP/s (2·rows·cols per token) and GB/s (weight bytes per call)\n` +
      `limits, one thread: f32 matvec ${LIMITS.f32MatvecGflops} GFLOP/s, int8 dot ${LIMITS.int8DotGops} GOP/s, ` +
      `DRAM ${LIMITS.dramGBs} GB/s\n`,
  );
  const header = ["type", ...kernels.flatMap((k) => [`${label(k)} 1 tok`, `${label(k)} ${batch} tok`])];
  process.stdout.write(`${pad(header)}\n`);
  for (const type of types) {
    if (cols % (FLOAT_TYPES.has(type) ? 1 : type >= GGMLType.Q4_K && type <= GGMLType.Q6_K ? 256 : 32) !== 0)
      continue;
    const w = randomMatrix(rng, type, rows, cols);
    const bytes = w.rows * w.rowBytes;
    const cells: string[] = [typeName(type)];
    for (const k of kernels) {
      for (const n of [1, batch]) {
        const x = activations(k, n * cols, rng);
        const out = k.allocFloat32?.(n * rows) ?? new Float32Array(n * rows);
        const calls = bestRate(() => k.matmul(w, x, n, out), 1, k.name === "reference" ? 3 : 9);
        const gflops = (calls * 2 * rows * cols * n) / 1e9;
        cells.push(`${gflops.toFixed(2)} GF ${((calls * bytes) / 1e9).toFixed(1)} GB/s`);
        k.freeFloat32?.(x);
        k.freeFloat32?.(out);
      }
    }
    process.stdout.write(`${pad(cells)}\n`);
  }
}

/** Decode-step attention (one query per sequence) over a long context, and the elementwise kernels. */
function otherTable(kernels: Kernels[]): void {
  const rng = new Rng(2);
  const nHeads = 8;
  const nKVHeads = 2;
  const headDim = 64;
  const blockSize = 16;
  const ctx = 1024;
  const numBlocks = ctx / blockSize;
  process.stdout.write(
    `\nattention: 1 query, ${ctx} positions, ${nHeads} heads over ${nKVHeads} KV heads of ${headDim}: ` +
      `GFLOP/s (4·heads·positions·headDim) and GB/s (K and V read); rmsnorm, swiglu: GB/s (in + out)\n`,
  );
  process.stdout.write(`${pad(["kernel", ...kernels.map(label)], 10)}\n`);
  const attn: string[] = ["attention"];
  const norm: string[] = ["rmsnorm"];
  const glu: string[] = ["swiglu"];
  for (const k of kernels) {
    const n = numBlocks * blockSize * nKVHeads * headDim;
    const kv: PagedKV = {
      blockSize,
      nKVHeads,
      headDim,
      k: activations(k, n, rng),
      v: activations(k, n, rng),
    };
    const q = activations(k, nHeads * headDim, rng);
    const out = activations(k, nHeads * headDim, rng);
    const table = Array.from({ length: numBlocks }, (_, i) => (i * 7) % numBlocks);
    const seqs: AttentionSeq[] = [{ row: 0, count: 1, pos: ctx - 1, blockTable: table }];
    const calls = bestRate(() => k.attention(kv, q, nHeads, seqs, out), 1, 5);
    attn.push(
      `${((calls * 4 * nHeads * ctx * headDim) / 1e9).toFixed(2)} GF ${((calls * 2 * ctx * nKVHeads * headDim * 4) / 1e9).toFixed(1)} GB/s`,
    );
    const dim = 4096;
    const rows = 8;
    const x = activations(k, rows * dim, rng);
    const y = activations(k, rows * dim, rng);
    const wt = new Float32Array(dim).fill(1);
    const nc = bestRate(() => k.rmsnorm(x, wt, rows, dim, 1e-5, y), 1, 5);
    norm.push(`${((nc * rows * dim * 8) / 1e9).toFixed(1)} GB/s`);
    const g = activations(k, rows * dim, rng);
    const gc = bestRate(() => k.swiglu(g, x, rows * dim, y), 1, 5);
    glu.push(`${((gc * rows * dim * 12) / 1e9).toFixed(1)} GB/s`);
    for (const a of [kv.k, kv.v, q, out, x, y, g]) k.freeFloat32?.(a);
  }
  for (const row of [attn, norm, glu]) process.stdout.write(`${pad(row, 10)}\n`);
}

async function generateTable(kernelSets: Kernels[], type: GGMLType, tokens: number): Promise<void> {
  process.env.SPINDLE_MODELS ??= resolve(import.meta.dirname, "../../shared/models");
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
    for (const kernels of kernelSets) {
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
        `${label(kernels).padStart(12)}: prompt ${best.prompt.toFixed(1)} tok/s, generation ${best.gen.toFixed(1)} tok/s\n`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What this machine's relaxed 8-bit dot does with an unsigned byte above 127 (src/kernels/wasm-imports.ts). */
function relaxedDotLowering(): string {
  const { value, kind } = relaxedDot();
  if (kind === "unavailable") return "relaxed i8 dot: not available in this Node";
  const what = {
    "u8×i8": "u8 × i8, unsaturated (VNNI): Q8_0 takes the 8-bit tiled path",
    saturating: "pairs saturated to i16 (pmaddubsw, no VNNI): Q8_0 keeps the i16 tiled path",
    "i8×i8": "i8 × i8 (sdot): Q8_0 keeps the i16 tiled path",
    unknown: "unknown: Q8_0 keeps the i16 tiled path",
  }[kind];
  return `relaxed i8 dot of 127 · 0xFF: ${value} per lane: ${what}`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rows: { type: "string", default: "2048" },
      cols: { type: "string", default: "2048" },
      tokens: { type: "string", default: "8" },
      types: { type: "string" },
      "model-type": { type: "string", default: "Q8_0" },
      "gen-tokens": { type: "string", default: "128" },
      "no-generate": { type: "boolean", default: false },
      "no-reference": { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const types = values.types ? values.types.split(",").map(typeByName) : [...TYPES];
  console.log(relaxedDotLowering());
  // Both builds of the WebAssembly kernels where this Node runs the relaxed one.
  const builds: WasmBuild[] = relaxedSimdAvailable() ? ["simd", "relaxed"] : ["simd"];
  const wasmSets = async () => Promise.all(builds.map((build) => createWasmKernels({ build })));
  const kernels: Kernels[] = [...(values["no-reference"] ? [] : [referenceKernels]), ...(await wasmSets())];
  matmulTable(kernels, types, Number(values.rows), Number(values.cols), Number(values.tokens));
  otherTable(kernels);
  if (!values["no-generate"]) {
    const sets: Kernels[] = [...(values["no-reference"] ? [] : [referenceKernels]), ...(await wasmSets())];
    await generateTable(sets, typeByName(values["model-type"]!), Number(values["gen-tokens"]));
  }
}

await main();
