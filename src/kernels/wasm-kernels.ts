import { existsSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { SpindleError } from "../errors.js";
import { GGMLType } from "../gguf/types.js";
import type {
  AttentionOptions,
  AttentionSeq,
  Kernels,
  MatmulItem,
  MatrixSource,
  PagedKV,
  RopeParams,
  WeightMatrix,
} from "./kernels.js";
import { referenceKernels } from "./reference.js";
import { MAX_CHUNKS, WasmThreadPool } from "./thread-pool.js";
import { align, MAX_PAGES, WasmArena, type WasmMemory } from "./wasm-arena.js";
import { kernelImports } from "./wasm-imports.js";

/**
 * WebAssembly SIMD kernels behind the `Kernels` interface.
 *
 * The math is AssemblyScript in src/kernels/wasm/kernels.ts, compiled by `npm run build:kernels`
 * twice (see WasmBuild): dist-wasm/kernels.wasm (SIMD128) and dist-wasm/kernels-relaxed.wasm (plus
 * relaxed SIMD: fused multiply-adds in the float matmuls), the latter chosen at start-up where Node
 * runs it (chooseBuild). In WebAssembly: matmul for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q4_K, Q5_K and Q6_K; rmsnorm, rope, swiglu, geglu, addInPlace, storeKV and attention when their arrays
 * live in this kernel set's memory (see `allocFloat32`: the forward pass keeps its activations there
 * and KVCacheStorage its pools), the reference kernels' otherwise; getRows and addBias are the
 * reference's. Matmuls and attention are split over the kernel threads (thread-pool.ts) when big
 * enough. An f16 KV cache (PagedKVF16) is stored and read in WebAssembly too (attention when headDim
 * is a multiple of 8), with the f32 cache's arithmetic on the widened values; so are Gemma's sliding
 * windows and soft-capped scores. Gemma's other elementwise ops (softcap of the logits, scale) are
 * the reference's TypeScript run on the views of this memory (O(n) per token, small next to the
 * matmuls).
 *
 * Memory: shared WebAssembly.Memory objects (up to 4 GiB each), owned here. Being shared, their
 * buffers are SharedArrayBuffers that are never detached, so Float32Array views handed out by
 * allocFloat32 stay valid when a memory grows. The main memory holds activations, KV pools, scratch
 * regions and weights up to `mainWeightBytes`; further weights go to weight-only memories (so models
 * over 4 GiB load). A weight matrix is placed once: `adopt` (called by loadModel as it reads the
 * file) repacks it and drops the file's bytes, `prepare` or the first matmul copies one that was not
 * adopted (keyed by the WeightMatrix object; quantized types repacked in groups of 4 rows, float
 * rows zero-padded to a multiple of 4 elements). Allocation is first-fit (wasm-arena.ts). Use one
 * kernel set per model, and close() it when done with it.
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
  /** Which build of the module runs (see WasmBuild). */
  readonly build: WasmBuild;
  /** Resolves once the kernel threads are up (the first matmul would otherwise wait for them). */
  ready(): Promise<void>;
  /**
   * Whether decode-sized matmuls (up to 4 tokens) are split over the threads too (default on; larger
   * ones always are). A split never changes results; whether it pays at decode depends on the
   * machine and the model, so `tuneSmallSplits` (src/model/tune-splits.ts) sets it by measurement.
   */
  smallSplits: boolean;
  /** Whether matmul of this weight type runs in WebAssembly (other types use the reference kernel). */
  supports(type: GGMLType): boolean;
  /** Copies these matrices into WebAssembly memory now instead of on their first use. */
  prepare(weights: Iterable<WeightMatrix>): void;
  /** Bytes of WebAssembly memory in use (weights, scratch, allocations; freed space not counted). */
  memoryBytes(): number;
  /** The matrix decoded to floats (rows × cols) by the WebAssembly decoders, as matmul sees it; for tests. */
  dequantize(w: WeightMatrix): Float32Array;
  /** Whether this array lies in this kernel set's memory (so the kernels work on it in place). */
  owns(a: ArrayBufferView): boolean;
  allocFloat32(n: number): Float32Array | undefined;
  allocUint16(n: number): Uint16Array | undefined;
  freeFloat32(a: Float32Array | Uint16Array): void;
  argmax(x: Float32Array, n: number): number;
  samplingScratch(n: number): Float32Array;
  cleanCopy(src: Float32Array, dst: Float32Array, n: number): boolean;
  softmax(x: Float32Array, n: number, invT: number): number;
}

/** The parts of the WebAssembly JS API used here (the project's `lib` setting does not declare them). */
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: unknown };
  compile(bytes: Uint8Array): Promise<object>;
  validate(bytes: Uint8Array): boolean;
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
  packPart(
    type: number,
    src: number,
    rowBytes: number,
    rows: number,
    cols: number,
    dst: number,
    part: number,
    parts: number,
  ): void;
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
  matmulQuantList(...args: number[]): void;
  matmulQuantPart(...args: number[]): void;
  matmulPart(...args: number[]): void;
  rmsnorm(x: number, w: number, nRows: number, dim: number, eps: number, out: number): void;
  gluPart(gate: number, up: number, n: number, out: number, gelu: number, part: number, parts: number): void;
  addInPlace(a: number, b: number, n: number): void;
  argmaxF32(x: number, n: number): number;
  cleanCopyF32(src: number, dst: number, n: number): void;
  softmaxF32(x: number, n: number, invT: number): number;
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
    seqs: number,
    nSeqs: number,
    f16: number,
  ): void;
  attentionScratchBytes(
    maxCtx: number,
    group: number,
    blockSize: number,
    headDim: number,
    f16: number,
  ): number;
  attentionPart(...args: number[]): void;
}

/** A weight matrix's copy in WebAssembly memory. */
interface Placed {
  /** The memory it is in. */
  arena: Arena;
  data: Uint8Array;
  ptr: number;
  bytes: number;
  /** Float types: bytes per (padded) row. Packed types: bytes per group of 4 rows. */
  rowBytes: number;
  colsPad: number;
  packed: boolean;
}

/** Calls of up to this many tokens (decode steps) are split over the threads only while smallSplits is on. */
const SMALL_TOKENS = 4;

/**
 * A split kernel is cut into parts of at least this many multiply-adds (but never fewer parts than
 * threads). A decode step's small matrices (the 135M shape's q/k/v, 960 × 576, and its o, down and
 * gate/up) cut into PARTS_PER_THREAD parts per thread left each part too few rows for matmulPacked's
 * four interleaved weight streams and paid each part's fixed cost: one part per thread decoded the
 * 135M-shape Q8_0 file in 0.94–0.96× the time (medians of 12–24 alternating rounds in one process),
 * and the 1B-shape and MoE files, whose matrices are larger, in 1.00–1.01×.
 */
const MIN_PART_MACS = 2_000_000;

/** u32 fields of a matmulQuantList record (kernels.ts' LIST_RECORD_BYTES / 4). */
const LIST_RECORD_WORDS = 7;

/**
 * A split kernel is cut into this many parts per thread at most, which the threads take one at a time
 * (thread-pool.ts): a thread slowed by something else on its core takes fewer.
 */
const PARTS_PER_THREAD = 4;

type Arena = WasmArena<WasmExports>;

/** The bytes of an adopted matrix (see adopt): its only copy is the one in WebAssembly memory. */
const ADOPTED = new Uint8Array(0);
const FLOAT_BYTES: Partial<Record<GGMLType, number>> = {
  [GGMLType.F32]: 4,
  [GGMLType.F16]: 2,
  [GGMLType.BF16]: 2,
};

/**
 * The two builds of the kernels (scripts/build-kernels.mjs): "simd", SIMD128 only; "relaxed", SIMD128
 * plus relaxed SIMD, whose float matmuls (F32, F16, BF16) use fused multiply-adds (one rounding per
 * step instead of two, and fewer instructions). Every other kernel is the same code in both.
 */
export type WasmBuild = "simd" | "relaxed";

/** Where the build puts the modules: dist-wasm/ at the package root, two levels above this file (src/ or dist/). */
export const WASM_PATHS: Readonly<Record<WasmBuild, string>> = {
  simd: fileURLToPath(new URL("../../dist-wasm/kernels.wasm", import.meta.url)),
  relaxed: fileURLToPath(new URL("../../dist-wasm/kernels-relaxed.wasm", import.meta.url)),
};
export const WASM_PATH = WASM_PATHS.simd;

function notBuilt(path: string): SpindleError {
  return new SpindleError(
    `the WebAssembly kernels are not built (${path} is missing); run \`npm run build:kernels\``,
    "kernels_not_built",
  );
}

/** Each build's bytes, read once (relaxedSimdAvailable validates the bytes that are then compiled). */
const bytesRead = new Map<WasmBuild, Buffer>();

function wasmBytes(build: WasmBuild): Buffer {
  let bytes = bytesRead.get(build);
  if (bytes === undefined) {
    try {
      bytes = readFileSync(WASM_PATHS[build]);
    } catch {
      throw notBuilt(WASM_PATHS[build]);
    }
    bytesRead.set(build, bytes);
  }
  return bytes;
}

let relaxedOk: boolean | undefined;

/**
 * Whether this Node runs the relaxed-SIMD build: whether the module validates. Node 22 and later
 * (the supported runtimes) have relaxed SIMD on by default on x64 and arm64. False where it does not
 * validate (Node 20 without its `--experimental-wasm-relaxed-simd` flag, another engine) or the
 * build is missing.
 */
export function relaxedSimdAvailable(): boolean {
  if (relaxedOk !== undefined) return relaxedOk;
  let bytes: Buffer;
  try {
    bytes = wasmBytes("relaxed");
  } catch {
    return false; // not cached: a later build may add it
  }
  relaxedOk = WA.validate(bytes);
  return relaxedOk;
}

/**
 * The build a kernel set uses: `requested`, else $SPINDLE_WASM_BUILD, else "relaxed" where this Node
 * runs it and "simd" elsewhere. Asking for "relaxed" where it cannot run is an error, not a fallback.
 */
export function chooseBuild(requested?: WasmBuild): WasmBuild {
  const env = process.env.SPINDLE_WASM_BUILD;
  const want = requested ?? (env === undefined || env === "" ? undefined : env);
  if (want === undefined) return relaxedSimdAvailable() ? "relaxed" : "simd";
  if (want !== "simd" && want !== "relaxed")
    throw new SpindleError(`SPINDLE_WASM_BUILD="${want}" must be "simd" or "relaxed"`, "bad_wasm_build");
  if (want === "relaxed" && !relaxedSimdAvailable())
    throw new SpindleError(
      `the relaxed-SIMD kernels cannot run here (${WASM_PATHS.relaxed} missing, or this Node's WebAssembly has no relaxed SIMD); use the "simd" build`,
      "bad_wasm_build",
    );
  return want;
}

const compiled = new Map<WasmBuild, Promise<object>>();
const compiledSync = new Map<WasmBuild, object>();

function newMemory(): WasmMemory {
  return new WA.Memory({ initial: 16, maximum: MAX_PAGES, shared: true });
}

export interface WasmKernelOptions {
  /**
   * Threads a big enough matmul is split over (rows by groups of 4; the results do not depend on
   * it). Default: $SPINDLE_THREADS, else the number of cores.
   */
  threads?: number;
  /**
   * Bytes of weights kept in the main memory, next to the activations and KV pools (default 2 GiB);
   * the rest go to further memories of up to `memoryWeightBytes` each (default 3.75 GiB), so models
   * past the 4 GiB of one 32-bit WebAssembly memory load. Tests set them small to spread a small
   * model over several memories.
   */
  mainWeightBytes?: number;
  memoryWeightBytes?: number;
  /** Which build of the module (see chooseBuild): default $SPINDLE_WASM_BUILD, else "relaxed" where it runs. */
  build?: WasmBuild;
}

const GiB = 2 ** 30;

/** Matmuls with fewer multiply-adds than this run on one thread: a hand-off costs a few µs (measured: a 288 × 288 Q8_0 matvec is slower split, 768 × 288 faster). */
const PARALLEL_MIN_MACS = 131_072;

/** swiglu and geglu are split over the threads from this many elements on (about 30 µs on one thread). */
const GLU_SPLIT_MIN = 16_384;

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

/**
 * The same, synchronously (Node compiles and instantiates modules of any size synchronously), so
 * the synchronous `loadModel` can default to these kernels.
 */
export function createWasmKernelsSync(o: WasmKernelOptions = {}): WasmKernels {
  const build = chooseBuild(o.build);
  let module = compiledSync.get(build);
  if (module === undefined) {
    module = new WA.Module(wasmBytes(build));
    compiledSync.set(build, module);
  }
  return new WasmKernelSet(module, build, o);
}

/** Loads the WebAssembly kernels; each call gets its own memory (use one per model). */
export async function createWasmKernels(o: WasmKernelOptions = {}): Promise<WasmKernels> {
  const build = chooseBuild(o.build);
  let pending = compiled.get(build);
  if (pending === undefined) {
    pending = (async () => WA.compile(wasmBytes(build)))();
    compiled.set(build, pending);
  }
  let module: object;
  try {
    module = await pending;
  } catch (e) {
    compiled.delete(build);
    throw e;
  }
  return new WasmKernelSet(module, build, o);
}

/** A new memory with an instance of the module on it (Node instantiates synchronously at any size). */
function newArena(module: object): Arena {
  const memory = newMemory();
  const exports = new WA.Instance(module, kernelImports(memory)).exports as unknown as WasmExports;
  return new WasmArena(memory, exports, exports.heapBase());
}

/** The rope cos/sin table last computed, for the positions array it was computed for. */
interface RopeTable {
  positions: Int32Array;
  p: RopeParams;
  nTokens: number;
  ptr: number;
}

/** Kernel exports the thread pool may run. */
const POOL_FUNCTIONS = [
  "matmulQuantPart",
  "matmulPart",
  "matmulQuantMulti",
  "matmulQuantList",
  "attentionPart",
  "gluPart",
  "packPart",
] as const;

/** Bytes of a quantized weight matrix copied into WebAssembly memory at once, then packed by every thread. */
const STAGE_BYTES = 16 * 2 ** 20;

class WasmKernelSet implements WasmKernels {
  readonly name = "wasm";
  /** Memory 0: activations, KV pools, scratch, norm weights, and weights up to mainWeightBytes. */
  private readonly main: Arena;
  /** Every memory, main first; the others hold weights only. */
  private readonly arenas: Arena[];
  private pool: WasmThreadPool | undefined;
  private nThreads: number;
  private readonly mainWeightBytes: number;
  private readonly memoryWeightBytes: number;
  private placed = new WeakMap<WeightMatrix, Placed>();
  /** Copies of small float arrays (norm weights) in WebAssembly memory, keyed by the array. */
  private constants = new WeakMap<Float32Array, number>();
  /** Per type: 0 not supported, 1 float (matmul), 2 packed quantized (matmulQuant). */
  private supported: number[] = [];
  private ropeTable: RopeTable | undefined;
  smallSplits = true;

  readonly getRows = referenceKernels.getRows;
  readonly addBias = referenceKernels.addBias;

  constructor(
    private readonly module: object,
    readonly build: WasmBuild,
    o: WasmKernelOptions,
  ) {
    this.main = newArena(module);
    this.arenas = [this.main];
    this.nThreads = o.threads ?? defaultThreads();
    this.mainWeightBytes = o.mainWeightBytes ?? 2 * GiB;
    this.memoryWeightBytes = o.memoryWeightBytes ?? 3.75 * GiB;
    this.startPool();
    for (const t of Object.values(GGMLType)) {
      if (typeof t === "number") this.supported[t] = this.main.wasm.supports(t);
    }
  }

  /** Stops the kernel threads; later matmuls run on the calling thread. */
  async close(): Promise<void> {
    const pool = this.pool;
    this.pool = undefined;
    this.nThreads = 1;
    await pool?.close();
  }

  /** (Re)starts the kernel threads on every memory (a new memory means new worker instances). */
  private startPool(): void {
    if (this.nThreads <= 1) return;
    const old = this.pool;
    this.pool = WasmThreadPool.create({
      threads: this.nThreads,
      module: this.module,
      memories: this.arenas.map((a) => a.memory),
      exports: this.arenas.map((a) => a.wasm as unknown as Record<string, unknown>),
      functions: [...POOL_FUNCTIONS],
    });
    void old?.close();
  }

  get threads(): number {
    return this.pool?.threads ?? 1;
  }

  /** How many WebAssembly memories the kernels use (more than one once weights pass mainWeightBytes). */
  get memories(): number {
    return this.arenas.length;
  }

  ready(): Promise<void> {
    return this.pool?.ready ?? Promise.resolve();
  }

  memoryBytes(): number {
    return this.arenas.reduce((n, a) => n + a.usedBytes(), 0);
  }

  supports(type: GGMLType): boolean {
    return (this.supported[type] ?? 0) !== 0;
  }

  prepare(weights: Iterable<WeightMatrix>): void {
    for (const w of weights) if (this.supports(w.type)) this.place(w);
  }

  adopt(w: WeightMatrix, source?: MatrixSource): boolean {
    if (!this.supports(w.type)) return false;
    const p = this.place(w, source);
    p.data = ADOPTED;
    w.data = ADOPTED;
    return true;
  }

  owns(a: ArrayBufferView): boolean {
    return this.main.owns(a);
  }

  allocFloat32(n: number): Float32Array | undefined {
    return this.main.allocFloat32(n);
  }

  allocUint16(n: number): Uint16Array | undefined {
    return this.main.allocUint16(n);
  }

  freeFloat32(a: Float32Array | Uint16Array): void {
    if (this.main.owns(a)) this.main.release(a.byteOffset);
  }

  /**
   * How many parts a kernel of `macs` multiply-adds over `units` indivisible units (groups of 4
   * rows, attention items) is cut into: 1 (the calling thread alone) unless there are threads and
   * the kernel is worth them: at least PARALLEL_MIN_MACS multiply-adds, and more than SMALL_TOKENS
   * tokens unless smallSplits is on. Then parts of MIN_PART_MACS or more, one per thread at least.
   */
  private partsFor(macs: number, nTokens: number, units: number): number {
    if (macs < PARALLEL_MIN_MACS || (nTokens <= SMALL_TOKENS && !this.smallSplits)) return 1;
    return Math.min(this.poolParts(units), Math.max(this.threads, Math.floor(macs / MIN_PART_MACS)));
  }

  /** Parts for `units` indivisible units: PARTS_PER_THREAD per thread at most, 1 without threads. */
  private poolParts(units: number): number {
    const pool = this.pool;
    if (pool === undefined) return 1;
    return Math.max(1, Math.min(units, pool.threads * PARTS_PER_THREAD, MAX_CHUNKS));
  }

  /**
   * Heads per attention work item (attentionPart's `unit`): a KV head's whole group, whose keys and
   * values are then read (and, from an f16 cache, widened) once for all of them, unless an f32
   * cache's step has too few groups to keep the threads busy (a 1-sequence decode step), then one
   * head: measured on 9 heads over 3 KV heads, 2 threads, 1,000 cached tokens, 1.5× faster than
   * the 2:1 split of 3 groups for f32, 1.4× slower for f16, where widening dominates.
   */
  private headsPerItem(group: number, groups: number, kv: PagedKV): number {
    return kv.type === "f16" || groups >= 2 * this.threads ? group : 1;
  }

  /** Runs a splittable kernel on memory `arena`'s instance in `parts` parts (partsFor), over the threads when more than one. */
  private run(arena: Arena, name: (typeof POOL_FUNCTIONS)[number], args: number[], parts: number): void {
    if (parts === 1 || this.pool === undefined) (arena.wasm[name] as (...a: number[]) => void)(...args, 0, 1);
    else this.pool.run(name, args, this.arenas.indexOf(arena), parts);
  }

  /**
   * x (nTokens × cols floats) where the kernels of `arena` can read it: in place when it already
   * is, else copied into a scratch region there (rows zero-padded to colsPad).
   */
  private stageIn(arena: Arena, x: Float32Array, nTokens: number, cols: number, colsPad: number): number {
    if (arena === this.main && this.main.owns(x) && colsPad === cols) return x.byteOffset;
    const ptr = this.scratchIn(arena, "x", nTokens * colsPad * 4);
    const f32 = arena.f32;
    const xi = ptr >>> 2;
    if (colsPad === cols) {
      f32.set(x.subarray(0, nTokens * cols), xi);
    } else {
      for (let t = 0; t < nTokens; t++) {
        const o = xi + t * colsPad;
        f32.set(x.subarray(t * cols, (t + 1) * cols), o);
        f32.fill(0, o + cols, o + colsPad);
      }
    }
    return ptr;
  }

  matmulShared(
    ws: readonly WeightMatrix[],
    x: Float32Array,
    nTokens: number,
    outs: readonly Float32Array[],
  ): void {
    const w0 = ws[0];
    if (
      w0 === undefined ||
      ws.length < 2 ||
      ws.length > 3 ||
      nTokens === 0 ||
      this.supported[w0.type] !== 2
    ) {
      for (let i = 0; i < ws.length; i++) this.matmul(ws[i]!, x, nTokens, outs[i]!);
      return;
    }
    const placed = ws.map((w) => this.place(w));
    const arena = placed[0]!.arena;
    const fused =
      placed.every((p) => p.arena === arena) &&
      ws.every(
        (w, i) => w.type === w0.type && w.cols === w0.cols && (arena !== this.main || this.owns(outs[i]!)),
      );
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
    const xPtr = this.stageIn(arena, x, nTokens, cols, cols);
    // Outputs in the main memory are written in place; a weights-only memory writes them to scratch.
    const outPtrs = ws.map((w, i) =>
      arena === this.main ? outs[i]!.byteOffset : this.scratchIn(arena, `out${i}`, nTokens * w.rows * 4),
    );
    const scratch = this.scratchIn(arena, "quant", arena.wasm.quantScratchBytes(cols, nTokens));
    const macs = ws.reduce((a, w) => a + w.rows * cols * nTokens, 0);
    const parts = this.partsFor(macs, nTokens, Math.min(...ws.map((w) => Math.ceil(w.rows / 4))));
    const partBytes = align(arena.wasm.quantPartBytes(cols));
    const partScratch = this.scratchIn(arena, "quantParts", parts * partBytes);
    arena.wasm.quantizeActivations(w0.type, xPtr, nTokens, cols, scratch);
    const m = (i: number) => (i < ws.length ? [placed[i]!.ptr, ws[i]!.rows, outPtrs[i]!] : [0, 0, 0]);
    const args = [w0.type, cols, nTokens, scratch, partScratch, partBytes, ...m(0), ...m(1), ...m(2)];
    this.run(arena, "matmulQuantMulti", args, parts);
    if (arena !== this.main) {
      ws.forEach((w, i) => {
        const o = outPtrs[i]! >>> 2;
        outs[i]!.set(arena.f32.subarray(o, o + nTokens * w.rows));
      });
    }
  }

  matmulList(items: readonly MatmulItem[]): void {
    // Packed matrices by the memory they are in (a large model's later layers may be in a
    // weights-only one); anything else as a plain matmul.
    const byArena = new Map<Arena, MatmulItem[]>();
    for (const it of items) {
      if (it.x.length < it.nTokens * it.w.cols || it.out.length < it.nTokens * it.w.rows)
        throw new RangeError(`matmulList: an item's x or out is shorter than ${it.nTokens} rows`);
      if (it.nTokens === 0 || it.w.rows === 0) continue;
      const p = this.supported[it.w.type] === 2 ? this.place(it.w) : undefined;
      if (!p?.packed) this.matmul(it.w, it.x, it.nTokens, it.out);
      else if (byArena.has(p.arena)) byArena.get(p.arena)!.push(it);
      else byArena.set(p.arena, [it]);
    }
    for (const [arena, list] of byArena) {
      if (list.length === 1) this.matmul(list[0]!.w, list[0]!.x, list[0]!.nTokens, list[0]!.out);
      else this.listIn(arena, list);
    }
  }

  /** matmulList's items whose matrices are all packed in `arena`: one matmulQuantList call. */
  private listIn(arena: Arena, items: readonly MatmulItem[]): void {
    const wasm = arena.wasm;
    const inPlace = (a: Float32Array) => arena === this.main && this.main.owns(a);
    // Each distinct x (the same view, type and width: gate and up of an expert) is quantized once.
    interface Act {
      x: Float32Array;
      n: number;
      cols: number;
      type: number;
      ptr: number;
      quant: number;
    }
    const all: Act[] = [];
    const actOf = (it: MatmulItem): Act => {
      let a = all.find(
        (s) => s.x === it.x && s.n === it.nTokens && s.cols === it.w.cols && s.type === it.w.type,
      );
      if (!a) {
        a = { x: it.x, n: it.nTokens, cols: it.w.cols, type: it.w.type, ptr: -1, quant: 0 };
        all.push(a);
      }
      return a;
    };
    // Pointers in place are read before anything is allocated (allocating may grow the memory).
    const records = items.map((it) => {
      const a = actOf(it);
      if (inPlace(it.x)) a.ptr = it.x.byteOffset;
      const outInPlace = inPlace(it.out);
      return { it, a, w: this.place(it.w).ptr, outInPlace, out: outInPlace ? it.out.byteOffset : -1 };
    });
    // What is not in place goes through scratch regions of the arena: x copied in, out copied back.
    let staged = 0;
    for (const a of all) if (a.ptr < 0) staged += a.n * a.cols;
    let outs = 0;
    for (const r of records) if (!r.outInPlace) outs += r.it.nTokens * r.it.w.rows;
    const xBase = staged > 0 ? this.scratchIn(arena, "listX", staged * 4) : 0;
    const outBase = outs > 0 ? this.scratchIn(arena, "listOut", outs * 4) : 0;
    let quantBytes = 0;
    for (const a of all) {
      a.quant = quantBytes;
      quantBytes += align(wasm.quantScratchBytes(a.cols, a.n));
    }
    const quantBase = this.scratchIn(arena, "quantList", quantBytes);
    const macs = items.reduce((s, it) => s + it.w.rows * it.w.cols * it.nTokens, 0);
    const nTokens = Math.max(...items.map((it) => it.nTokens));
    const parts = this.partsFor(macs, nTokens, Math.min(...items.map((it) => Math.ceil(it.w.rows / 4))));
    const partBytes = align(Math.max(...items.map((it) => wasm.quantPartBytes(it.w.cols))));
    const partScratch = this.scratchIn(arena, "quantParts", parts * partBytes);
    const list = this.scratchIn(arena, "list", records.length * LIST_RECORD_WORDS * 4);
    // The views are taken after the last allocation.
    let at = xBase >>> 2;
    for (const a of all) {
      if (a.ptr >= 0) continue;
      arena.f32.set(a.x.subarray(0, a.n * a.cols), at);
      a.ptr = at << 2;
      at += a.n * a.cols;
    }
    for (const a of all) wasm.quantizeActivations(a.type, a.ptr, a.n, a.cols, quantBase + a.quant);
    let outAt = outBase;
    for (const r of records) {
      if (r.outInPlace) continue;
      r.out = outAt;
      outAt += r.it.nTokens * r.it.w.rows * 4;
    }
    // matmulQuantList's records: type, w, rows, cols, nTokens, scratch, out.
    records.forEach((r, i) => {
      const { w, nTokens: n } = r.it;
      arena.i32.set(
        [w.type, r.w, w.rows, w.cols, n, quantBase + r.a.quant, r.out],
        (list >>> 2) + i * LIST_RECORD_WORDS,
      );
    });
    this.run(arena, "matmulQuantList", [list, records.length, partScratch, partBytes], parts);
    for (const r of records) {
      if (r.outInPlace) continue;
      const o = r.out >>> 2;
      r.it.out.set(arena.f32.subarray(o, o + r.it.nTokens * r.it.w.rows));
    }
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
    const arena = p.arena;
    const colsPad = p.colsPad;
    // Activations and output in the weights' memory are used in place; others go through scratch
    // regions there (allocating may grow the memory, so the views are taken after).
    const xPtr = this.stageIn(arena, x, nTokens, cols, p.packed ? cols : colsPad);
    const outIn = arena === this.main && this.main.owns(out);
    const outPtr = outIn ? out.byteOffset : this.scratchIn(arena, "out", nTokens * rows * 4);
    const scratch = p.packed
      ? this.scratchIn(arena, "quant", arena.wasm.quantScratchBytes(cols, nTokens))
      : this.scratchIn(arena, "rows", 4 * colsPad * 4);
    const parts = this.partsFor(rows * cols * nTokens, nTokens, Math.ceil(rows / 4));
    if (p.packed) {
      arena.wasm.quantizeActivations(w.type, xPtr, nTokens, cols, scratch);
      const partBytes = align(arena.wasm.quantPartBytes(cols));
      const partScratch = this.scratchIn(arena, "quantParts", parts * partBytes);
      const args = [w.type, p.ptr, rows, cols, nTokens, scratch, outPtr, partScratch, partBytes];
      this.run(arena, "matmulQuantPart", args, parts);
    } else {
      const partBytes = align(4 * colsPad * 4);
      const partScratch = this.scratchIn(arena, "rowParts", parts * partBytes);
      const args = [w.type, p.ptr, p.rowBytes, rows, colsPad, xPtr, nTokens, outPtr, partScratch, partBytes];
      this.run(arena, "matmulPart", args, parts);
    }
    if (!outIn) out.set(arena.f32.subarray(outPtr >>> 2, (outPtr >>> 2) + nTokens * rows));
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
    this.main.wasm.rmsnorm(x.byteOffset, this.constant(weight), nRows, dim, eps, out.byteOffset);
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
    this.main.wasm.rope(x.byteOffset, nTokens, nHeads, headDim, half, p.style === "neox" ? 1 : 0, table);
  }

  swiglu(gate: Float32Array, up: Float32Array, n: number, out: Float32Array): void {
    this.glu("swiglu", gate, up, n, out);
  }

  geglu(gate: Float32Array, up: Float32Array, n: number, out: Float32Array): void {
    this.glu("geglu", gate, up, n, out);
  }

  /** swiglu and geglu: one WebAssembly kernel (gluPart), its activation by name. */
  private glu(op: "swiglu" | "geglu", gate: Float32Array, up: Float32Array, n: number, out: Float32Array) {
    if (!(this.owns(gate) && this.owns(up) && this.owns(out))) {
      referenceKernels[op](gate, up, n, out);
      return;
    }
    if (gate.length < n || up.length < n || out.length < n) throw new RangeError(`${op}: arrays too short`);
    // An exponential per element: worth the threads from a few tokens of a feed-forward layer on.
    const parts = n >= GLU_SPLIT_MIN ? this.poolParts(Math.ceil(n / 4)) : 1;
    const args = [gate.byteOffset, up.byteOffset, n, out.byteOffset, op === "geglu" ? 1 : 0];
    this.run(this.main, "gluPart", args, parts);
  }

  softcap(x: Float32Array, n: number, cap: number): void {
    referenceKernels.softcap(x, n, cap);
  }

  scale(x: Float32Array, n: number, s: number): void {
    referenceKernels.scale(x, n, s);
  }

  overlap(work: () => void): () => void {
    if (this.pool === undefined) return work; // one thread: nothing to overlap with
    return this.pool.overlap(work);
  }

  argmax(x: Float32Array, n: number): number {
    if (!this.owns(x) || n > x.length || n <= 0) return -1;
    return this.main.wasm.argmaxF32(x.byteOffset, n);
  }

  private samplingView: Float32Array | undefined;

  samplingScratch(n: number): Float32Array {
    const v = this.samplingView;
    if (v !== undefined && v.length >= n && v.buffer === this.main.f32.buffer) return v;
    const ptr = this.scratch("sampling", n * 4);
    this.samplingView = this.main.f32.subarray(ptr >> 2, (ptr >> 2) + n);
    return this.samplingView;
  }

  cleanCopy(src: Float32Array, dst: Float32Array, n: number): boolean {
    if (!(this.owns(src) && this.owns(dst)) || n > src.length || n > dst.length) return false;
    this.main.wasm.cleanCopyF32(src.byteOffset, dst.byteOffset, n);
    return true;
  }

  softmax(x: Float32Array, n: number, invT: number): number {
    if (!this.owns(x) || n > x.length || n <= 0) return Number.NaN;
    return this.main.wasm.softmaxF32(x.byteOffset, n, invT);
  }

  addInPlace(a: Float32Array, b: Float32Array, n: number): void {
    if (!(this.owns(a) && this.owns(b))) {
      referenceKernels.addInPlace(a, b, n);
      return;
    }
    if (a.length < n || b.length < n) throw new RangeError("addInPlace: arrays too short");
    this.main.wasm.addInPlace(a.byteOffset, b.byteOffset, n);
  }

  storeKV(kv: PagedKV, k: Float32Array, v: Float32Array, seqs: readonly AttentionSeq[]): void {
    if (!(this.ownsPools(kv) && this.owns(k) && this.owns(v))) {
      referenceKernels.storeKV(kv, k, v, seqs);
      return;
    }
    const kvDim = kv.nKVHeads * kv.headDim;
    const live = seqs.filter((s) => s.count > 0);
    for (const s of live) {
      if (k.length < (s.row + s.count) * kvDim || v.length < (s.row + s.count) * kvDim)
        throw new RangeError("storeKV: k or v too short");
    }
    if (live.length === 0) return;
    this.main.wasm.storeKV(
      kv.k.byteOffset,
      kv.v.byteOffset,
      kv.blockSize,
      kv.nKVHeads,
      kv.headDim,
      k.byteOffset,
      v.byteOffset,
      this.seqRecords(kv, live, 1),
      live.length,
      this.f16Flag(kv),
    );
  }

  /** Whether the pools are in this memory. */
  private ownsPools(kv: PagedKV): boolean {
    return this.owns(kv.k) && this.owns(kv.v);
  }

  /** storeKV's and attentionPart's `f16` argument: 1 for f16 pools. */
  private f16Flag(kv: PagedKV): number {
    return kv.type === "f16" ? 1 : 0;
  }

  attention(
    kv: PagedKV,
    q: Float32Array,
    nHeads: number,
    seqs: readonly AttentionSeq[],
    out: Float32Array,
    opts: AttentionOptions = {},
  ): void {
    if (!this.ownsPools(kv) || nHeads % kv.nKVHeads !== 0) {
      referenceKernels.attention(kv, q, nHeads, seqs, out, opts);
      return;
    }
    const qDim = nHeads * kv.headDim;
    let rows = 0;
    for (const s of seqs) rows = Math.max(rows, s.row + s.count);
    if (q.length < rows * qDim || out.length < rows * qDim)
      throw new RangeError("attention: q or out too short");
    const qIn = this.owns(q);
    const outIn = this.owns(out);
    const qPtr = qIn ? q.byteOffset : this.scratch("q", rows * qDim * 4);
    const outPtr = outIn ? out.byteOffset : this.scratch("att", rows * qDim * 4);
    if (!qIn) this.main.f32.set(q.subarray(0, rows * qDim), qPtr >>> 2);
    const live = seqs.filter((s) => s.count > 0);
    let maxCtx = 0;
    let macs = 0;
    const window = opts.window ?? 0;
    let queries = 0;
    for (const s of live) {
      queries += s.count;
      maxCtx = Math.max(maxCtx, s.pos + s.count);
      const keys = s.count * (s.pos + (s.count + 1) / 2);
      macs += (window > 0 ? Math.min(keys, s.count * window) : keys) * qDim * 2;
    }
    const group = nHeads / kv.nKVHeads;
    const unit = this.headsPerItem(group, queries * kv.nKVHeads, kv);
    const items = (queries * nHeads) / unit;
    const desc = this.seqRecords(kv, live, window);
    const parts = this.partsFor(macs, rows, items);
    const scoresStride = this.main.wasm.attentionScratchBytes(
      maxCtx,
      group,
      kv.blockSize,
      kv.headDim,
      this.f16Flag(kv),
    );
    const scores = this.scratch("scores", parts * scoresStride);
    const args = [
      kv.k.byteOffset,
      kv.v.byteOffset,
      kv.blockSize,
      kv.nKVHeads,
      kv.headDim,
      qPtr,
      nHeads,
      desc,
      live.length,
      outPtr,
      scores,
      scoresStride,
      opts.scale ?? 1 / Math.sqrt(kv.headDim),
      this.f16Flag(kv),
      window,
      opts.softcap ?? 0,
      unit,
    ];
    this.run(this.main, "attentionPart", args, parts);
    if (!outIn) {
      // Rows of sequences in `seqs` only (the reference leaves the others alone too).
      for (const s of seqs) {
        const a = s.row * qDim;
        const b = (s.row + s.count) * qDim;
        out.set(this.main.f32.subarray((outPtr >>> 2) + a, (outPtr >>> 2) + b), a);
      }
    }
  }

  /**
   * The records storeKV and attentionPart read, in scratch: per sequence four i32 (row, count, pos,
   * byte address of its block table), then the block tables, checked. Returns the records' address.
   * With a sliding `window` (attention's), blocks wholly before the first key any of the step's
   * queries sees are never read: their entries are written as block 0 unchecked (a sequence of a
   * sliding-window pool has given them back). storeKV writes at pos.. only: `window` 1.
   */
  private seqRecords(kv: PagedKV, live: readonly AttentionSeq[], window: number): number {
    let tableInts = 0;
    for (const s of live) tableInts += Math.ceil((s.pos + s.count) / kv.blockSize);
    const desc = this.scratch("seqs", (live.length * 4 + tableInts) * 4);
    let t = (desc >>> 2) + live.length * 4;
    for (const [i, s] of live.entries()) {
      const r = (desc >>> 2) + i * 4;
      const i32 = this.main.i32;
      i32[r] = s.row;
      i32[r + 1] = s.count;
      i32[r + 2] = s.pos;
      i32[r + 3] = t * 4;
      t += this.writeBlockTable(kv, s, t, window);
    }
    return desc;
  }

  /**
   * Writes the sequence's block ids covering positions 0 .. pos + count − 1 at main-memory i32 index
   * `at`, checking that each is a block of this pool; returns how many.
   */
  private writeBlockTable(kv: PagedKV, s: AttentionSeq, at: number, window: number): number {
    const n = Math.ceil((s.pos + s.count) / kv.blockSize);
    const numBlocks = Math.floor(kv.k.length / (kv.blockSize * kv.nKVHeads * kv.headDim));
    if (kv.v.length < numBlocks * kv.blockSize * kv.nKVHeads * kv.headDim)
      throw new RangeError("the V pool is smaller than the K pool");
    const i32 = this.main.i32;
    const unread = window > 0 ? Math.floor(Math.max(0, s.pos + 1 - window) / kv.blockSize) : 0;
    i32.fill(0, at, at + unread);
    for (let b = unread; b < n; b++) {
      const id = s.blockTable[b];
      if (id === undefined) throw new RangeError(`block table too short for position ${b * kv.blockSize}`);
      if (!(Number.isInteger(id) && id >= 0 && id < numBlocks))
        throw new RangeError(`block id ${id} is outside the KV pool (0..${numBlocks - 1})`);
      i32[at + b] = id;
    }
    return n;
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
      t.p.freqFactors === p.freqFactors &&
      t.p.attnFactor === p.attnFactor
    ) {
      let same = true;
      for (let i = 0; i < nTokens && same; i++) same = t.positions[i] === positions[i];
      if (same) return t.ptr;
    }
    const half = p.dim / 2;
    const ptr = this.scratch("rope", nTokens * half * 8);
    const f32 = this.main.f32;
    const o = ptr >>> 2;
    const m = p.attnFactor ?? 1;
    for (let i = 0; i < half; i++) {
      const freq = p.freqBase ** ((-2 * i) / p.dim);
      for (let tok = 0; tok < nTokens; tok++) {
        let theta = positions[tok]! * p.freqScale * freq;
        if (p.freqFactors) theta /= p.freqFactors[i]!;
        const k = o + (tok * half + i) * 2;
        f32[k] = Math.cos(theta) * m;
        f32[k + 1] = Math.sin(theta) * m;
      }
    }
    this.ropeTable = { positions: positions.slice(0, nTokens), p: { ...p }, nTokens, ptr };
    return ptr;
  }

  /** A copy of a small constant array (a norm weight) in our memory, made once per array. */
  private constant(a: Float32Array): number {
    let ptr = this.constants.get(a);
    if (ptr === undefined) {
      ptr = this.mainAlloc(a.length * 4);
      this.main.f32.set(a, ptr >>> 2);
      this.constants.set(a, ptr);
    }
    return ptr;
  }
  dequantize(w: WeightMatrix): Float32Array {
    if (!this.supports(w.type)) throw new SpindleError(`no WebAssembly decoder for type ${w.type}`);
    const p = this.place(w);
    const a = p.arena;
    if (p.packed) {
      const dst = this.scratchIn(a, "dequantize", 4 * w.cols * 4);
      const out = new Float32Array(w.rows * w.cols);
      for (let r = 0; r < w.rows; r += 4) {
        a.wasm.dequantizeGroup(w.type, p.ptr + (r / 4) * p.rowBytes, w.cols, dst);
        const n = Math.min(4, w.rows - r) * w.cols;
        out.set(a.f32.subarray(dst >>> 2, (dst >>> 2) + n), r * w.cols);
      }
      return out;
    }
    const dst = this.scratchIn(a, "dequantize", w.rows * p.colsPad * 4);
    a.wasm.dequantizeRows(w.type, p.ptr, p.rowBytes, w.rows, p.colsPad, dst);
    const out = new Float32Array(w.rows * w.cols);
    for (let r = 0; r < w.rows; r++) {
      const o = (dst >>> 2) + r * p.colsPad;
      out.set(a.f32.subarray(o, o + w.cols), r * w.cols);
    }
    return out;
  }

  /**
   * The memory a weight of `bytes` goes to: the main one while its weights stay within
   * mainWeightBytes, else the first weights-only memory with room, else a new one.
   */
  private arenaFor(bytes: number): Arena {
    if (this.main.weightBytes + bytes <= this.mainWeightBytes) return this.main;
    for (const a of this.arenas) {
      if (a !== this.main && a.weightBytes + bytes <= this.memoryWeightBytes) return a;
    }
    if (bytes > MAX_PAGES * 65536 - 2 ** 24) {
      throw new SpindleError(
        `a weight matrix of ${(bytes / GiB).toFixed(2)} GiB does not fit in one 4 GiB WebAssembly memory`,
        "wasm_memory",
      );
    }
    const a = newArena(this.module);
    this.arenas.push(a);
    this.startPool();
    return a;
  }

  /**
   * The matrix's copy in WebAssembly memory, made on first use: from w.data, or read from `source`
   * (adopt) straight into the memory.
   */
  private place(w: WeightMatrix, source?: MatrixSource): Placed {
    const known = this.placed.get(w);
    if (known !== undefined && known.data === w.data) return known;
    if (known !== undefined) {
      known.arena.release(known.ptr);
      known.arena.weightBytes -= known.bytes;
    }
    const floatBytes = FLOAT_BYTES[w.type];
    if (source === undefined && w.data.length < w.rows * w.rowBytes)
      throw new RangeError(`weight ${w.name}: ${w.data.length} bytes, need ${w.rows} rows of ${w.rowBytes}`);
    /** Bytes [from, from + dst.length) of the matrix into dst (a view of this memory). */
    const fill =
      source ?? ((dst: Uint8Array, from: number) => dst.set(w.data.subarray(from, from + dst.length)));
    const packed = this.supported[w.type] === 2;
    const groupBytes = packed ? this.main.wasm.groupBytes(w.type, w.cols) : 0;
    const colsPad = !packed && floatBytes !== undefined ? (w.cols + 3) & ~3 : w.cols;
    const rowBytes = packed ? groupBytes : colsPad === w.cols ? w.rowBytes : colsPad * floatBytes!;
    const bytes = packed ? Math.ceil(w.rows / 4) * groupBytes : w.rows * rowBytes;
    const arena = this.arenaFor(bytes);
    const ptr = this.allocIn(arena, bytes);
    if (packed) {
      // Quantized: repacked in groups of 4 rows (see pack in the WebAssembly source), brought in
      // through two staging regions of up to STAGE_BYTES: while the kernel threads pack one, the
      // caller fills the other (reads the file into it), then joins the packing.
      const chunkRows = Math.max(4, 4 * Math.floor(STAGE_BYTES / (4 * w.rowBytes)));
      const stageBytes = Math.min(w.rows, chunkRows) * w.rowBytes;
      const stages = [this.scratchIn(arena, "stage0", stageBytes), 0];
      const fillStage = (r0: number, stage: number) => {
        const n = Math.min(chunkRows, w.rows - r0);
        fill(arena.u8.subarray(stage, stage + n * w.rowBytes), r0 * w.rowBytes);
      };
      fillStage(0, stages[0]!);
      for (let r0 = 0, k = 0; r0 < w.rows; r0 += chunkRows, k ^= 1) {
        const n = Math.min(chunkRows, w.rows - r0);
        const next = r0 + chunkRows;
        let finish: (() => void) | undefined;
        if (next < w.rows) {
          stages[k ^ 1] ||= this.scratchIn(arena, "stage1", stageBytes);
          const stage = stages[k ^ 1]!;
          finish = this.pool ? this.pool.overlap(() => fillStage(next, stage)) : () => fillStage(next, stage);
        }
        const args = [w.type, stages[k]!, w.rowBytes, n, w.cols, ptr + (r0 / 4) * groupBytes];
        this.run(arena, "packPart", args, this.poolParts(Math.ceil(n / 4)));
        finish?.();
      }
    } else if (colsPad !== w.cols) {
      // Float rows are padded with zeros to a multiple of 4 elements, so the kernels need no tails.
      const u8 = arena.u8;
      for (let r = 0; r < w.rows; r++) {
        fill(u8.subarray(ptr + r * rowBytes, ptr + r * rowBytes + w.rowBytes), r * w.rowBytes);
        u8.fill(0, ptr + r * rowBytes + w.rowBytes, ptr + (r + 1) * rowBytes);
      }
    } else {
      fill(arena.u8.subarray(ptr, ptr + bytes), 0);
    }
    arena.weightBytes += bytes;
    const p: Placed = { arena, data: w.data, ptr, bytes, rowBytes, colsPad, packed };
    this.placed.set(w, p);
    return p;
  }

  /** A grow-only scratch region of the main memory. */
  private scratch(name: string, bytes: number): number {
    return this.scratchIn(this.main, name, bytes);
  }

  private scratchIn(arena: Arena, name: string, bytes: number): number {
    return arena.region(name, bytes) ?? this.full(arena, bytes);
  }

  private mainAlloc(bytes: number): number {
    return this.allocIn(this.main, bytes);
  }

  /** An allocation that must succeed (weights, scratch); its contents are unspecified. */
  private allocIn(arena: Arena, bytes: number): number {
    return arena.alloc(bytes) ?? this.full(arena, bytes);
  }

  private full(arena: Arena, bytes: number): never {
    throw new SpindleError(
      `the WebAssembly kernels need more than the 4 GiB a 32-bit WebAssembly memory holds (${(arena.usedBytes() / GiB).toFixed(2)} GiB in use, ${(bytes / 2 ** 20).toFixed(1)} MiB more asked)`,
      "wasm_memory",
    );
  }
}

/** Whether the WebAssembly kernels have been built. */
export function wasmKernelsBuilt(): boolean {
  return existsSync(WASM_PATH);
}
