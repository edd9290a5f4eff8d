import { Worker } from "node:worker_threads";
import { SpindleError } from "../errors.js";
import { workerEntry } from "../worker-entry.js";

/**
 * Runs one WebAssembly kernel on several threads at once, over one shared
 * WebAssembly.Memory: the calling thread and `threads − 1` workers, each with
 * its own instance of the same module on the same memory (or memories: the
 * kernels may spread a large model's weights over several, and a job names
 * the memory whose instance runs it). A kernel that can be split takes two
 * extra arguments, (part, parts), and computes its share (e.g. rows
 * part·rows/parts … of a matmul).
 *
 * A job is cut into `chunks` parts (the kernels use 4 per thread), and the
 * threads take them one at a time from a shared counter until none is left:
 * a thread that is slow (a core shared with the HTTP thread, a worker still
 * waking up, a busy neighbour on the host) simply takes fewer. The caller
 * takes chunks too and never waits for a worker to start: when every chunk is
 * taken and done, the job is over, even if a worker never saw it.
 *
 * The handshake is a small control block of Int32 cells in a SharedArrayBuffer:
 * the caller writes the function index, the arguments and the chunk count,
 * resets DONE, opens the job's CLAIM cell (job number in the high bits, next
 * chunk in the low bits), bumps GEN and, only if a worker sleeps, notifies it.
 * A worker spins on GEN for a short while (a wake-up through Atomics.wait costs
 * ≈ 40 µs, a spin ≈ 1 µs), then waits. A chunk is claimed by a
 * compare-and-swap on CLAIM that also checks the job number, so a worker that
 * arrives after its job ended (and may have read the next job's arguments half
 * written) claims nothing; each finished chunk adds one to DONE, and the caller
 * returns when DONE reaches the chunk count, after closing the job (closeJob:
 * every chunk marked taken, before the next job's count is written). A
 * 30-layer model at batch 1 calls hundreds of kernels per token, so the common
 * path never sleeps: between two kernels the workers are still spinning.
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
/** The job's number (GEN, which wraps at JOB_MASK) << CHUNK_BITS | the next chunk to take. */
const CLAIM = 8;
/** How many chunks the job has. */
const CHUNKS = 9;
const CONTROL_INTS = 10;
/** 8 bits of chunk index leave 23 of job number: a worker would have to stall between reading a
 * job and claiming from it for 8 million jobs to mistake another job for its own. */
const CHUNK_BITS = 8;
const JOB_MASK = (1 << (31 - CHUNK_BITS)) - 1;
/** The most chunks one job may have. */
export const MAX_CHUNKS = (1 << CHUNK_BITS) - 1;
/** Float64 argument slots after the control cells. */
const MAX_ARGS = 24;

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

  /** Work for the caller to do while the workers start on the next shared job (see overlap). */
  private side: (() => void) | undefined;

  /**
   * Hands `work` to the next run() that uses the workers: the caller runs it right after the job is
   * published, then takes chunks like the others. Returns `finish`, which runs `work` at once if no
   * run() has taken it yet (and withdraws it), so it runs exactly once.
   */
  overlap(work: () => void): () => void {
    let done = false;
    const once = () => {
      if (done) return;
      done = true;
      work();
    };
    this.side = once;
    return () => {
      if (this.side === once) this.side = undefined;
      once();
    };
  }

  /**
   * Calls export `name` with `args` followed by (part, parts = chunks) for every part, spread over
   * the threads (each takes the next part left until none is), and returns when every part is
   * done; `memory` picks the instance (default 0, the first memory); `chunks` defaults to the
   * thread count. Not reentrant.
   */
  run(name: string, args: readonly number[], memory = 0, chunks = this.threads): void {
    const fi = this.index.get(name);
    if (fi === undefined) throw new SpindleError(`${name} was not registered with the thread pool`);
    const fn = this.fns[memory]?.[fi];
    if (fn === undefined) throw new RangeError(`the thread pool has no memory ${memory}`);
    if (!(Number.isInteger(chunks) && chunks >= 1 && chunks <= MAX_CHUNKS))
      throw new RangeError(`chunks must be an integer in 1..${MAX_CHUNKS}, got ${chunks}`);
    if (this.threads === 1 || this.closed || chunks === 1) {
      for (let c = 0; c < chunks; c++) fn(...args, c, chunks);
      return;
    }
    if (args.length > MAX_ARGS) throw new RangeError(`at most ${MAX_ARGS} arguments`);
    const ctl = this.ctl;
    for (let i = 0; i < args.length; i++) this.args[i] = args[i]!;
    Atomics.store(ctl, FN, fi);
    Atomics.store(ctl, MEM, memory);
    Atomics.store(ctl, NARGS, args.length);
    Atomics.store(ctl, CHUNKS, chunks);
    Atomics.store(ctl, DONE, 0);
    const job = (Atomics.load(ctl, GEN) + 1) & JOB_MASK;
    Atomics.store(ctl, CLAIM, job << CHUNK_BITS);
    Atomics.store(ctl, GEN, job);
    if (Atomics.load(ctl, SLEEPERS) > 0) Atomics.notify(ctl, GEN);
    const side = this.side;
    if (side) {
      // The workers take chunks meanwhile; whatever they leave, the caller takes below.
      this.side = undefined;
      side();
    }
    for (;;) {
      const c = claim(ctl, job, chunks);
      if (c < 0) break;
      fn(...args, c, chunks);
      Atomics.add(ctl, DONE, 1);
    }
    if (Atomics.load(ctl, DONE) === chunks) {
      closeJob(ctl, job);
      return;
    }
    const until = process.hrtime.bigint() + BigInt(SPIN_NS);
    let spins = 0;
    for (;;) {
      const done = Atomics.load(ctl, DONE);
      if (done === chunks) {
        closeJob(ctl, job);
        return;
      }
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

/**
 * Marks every chunk of a finished job taken, whatever chunk count a late worker holds: run() does
 * it before the next job's arguments and count are written. Without it, a worker that read this
 * job's number but the next job's (larger) chunk count could still claim "chunk k" of this job
 * (k = this job's count) in the moment between the two: it computed a part of the next job early
 * and added to DONE after run() had reset it, so DONE could pass the next count, which run() then
 * waited for forever (seen once in CI: a hang in the 3,000-job test of thread-pool.test.ts).
 */
export function closeJob(ctl: Int32Array, job: number): void {
  Atomics.store(ctl, CLAIM, (job << CHUNK_BITS) | MAX_CHUNKS);
}

/**
 * Takes the next chunk of job `job` (of `chunks`): its index, or −1 when every chunk is taken, the
 * job is closed (closeJob) or the control block has moved on to another job.
 */
export function claim(ctl: Int32Array, job: number, chunks: number): number {
  for (;;) {
    const v = Atomics.load(ctl, CLAIM);
    if (v >>> CHUNK_BITS !== job) return -1;
    const c = v & MAX_CHUNKS;
    if (c >= chunks) return -1;
    if (Atomics.compareExchange(ctl, CLAIM, v, v + 1) === v) return c;
  }
}

export const CONTROL = {
  GEN,
  DONE,
  FN,
  NARGS,
  STOP,
  SLEEPERS,
  FAILED,
  MEM,
  CLAIM,
  CHUNKS,
  CHUNK_BITS,
  CONTROL_INTS,
  MAX_ARGS,
} as const;
