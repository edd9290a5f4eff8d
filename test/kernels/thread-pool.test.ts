import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONTROL, claim, closeJob, MAX_CHUNKS, WasmThreadPool } from "../../src/kernels/thread-pool.js";
import { kernelImports } from "../../src/kernels/wasm-imports.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * The thread pool on a small module compiled here with AssemblyScript (shared memory, like the
 * kernels): every part runs exactly once per call, on its own rows, for thousands of calls in a row
 * (spinning hand-off) and after the workers went to sleep (wait/notify hand-off), with as many
 * parts as threads or more (the threads take them one at a time), on the memory each call names.
 */

const SOURCE = `
// Marks rows part·n/parts … (part+1)·n/parts: out[i] = stamp · 16 + part, and counts visits.
export function mark(out: usize, visits: usize, n: i32, stamp: i32, part: i32, parts: i32): void {
  const a = (n * part) / parts;
  const b = (n * (part + 1)) / parts;
  for (let i = a; i < b; i++) {
    store<i32>(out + (<usize>i << 2), stamp * 16 + part);
    store<i32>(visits + (<usize>i << 2), load<i32>(visits + (<usize>i << 2)) + 1);
  }
}
`;

interface Wasm {
  Module: new (b: Uint8Array) => object;
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => { buffer: ArrayBuffer };
  Instance: new (m: object, i: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: Wasm }).WebAssembly;

let module: object;
let memory: { buffer: ArrayBuffer };
let exports: Record<string, unknown>;
/** A second memory with its own instance (the kernels' weights-only memories). */
let memory2: { buffer: ArrayBuffer };
let exports2: Record<string, unknown>;

beforeAll(async () => {
  const dir = tempDir();
  const src = join(dir, "pool.ts");
  const out = join(dir, "pool.wasm");
  writeFileSync(src, SOURCE);
  const asc = await import("assemblyscript/asc");
  const { error, stderr } = await asc.main(
    [src, "--outFile", out, "-O3", "--runtime", "stub", "--use", "abort=", "--enable", "threads"].concat([
      "--sharedMemory",
      "--importMemory",
      "--initialMemory",
      "2",
      "--maximumMemory",
      "16",
    ]),
    {},
  );
  if (error) throw new Error(`asc: ${error.message} ${stderr?.toString() ?? ""}`);
  module = new WA.Module(readFileSync(out));
  memory = new WA.Memory({ initial: 2, maximum: 16, shared: true });
  exports = new WA.Instance(module, kernelImports(memory)).exports;
  memory2 = new WA.Memory({ initial: 2, maximum: 16, shared: true });
  exports2 = new WA.Instance(module, kernelImports(memory2)).exports;
}, 60_000);

const OUT = 65536;
const VISITS = OUT + 4096 * 4;

describe.each([1, 2, 3])("WasmThreadPool with %i threads", (threads) => {
  let pool: WasmThreadPool;
  beforeAll(async () => {
    pool = await WasmThreadPool.start({
      threads,
      module,
      memories: [memory, memory2],
      exports: [exports, exports2],
      functions: ["mark"],
    });
  });
  afterAll(() => pool?.close());

  const check = (n: number, stamp: number, calls: number, mem = memory, parts = threads) => {
    const out = new Int32Array(mem.buffer, OUT, n);
    const visits = new Int32Array(mem.buffer, VISITS, n);
    expect(new Set([...out].map((v) => v >> 4))).toEqual(new Set([stamp]));
    expect(new Set(visits)).toEqual(new Set([calls]));
    // Every part wrote its own contiguous range, in order.
    const written = [...out].map((v) => v & 15);
    expect([...written].sort((a, b) => a - b)).toEqual(written);
    expect(new Set(written).size).toBe(Math.min(parts, n));
  };

  it("runs every part exactly once per call, thousands of calls in a row", () => {
    new Int32Array(memory.buffer, VISITS, 4096).fill(0);
    const n = 1000;
    for (let s = 1; s <= 5000; s++) pool.run("mark", [OUT, VISITS, n, s]);
    check(n, 5000, 5000);
  });

  it("runs jobs cut into more parts than threads, each part once", () => {
    new Int32Array(memory.buffer, VISITS, 4096).fill(0);
    for (let s = 1; s <= 3000; s++) pool.run("mark", [OUT, VISITS, 1000, s], 0, 1 + (s % 13));
    // The last call had 1 + 3000 % 13 = 11 parts.
    check(1000, 3000, 3000, memory, 11);
    expect(() => pool.run("mark", [OUT, VISITS, 10, 1], 0, 0)).toThrow(RangeError);
    expect(() => pool.run("mark", [OUT, VISITS, 10, 1], 0, MAX_CHUNKS + 1)).toThrow(RangeError);
  });

  it("wakes sleeping workers", async () => {
    new Int32Array(memory.buffer, VISITS, 4096).fill(0);
    for (let s = 1; s <= 5; s++) {
      await new Promise((r) => setTimeout(r, 20)); // longer than the spin: the workers sleep
      pool.run("mark", [OUT, VISITS, 777, s]);
    }
    check(777, 5, 5);
  });

  it("runs a call on the instance of the memory it names, and only there", () => {
    new Int32Array(memory.buffer, VISITS, 4096).fill(0);
    new Int32Array(memory2.buffer, VISITS, 4096).fill(0);
    for (let s = 1; s <= 300; s++) pool.run("mark", [OUT, VISITS, 500, s], s % 2);
    check(500, 300, 150); // even calls: memory 0
    check(500, 299, 150, memory2); // odd calls: memory 1
    expect(() => pool.run("mark", [OUT, VISITS, 500, 1], 2)).toThrow(RangeError);
  });

  it("overlap: the caller runs side work once, inside the next shared job (or at finish), and the job is whole", () => {
    new Int32Array(memory.buffer, VISITS, 4096).fill(0);
    const visits = new Int32Array(memory.buffer, VISITS, 1000);
    let ran = 0;
    let inRun = false;
    let ranInside = false;
    const finish = pool.overlap(() => {
      ran++;
      ranInside = inRun; // with workers: inside run(), the job published, others marking rows meanwhile
    });
    inRun = true;
    pool.run("mark", [OUT, VISITS, 1000, 1]);
    inRun = false;
    finish();
    expect(ran).toBe(1);
    expect(ranInside).toBe(threads > 1);
    check(1000, 1, 1);
    expect(visits.every((v) => v === 1)).toBe(true);
    // No shared job after it: finish runs the work, once; a later run() does not run it again.
    let later = 0;
    const finish2 = pool.overlap(() => later++);
    finish2();
    pool.run("mark", [OUT, VISITS, 1000, 2]);
    finish2();
    expect(later).toBe(1);
  });
});

describe("claim: taking the chunks of a job", () => {
  const { CLAIM, CHUNK_BITS } = CONTROL;
  it("hands out each chunk once, in order, then none; and none of a job that is no longer open", () => {
    const ctl = new Int32Array(new SharedArrayBuffer(CONTROL.CONTROL_INTS * 4));
    const job = 5;
    ctl[CLAIM] = job << CHUNK_BITS;
    expect([0, 1, 2, 3].map(() => claim(ctl, job, 3))).toEqual([0, 1, 2, -1]);
    // A worker that read job 5 but arrives when job 6 is open claims nothing of job 6.
    ctl[CLAIM] = 6 << CHUNK_BITS;
    expect(claim(ctl, job, 3)).toBe(-1);
    expect(claim(ctl, 6, 3)).toBe(0);
  });

  it("a closed job hands out nothing, even to a worker holding the next job's larger chunk count", () => {
    const ctl = new Int32Array(new SharedArrayBuffer(CONTROL.CONTROL_INTS * 4));
    // Job 7 had 3 chunks, all taken and done. A late worker read job 7's number, then the count the
    // caller is writing for job 8 (11): without closing, "chunk 3" of job 7 would still be handed out.
    ctl[CLAIM] = (7 << CHUNK_BITS) | 3;
    expect(claim(ctl, 7, 11)).toBe(3);
    ctl[CLAIM] = (7 << CHUNK_BITS) | 3;
    closeJob(ctl, 7);
    for (const chunks of [1, 3, 11, MAX_CHUNKS]) expect(claim(ctl, 7, chunks), `${chunks} chunks`).toBe(-1);
  });
});
