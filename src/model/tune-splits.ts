import { KVCacheStorage } from "./kv-cache.js";
import type { Model } from "./model.js";

/**
 * Kernel threads at decode: measured, not assumed. Splitting a decode-sized matmul (one token per
 * sequence) over the kernel threads saves compute but costs a hand-off and keeps the other threads
 * spinning between kernels; which wins depends on the machine and the model. Measured here per
 * decode step, split vs not: SmolLM2-135M shape 9.6 vs 14.9 ms, stories15M shape 0.74–1.10 vs
 * 1.25–1.74 ms (since the pool's parts are taken from a shared counter and split phases are warmed
 * up; before, 1.42 vs 1.38).
 * Timing each split call alone misleads (on the 15M shape split calls were faster alone while the
 * whole step got slower), so the decision is taken on whole decode steps of the model itself, once
 * its kernel threads are up.
 */

/** The kernel-set surface this needs (the WebAssembly kernels have it). */
interface SplittableKernels {
  readonly threads: number;
  ready(): Promise<void>;
  smallSplits: boolean;
}

export interface SplitChoice {
  /** Median decode step (ms) with decode-sized matmuls split over the threads, and without. */
  splitMs: number;
  singleMs: number;
  smallSplits: boolean;
}

/** About how long the timed steps may take in all. */
const BUDGET_MS = 1000;
/**
 * Before each timed phase of split steps, split steps run this long untimed. A core that was idle
 * (its worker asleep through the phase on one thread) runs slowly for a while once it gets work:
 * measured on this 2-vCPU VM, 15M-shape split decode ran at 500–900 tok/s for the first few
 * hundred ms and 1,100–1,300 after. Without it the split way is judged on its worst moments only
 * (the phases on one thread park the worker every time) and loses to a way that is slower in use.
 */
const WARM_MS = 250;
const ROUNDS = 3;
/** The throwaway sequence's positions cycle over this window (its KV is overwritten in turn). */
const WINDOW = 32;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** Fixes the decode split (`--decode-split on|off`), where the model's kernels have one to choose. */
export function fixSmallSplits(model: Model, on: boolean): void {
  if (hasSplitChoice(model)) (model.transformer.kernels as Partial<SplittableKernels>).smallSplits = on;
}

/** Whether the model's kernels have a decode split to choose (several threads). */
export function hasSplitChoice(model: Model): boolean {
  const k = model.transformer.kernels as Partial<SplittableKernels>;
  return k.smallSplits !== undefined && (k.threads ?? 1) > 1;
}

/**
 * `stop`, when given, is awaited before every step (the engine worker's: it yields to the event loop
 * and says whether requests came in); when it says so the measurement ends, the previous choice
 * stays, and the result is undefined.
 *
 * Waits for the model's kernel threads, then, when there are several, times decode steps of a
 * throwaway sequence with decode-sized splits off and on (alternating phases, ROUNDS of each, the
 * first step of every phase untimed, split phases after WARM_MS of untimed split steps), keeping
 * the faster. Results do not depend on the choice, only speed. Returns what it measured, or
 * undefined when there is nothing to choose (one thread, or kernels without threads).
 */
export async function tuneSmallSplits(
  model: Model,
  stop?: () => Promise<boolean>,
): Promise<SplitChoice | undefined> {
  const k = model.transformer.kernels as Partial<SplittableKernels>;
  await k.ready?.();
  if (!hasSplitChoice(model)) return undefined;
  const kernels = k as SplittableKernels;
  const before = kernels.smallSplits;
  const c = model.config;
  const window = Math.min(c.contextLength, WINDOW);
  const kv = new KVCacheStorage(c, Math.ceil(window / 16));
  const blockTable = Array.from({ length: kv.numBlocks }, (_, i) => i);
  let pos = 0;
  const stopped = new Error("stopped");
  const step = async (): Promise<number> => {
    if (stop && (await stop())) throw stopped;
    const t0 = performance.now();
    const token = 3 + ((pos * 7919) % Math.max(1, c.vocabSize - 3));
    // As the engine's runner calls it: logits left in the kernels' memory.
    model.transformer.forward(kv, [{ tokens: [token], pos, blockTable }], { transientLogits: true });
    pos = (pos + 1) % window;
    return performance.now() - t0;
  };
  try {
    kernels.smallSplits = true;
    const first = Math.max(await step(), await step());
    // Big models (a step past 100 ms) get no warm-up beyond that and one round of two timed steps
    // each way: a few seconds.
    const big = first > 100;
    const rounds = big ? 1 : ROUNDS;
    const perPhase = Math.max(3, Math.min(16, Math.floor(BUDGET_MS / (2 * rounds * first)) + 1));
    const times: [number[], number[]] = [[], []];
    for (let r = 0; r < rounds; r++) {
      for (const split of [false, true]) {
        kernels.smallSplits = split;
        await step(); // the threads settle into this way of working
        if (split && !big)
          for (const t0 = performance.now(); performance.now() - t0 < WARM_MS; ) await step();
        for (let i = 1; i < perPhase; i++) times[split ? 1 : 0].push(await step());
      }
    }
    const [single, split] = times;
    const choice: SplitChoice = {
      splitMs: median(split),
      singleMs: median(single),
      smallSplits: median(split) < median(single),
    };
    kernels.smallSplits = choice.smallSplits;
    return choice;
  } catch (e) {
    if (e !== stopped) throw e;
    kernels.smallSplits = before;
    return undefined;
  } finally {
    kv.dispose();
  }
}
