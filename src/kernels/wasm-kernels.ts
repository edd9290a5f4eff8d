import { existsSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { SpindleError } from "../errors.js";
import { GGMLType } from "../gguf/types.js";
import type { RopeParams } from "../model/config.js";
import type { AttentionSeq, Kernels, PagedKV, WeightMatrix } from "./kernels.js";
import { referenceKernels } from "./reference.js";
import { WasmThreadPool } from "./thread-pool.js";

/**
 * WebAssembly SIMD kernels behind the `Kernels` interface.
 *
 * The math is AssemblyScript in src/kernels/wasm/kernels.ts, compiled by `npm run build:kernels` to
 * dist-wasm/kernels.wasm (SIMD128, a shared memory; no relaxed SIMD). In WebAssembly: matmul for
 * F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K; rmsnorm, rope, swiglu,
 * addInPlace, storeKV and attention when their arrays live in this kernel set's memory (see
 * `allocFloat32`: the forward pass keeps its activations there and KVCacheStorage its pools), the
 * reference kernels' otherwise; getRows and addBias are the reference's.
 *
 * Memory: one shared WebAssembly.Memory (up to 4 GiB), owned here. Being shared, its buffer is a
 * SharedArrayBuffer that is never detached, so Float32Array views of it handed out by allocFloat32
 * stay valid when it grows. The first time a weight matrix is multiplied its bytes are copied into
 * that memory (once, keyed by the WeightMatrix object; quantized types repacked in groups of 4 rows,
 * float rows zero-padded to a multiple of 4 elements); `prepare` does it ahead of time. Scratch
 * regions, KV pools and activations come from a first-fit allocator over the same memory. Use one
 * kernel set per model. Models whose weights approach 4 GiB are out of scope (the wasm copy is made
 * next to the weights that loadModel keeps in JS memory).
 *
 * Accuracy of matmul (see the WebAssembly source for the exact arithmetic):
 * - F32, F16, BF16: f32 arithmetic on the exact weights, against the reference's double sums: per
 *   output |wasm − reference| ≤ (cols/4 + 8) · 2⁻²⁴ · Σ_c |W[r,c] · x[t,c]| (measured: about
 *   4e-8 · Σ|W·x|).
 * - Quantized types: llama.cpp's error model, reproduced exactly. Each token's x is quantized as
 *   llama.cpp (x86) quantizes activations for its integer dot products: 8-bit blocks of 32 with an
 *   f16 scale d = max|x|/127 (Q8_0, and Q8_1's f16 d·Σq for Q4_1/Q5_1) for the legacy types, one
 *   f32 scale per 256 (Q8_K) for the K-quants; q = round(x·127/max|x|). The output is the dot
 *   product of the weights with x̂ = d·q (|x − x̂| ≤ d/2 + the f16 rounding of d) up to f32
 *   rounding: |wasm − Σ_c W[r,c]·x̂[t,c]| ≤ (2·cols/32 + 8) · 2⁻²⁴ · Σ_c (|W[r,c]| + |M_b|)·|x̂[t,c]|
 *   (M_b: the block's minimum for the affine types). Against the exact float product the
 *   quantization moves an output by at most about Σ_blocks (d_b/2) · Σ_{c ∈ b} |W[r,c]|; next-token
 *   log-probabilities agree with llama.cpp's to 1e-6 for most prompts of the synthesized test models
 *   (an activation within rounding of a quantization boundary can move them by a few 1e-2).
 * Decoded weights are bit-identical to the reference dequantize. Every kernel is batch-invariant,
 * bit for bit: a token's results do not depend on which other tokens share the call.
 */

export interface WasmKernels extends Kernels {
  /** Threads a large matmul is split over (1 = the calling thread only). */
  readonly threads: number;
  /** Resolves once the kernel threads are up (the first matmul would otherwise wait for them). */
  ready(): Promise<void>;
  /** Whether matmul of this weight type runs in WebAssembly (other types use the reference kernel). */
  supports(type: GGMLType): boolean;
  /** Copies these matrices into WebAssembly memory now instead of on their first use. */
  prepare(weights: Iterable<WeightMatrix>): void;
  /** Bytes of WebAssembly memory in use (weights, scratch, allocations; freed space not counted). */
  memoryBytes(): number;
  /** The matrix decoded to floats (rows × cols) by the WebAssembly decoders, as matmul sees it; for tests. */
  dequantize(w: WeightMatrix): Float32Array;
  /** Whether this array lies in this kernel set's memory (so the kernels work on it in place). */
  owns(a: Float32Array): boolean;
  allocFloat32(n: number): Float32Array | undefined;
  freeFloat32(a: Float32Array): void;
}

/** The parts of the WebAssembly JS API used here (the project's `lib` setting does not declare them). */
interface WasmMemory {
  readonly buffer: ArrayBufferLike;
  grow(deltaPages: number): number;
}
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: unknown };
  compile(bytes: Uint8Array): Promise<object>;
  instantiate(
    module: object,
    imports: Record<string, Record<string, unknown>>,
  ): Promise<{ exports: unknown }>;
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

interface WasmExports {
  heapBase(): number;
  supports(type: number): number;
  matmul(
    type: number,
    w: number,
    rowBytes: number,
    rows: number,
    colsPad: number,
    x: number,
    nTokens: number,
    out: number,
    scratch: number,
  ): void;
  dequantizeRows(type: number, w: number, rowBytes: number, rows: number, colsPad: number, dst: number): void;
  groupBytes(type: number, cols: number): number;
  pack(type: number, src: number, rowBytes: number, nRows: number, cols: number, dst: number): void;
  quantScratchBytes(cols: number, nTokens: number): number;
  matmulQuant(
    type: number,
    w: number,
    rows: number,
    cols: number,
    x: number,
    nTokens: number,
    out: number,
    scratch: number,
  ): void;
  dequantizeGroup(type: number, g: number, cols: number, dst: number): void;
  quantizeActivations(type: number, x: number, nTokens: number, cols: number, scratch: number): void;
  quantPartBytes(cols: number): number;
  matmulQuantMulti(...args: number[]): void;
  rmsnorm(x: number, w: number, nRows: number, dim: number, eps: number, out: number): void;
  swiglu(gate: number, up: number, n: number, out: number): void;
  addInPlace(a: number, b: number, n: number): void;
  rope(
    x: number,
    nTokens: number,
    nHeads: number,
    headDim: number,
    half: number,
    neox: number,
    cs: number,
  ): void;
  storeKV(
    kPool: number,
    vPool: number,
    blockSize: number,
    nKVHeads: number,
    headDim: number,
    k: number,
    v: number,
    row: number,
    count: number,
    pos: number,
    table: number,
  ): void;
  attention(
    kPool: number,
    vPool: number,
    blockSize: number,
    nKVHeads: number,
    headDim: number,
    q: number,
    nHeads: number,
    row: number,
    count: number,
    pos: number,
    table: number,
    out: number,
    scores: number,
    scale: number,
  ): void;
}

/** A weight matrix's copy in WebAssembly memory. */
interface Placed {
  data: Uint8Array;
  ptr: number;
  /** Float types: bytes per (padded) row. Packed types: bytes per group of 4 rows. */
  rowBytes: number;
  colsPad: number;
  packed: boolean;
}

const PAGE = 65536;
/** 4 GiB: the most a 32-bit WebAssembly memory can address (and the module's declared maximum). */
const MAX_PAGES = 65536;
const ALIGN = 64;
const FLOAT_BYTES: Partial<Record<GGMLType, number>> = {
  [GGMLType.F32]: 4,
  [GGMLType.F16]: 2,
  [GGMLType.BF16]: 2,
};

/** Where the build puts the module: dist-wasm/ at the package root, two levels above this file (src/ or dist/). */
export const WASM_PATH = fileURLToPath(new URL("../../dist-wasm/kernels.wasm", import.meta.url));

function notBuilt(): SpindleError {
  return new SpindleError(
    `the WebAssembly kernels are not built (${WASM_PATH} is missing); run \`npm run build:kernels\``,
    "kernels_not_built",
  );
}

let compiled: Promise<object> | undefined;

async function compileModule(): Promise<object> {
  let bytes: Buffer;
  try {
    bytes = await readFile(WASM_PATH);
  } catch {
    throw notBuilt();
  }
  return WA.compile(bytes);
}

let compiledSync: object | undefined;

function newMemory(): WasmMemory {
  return new WA.Memory({ initial: 16, maximum: MAX_PAGES, shared: true });
}

export interface WasmKernelOptions {
  /**
   * Threads a big enough matmul is split over (rows by groups of 4; the results do not depend on
   * it). Default: $SPINDLE_THREADS, else the number of cores.
   */
  threads?: number;
}

/** Matmuls with fewer multiply-adds than this run on one thread: a hand-off costs a few µs (measured: a 288 × 288 Q8_0 matvec is slower split, 768 × 288 faster). */
const PARALLEL_MIN_MACS = 131_072;

/** The default thread count: $SPINDLE_THREADS, else the cores this process may use. */
export function defaultThreads(): number {
  const env = process.env.SPINDLE_THREADS;
  if (env !== undefined && env !== "") {
    const n = Number(env);
    if (!(Number.isInteger(n) && n >= 1)) {
      throw new SpindleError(`SPINDLE_THREADS="${env}" must be an integer ≥ 1`, "bad_threads");
    }
    return n;
  }
  return availableParallelism();
}

function kernelSet(
  module: object,
  memory: WasmMemory,
  exports: WasmExports,
  o: WasmKernelOptions,
): WasmKernelSet {
  const threads = o.threads ?? defaultThreads();
  const pool =
    threads > 1
      ? WasmThreadPool.create({
          threads,
          module,
          memory,
          exports: exports as unknown as Record<string, unknown>,
          functions: ["matmulQuantPart", "matmulPart", "matmulQuantMulti"],
        })
      : undefined;
  return new WasmKernelSet(memory, exports, pool);
}

/**
 * The same, synchronously (Node compiles and instantiates modules of any size synchronously), so
 * the synchronous `loadModel` can default to these kernels.
 */
export function createWasmKernelsSync(o: WasmKernelOptions = {}): WasmKernels {
  if (!compiledSync) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(WASM_PATH);
    } catch {
      throw notBuilt();
    }
    compiledSync = new WA.Module(bytes);
  }
  const memory = newMemory();
  const instance = new WA.Instance(compiledSync, { env: { memory } });
  return kernelSet(compiledSync, memory, instance.exports as unknown as WasmExports, o);
}

/** Loads the WebAssembly kernels; each call gets its own memory (use one per model). */
export async function createWasmKernels(o: WasmKernelOptions = {}): Promise<WasmKernels> {
  compiled ??= compileModule();
  let module: object;
  try {
    module = await compiled;
  } catch (e) {
    compiled = undefined;
    throw e;
  }
  const memory = newMemory();
  const instance = await WA.instantiate(module, { env: { memory } });
  return kernelSet(module, memory, instance.exports as unknown as WasmExports, o);
}

/** The rope cos/sin table last computed, for the positions array it was computed for. */
interface RopeTable {
  positions: Int32Array;
  p: RopeParams;
  nTokens: number;
  ptr: number;
}

class WasmKernelSet implements WasmKernels {
  readonly name = "wasm";
  /** End of the highest allocation: memory above it is free. */
  private top: number;
  /** End of the highest allocation ever made: memory above it has never been written. */
  private highWater: number;
  /** Free ranges below top, sorted by address, never adjacent (coalesced). */
  private free: { ptr: number; bytes: number }[] = [];
  /** Live allocations: address → bytes. */
  private live = new Map<number, number>();
  private f32: Float32Array = new Float32Array(0);
  private i32: Int32Array = new Int32Array(0);
  private u8: Uint8Array = new Uint8Array(0);
  /** Every buffer object the memory has had (a new SharedArrayBuffer per growth); views of any are ours. */
  private buffers = new WeakSet<ArrayBufferLike>();
  /** The memory's current buffer (the common case of owns()). */
  private lastBuffer: ArrayBufferLike | undefined;
  private placed = new WeakMap<WeightMatrix, Placed>();
  /** Copies of small float arrays (norm weights) in WebAssembly memory, keyed by the array. */
  private constants = new WeakMap<Float32Array, number>();
  private regions = new Map<string, { ptr: number; bytes: number }>();
  /** Per type: 0 not supported, 1 float (matmul), 2 packed quantized (matmulQuant). */
  private supported: number[] = [];
  private ropeTable: RopeTable | undefined;

  readonly getRows = referenceKernels.getRows;
  readonly addBias = referenceKernels.addBias;

  get threads(): number {
    return this.pool?.threads ?? 1;
  }

  ready(): Promise<void> {
    return this.pool?.ready ?? Promise.resolve();
  }

  constructor(
    private readonly memory: WasmMemory,
    private readonly wasm: WasmExports,
    private readonly pool: WasmThreadPool | undefined,
  ) {
    this.top = align(wasm.heapBase());
    this.highWater = this.top;
    this.refreshViews();
    for (const t of Object.values(GGMLType)) {
      if (typeof t === "number") this.supported[t] = wasm.supports(t);
    }
  }

  memoryBytes(): number {
    let bytes = 0;
    for (const b of this.live.values()) bytes += b;
    return bytes;
  }

  supports(type: GGMLType): boolean {
    return (this.supported[type] ?? 0) !== 0;
  }

  prepare(weights: Iterable<WeightMatrix>): void {
    for (const w of weights) if (this.supports(w.type)) this.place(w);
  }

  owns(a: Float32Array): boolean {
    const b = a.buffer;
    return b === this.lastBuffer || this.buffers.has(b);
  }

  allocFloat32(n: number): Float32Array | undefined {
    const ptr = this.tryAlloc(Math.max(n, 1) * 4);
    if (ptr === undefined) return undefined;
    // Memory above the highest address ever handed out is still zero from the grow (and not yet
    // touched: a large KV pool then costs no resident memory until used).
    this.u8.fill(0, ptr, Math.min(ptr + n * 4, this.highWater));
    this.highWater = Math.max(this.highWater, ptr + n * 4);
    return new Float32Array(this.memory.buffer, ptr, n);
  }

  freeFloat32(a: Float32Array): void {
    if (this.owns(a)) this.release(a.byteOffset);
  }

  matmulShared(
    ws: readonly WeightMatrix[],
    x: Float32Array,
    nTokens: number,
    outs: readonly Float32Array[],
  ): void {
    const w0 = ws[0];
    const fused =
      w0 !== undefined &&
      ws.length >= 2 &&
      ws.length <= 3 &&
      nTokens > 0 &&
      this.owns(x) &&
      ws.every((w, i) => w.type === w0.type && w.cols === w0.cols && this.owns(outs[i]!)) &&
      this.supported[w0.type] === 2;
    if (!fused) {
      for (let i = 0; i < ws.length; i++) this.matmul(ws[i]!, x, nTokens, outs[i]!);
      return;
    }
    const cols = w0.cols;
    if (x.length < nTokens * cols)
      throw new RangeError(`matmul: x holds ${x.length} floats, need ${nTokens * cols}`);
    ws.forEach((w, i) => {
      if (outs[i]!.length < nTokens * w.rows)
        throw new RangeError(`matmul: out holds ${outs[i]!.length} floats, need ${nTokens * w.rows}`);
    });
    const placed = ws.map((w) => this.place(w));
    const scratch = this.region("quant", this.wasm.quantScratchBytes(cols, nTokens));
    const parts = this.pool?.threads ?? 1;
    const partBytes = align(this.wasm.quantPartBytes(cols));
    const partScratch = this.region("quantParts", parts * partBytes);
    this.wasm.quantizeActivations(w0.type, x.byteOffset, nTokens, cols, scratch);
    const m = (i: number) => (i < ws.length ? [placed[i]!.ptr, ws[i]!.rows, outs[i]!.byteOffset] : [0, 0, 0]);
    const args = [w0.type, cols, nTokens, scratch, partScratch, partBytes, ...m(0), ...m(1), ...m(2)];
    const macs = ws.reduce((a, w) => a + w.rows * cols * nTokens, 0);
    if (this.pool && macs >= PARALLEL_MIN_MACS) this.pool.run("matmulQuantMulti", args);
    else this.wasm.matmulQuantMulti(...args, 0, 1);
  }

  matmul(w: WeightMatrix, x: Float32Array, nTokens: number, out: Float32Array): void {
    if (!this.supports(w.type)) {
      referenceKernels.matmul(w, x, nTokens, out);
      return;
    }
    const { rows, cols } = w;
    if (x.length < nTokens * cols)
      throw new RangeError(`matmul: x holds ${x.length} floats, need ${nTokens * cols}`);
    if (out.length < nTokens * rows)
      throw new RangeError(`matmul: out holds ${out.length} floats, need ${nTokens * rows}`);
    if (nTokens === 0 || rows === 0) return;
    const p = this.place(w);
    const colsPad = p.colsPad;
    // Activations and output in our memory are used in place; others go through scratch regions
    // (allocating may grow the memory, so the views are taken after).
    const xIn = this.owns(x) && (p.packed || colsPad === cols);
    const outIn = this.owns(out);
    const xPtr = xIn ? x.byteOffset : this.region("x", nTokens * colsPad * 4);
    const outPtr = outIn ? out.byteOffset : this.region("out", nTokens * rows * 4);
    const scratch = p.packed
      ? this.region("quant", this.wasm.quantScratchBytes(cols, nTokens))
      : this.region("rows", 4 * colsPad * 4);
    const f32 = this.f32;
    if (!xIn) {
      const xi = xPtr >>> 2;
      if (colsPad === cols) {
        f32.set(x.subarray(0, nTokens * cols), xi);
      } else {
        for (let t = 0; t < nTokens; t++) {
          const o = xi + t * colsPad;
          f32.set(x.subarray(t * cols, (t + 1) * cols), o);
          f32.fill(0, o + cols, o + colsPad);
        }
      }
    }
    const pool = this.pool;
    if (pool && rows * cols * nTokens >= PARALLEL_MIN_MACS && rows >= 8) {
      const parts = pool.threads;
      if (p.packed) {
        this.wasm.quantizeActivations(w.type, xPtr, nTokens, cols, scratch);
        const partBytes = align(this.wasm.quantPartBytes(cols));
        const partScratch = this.region("quantParts", parts * partBytes);
        pool.run("matmulQuantPart", [
          w.type,
          p.ptr,
          rows,
          cols,
          nTokens,
          scratch,
          outPtr,
          partScratch,
          partBytes,
        ]);
      } else {
        const partBytes = align(4 * colsPad * 4);
        const partScratch = this.region("rowParts", parts * partBytes);
        pool.run("matmulPart", [
          w.type,
          p.ptr,
          p.rowBytes,
          rows,
          colsPad,
          xPtr,
          nTokens,
          outPtr,
          partScratch,
          partBytes,
        ]);
      }
    } else if (p.packed) this.wasm.matmulQuant(w.type, p.ptr, rows, cols, xPtr, nTokens, outPtr, scratch);
    else this.wasm.matmul(w.type, p.ptr, p.rowBytes, rows, colsPad, xPtr, nTokens, outPtr, scratch);
    if (!outIn) out.set(this.f32.subarray(outPtr >>> 2, (outPtr >>> 2) + nTokens * rows));
  }

  rmsnorm(
    x: Float32Array,
    weight: Float32Array,
    nRows: number,
    dim: number,
    eps: number,
    out: Float32Array,
  ): void {
    if (!(this.owns(x) && this.owns(out)) || weight.length < dim) {
      referenceKernels.rmsnorm(x, weight, nRows, dim, eps, out);
      return;
    }
    if (x.length < nRows * dim || out.length < nRows * dim) throw new RangeError("rmsnorm: arrays too short");
    this.wasm.rmsnorm(x.byteOffset, this.constant(weight), nRows, dim, eps, out.byteOffset);
  }

  rope(
    x: Float32Array,
    nTokens: number,
    nHeads: number,
    headDim: number,
    positions: Int32Array,
    p: RopeParams,
  ): void {
    if (!this.owns(x) || p.dim > headDim || p.dim % 2 !== 0) {
      referenceKernels.rope(x, nTokens, nHeads, headDim, positions, p);
      return;
    }
    if (x.length < nTokens * nHeads * headDim) throw new RangeError("rope: x too short");
    const half = p.dim / 2;
    const table = this.ropeTableFor(positions, nTokens, p);
    this.wasm.rope(x.byteOffset, nTokens, nHeads, headDim, half, p.style === "neox" ? 1 : 0, table);
  }

  swiglu(gate: Float32Array, up: Float32Array, n: number, out: Float32Array): void {
    if (!(this.owns(gate) && this.owns(up) && this.owns(out))) {
      referenceKernels.swiglu(gate, up, n, out);
      return;
    }
    if (gate.length < n || up.length < n || out.length < n) throw new RangeError("swiglu: arrays too short");
    this.wasm.swiglu(gate.byteOffset, up.byteOffset, n, out.byteOffset);
  }

  addInPlace(a: Float32Array, b: Float32Array, n: number): void {
    if (!(this.owns(a) && this.owns(b))) {
      referenceKernels.addInPlace(a, b, n);
      return;
    }
    if (a.length < n || b.length < n) throw new RangeError("addInPlace: arrays too short");
    this.wasm.addInPlace(a.byteOffset, b.byteOffset, n);
  }

  storeKV(kv: PagedKV, k: Float32Array, v: Float32Array, seqs: readonly AttentionSeq[]): void {
    if (!(this.owns(kv.k) && this.owns(kv.v) && this.owns(k) && this.owns(v))) {
      referenceKernels.storeKV(kv, k, v, seqs);
      return;
    }
    const kvDim = kv.nKVHeads * kv.headDim;
    for (const s of seqs) {
      if (s.count === 0) continue;
      if (k.length < (s.row + s.count) * kvDim || v.length < (s.row + s.count) * kvDim)
        throw new RangeError("storeKV: k or v too short");
      const table = this.blockTable(kv, s);
      this.wasm.storeKV(
        kv.k.byteOffset,
        kv.v.byteOffset,
        kv.blockSize,
        kv.nKVHeads,
        kv.headDim,
        k.byteOffset,
        v.byteOffset,
        s.row,
        s.count,
        s.pos,
        table,
      );
    }
  }

  attention(
    kv: PagedKV,
    q: Float32Array,
    nHeads: number,
    seqs: readonly AttentionSeq[],
    out: Float32Array,
  ): void {
    if (!(this.owns(kv.k) && this.owns(kv.v)) || nHeads % kv.nKVHeads !== 0) {
      referenceKernels.attention(kv, q, nHeads, seqs, out);
      return;
    }
    const qDim = nHeads * kv.headDim;
    let rows = 0;
    for (const s of seqs) rows = Math.max(rows, s.row + s.count);
    if (q.length < rows * qDim || out.length < rows * qDim)
      throw new RangeError("attention: q or out too short");
    const qIn = this.owns(q);
    const outIn = this.owns(out);
    const qPtr = qIn ? q.byteOffset : this.region("q", rows * qDim * 4);
    const outPtr = outIn ? out.byteOffset : this.region("att", rows * qDim * 4);
    if (!qIn) this.f32.set(q.subarray(0, rows * qDim), qPtr >>> 2);
    const scale = 1 / Math.sqrt(kv.headDim);
    for (const s of seqs) {
      if (s.count === 0) continue;
      const table = this.blockTable(kv, s);
      const scores = this.region("scores", (s.pos + s.count) * 4);
      this.wasm.attention(
        kv.k.byteOffset,
        kv.v.byteOffset,
        kv.blockSize,
        kv.nKVHeads,
        kv.headDim,
        qPtr,
        nHeads,
        s.row,
        s.count,
        s.pos,
        table,
        outPtr,
        scores,
        scale,
      );
    }
    if (!outIn) {
      // Rows of sequences in `seqs` only (the reference leaves the others alone too).
      for (const s of seqs) {
        const a = s.row * qDim;
        const b = (s.row + s.count) * qDim;
        out.set(this.f32.subarray((outPtr >>> 2) + a, (outPtr >>> 2) + b), a);
      }
    }
  }

  dequantize(w: WeightMatrix): Float32Array {
    if (!this.supports(w.type)) throw new SpindleError(`no WebAssembly decoder for type ${w.type}`);
    const p = this.place(w);
    if (p.packed) {
      const dst = this.region("dequantize", 4 * w.cols * 4);
      const out = new Float32Array(w.rows * w.cols);
      for (let r = 0; r < w.rows; r += 4) {
        this.wasm.dequantizeGroup(w.type, p.ptr + (r / 4) * p.rowBytes, w.cols, dst);
        const n = Math.min(4, w.rows - r) * w.cols;
        out.set(this.f32.subarray(dst >>> 2, (dst >>> 2) + n), r * w.cols);
      }
      return out;
    }
    const dst = this.region("dequantize", w.rows * p.colsPad * 4);
    this.wasm.dequantizeRows(w.type, p.ptr, p.rowBytes, w.rows, p.colsPad, dst);
    const out = new Float32Array(w.rows * w.cols);
    for (let r = 0; r < w.rows; r++) {
      const o = (dst >>> 2) + r * p.colsPad;
      out.set(this.f32.subarray(o, o + w.cols), r * w.cols);
    }
    return out;
  }

  /**
   * The sequence's block table, checked, as i32 in scratch: the blocks covering positions
   * 0 .. pos + count − 1, each a block of this pool.
   */
  private blockTable(kv: PagedKV, s: AttentionSeq): number {
    const n = Math.ceil((s.pos + s.count) / kv.blockSize);
    const numBlocks = Math.floor(kv.k.length / (kv.blockSize * kv.nKVHeads * kv.headDim));
    if (kv.v.length < numBlocks * kv.blockSize * kv.nKVHeads * kv.headDim)
      throw new RangeError("the V pool is smaller than the K pool");
    const ptr = this.region("table", n * 4);
    const i32 = this.i32;
    const o = ptr >>> 2;
    for (let b = 0; b < n; b++) {
      const id = s.blockTable[b];
      if (id === undefined) throw new RangeError(`block table too short for position ${b * kv.blockSize}`);
      if (!(Number.isInteger(id) && id >= 0 && id < numBlocks))
        throw new RangeError(`block id ${id} is outside the KV pool (0..${numBlocks - 1})`);
      i32[o + b] = id;
    }
    return ptr;
  }

  /**
   * cos/sin of every (token, frequency) for these positions, computed in double as the reference
   * does, in scratch. The table of the previous call is reused when positions and parameters are the
   * same (the forward pass ropes q and k of every layer at the same positions).
   */
  private ropeTableFor(positions: Int32Array, nTokens: number, p: RopeParams): number {
    const t = this.ropeTable;
    if (
      t !== undefined &&
      t.nTokens === nTokens &&
      t.p.style === p.style &&
      t.p.dim === p.dim &&
      t.p.freqBase === p.freqBase &&
      t.p.freqScale === p.freqScale &&
      t.p.freqFactors === p.freqFactors
    ) {
      let same = true;
      for (let i = 0; i < nTokens && same; i++) same = t.positions[i] === positions[i];
      if (same) return t.ptr;
    }
    const half = p.dim / 2;
    const ptr = this.region("rope", nTokens * half * 8);
    const f32 = this.f32;
    const o = ptr >>> 2;
    for (let i = 0; i < half; i++) {
      const freq = p.freqBase ** ((-2 * i) / p.dim);
      for (let tok = 0; tok < nTokens; tok++) {
        let theta = positions[tok]! * p.freqScale * freq;
        if (p.freqFactors) theta /= p.freqFactors[i]!;
        const k = o + (tok * half + i) * 2;
        f32[k] = Math.cos(theta);
        f32[k + 1] = Math.sin(theta);
      }
    }
    this.ropeTable = { positions: positions.slice(0, nTokens), p: { ...p }, nTokens, ptr };
    return ptr;
  }

  /** A copy of a small constant array (a norm weight) in our memory, made once per array. */
  private constant(a: Float32Array): number {
    let ptr = this.constants.get(a);
    if (ptr === undefined) {
      ptr = this.alloc(a.length * 4);
      this.f32.set(a, ptr >>> 2);
      this.constants.set(a, ptr);
    }
    return ptr;
  }

  /** The matrix's copy in WebAssembly memory, made on first use. */
  private place(w: WeightMatrix): Placed {
    const known = this.placed.get(w);
    if (known !== undefined && known.data === w.data) return known;
    if (known !== undefined) this.release(known.ptr);
    const floatBytes = FLOAT_BYTES[w.type];
    let p: Placed;
    if (w.data.length < w.rows * w.rowBytes)
      throw new RangeError(`weight ${w.name}: ${w.data.length} bytes, need ${w.rows} rows of ${w.rowBytes}`);
    if (this.supported[w.type] === 2) {
      // Quantized: repacked in groups of 4 rows (see pack in the WebAssembly source), 4 rows at a time
      // through a small staging region.
      const groupBytes = this.wasm.groupBytes(w.type, w.cols);
      const groups = Math.ceil(w.rows / 4);
      const ptr = this.alloc(groups * groupBytes);
      const stage = this.region("stage", 4 * w.rowBytes);
      for (let g = 0; g < groups; g++) {
        const r0 = 4 * g;
        const n = Math.min(4, w.rows - r0);
        this.u8.set(w.data.subarray(r0 * w.rowBytes, (r0 + n) * w.rowBytes), stage);
        this.wasm.pack(w.type, stage, w.rowBytes, n, w.cols, ptr + g * groupBytes);
      }
      p = { data: w.data, ptr, rowBytes: groupBytes, colsPad: w.cols, packed: true };
    } else if (floatBytes !== undefined && w.cols % 4 !== 0) {
      // Float rows are padded with zeros to a multiple of 4 elements, so the kernels need no tails.
      const colsPad = (w.cols + 3) & ~3;
      const rowBytes = colsPad * floatBytes;
      const ptr = this.alloc(w.rows * rowBytes);
      const u8 = this.u8;
      for (let r = 0; r < w.rows; r++) {
        u8.set(w.data.subarray(r * w.rowBytes, (r + 1) * w.rowBytes), ptr + r * rowBytes);
        u8.fill(0, ptr + r * rowBytes + w.rowBytes, ptr + (r + 1) * rowBytes);
      }
      p = { data: w.data, ptr, rowBytes, colsPad, packed: false };
    } else {
      const bytes = w.rows * w.rowBytes;
      const ptr = this.alloc(bytes);
      this.u8.set(w.data.subarray(0, bytes), ptr);
      p = { data: w.data, ptr, rowBytes: w.rowBytes, colsPad: w.cols, packed: false };
    }
    this.placed.set(w, p);
    return p;
  }

  /** A grow-only scratch region of at least `bytes`, reused across calls. */
  private region(name: string, bytes: number): number {
    const r = this.regions.get(name);
    if (r !== undefined && r.bytes >= bytes) return r.ptr;
    if (r !== undefined) this.release(r.ptr);
    const size = Math.max(bytes, (r?.bytes ?? 0) * 2, 4096);
    const ptr = this.alloc(size);
    this.regions.set(name, { ptr, bytes: size });
    return ptr;
  }

  /** An allocation that must succeed (weights, scratch); its contents are unspecified. */
  private alloc(bytes: number): number {
    const ptr = this.tryAlloc(bytes);
    if (ptr !== undefined) this.noteWritten(ptr, align(bytes));
    if (ptr === undefined) {
      throw new SpindleError(
        `the WebAssembly kernels need more than the 4 GiB a 32-bit WebAssembly memory holds (${(this.memoryBytes() / 2 ** 30).toFixed(2)} GiB in use, ${(bytes / 2 ** 20).toFixed(1)} MiB more asked)`,
        "wasm_memory",
      );
    }
    return ptr;
  }

  /** First fit among the free ranges, else at the top (growing the memory); undefined when it cannot fit. */
  private tryAlloc(n: number): number | undefined {
    const bytes = align(n);
    for (let i = 0; i < this.free.length; i++) {
      const f = this.free[i]!;
      if (f.bytes < bytes) continue;
      const ptr = f.ptr;
      if (f.bytes === bytes) this.free.splice(i, 1);
      else {
        f.ptr += bytes;
        f.bytes -= bytes;
      }
      this.live.set(ptr, bytes);
      return ptr;
    }
    const ptr = this.top;
    const end = ptr + bytes;
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      const pages = Math.ceil((end - have) / PAGE);
      if (have / PAGE + pages > MAX_PAGES) return undefined;
      try {
        this.memory.grow(pages);
      } catch {
        return undefined;
      }
      this.refreshViews();
    }
    this.top = end;
    this.live.set(ptr, bytes);
    return ptr;
  }

  private noteWritten(ptr: number, bytes: number): void {
    this.highWater = Math.max(this.highWater, ptr + bytes);
  }

  /** Frees an allocation: its range joins the free list (merged with its neighbours) or lowers the top. */
  private release(ptr: number): void {
    const bytes = this.live.get(ptr);
    if (bytes === undefined) return;
    this.live.delete(ptr);
    const free = this.free;
    let i = 0;
    while (i < free.length && free[i]!.ptr < ptr) i++;
    free.splice(i, 0, { ptr, bytes });
    // Merge with the next range, then with the previous one.
    const cur = free[i]!;
    const next = free[i + 1];
    if (next !== undefined && cur.ptr + cur.bytes === next.ptr) {
      cur.bytes += next.bytes;
      free.splice(i + 1, 1);
    }
    const prev = free[i - 1];
    if (prev !== undefined && prev.ptr + prev.bytes === cur.ptr) {
      prev.bytes += cur.bytes;
      free.splice(i, 1);
    }
    const last = free[free.length - 1];
    if (last !== undefined && last.ptr + last.bytes === this.top) {
      this.top = last.ptr;
      free.pop();
    }
  }

  private refreshViews(): void {
    const buf = this.memory.buffer;
    this.buffers.add(buf);
    this.lastBuffer = buf;
    this.f32 = new Float32Array(buf);
    this.i32 = new Int32Array(buf);
    this.u8 = new Uint8Array(buf);
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

/** Whether the WebAssembly kernels have been built. */
export function wasmKernelsBuilt(): boolean {
  return existsSync(WASM_PATH);
}
