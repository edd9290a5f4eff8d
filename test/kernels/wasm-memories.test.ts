import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import { referenceKernels } from "../../src/kernels/reference.js";
import { createWasmKernelsSync, type WasmKernels } from "../../src/kernels/wasm-kernels.js";
import type { BatchSeq } from "../../src/model/forward.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { loadModel } from "../../src/model/model.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { Rng } from "../../src/sampling/rng.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * Weights spread over several WebAssembly memories (what lets models past 4 GiB load) give the same
 * logits, bit for bit, as weights in the one main memory: the budgets are set small here so a small
 * model takes several memories, with 1 and 2 kernel threads.
 */

const dir = tempDir();
const sets: WasmKernels[] = [];
afterAll(async () => {
  for (const k of sets) await (k as unknown as { pool?: { close(): Promise<void> } }).pool?.close();
});

function kernels(o: Parameters<typeof createWasmKernelsSync>[0]): WasmKernels {
  const k = createWasmKernelsSync(o);
  sets.push(k);
  return k;
}

/** Logits of a prefill of two sequences then three batched decode steps, all concatenated. */
async function run(path: string, k: WasmKernels): Promise<Float32Array> {
  await k.ready();
  const model = loadModel(path, { kernels: k });
  const rng = new Rng(7);
  const V = model.config.vocabSize;
  const toks = (n: number) => Array.from({ length: n }, () => 3 + (rng.nextU32() % (V - 3)));
  const kv = new KVCacheStorage(model.config, 16);
  const tables = [
    [0, 1, 2, 3],
    [4, 5, 6, 7],
  ];
  const out: Float32Array[] = [];
  let seqs: BatchSeq[] = [
    { tokens: [1, ...toks(11)], pos: 0, blockTable: tables[0]! },
    { tokens: [1, ...toks(6)], pos: 0, blockTable: tables[1]! },
  ];
  const pos = [12, 7];
  for (let step = 0; step < 4; step++) {
    const logits = model.transformer.forward(kv, seqs);
    out.push(...logits.map((l) => l!.slice()));
    seqs = [0, 1].map((i) => ({ tokens: toks(1), pos: pos[i]! + step, blockTable: tables[i]! }));
  }
  kv.dispose();
  const all = new Float32Array(out.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of out) {
    all.set(a, o);
    o += a.length;
  }
  return all;
}

function memories(k: WasmKernels): number {
  return (k as unknown as { memories: number }).memories;
}

describe("weights over several WebAssembly memories", () => {
  const models: [string, () => string][] = [
    ["stories260K (F32)", () => testModel(STORIES_260K)],
    [
      "synthesized Q8_0",
      () => {
        const out = join(dir, "mem-q8.gguf");
        synthModel({
          arch: "llama",
          shape: SHAPES.k256!,
          type: GGMLType.Q8_0,
          vocabPath: testModel(STORIES_260K),
          out,
        });
        return out;
      },
    ],
    [
      "synthesized Q4_K_M mixture",
      () => {
        const out = join(dir, "mem-q4km.gguf");
        synthModel({
          arch: "llama",
          shape: SHAPES.k256!,
          type: "Q4_K_M",
          vocabPath: testModel(STORIES_260K),
          out,
        });
        return out;
      },
    ],
  ];

  it.each(models)("%s: the same logits, bit for bit, with 1 and 2 threads", async (_name, make) => {
    const path = make();
    const one = kernels({ threads: 1 });
    const expected = await run(path, one);
    expect(memories(one)).toBe(1);
    for (const threads of [1, 2]) {
      // No weights in the main memory, at most 128 KiB of weights in each other one.
      const spread = kernels({ threads, mainWeightBytes: 0, memoryWeightBytes: 128 * 1024 });
      const got = await run(path, spread);
      expect(memories(spread)).toBeGreaterThanOrEqual(3);
      expect(got).toEqual(expected);
    }
  });

  it("a mixture of experts: each memory's experts as one list call (staged in and out), the same logits", async () => {
    const path = join(dir, "mem-moe.gguf");
    synthModel({
      arch: "llama",
      shape: { ...SHAPES.k256!, experts: { count: 8, used: 3, ffnDim: 256 } },
      type: GGMLType.Q8_0,
      vocabPath: testModel(STORIES_260K),
      out: path,
    });
    const expected = await run(path, kernels({ threads: 1 }));
    for (const threads of [1, 2]) {
      // About 7 of the 68 KiB expert matrices in each memory: lists span memories and stay lists in each.
      const spread = kernels({ threads, mainWeightBytes: 0, memoryWeightBytes: 512 * 1024 });
      const lists: number[] = [];
      const listIn = (spread as unknown as Record<string, (...a: unknown[]) => void>).listIn!.bind(spread);
      Object.assign(spread, {
        listIn: (arena: unknown, items: unknown[]) => {
          lists.push(items.length);
          listIn(arena, items);
        },
      });
      expect(await run(path, spread)).toEqual(expected);
      expect(memories(spread)).toBeGreaterThanOrEqual(3);
      expect(Math.max(...lists)).toBeGreaterThanOrEqual(2);
    }
  });

  it("a matrix larger than a memory's budget gets a memory of its own; the main memory keeps its budget", async () => {
    const k = kernels({ threads: 1, mainWeightBytes: 200 * 1024, memoryWeightBytes: 1 });
    const base = await run(testModel(STORIES_260K), kernels({ threads: 1 }));
    expect(await run(testModel(STORIES_260K), k)).toEqual(base);
    // stories260K: 5 layers × 7 matrices + the LM head; the main memory took some of them.
    const n = memories(k);
    expect(n).toBeGreaterThan(10);
    expect(n).toBeLessThan(5 * 7 + 1 + 1);
  });

  it("arrays allocated after another memory of the process grew are still recognised as the kernels' own", () => {
    // V8 gives every shared memory a new buffer object when any one of them grows.
    const a = kernels({ threads: 1 });
    const before = a.allocFloat32(1000)!;
    const other = kernels({ threads: 1 });
    expect(other.allocFloat32(20_000_000)).toBeDefined(); // grows the other memory by 80 MB
    const after = a.allocFloat32(1000)!;
    expect([a.owns(before), a.owns(after), other.owns(after)]).toEqual([true, true, false]);
  });

  it("a mixture of experts: each expert's slice of the stacked tensors is adopted, the router and the shared expert too", () => {
    const out = join(dir, "moe-adopt.gguf");
    const shape = { ...SHAPES["tiny-moe"]!, experts: { count: 4, used: 2, ffnDim: 64, sharedFfnDim: 96 } };
    synthModel({ arch: "qwen2moe", shape, type: GGMLType.Q8_0, vocabPath: testModel(STORIES_260K), out });
    const w = loadModel(out, { kernels: kernels({ threads: 1 }) }).transformer.weights;
    const moe = w.layers.map((l) => l.moe!);
    const adopted = moe.flatMap((m) => [
      m.router,
      ...m.gate,
      ...m.up,
      ...m.down,
      ...Object.values(m.shared!),
    ]);
    expect(adopted).toHaveLength(2 * (1 + 3 * 4 + 4));
    expect(adopted.map((m) => m.data.length)).toEqual(adopted.map(() => 0));
  });

  it("loadModel hands every multiplied matrix to the kernels and drops its bytes; the embedding table keeps them", () => {
    const model = loadModel(testModel(STORIES_260K), { kernels: kernels({ threads: 1 }) });
    const w = model.transformer.weights;
    const adopted = [
      w.output,
      ...w.layers.flatMap((l) => [l.wq, l.wk, l.wv, l.wo, l.wGate!, l.wUp!, l.wDown!]),
    ];
    expect(adopted.map((m) => m.data.length)).toEqual(adopted.map(() => 0));
    expect(w.tokenEmbd.data.length).toBe(w.tokenEmbd.rows * w.tokenEmbd.rowBytes);
    // The reference kernels keep the file's bytes (nothing to adopt them).
    const ref = loadModel(testModel(STORIES_260K), { kernels: referenceKernels });
    expect(ref.transformer.weights.layers[0]!.wq.data.length).toBeGreaterThan(0);
  });
});
