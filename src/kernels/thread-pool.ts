import { Worker } from "node:worker_threads";
import { SpindleError } from "../errors.js";
import { workerEntry } from "../worker-entry.js";

/**
 * Runs one WebAssembly kernel on several threads at once, over one shared
 * WebAssembly.Memory: the calling thread and `threads − 1` workers, each with
 * its own instance of the same module on the same memory (or memories: the
 * kernels may spread a large model's weights over several, and a job names
 * the memory whose instance runs it). A kernel that can
 * be split takes two extra arguments, (part, parts), and computes its share
 * (e.g. rows part·rows/parts … of a matmul); run() calls it with part 0 on the
 * calling thread and parts 1… on the workers, and returns when all are done.
 *
 * The handshake is a small control block of Int32 cells in a SharedArrayBuffer:
 * the caller writes the function index and arguments, bumps GEN and, only if a
 * worker sleeps, notifies it; each worker spins on GEN for a short while
 * (a wake-up through Atomics.wait costs ≈ 40 µs, a spin ≈ 1 µs), then waits;
 * it runs its part and bumps DONE; the caller does its own part, then spins
 * until DONE = parts − 1, waiting when that takes long. A 30-layer model at
 * batch 1 calls hundreds of kernels per token, so the common path never
 * sleeps: between two kernels the workers are still spinning.
 *
 * Spinning is bounded (SPIN_NS) because on a machine with as many cores as
 * threads, a spinning worker takes the core the HTTP thread needs.
 */

/** Cells of the control block. */
const GEN = 0;
const DONE = 1;
const FN = 2;
const NARGS = 3;
const STOP = 4;
const SLEEPERS = 5;
/** Set by a worker that could not start: run() then fails instead of waiting for it. */
const FAILED = 6;
/** Which memory's instance runs the job (index into `memories`). */
const MEM = 7;
const CONTROL_INTS = 8;
/** Float64 argument slots after the control cells. */
const MAX_ARGS = 16;

/** How long a worker spins for the next job, and the caller for the workers, before sleeping. */
export const SPIN_NS = 100_000;

export interface ThreadPoolOptions {
  /** Total threads including the caller (≥ 1). 1 = no workers: run() calls the function directly. */
  threads: number;
  /** The compiled WebAssembly.Module (each worker instantiates it on each of `memories`). */
  module: object;
  /** A shared WebAssembly.Memory (created with shared: true). */
  memories: readonly object[];
  /** The caller's instances' exports, one per memory: run() calls these for part 0. */
  exports: readonly Record<string, unknown>[];
  /** Export names run() may be asked for (same order on every thread). */
  functions: readonly string[];
}

export interface WorkerInit {
  module: object;
  memories: readonly object[];
  control: SharedArrayBuffer;
  functions: readonly string[];
  part: number;
  parts: number;
  spinNs: number;
}

type Fn = (...args: number[]) => void;

/** Kernel threads started and not yet exited, in this process (for tests that check none leak). */
let liveWorkers = 0;
export function liveKernelThreads(): number {
  return liveWorkers;
}

export class WasmThreadPool {
  readonly threads: number;
  private readonly ctl: Int32Array;
  private readonly args: Float64Array;
  /** Per memory, the caller's functions in `functions` order. */
  private readonly fns: Fn[][];
  private readonly index = new Map<string, number>();
  private closed = false;
  /** Resolves when every worker has instantiated the module (run() before that waits for them). */
  ready: Promise<void> = Promise.resolve();

  private constructor(
    o: ThreadPoolOptions,
    private readonly control: SharedArrayBuffer,
    private readonly workers: Worker[],
  ) {
    this.threads = o.threads;
    this.ctl = new Int32Array(control, 0, CONTROL_INTS);
    this.args = new Float64Array(control, CONTROL_INTS * 4, MAX_ARGS);
    for (const [i, name] of o.functions.entries()) this.index.set(name, i);
    this.fns = o.exports.map((exports) =>
      o.functions.map((name) => {
        const f = exports[name];
        if (typeof f !== "function") throw new SpindleError(`the kernels module has no export ${name}`);
        return f as Fn;
      }),
    );
  }

  /**
   * Starts the workers without waiting for them (so a synchronous loadModel can have threads): a
   * worker still starting picks up the first job when it is ready, and the first run() waits for it.
   */
  static create(o: ThreadPoolOptions): WasmThreadPool {
    if (!(Number.isInteger(o.threads) && o.threads >= 1)) {
      throw new SpindleError(`threads must be an integer ≥ 1, got ${o.threads}`);
    }
    const control = new SharedArrayBuffer(CONTROL_INTS * 4 + MAX_ARGS * 8);
    const workers: Worker[] = [];
    for (let part = 1; part < o.threads; part++) {
      const init: WorkerInit = {
        module: o.module,
        memories: o.memories,
        control,
        functions: o.functions,
        part,
        parts: o.threads,
        spinNs: SPIN_NS,
      };
      const w = new Worker(workerEntry(import.meta.url, "thread-pool-worker"), { workerData: init });
      w.unref();
      liveWorkers++;
      w.once("exit", () => liveWorkers--);
      workers.push(w);
    }
    const pool = new WasmThreadPool(o, control, workers);
    pool.ready = Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            w.once("message", (m: { ready?: boolean; error?: string }) =>
              m.ready ? resolve() : reject(new SpindleError(`a kernel thread failed to start: ${m.error}`)),
            );
            w.once("error", reject);
          }),
      ),
    ).then(() => {});
    pool.ready.catch(() => {}); // run() reports a failed start too
    return pool;
  }

  /** create(), then waits until every worker has instantiated the module (or throws why one could not). */
  static async start(o: ThreadPoolOptions): Promise<WasmThreadPool> {
    const pool = WasmThreadPool.create(o);
    try {
      await pool.ready;
    } catch (err) {
      await pool.close();
      throw err;
    }
    return pool;
  }

  /**
   * Calls export `name` with `args` followed by (part, parts) on every thread, the caller's part
   * being 0, and returns when every part is done; `memory` picks the instance (default 0, the first
   * memory). Not reentrant.
   */
  run(name: string, args: readonly number[], memory = 0): void {
    const fi = this.index.get(name);
    if (fi === undefined) throw new SpindleError(`${name} was not registered with the thread pool`);
    const fn = this.fns[memory]?.[fi];
    if (fn === undefined) throw new RangeError(`the thread pool has no memory ${memory}`);
    const parts = this.threads;
    if (parts === 1 || this.closed) {
      fn(...args, 0, 1);
      return;
    }
    if (args.length > MAX_ARGS) throw new RangeError(`at most ${MAX_ARGS} arguments`);
    const ctl = this.ctl;
    for (let i = 0; i < args.length; i++) this.args[i] = args[i]!;
    Atomics.store(ctl, FN, fi);
    Atomics.store(ctl, MEM, memory);
    Atomics.store(ctl, NARGS, args.length);
    Atomics.store(ctl, DONE, 0);
    Atomics.add(ctl, GEN, 1);
    if (Atomics.load(ctl, SLEEPERS) > 0) Atomics.notify(ctl, GEN);
    fn(...args, 0, parts);
    const want = parts - 1;
    if (Atomics.load(ctl, DONE) === want) return;
    const until = process.hrtime.bigint() + BigInt(SPIN_NS);
    let spins = 0;
    for (;;) {
      const done = Atomics.load(ctl, DONE);
      if (done === want) return;
      if ((++spins & 63) === 0 && process.hrtime.bigint() > until) {
        if (Atomics.load(ctl, FAILED) !== 0) {
          this.closed = true;
          throw new SpindleError("a kernel thread could not start; running on one thread from now on");
        }
        Atomics.wait(ctl, DONE, done, 1);
      }
    }
  }

  /** Stops the workers. Later run() calls run everything on the caller's thread. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.ctl, STOP, 1);
    Atomics.add(this.ctl, GEN, 1);
    Atomics.notify(this.ctl, GEN);
    await Promise.all(this.workers.map((w) => w.terminate()));
    void this.control;
  }
}

export const CONTROL = { GEN, DONE, FN, NARGS, STOP, SLEEPERS, FAILED, MEM, CONTROL_INTS, MAX_ARGS } as const;
