import { EngineClient, type EngineInfo } from "../engine/engine-client.js";
import type { StepInfo } from "../engine/engine-protocol.js";
import { DEFAULT_SIM_COST } from "../engine/sim-runner.js";
import { readModelCard } from "../model/model-card.js";
import type { SplitChoice } from "../model/tune-splits.js";
import type { RequestStream } from "../protocol/event-stream.js";
import type { SubmitOptions, SubmitSpec } from "../protocol/request.js";
import type { Tokenizer } from "../tokenizer/index.js";
import type { Backend, BackendInfo } from "./backend.js";
import type { LocalBackendInit, SimBackendInit } from "./index.js";

/**
 * The `local` and `sim` backends: Spindle's own engine in its worker thread
 * (src/engine), queueing and prioritising in the engine's scheduler. `sim` runs
 * the same engine, scheduler and KV block accounting with the simulated runner
 * in place of the model: no weights are read, tokens are a deterministic
 * function of (request id, position), and each step takes the cost model's
 * time (paced), so the whole serving path can be exercised and benchmarked
 * without model compute.
 */

/** KV blocks the simulator accounts for when none is given: 64 sequences of 2048 tokens in 16-token blocks. */
const DEFAULT_SIM_BLOCKS = 8192;

class EngineBackend implements Backend {
  readonly info: BackendInfo;

  constructor(
    readonly engine: EngineClient,
    readonly tokenizer: Tokenizer,
  ) {
    const i: EngineInfo = engine.info;
    this.info = {
      kind: i.kind === "sim" ? "sim" : "local",
      contextLength: i.contextLength,
      vocabSize: i.vocabSize,
      bos: i.bos,
      eos: i.eos,
      eogTokens: i.eogTokens,
      chatTemplate: i.chatTemplate,
      embeddings: i.embeddings,
      details: {
        ...(i.kernels !== undefined ? { kernels: i.kernels } : {}),
        numBlocks: i.numBlocks,
        ...(i.windowPool !== undefined
          ? { slidingWindow: i.windowPool.window, windowBlocks: i.windowPool.numBlocks }
          : {}),
        blockSize: i.blockSize,
        kvCacheBytes: i.kvCacheBytes,
        ...(i.kvCacheType !== undefined ? { kvCacheType: i.kvCacheType } : {}),
        ...(i.decodeSplits !== undefined ? splitDetails(i.decodeSplits) : {}),
        prefixCaching: i.prefixCaching,
        policy: i.scheduler.policy,
        batching: i.scheduler.batching,
        ...(i.specVerifyCost !== undefined ? { specVerifyCost: Number(i.specVerifyCost.toFixed(3)) } : {}),
        ...(i.draftModel !== undefined
          ? { draftModel: i.draftModel.path, draftTokenCost: Number(i.draftModel.tokenCost.toFixed(3)) }
          : {}),
      },
      warnings: i.warnings,
    };
  }

  submit(spec: SubmitSpec, opts?: SubmitOptions): RequestStream {
    return this.engine.submit(spec, opts);
  }

  onStep(cb: (s: StepInfo) => void): () => void {
    return this.engine.onStep(cb);
  }

  onMeasured(cb: (facts: Record<string, unknown>) => void): () => void {
    return this.engine.onDecodeSplits((s) => {
      const details = splitDetails(s);
      Object.assign(this.info.details, details);
      cb({ ...details, retunes: s.retunes });
    });
  }

  get lastStep(): StepInfo | undefined {
    return this.engine.lastStep;
  }

  close(): Promise<void> {
    return this.engine.close();
  }
}

/** The decode split as the logs show it (the "ready" and "measured" lines). */
function splitDetails(s: SplitChoice): Record<string, unknown> {
  return {
    decodeSplits: s.smallSplits,
    decodeStepMs: { split: Number(s.splitMs.toFixed(2)), oneThread: Number(s.singleMs.toFixed(2)) },
  };
}

export async function startEngineBackend(
  init: LocalBackendInit | SimBackendInit,
  opts: { onLoadProgress?: (loaded: number, total: number) => void; signal?: AbortSignal } = {},
): Promise<Backend> {
  // The worker starts loading first; meanwhile the main thread reads the tokenizer too (routes
  // tokenize and render templates with it). The weights stay in the worker.
  const { onLoadProgress, signal } = opts;
  let started: Promise<EngineClient>;
  if (init.kind === "local") {
    const { kind: _, ...rest } = init;
    started = EngineClient.start({ ...rest, kind: "model" }, { onLoadProgress, signal });
  } else {
    started = EngineClient.start(
      {
        kind: "sim",
        tokenizerPath: init.modelPath,
        pace: init.pace ?? true,
        options: init.options,
        sim: { numBlocks: DEFAULT_SIM_BLOCKS, cost: DEFAULT_SIM_COST, ...init.sim },
      },
      { signal },
    );
  }
  let card: ReturnType<typeof readModelCard>;
  try {
    card = readModelCard(init.modelPath);
  } catch (err) {
    void started.then((e) => e.close()).catch(() => {});
    throw err;
  }
  return new EngineBackend(await started, card.tokenizer);
}

/** The engine behind a local or sim backend (its stats: KV blocks, running, waiting); undefined for the others. */
export function engineOf(backend: Backend): EngineClient | undefined {
  return backend instanceof EngineBackend ? backend.engine : undefined;
}
