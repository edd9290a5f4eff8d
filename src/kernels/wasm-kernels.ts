import { existsSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { SpindleError } from "../errors.js";
import { GGMLType } from "../gguf/types.js";
import type { Kernels, WeightMatrix } from "./kernels.js";
import { referenceKernels } from "./reference.js";

/**
 * WebAssembly SIMD kernels behind the `Kernels` interface.
 *
 * The math is AssemblyScript in src/kernels/wasm/kernels.ts, compiled by `npm run build:kernels` to
 * dist-wasm/kernels.wasm (SIMD128, no relaxed SIMD, no threads). Today `matmul` runs in WebAssembly
 * for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K; every other operation (and
 * matmul of any other type) is the reference kernel's.
 *
 * Memory: one WebAssembly.Memory, owned here. The first time a weight matrix is multiplied its bytes
 * are copied into that memory (once, keyed by the WeightMatrix object; float rows zero-padded to a
 * multiple of 4 elements); `prepare` does it ahead of time. Above the weights sit grow-only scratch
 * regions for the activations, the output and the decoded weight rows. The memory never shrinks, so
 * use one kernel set per model. It is a 32-bit memory: models whose weights approach 2 GiB are out of
 * scope (the wasm copy is made next to the weights that loadModel keeps in JS memory).
 *
 * Results differ from the reference only in float rounding: the reference sums in double precision,
 * these kernels in float32 (four lanes, then a fixed horizontal sum). Per output,
 * |wasm − reference| ≤ (cols/4 + 8) · 2⁻²⁴ · Σ_c |W[r,c] · x[t,c]| (a worst-case f32 summation bound;
 * measured: about 4e-8 · Σ_c |W[r,c] · x[t,c]|, under 0.2% of the bound, at 1536 columns). Decoded
 * weights are bit-identical to the reference dequantize. The kernels are batch-invariant, bit for
 * bit: see the WebAssembly source for how.
 */

export interface WasmKernels extends Kernels {
  /** Whether matmul of this weight type runs in WebAssembly (other types use the reference kernel). */
  supports(type: GGMLType): boolean;
  /** Copies these matrices into WebAssembly memory now instead of on their first use. */
  prepare(weights: Iterable<WeightMatrix>): void;
  /** Bytes of WebAssembly memory in use (weights and scratch). */
  memoryBytes(): number;
  /** The matrix decoded to floats (rows × cols) by the WebAssembly decoders, as matmul sees it; for tests. */
  dequantize(w: WeightMatrix): Float32Array;
}

/** The parts of the WebAssembly JS API used here (the project's `lib` setting does not declare them). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(deltaPages: number): number;
}
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number }) => WasmMemory;
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
}

/** A weight matrix's copy in WebAssembly memory. */
interface Placed {
  data: Uint8Array;
  ptr: number;
  rowBytes: number;
  colsPad: number;
}

const PAGE = 65536;
/** 4 GiB: the most a 32-bit WebAssembly memory can address. */
const MAX_PAGES = 65536;
const ALIGN = 64;
const FLOAT_BYTES: Partial<Record<GGMLType, number>> = {
  [GGMLType.F32]: 4,
  [GGMLType.F16]: 2,
  [GGMLType.BF16]: 2,
};

/** Where the build puts the module: dist-wasm/ at the package root, two levels above this file (src/ or dist/). */
export const WASM_PATH = fileURLToPath(new URL("../../dist-wasm/kernels.wasm", import.meta.url));

let compiled: Promise<object> | undefined;

async function compileModule(): Promise<object> {
  let bytes: Buffer;
  try {
    bytes = await readFile(WASM_PATH);
  } catch {
    throw new SpindleError(
      `the WebAssembly kernels are not built (${WASM_PATH} is missing); run \`npm run build:kernels\``,
      "kernels_not_built",
    );
  }
  return WA.compile(bytes);
}

let compiledSync: object | undefined;

/**
 * The same, synchronously (Node compiles and instantiates modules of any size synchronously), so
 * the synchronous `loadModel` can default to these kernels.
 */
export function createWasmKernelsSync(): WasmKernels {
  if (!compiledSync) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(WASM_PATH);
    } catch {
      throw new SpindleError(
        `the WebAssembly kernels are not built (${WASM_PATH} is missing); run \`npm run build:kernels\``,
        "kernels_not_built",
      );
    }
    compiledSync = new WA.Module(bytes);
  }
  const memory = new WA.Memory({ initial: 16, maximum: MAX_PAGES });
  const instance = new WA.Instance(compiledSync, { env: { memory } });
  return new WasmKernelSet(memory, instance.exports as unknown as WasmExports);
}

/** Loads the WebAssembly kernels; each call gets its own memory (use one per model). */
export async function createWasmKernels(): Promise<WasmKernels> {
  compiled ??= compileModule();
  let module: object;
  try {
    module = await compiled;
  } catch (e) {
    compiled = undefined;
    throw e;
  }
  const memory = new WA.Memory({ initial: 16, maximum: MAX_PAGES });
  const instance = await WA.instantiate(module, { env: { memory } });
  return new WasmKernelSet(memory, instance.exports as unknown as WasmExports);
}

class WasmKernelSet implements WasmKernels {
  readonly name = "wasm";
  private top: number;
  private f32 = new Float32Array(0);
  private u8 = new Uint8Array(0);
  private placed = new WeakMap<WeightMatrix, Placed>();
  private regions = new Map<string, { ptr: number; bytes: number }>();
  private supported: boolean[] = [];

  // Everything but matmul is the reference kernels'.
  readonly getRows = referenceKernels.getRows;
  readonly rmsnorm = referenceKernels.rmsnorm;
  readonly rope = referenceKernels.rope;
  readonly swiglu = referenceKernels.swiglu;
  readonly addInPlace = referenceKernels.addInPlace;
  readonly addBias = referenceKernels.addBias;
  readonly storeKV = referenceKernels.storeKV;
  readonly attention = referenceKernels.attention;

  constructor(
    private readonly memory: WasmMemory,
    private readonly wasm: WasmExports,
  ) {
    this.top = align(wasm.heapBase());
    this.refreshViews();
    for (const t of Object.values(GGMLType)) {
      if (typeof t === "number") this.supported[t] = wasm.supports(t) !== 0;
    }
  }

  memoryBytes(): number {
    return this.top;
  }

  supports(type: GGMLType): boolean {
    return this.supported[type] === true;
  }

  prepare(weights: Iterable<WeightMatrix>): void {
    for (const w of weights) if (this.supports(w.type)) this.place(w);
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
    // Scratch regions (allocating may grow the memory, so take the views after).
    const xPtr = this.region("x", nTokens * colsPad * 4);
    const outPtr = this.region("out", nTokens * rows * 4);
    const scratchPtr = this.region("rows", 4 * colsPad * 4);
    const f32 = this.f32;
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
    this.wasm.matmul(w.type, p.ptr, p.rowBytes, rows, colsPad, xPtr, nTokens, outPtr, scratchPtr);
    out.set(f32.subarray(outPtr >>> 2, (outPtr >>> 2) + nTokens * rows));
  }

  dequantize(w: WeightMatrix): Float32Array {
    if (!this.supports(w.type)) throw new SpindleError(`no WebAssembly decoder for type ${w.type}`);
    const p = this.place(w);
    const dst = this.region("dequantize", w.rows * p.colsPad * 4);
    this.wasm.dequantizeRows(w.type, p.ptr, p.rowBytes, w.rows, p.colsPad, dst);
    const out = new Float32Array(w.rows * w.cols);
    for (let r = 0; r < w.rows; r++) {
      const o = (dst >>> 2) + r * p.colsPad;
      out.set(this.f32.subarray(o, o + w.cols), r * w.cols);
    }
    return out;
  }

  /** The matrix's copy in WebAssembly memory, made on first use. */
  private place(w: WeightMatrix): Placed {
    const known = this.placed.get(w);
    if (known !== undefined && known.data === w.data) return known;
    const floatBytes = FLOAT_BYTES[w.type];
    let p: Placed;
    if (floatBytes !== undefined && w.cols % 4 !== 0) {
      // Float rows are padded with zeros to a multiple of 4 elements, so the kernels need no tails.
      const colsPad = (w.cols + 3) & ~3;
      const rowBytes = colsPad * floatBytes;
      const ptr = this.alloc(w.rows * rowBytes);
      const u8 = this.u8;
      for (let r = 0; r < w.rows; r++) {
        u8.set(w.data.subarray(r * w.rowBytes, (r + 1) * w.rowBytes), ptr + r * rowBytes);
        u8.fill(0, ptr + r * rowBytes + w.rowBytes, ptr + (r + 1) * rowBytes);
      }
      p = { data: w.data, ptr, rowBytes, colsPad };
    } else {
      const bytes = w.rows * w.rowBytes;
      if (w.data.length < bytes)
        throw new RangeError(
          `weight ${w.name}: ${w.data.length} bytes, need ${w.rows} rows of ${w.rowBytes}`,
        );
      const ptr = this.alloc(bytes);
      this.u8.set(w.data.subarray(0, bytes), ptr);
      p = { data: w.data, ptr, rowBytes: w.rowBytes, colsPad: w.cols };
    }
    this.placed.set(w, p);
    return p;
  }

  /** A grow-only scratch region of at least `bytes`, reused across calls. */
  private region(name: string, bytes: number): number {
    const r = this.regions.get(name);
    if (r !== undefined && r.bytes >= bytes) return r.ptr;
    const size = Math.max(bytes, (r?.bytes ?? 0) * 2, 4096);
    const ptr = this.alloc(size);
    this.regions.set(name, { ptr, bytes: size });
    return ptr;
  }

  /** Bump allocation, growing the memory when needed; memory is never freed. */
  private alloc(bytes: number): number {
    const ptr = align(this.top);
    const end = ptr + bytes;
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      const pages = Math.ceil((end - have) / PAGE);
      if (have / PAGE + pages > MAX_PAGES) {
        throw new SpindleError(
          `the WebAssembly kernels need ${(end / 2 ** 30).toFixed(2)} GiB of memory, more than a 32-bit WebAssembly memory holds (4 GiB)`,
          "wasm_memory",
        );
      }
      this.memory.grow(pages);
      this.refreshViews();
    }
    this.top = end;
    return ptr;
  }

  private refreshViews(): void {
    const buf = this.memory.buffer;
    this.f32 = new Float32Array(buf);
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
