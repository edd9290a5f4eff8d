import { ModelFileError } from "../errors.js";
import { type GGUFFile, readGGUF } from "../gguf/reader.js";
import type { Kernels } from "../kernels/kernels.js";
import { selectKernelsSync } from "../kernels/select.js";
import { type Tokenizer, tokenizerFromGGUF } from "../tokenizer/index.js";
import { configFromGGUF, type ModelConfig } from "./config.js";
import { Transformer } from "./forward.js";
import { loadWeights, type ModelWeights } from "./weights.js";

/** A loaded model: what the engine needs to run it and what the API needs to talk about it. */
export interface Model {
  path: string;
  config: ModelConfig;
  tokenizer: Tokenizer;
  /** tokenizer.chat_template from the file, when it has one. */
  chatTemplate: string | undefined;
  transformer: Transformer;
  /** Weight bytes held in memory. */
  weightBytes: number;
}

export interface LoadOptions {
  /** Default: $SPINDLE_KERNELS, else the WebAssembly kernels when built, else the reference kernels. */
  kernels?: Kernels;
  /** Called as the weights are read: bytes of the file's tensors loaded so far, and in all (a progress bar). */
  onProgress?: (loaded: number, total: number) => void;
}

/** Loads a GGUF model file: config, tokenizer, weights. Problems with the file are one-line ModelFileErrors. */
export function loadModel(path: string, opts: LoadOptions = {}): Model {
  const g: GGUFFile = readGGUF(path);
  try {
    const config = configFromGGUF(g);
    if (!g.has("tokenizer.ggml.model"))
      throw new ModelFileError(path, "has no tokenizer (tokenizer.ggml.model is missing)");
    const tokenizer = tokenizerFromGGUF(g);
    if (tokenizer.vocabSize !== config.vocabSize) {
      throw new ModelFileError(
        path,
        `tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary is ${config.vocabSize}`,
      );
    }
    const kernels = opts.kernels ?? selectKernelsSync();
    let weightBytes = 0;
    for (const t of g.tensors.values()) weightBytes += t.nbytes;
    const onProgress = opts.onProgress;
    let weights: ModelWeights;
    try {
      weights = loadWeights(
        g,
        config,
        kernels.adopt?.bind(kernels),
        onProgress && ((done, total) => onProgress(Math.round((weightBytes * done) / total), weightBytes)),
      );
    } catch (e) {
      // A kernel set made here has threads (and a memory holding the weights read so far): stop them.
      if (opts.kernels === undefined) void kernels.close?.();
      throw e;
    }
    const chatTemplate = g.has("tokenizer.chat_template")
      ? g.getString("tokenizer.chat_template")
      : undefined;
    return {
      path,
      config,
      tokenizer,
      chatTemplate,
      transformer: new Transformer(config, weights, kernels),
      weightBytes,
    };
  } finally {
    g.close();
  }
}
