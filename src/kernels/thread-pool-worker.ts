import { parentPort, workerData } from "node:worker_threads";
import { CONTROL, claim, type WorkerInit } from "./thread-pool.js";
import { kernelImports } from "./wasm-imports.js";

/**
 * A kernel thread of WasmThreadPool (thread-pool.ts): instantiates the kernels module on the shared
 * memory, then loops — spin on the generation cell for a while, sleep on it after that, then take
 * the job's chunks one at a time while any is left, counting each done. Nothing else: no messages
 * after "ready".
 */

const init = workerData as WorkerInit;
/** The project's `lib` setting does not declare the WebAssembly JS API. */
const WA = (
  globalThis as unknown as {
    WebAssembly: { Instance: new (m: object, imports: object) => { exports: Record<string, unknown> } };
  }
).WebAssembly;
const { GEN, DONE, FN, NARGS, STOP, SLEEPERS, FAILED, MEM, CHUNKS, CONTROL_INTS, MAX_ARGS } = CONTROL;

function main(): void {
  // One instance per memory, each on its memory; fns[memory][function].
  const fns = init.memories.map((memory) => {
    const exports = new WA.Instance(init.module, kernelImports(memory)).exports;
    return init.functions.map((n) => exports[n] as (...a: number[]) => void);
  });
  const ctl = new Int32Array(init.control, 0, CONTROL_INTS);
  const argv = new Float64Array(init.control, CONTROL_INTS * 4, MAX_ARGS);
  const args: number[] = [];
  const spin = BigInt(init.spinNs);
  let seen = 0;
  parentPort!.postMessage({ ready: true });
  for (;;) {
    let gen = Atomics.load(ctl, GEN);
    if (gen === seen) {
      const until = process.hrtime.bigint() + spin;
      let spins = 0;
      while (gen === seen) {
        if ((++spins & 63) === 0 && process.hrtime.bigint() > until) {
          Atomics.add(ctl, SLEEPERS, 1);
          Atomics.wait(ctl, GEN, seen);
          Atomics.sub(ctl, SLEEPERS, 1);
        }
        gen = Atomics.load(ctl, GEN);
      }
    }
    seen = gen;
    if (Atomics.load(ctl, STOP) !== 0) return;
    // Read before claiming: a claim that succeeds proves the job was still open, so what was read
    // is that job's (the caller closes a job, closeJob, before it writes the next job's).
    const n = Atomics.load(ctl, NARGS);
    args.length = n;
    for (let i = 0; i < n; i++) args[i] = argv[i]!;
    const fn = fns[Atomics.load(ctl, MEM)]?.[Atomics.load(ctl, FN)];
    const chunks = Atomics.load(ctl, CHUNKS);
    for (;;) {
      const c = claim(ctl, gen, chunks);
      if (c < 0) break;
      fn!(...args, c, chunks);
      if (Atomics.add(ctl, DONE, 1) + 1 === chunks) Atomics.notify(ctl, DONE);
    }
  }
}

try {
  main();
} catch (err) {
  const ctl = new Int32Array(init.control, 0, CONTROL_INTS);
  Atomics.store(ctl, FAILED, 1);
  Atomics.notify(ctl, DONE);
  parentPort!.postMessage({ error: err instanceof Error ? err.message : String(err) });
}
