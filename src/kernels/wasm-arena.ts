/**
 * One shared WebAssembly.Memory with the instance of the kernels module that works on it, and a
 * first-fit allocator over it. The WebAssembly kernel set (wasm-kernels.ts) has a main arena
 * (activations, KV pools, scratch, and the weights up to a budget) and, for models whose weights
 * do not fit in one 32-bit memory, more arenas holding only weights.
 *
 * Being shared, the memory's buffer is a SharedArrayBuffer that is never detached, so views handed
 * out (allocFloat32) stay valid when it grows; each growth gives a new buffer object, all of which
 * `owns` recognises. Views are made on the buffer object read at this memory's last growth, never
 * on a fresh `memory.buffer`: V8 hands out new buffer objects for every shared memory of the
 * process when any one of them grows, which would make views of the same memory unrecognisable.
 */

/** The parts of the WebAssembly JS API used here (the project's `lib` setting does not declare them). */
export interface WasmMemory {
  readonly buffer: ArrayBufferLike;
  grow(deltaPages: number): number;
}

const PAGE = 65536;
/** 4 GiB: the most a 32-bit WebAssembly memory can address (and the module's declared maximum). */
export const MAX_PAGES = 65536;
const ALIGN = 64;

export function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

export class WasmArena<E> {
  /** End of the highest allocation: memory above it is free. */
  private top: number;
  /** End of the highest allocation ever made: memory above it has never been written. */
  private highWater: number;
  /** Free ranges below top, sorted by address, never adjacent (coalesced). */
  private free: { ptr: number; bytes: number }[] = [];
  /** Live allocations: address → bytes. */
  private live = new Map<number, number>();
  /** Every buffer object the memory has had (a new SharedArrayBuffer per growth); views of any are ours. */
  private buffers = new WeakSet<ArrayBufferLike>();
  /** The memory's current buffer (the common case of owns()). */
  private lastBuffer: ArrayBufferLike;
  private regions = new Map<string, { ptr: number; bytes: number }>();
  f32: Float32Array = new Float32Array(0);
  i32: Int32Array = new Int32Array(0);
  u8: Uint8Array = new Uint8Array(0);
  /** Bytes of weights placed here (the kernel set's placement budget). */
  weightBytes = 0;

  constructor(
    readonly memory: WasmMemory,
    /** The kernels module's exports, instantiated on this memory. */
    readonly wasm: E,
    heapBase: number,
  ) {
    this.top = align(heapBase);
    this.highWater = this.top;
    this.lastBuffer = memory.buffer;
    this.refreshViews();
  }

  /** Bytes in use (allocations; freed space not counted). */
  usedBytes(): number {
    let bytes = 0;
    for (const b of this.live.values()) bytes += b;
    return bytes;
  }

  owns(a: ArrayBufferView): boolean {
    const b = a.buffer;
    return b === this.lastBuffer || this.buffers.has(b);
  }

  /** n zeroed floats in this memory, or undefined when they do not fit. */
  allocFloat32(n: number): Float32Array | undefined {
    const ptr = this.allocZeroed(n * 4);
    return ptr === undefined ? undefined : new Float32Array(this.lastBuffer, ptr, n);
  }

  /** n zeroed 16-bit elements in this memory (an f16 KV pool), or undefined when they do not fit. */
  allocUint16(n: number): Uint16Array | undefined {
    const ptr = this.allocZeroed(n * 2);
    return ptr === undefined ? undefined : new Uint16Array(this.lastBuffer, ptr, n);
  }

  private allocZeroed(bytes: number): number | undefined {
    const ptr = this.tryAlloc(Math.max(bytes, 4));
    if (ptr === undefined) return undefined;
    // Memory above the highest address ever handed out is still zero from the grow (and not yet
    // touched: a large KV pool then costs no resident memory until used).
    this.u8.fill(0, ptr, Math.min(ptr + bytes, this.highWater));
    this.highWater = Math.max(this.highWater, ptr + bytes);
    return ptr;
  }

  /** A grow-only scratch region of at least `bytes`, reused across calls; undefined when it cannot fit. */
  region(name: string, bytes: number): number | undefined {
    const r = this.regions.get(name);
    if (r !== undefined && r.bytes >= bytes) return r.ptr;
    if (r !== undefined) {
      this.release(r.ptr);
      this.regions.delete(name);
    }
    const size = Math.max(bytes, (r?.bytes ?? 0) * 2, 4096);
    const ptr = this.tryAlloc(size) ?? this.tryAlloc(bytes);
    if (ptr === undefined) return undefined;
    this.noteWritten(ptr, align(bytes));
    this.regions.set(name, { ptr, bytes: this.live.get(ptr)! });
    return ptr;
  }

  /** An allocation whose contents are unspecified; undefined when it cannot fit. */
  alloc(bytes: number): number | undefined {
    const ptr = this.tryAlloc(bytes);
    if (ptr !== undefined) this.noteWritten(ptr, align(bytes));
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
    const have = this.lastBuffer.byteLength;
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
  release(ptr: number): void {
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
