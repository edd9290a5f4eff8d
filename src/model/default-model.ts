import { basename } from "node:path";
import { SpindleError } from "../errors.js";
import { ProgressBar, type ProgressStream } from "../progress.js";
import { findCachedRef, formatRepoRef, parseRepoRef, resolveRepoRef, stripHubPrefix } from "./hub-ref.js";
import { isPullSpec, PullNetworkError, type PullOptions, pullModel } from "./pull.js";
import { findModel, resolveModel } from "./resolve.js";

/** The model used when `--model` is omitted: SmolLM2-135M-Instruct, Q8_0 (about 145 MB). */
export const DEFAULT_MODEL_SPEC = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf";

export interface EnsureModelOptions extends Omit<PullOptions, "onProgress"> {
  /** Show a progress bar while downloading (default true). */
  progress?: boolean;
  /** Where the progress bar and the "downloading" line go (default process.stderr). */
  stderr?: ProgressStream;
}

/**
 * The model file to load: `--model` through the resolver (a spec missing from the cache is
 * pulled; a repository reference such as `hf.co/owner/repo:Q4_K_M` is looked up in the cache,
 * else its file is chosen from the hub's listing and pulled: hub-ref.ts), or the default model
 * from the cache, pulled on first use.
 */
export async function ensureModel(
  modelArg: string | undefined,
  opts: EnsureModelOptions = {},
): Promise<string> {
  if (modelArg !== undefined) {
    const name = stripHubPrefix(modelArg);
    try {
      return resolveModel(name);
    } catch (err) {
      if (!(err instanceof SpindleError && err.code === "model_not_found")) throw err;
      const ref = parseRepoRef(modelArg, { bare: true });
      if (ref) {
        const cached = findCachedRef(ref, opts.cacheDir);
        if (cached) return cached;
        const stderr = opts.stderr ?? process.stderr;
        if (opts.progress !== false) stderr.write(`spindle: looking up ${formatRepoRef(ref)}\n`);
        const { progress: _p, stderr: _s, ...listOpts } = opts;
        return pullWithProgress(await resolveRepoRef(ref, listOpts), opts);
      }
      if (!isPullSpec(name)) throw err;
    }
    return pullWithProgress(name, opts);
  }

  // SPINDLE_MODELS folders (by file name) and the cache, before any network.
  const local = findModel(DEFAULT_MODEL_SPEC);
  if (local) return local;
  try {
    return await pullWithProgress(DEFAULT_MODEL_SPEC, opts);
  } catch (err) {
    if (err instanceof PullNetworkError && !err.interrupted) {
      throw new SpindleError(
        `no network to download the default model ${DEFAULT_MODEL_SPEC} (${err.reason}); run with --model /path/to/model.gguf or set SPINDLE_MODELS to a folder of .gguf files`,
        "network_unreachable",
      );
    }
    throw err;
  }
}

async function pullWithProgress(spec: string, opts: EnsureModelOptions): Promise<string> {
  const { progress = true, stderr = process.stderr, ...pullOpts } = opts;
  if (!progress) return pullModel(spec, pullOpts);
  const bar = new ProgressBar({ label: basename(spec), stream: stderr });
  let announced = false;
  try {
    return await pullModel(spec, {
      ...pullOpts,
      onProgress: (p) => {
        if (!announced) {
          announced = true;
          stderr.write(`spindle: downloading ${spec}\n`);
        }
        bar.update(p.received, p.total);
      },
    });
  } finally {
    bar.done();
  }
}
