import { SpindleError } from "../errors.js";
import { describeKernels } from "../kernels/kernels.js";
import { loadModel, type Model } from "../model/model.js";
import { readModelCard } from "../model/model-card.js";
import { fixSmallSplits, hasSplitChoice, type SplitChoice, tuneSmallSplits } from "../model/tune-splits.js";
import type { Tokenizer } from "../tokenizer/index.js";
import { type Clock, realClock } from "./engine.js";
import type { EngineInfo, EngineInit, ModelEngineInit } from "./engine-protocol.js";
import { cappedContext, kvCachePools, kvCacheType } from "./kv-sizing.js";
import { checkSameVocabulary, ModelDrafter, measureDecodeMs, measureStepsMs } from "./model-drafter.js";
import { ModelRunner, type Runner } from "./runner.js";
import { DEFAULT_SCHEDULER_OPTIONS } from "./scheduler.js";
import { SimRunner } from "./sim-runner.js";

/**
 * What the engine worker builds from its init message: the runner (a model loaded into the
 * kernels with its KV pool, or the simulator), the tokenizer, the clock, and the facts it reports
 * once ready.
 */

/** A real clock whose advance() sleeps: SimRunner steps then take their simulated time. */
function pacedClock(): Clock {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  return {
    now: () => performance.now(),
    advance: (ms) => {
      if (ms > 0) Atomics.wait(cell, 0, 0, ms);
    },
  };
}

export interface Built {
  runner: Runner;
  /** Speculative method "draft": the draft model's drafter. */
  drafter?: ModelDrafter;
  /** Resolves when the compute is ready (kernel threads started). */
  ready?: () => Promise<void>;
  /**
   * Measures again whether decode splits over the kernel threads (tuneSmallSplits, the choice and
   * info.decodeSplits updated), unless `stop` says to give up; undefined then, or with one thread.
   */
  retune?: (stop: () => Promise<boolean>) => Promise<SplitChoice | undefined>;
  tokenizer: Tokenizer | undefined;
  clock: Clock;
  info: EngineInfo;
}

/** `onLoadProgress` sees the weights being read (model kind): bytes loaded, of total. */
export function build(init: EngineInit, onLoadProgress?: (loaded: number, total: number) => void): Built {
  const opts = init.options ?? {};
  const maxNumSeqs = opts.maxNumSeqs ?? DEFAULT_SCHEDULER_OPTIONS.maxNumSeqs;
  const base = {
    scheduler: { ...DEFAULT_SCHEDULER_OPTIONS, ...definedOnly(opts) },
    prefixCaching: opts.prefixCaching ?? true,
    timeOrigin: performance.timeOrigin,
  };
  if (init.kind === "sim") {
    const card = init.tokenizerPath !== undefined ? readModelCard(init.tokenizerPath) : undefined;
    const tok = card?.tokenizer;
    const runner = new SimRunner(
      card
        ? {
            ...init.sim,
            vocabSize: card.vocabSize,
            contextLength: card.contextLength,
            avoid: new Set([...(init.sim.avoid ?? []), ...card.tokenizer.eogTokens]),
          }
        : init.sim,
    );
    return {
      runner,
      tokenizer: tok,
      clock: init.pace ? pacedClock() : realClock,
      info: {
        kind: "sim",
        modelPath: init.tokenizerPath,
        numBlocks: runner.numBlocks,
        blockSize: runner.blockSize,
        kvCacheBytes: 0,
        vocabSize: runner.vocabSize,
        contextLength: runner.contextLength,
        bos: tok?.bos,
        eos: tok?.eos,
        eogTokens: tok ? [...tok.eogTokens].sort((a, b) => a - b) : [],
        hasChatTemplate: card?.chatTemplate !== undefined,
        chatTemplate: card?.chatTemplate,
        embeddings: { length: runner.embeddingLength, pooling: runner.pooling },
        ...base,
      },
    };
  }
  if (init.kind !== "model")
    throw new SpindleError(`unknown engine kind ${String((init as { kind: unknown }).kind)}`);
  const model: Model = loadModel(init.modelPath, { onProgress: onLoadProgress });
  if (init.decodeSplit !== undefined) fixSmallSplits(model, init.decodeSplit === "on");
  const c = model.config;
  const { numBlocks, windowBlocks } = kvCachePools(c, init, maxNumSeqs, base.scheduler.maxNumBatchedTokens);
  const contextLength = cappedContext(c.contextLength, init.contextLength);
  const runner = new ModelRunner(
    model,
    numBlocks,
    init.blockSize,
    contextLength,
    kvCacheType(init.kvCacheType),
    windowBlocks,
  );
  const drafter = draftModel(model, runner, init);
  const tok = model.tokenizer;
  const warnings: string[] = [];
  if (init.contextLength !== undefined && init.contextLength > c.contextLength) {
    warnings.push(
      `--ctx-size ${init.contextLength} is more than the model was trained for; using its context length, ${c.contextLength}`,
    );
  }
  if (drafter) warnings.push(...drafter.warnings);
  if (model.transformer.kernels.allocFloat32 && !runner.kv.inKernelMemory) {
    warnings.push(
      `the KV cache (${(runner.kv.bytes / 2 ** 20).toFixed(0)} MiB) does not fit in the ${model.transformer.kernels.name} kernels' memory next to the weights (4 GiB at most): it lives in plain arrays and attention runs in the slower reference kernel; lower --kv-cache-memory`,
    );
  }
  const summary = (m: Model) => ({
    arch: m.config.arch,
    name: m.config.name,
    dim: m.config.dim,
    nLayers: m.config.nLayers,
    nHeads: m.config.nHeads,
    nKVHeads: m.config.nKVHeads,
    headDim: m.config.headDim,
    ffnDim: m.config.ffnDim,
    weightBytes: m.weightBytes,
  });
  const built: Built = {
    runner,
    drafter: drafter?.drafter,
    // Kernel threads up, then what a draft model's token costs against the target's (unless
    // --spec-draft-cost says). Whether decode-sized matmuls split over the threads is measured
    // later, by the engine worker while idle: serving need not wait for it.
    ready: async () => {
      await model.transformer.kernels.ready?.();
      const spec = init.options?.speculative;
      if (spec) built.info.specVerifyCost = spec.tokenCost ?? measureVerifyCost(model, spec.numTokens);
      if (drafter) {
        drafter.measure();
        if (built.info.draftModel) built.info.draftModel.tokenCost = drafter.drafter.tokenCost;
      }
    },
    retune:
      hasSplitChoice(model) && init.decodeSplit === undefined
        ? async (stop) => {
            const splits = await tuneSmallSplits(model, stop);
            if (splits) built.info.decodeSplits = splits;
            return splits;
          }
        : undefined,
    tokenizer: tok,
    clock: realClock,
    info: {
      kind: "model",
      modelPath: init.modelPath,
      model: summary(model),
      draftModel: drafter && {
        path: drafter.drafter.model.path,
        model: summary(drafter.drafter.model),
        tokenCost: drafter.drafter.tokenCost,
        kvCacheBytes: drafter.drafter.kv.bytes,
      },
      kernels: describeKernels(model.transformer.kernels),
      numBlocks: runner.numBlocks,
      windowPool: runner.windowPool,
      blockSize: runner.blockSize,
      kvCacheBytes: runner.kv.bytes,
      kvCacheType: runner.kv.type,
      vocabSize: c.vocabSize,
      contextLength,
      bos: tok.bos,
      eos: tok.eos,
      eogTokens: [...tok.eogTokens].sort((a, b) => a - b),
      hasChatTemplate: model.chatTemplate !== undefined,
      chatTemplate: model.chatTemplate,
      embeddings: c.pooling ? { length: c.dim, pooling: c.pooling } : undefined,
      warnings,
      ...base,
    },
  };
  return built;
}

/**
 * What one more token in a step costs relative to a one-token decode step, measured on this machine:
 * a step of 1 + k tokens (every one with logits, as a verified draft) against a step of 1, per extra
 * token, within 0.05…1. The tiled int8 matmuls make the extra tokens cheap where the 8-bit dot is
 * fast (0.24 on a 2-core VNNI Xeon, 135M-shape Q8_0), dearer without (about 0.6 on an AMD EPYC).
 */
function measureVerifyCost(model: Model, k: number): number {
  // The two shapes in turn, so both see the same machine; the server is not ready until done
  // (about 0.35 s for the 135M shape, 5 s for an 8B one: 2 untimed and 3 timed rounds).
  const [one, many] = measureStepsMs(model, [1, 1 + k]);
  return Math.min(1, Math.max(0.05, (many! / one! - 1) / k));
}

/**
 * `--draft-model`: loaded into the target's kernels, refused unless its vocabulary is the target's,
 * with a KV pool of its own that holds as many tokens as the target's. Its token cost is measured
 * once the kernel threads are up (`measure`): its one-token decode step over the target's.
 */
function draftModel(target: Model, runner: ModelRunner, init: ModelEngineInit) {
  const spec = init.options?.speculative;
  if (spec?.method !== "draft") return undefined;
  if (spec.draftModel === undefined) throw new SpindleError("--speculative draft needs --draft-model PATH");
  const model = loadModel(spec.draftModel, { kernels: target.transformer.kernels });
  checkSameVocabulary(target, model);
  const blockSize = runner.blockSize;
  const drafter = new ModelDrafter(model, {
    numBlocks: runner.numBlocks,
    blockSize,
    kvCacheType: runner.kv.type,
    tokenCost: spec.draftTokenCost ?? 1,
  });
  const warnings =
    target.transformer.kernels.allocFloat32 && !drafter.kv.inKernelMemory
      ? [
          `the draft model's KV cache (${(drafter.kv.bytes / 2 ** 20).toFixed(0)} MiB, as many tokens as the model's) does not fit in the kernels' memory: it lives in plain arrays and its attention runs in the slower reference kernel; lower --kv-cache-memory`,
        ]
      : [];
  return {
    drafter,
    warnings,
    measure: () => {
      if (spec.draftTokenCost !== undefined) return;
      const ratio = measureDecodeMs(model) / measureDecodeMs(target);
      drafter.tokenCost = Math.min(2, Math.max(0.01, ratio));
    },
  };
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
