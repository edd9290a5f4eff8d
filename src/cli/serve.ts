import { basename } from "node:path";
import { parseArgs } from "node:util";
import {
  BACKEND_KINDS,
  type BackendInit,
  type BackendKind,
  beginBackend,
  type LocalBackendInit,
} from "../backends/index.js";
import { kvCacheType } from "../engine/kv-sizing.js";
import type { BatchingMode, Policy } from "../engine/scheduler.js";
import type { SpeculativeOptions } from "../engine/speculation.js";
import { SpindleError } from "../errors.js";
import { defaultKernelsName } from "../kernels/select.js";
import { ensureModel } from "../model/default-model.js";
import { ProgressBar } from "../progress.js";
import { DEFAULT_SERVE_OPTIONS } from "../server/context.js";
import type { RunningServer } from "../server/server.js";
import { createLogger } from "./log-format.js";

export const SERVE_USAGE = `usage: spindle serve [--model M] [--host 127.0.0.1] [--port 8000] [options]

Serves a model behind an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
/v1/models), TGI-style /generate and /generate_stream, /tokenize, /detokenize, /health, /metrics,
and spindle.v1.InferenceService (proto/spindle/v1/inference.proto) over Connect and gRPC-Web.

  -m, --model M               a .gguf path, a model name, hf.co/<owner>/<repo>[:QUANT], <owner>/<repo>:QUANT
                              or <owner>/<repo>/<file>; a repository is pulled on first use
                              (default: SmolLM2-135M-Instruct)
  --host HOST                 address to listen on (default ${DEFAULT_SERVE_OPTIONS.host})
  --port PORT                 port to listen on (default ${DEFAULT_SERVE_OPTIONS.port})
  -c, --ctx-size N            cap each request's context (prompt + output) at N tokens, at most the model's;
                              without --kv-cache-memory the KV cache then holds at least one N-token context
  --grpc-port PORT            also serve spindle.v1.InferenceService over HTTP/2 cleartext on PORT: gRPC,
                              Connect and gRPC-Web (the main port serves Connect and gRPC-Web over HTTP/1.1)
  --admin-port PORT           also serve /health, /metrics and /version on PORT (no auth), apart from the API
  --served-model-name NAME    model id in the API (default: the file name without .gguf)
  --api-key KEY               require "Authorization: Bearer KEY" (repeatable; also $SPINDLE_API_KEYS, comma-separated)
  --max-queue N               queued requests before 503 + Retry-After (default ${DEFAULT_SERVE_OPTIONS.maxQueue})
  --rate-limit R[:BURST]      token bucket per API key (or client address): R requests/s, burst BURST (default off)
  --queue-timeout-ms MS       abort a request that waits longer than this for its first token
  --request-timeout-ms MS     abort a request running longer than this
  --body-timeout-ms MS        a request's headers and body must arrive within MS of its first byte, else
                              408 and the connection is closed (default ${DEFAULT_SERVE_OPTIONS.bodyTimeoutMs}; 0 = no limit)
  --body-limit SIZE           largest request body, e.g. 1MiB (default 4MiB)
  --kv-cache-memory SIZE      KV cache budget, e.g. 256MiB, 1GiB (default 256MiB)
  --kv-cache-type f16|f32     the KV cache's element type (default f32; llama.cpp's is f16): f16 holds twice
                              the tokens of f32 in the same memory, and decodes 5-18% slower; llama-server's
                              -ctk/-ctv (--cache-type-k/-v) are accepted when they name the same type
  --max-num-seqs N            sequences per batch (default 64)
  --max-num-batched-tokens N  token budget per engine step (default 512)
  --policy fcfs|priority      scheduling policy (default fcfs); --aging P: priority units per second waited
  --batching continuous|static|window   (default continuous); --batch-window-ms MS (default 50)
  --no-prefix-caching         disable automatic prefix caching
  --jump-forward-max-batch N  structured output: accept the tokens a grammar forces without sampling them
                              and compute them in one step, while at most N requests are unfinished (default
                              4; 0 = never): in a larger batch that would slow every other stream's step
  --speculative ngram|draft   speculative decoding with drafts from the prompt and output so far (ngram:
                              prompt lookup) or from --draft-model (draft), verified in the batched step;
                              greedy output is unchanged and sampled output keeps its distribution (default off)
  --spec-tokens K             the most draft tokens per sequence and step (default 4; adapts per sequence)
  --spec-max-batch N          speculate only while at most N sequences run (default 4)
  --spec-token-cost C         what one more token in a step costs relative to a one-token decode step
                              (default: measured after start, a step of 1 + K tokens against one of 1);
                              draft lengths are chosen for the most tokens per cost
  --draft-model PATH          speculative decoding with drafts from a small model with the same vocabulary
                              (llama-server's -md/--model-draft, accepted too; vLLM's draft model): implies
                              --speculative draft; it runs greedily in the engine worker with its own KV cache
  --spec-draft-cost D         what drafting one token with --draft-model costs relative to a one-token decode
                              step of the model (default: measured at start, the two models' decode steps)
  --kernels wasm|reference    compute kernels (default: wasm once built; also $SPINDLE_KERNELS)
  --threads N                 kernel threads a large matmul is split over (default: the cores; also
                              $SPINDLE_THREADS); with --backend llamacpp: llama.cpp's threads
  --decode-split auto|on|off  whether a decode step's small matmuls split over the kernel threads too:
                              auto (default) measures both ways while the engine is idle, after start
                              and again after serving; on or off never measures (no background work:
                              for benchmarks beside another server)

Backends (what computes the tokens; admission, priorities, metrics and logs apply to all):
  --backend local|llamacpp|openai|sim   (default local: Spindle's own engine)
     local     the in-process engine on --model
     llamacpp  llama.cpp in process through node-llama-cpp on --model (--parallel N sequences,
               default 8; --threads N|auto, default auto: measured at load)
     openai    upstream OpenAI-compatible servers (vLLM, llama-server, another Spindle): --upstream URL
               (repeatable), --upstream-concurrency N in flight per upstream (default 8),
               --upstream-model NAME, --upstream-api-key KEY, --spawn "CMD" to start and supervise the
               upstream (its URL is --upstream); --model gives the tokenizer and chat template
     sim       the engine with a simulated runner: --model gives the tokenizer, no weights are read
  --log-prompts               include prompt text in request logs
  --log-format FORMAT         json: JSON lines (for log collectors); text: one readable line per entry,
                              coloured on a terminal; auto (the default): text on a terminal, JSON when piped
  --log-level LEVEL           trace, debug, info, warn or error (default info)
  --version                   print Spindle's version and exit
  --shutdown-timeout-ms MS    on SIGTERM, how long in-flight requests may finish (default 10000)`;

/**
 * `--speculative ngram|draft [--spec-tokens K] [--spec-max-batch N] [--spec-token-cost C]`, or
 * `--draft-model PATH [--spec-draft-cost D]` (which implies `--speculative draft`, as llama-server's
 * -md and vLLM's draft model need no method of their own); undefined when off. `draftModel` is the
 * resolved path.
 */
function speculativeOptions(
  values: {
    speculative?: string;
    "spec-tokens"?: string;
    "spec-max-batch"?: string;
    "spec-token-cost"?: string;
    "spec-draft-cost"?: string;
  },
  draftModel: string | undefined,
): SpeculativeOptions | undefined {
  const method = values.speculative ?? (draftModel !== undefined ? "draft" : undefined);
  const cost = values["spec-token-cost"];
  const draftCost = values["spec-draft-cost"];
  if (method === undefined || method === "off") {
    if (values["spec-tokens"] !== undefined || values["spec-max-batch"] !== undefined || cost !== undefined)
      throw new SpindleError(
        "--spec-tokens, --spec-max-batch and --spec-token-cost need --speculative ngram|draft (or --draft-model)",
      );
    if (draftModel !== undefined)
      throw new SpindleError("--draft-model needs speculative decoding: not --speculative off");
    if (draftCost !== undefined) throw new SpindleError("--spec-draft-cost needs --draft-model");
    return undefined;
  }
  const tokenCost = cost === undefined ? undefined : Number(cost);
  if (tokenCost !== undefined && !(tokenCost >= 0 && tokenCost <= 1))
    throw new SpindleError(`--spec-token-cost must be a number from 0 to 1, got "${cost}"`);
  if (method !== "ngram" && method !== "draft")
    throw new SpindleError(`unknown --speculative "${method}" (ngram, draft or off)`);
  if (method === "draft" && draftModel === undefined)
    throw new SpindleError("--speculative draft needs --draft-model PATH (the draft model's GGUF)");
  if (method === "ngram" && draftModel !== undefined)
    throw new SpindleError(
      "--draft-model drafts with a model: use --speculative draft (or leave it out), not ngram",
    );
  if (method === "ngram" && draftCost !== undefined)
    throw new SpindleError("--spec-draft-cost needs --draft-model");
  const draftTokenCost = draftCost === undefined ? undefined : Number(draftCost);
  if (draftTokenCost !== undefined && !(draftTokenCost >= 0 && draftTokenCost <= 4))
    throw new SpindleError(`--spec-draft-cost must be a number from 0 to 4, got "${draftCost}"`);
  return {
    method,
    numTokens: int("spec-tokens", values["spec-tokens"], 1) ?? 4,
    maxBatch: int("spec-max-batch", values["spec-max-batch"], 1),
    tokenCost,
    ...(method === "draft" ? { draftModel, draftTokenCost } : {}),
  };
}

/** "256MiB", "1GiB", "512MB", "1000000" → bytes. */
export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|k|m|g)?\s*$/i.exec(s);
  if (!m) throw new SpindleError(`cannot read size "${s}" (examples: 256MiB, 1GiB)`);
  const units: Record<string, number> = {
    b: 1,
    k: 1024,
    kb: 1000,
    kib: 1024,
    m: 2 ** 20,
    mb: 1e6,
    mib: 2 ** 20,
    g: 2 ** 30,
    gb: 1e9,
    gib: 2 ** 30,
  };
  return Math.floor(Number(m[1]) * units[(m[2] ?? "b").toLowerCase()]!);
}

function int(name: string, v: string | undefined, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min)
    throw new SpindleError(`--${name} must be an integer ≥ ${min}, got "${v}"`);
  return n;
}

/**
 * `--kv-cache-type`, or llama-server's `--cache-type-k`/`--cache-type-v` (`-ctk`/`-ctv`): Spindle keeps
 * K and V in one type, so those must agree (with each other and with --kv-cache-type).
 */
function kvCacheTypeOption(values: Record<string, string | boolean | string[] | undefined>) {
  const given = ["kv-cache-type", "cache-type-k", "cache-type-v"].filter((f) => values[f] !== undefined);
  const types = new Set(given.map((f) => String(values[f]).toLowerCase()));
  if (types.size > 1) {
    throw new SpindleError(
      `${given.map((f) => `--${f} ${String(values[f])}`).join(", ")}: Spindle keeps K and V in one type; give one (f16 or f32)`,
    );
  }
  const [type] = types;
  return type === undefined ? undefined : kvCacheType(type);
}

/** llama-server's multi-letter short flags, as their long names (node's parseArgs takes one-letter ones only). */
const LLAMA_SERVER_FLAGS: Record<string, string> = {
  "-ctk": "--cache-type-k",
  "-ctv": "--cache-type-v",
  "-md": "--draft-model",
  "--model-draft": "--draft-model",
};

/** The --backend's init from the command line. */
function backendInit(
  kind: BackendKind,
  modelPath: string,
  values: Record<string, string | boolean | string[] | undefined>,
  engineOptions: LocalBackendInit["options"] & object,
): BackendInit {
  const str = (k: string) => values[k] as string | undefined;
  const queue = { policy: engineOptions.policy, agingPerSecond: engineOptions.agingPerSecond };
  const only = (flags: string[], backends: BackendKind[]) => {
    for (const f of flags) {
      if (values[f] !== undefined && !backends.includes(kind)) {
        throw new SpindleError(`--${f} applies to --backend ${backends.join("|")}, not ${kind}`);
      }
    }
  };
  only(["upstream", "upstream-concurrency", "upstream-model", "upstream-api-key", "spawn"], ["openai"]);
  only(["parallel"], ["llamacpp"]);
  only(
    ["speculative", "spec-tokens", "spec-max-batch", "spec-token-cost", "jump-forward-max-batch"],
    ["local", "sim"],
  );
  only(["draft-model", "spec-draft-cost"], ["local"]);
  if (kind === "sim" && values.speculative === "draft")
    throw new SpindleError("--speculative draft needs --backend local (the sim backend runs no model)");
  only(["threads", "ctx-size"], ["local", "llamacpp"]);
  only(["kv-cache-type", "cache-type-k", "cache-type-v", "decode-split"], ["local"]);
  const decodeSplit = str("decode-split");
  if (decodeSplit !== undefined && !["auto", "on", "off"].includes(decodeSplit))
    throw new SpindleError(`--decode-split must be auto, on or off, got "${decodeSplit}"`);
  const ctxSize = int("ctx-size", str("ctx-size"), 1);
  switch (kind) {
    case "local":
      return {
        kind,
        modelPath,
        kvCacheBytes: str("kv-cache-memory") ? parseSize(str("kv-cache-memory")!) : undefined,
        kvCacheType: kvCacheTypeOption(values),
        contextLength: ctxSize,
        ...(decodeSplit === "on" || decodeSplit === "off" ? { decodeSplit } : {}),
        options: engineOptions,
      };
    case "sim":
      return { kind, modelPath, options: engineOptions };
    case "llamacpp": {
      const t = str("threads");
      return {
        kind,
        modelPath,
        ...queue,
        parallel: int("parallel", str("parallel"), 1),
        contextLength: ctxSize,
        threads: t === undefined || t === "auto" ? "auto" : int("threads", t, 1),
      };
    }
    case "openai": {
      const upstreams = (values.upstream as string[] | undefined) ?? [];
      if (upstreams.length === 0) throw new SpindleError("--backend openai needs --upstream URL");
      if (values.spawn !== undefined && upstreams.length !== 1) {
        throw new SpindleError(
          "--spawn starts one upstream: give exactly one --upstream (the URL it listens on)",
        );
      }
      return {
        kind,
        modelPath,
        ...queue,
        upstreams,
        upstreamConcurrency: int("upstream-concurrency", str("upstream-concurrency"), 1),
        upstreamModel: str("upstream-model"),
        upstreamApiKey: str("upstream-api-key") ?? process.env.SPINDLE_UPSTREAM_API_KEY,
        spawn: str("spawn"),
      };
    }
  }
}

export async function serveCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args: args.map((a) => LLAMA_SERVER_FLAGS[a] ?? a),
    options: {
      model: { type: "string", short: "m" },
      host: { type: "string", default: DEFAULT_SERVE_OPTIONS.host },
      port: { type: "string", default: String(DEFAULT_SERVE_OPTIONS.port) },
      "grpc-port": { type: "string" },
      "admin-port": { type: "string" },
      "served-model-name": { type: "string" },
      "api-key": { type: "string", multiple: true },
      "max-queue": { type: "string" },
      "rate-limit": { type: "string" },
      "queue-timeout-ms": { type: "string" },
      "request-timeout-ms": { type: "string" },
      "kv-cache-memory": { type: "string" },
      "kv-cache-type": { type: "string" },
      "decode-split": { type: "string" },
      "cache-type-k": { type: "string" },
      "cache-type-v": { type: "string" },
      "max-num-seqs": { type: "string" },
      "max-num-batched-tokens": { type: "string" },
      policy: { type: "string" },
      aging: { type: "string" },
      batching: { type: "string" },
      "batch-window-ms": { type: "string" },
      "no-prefix-caching": { type: "boolean", default: false },
      "jump-forward-max-batch": { type: "string" },
      speculative: { type: "string" },
      "spec-tokens": { type: "string" },
      "spec-max-batch": { type: "string" },
      "spec-token-cost": { type: "string" },
      "draft-model": { type: "string" },
      "spec-draft-cost": { type: "string" },
      "log-prompts": { type: "boolean", default: false },
      "log-level": { type: "string", default: "info" },
      "log-format": { type: "string", default: "auto" },
      "ctx-size": { type: "string", short: "c" },
      "shutdown-timeout-ms": { type: "string" },
      "body-limit": { type: "string" },
      "body-timeout-ms": { type: "string" },
      kernels: { type: "string" },
      backend: { type: "string", default: "local" },
      upstream: { type: "string", multiple: true },
      "upstream-concurrency": { type: "string" },
      "upstream-model": { type: "string" },
      "upstream-api-key": { type: "string" },
      spawn: { type: "string" },
      parallel: { type: "string" },
      threads: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${SERVE_USAGE}\n`);
    return 0;
  }
  const policy = values.policy as Policy | undefined;
  if (policy && !["fcfs", "priority"].includes(policy))
    throw new SpindleError(`unknown --policy "${policy}"`);
  const batching = values.batching as BatchingMode | undefined;
  if (batching && !["continuous", "static", "window"].includes(batching)) {
    throw new SpindleError(`unknown --batching "${batching}"`);
  }
  let rateLimit: { perSecond: number; burst: number } | undefined;
  if (values["rate-limit"]) {
    const [r, b] = values["rate-limit"].split(":");
    const perSecond = Number(r);
    const burst = b === undefined ? Math.max(1, Math.ceil(perSecond)) : Number(b);
    if (!(perSecond > 0) || !(burst >= 1))
      throw new SpindleError(`--rate-limit must be R or R:BURST with R > 0, got "${values["rate-limit"]}"`);
    rateLimit = { perSecond, burst };
  }
  const envKeys = (process.env.SPINDLE_API_KEYS ?? process.env.SPINDLE_API_KEY ?? "")
    .split(",")
    .map((k) => k.trim())
    .filter((k) => k.length > 0);
  // The engine worker picks its kernels from the environment it inherits.
  if (values.kernels !== undefined) process.env.SPINDLE_KERNELS = values.kernels;
  if (values.threads !== undefined && values.threads !== "auto" && values.backend === "local") {
    process.env.SPINDLE_THREADS = String(int("threads", values.threads, 1));
  }
  defaultKernelsName(); // validates SPINDLE_KERNELS before anything starts
  const log = createLogger({ level: values["log-level"], format: values["log-format"] });
  const backendKind = values.backend as BackendKind;
  if (!BACKEND_KINDS.includes(backendKind)) {
    throw new SpindleError(`unknown --backend "${values.backend}" (one of ${BACKEND_KINDS.join(", ")})`);
  }
  const modelPath = await ensureModel(values.model);
  const draftModel =
    values["draft-model"] === undefined ? undefined : await ensureModel(values["draft-model"]);
  const engineOptions = {
    maxNumSeqs: int("max-num-seqs", values["max-num-seqs"], 1),
    maxNumBatchedTokens: int("max-num-batched-tokens", values["max-num-batched-tokens"], 1),
    policy,
    agingPerSecond: values.aging === undefined ? undefined : Number(values.aging),
    batching,
    batchWindowMs: int("batch-window-ms", values["batch-window-ms"], 0),
    prefixCaching: !values["no-prefix-caching"],
    jumpForwardMaxBatch: int("jump-forward-max-batch", values["jump-forward-max-batch"], 0),
    speculative: speculativeOptions(values, draftModel),
  };
  const backend = backendInit(backendKind, modelPath, values, engineOptions);
  const serverOptions = {
    log,
    host: values.host,
    port: int("port", values.port, 0),
    grpcPort: int("grpc-port", values["grpc-port"], 0),
    adminPort: int("admin-port", values["admin-port"], 0),
    modelName: values["served-model-name"] ?? basename(modelPath).replace(/\.gguf$/i, ""),
    apiKeys: [...(values["api-key"] ?? []), ...envKeys],
    maxQueue: int("max-queue", values["max-queue"], 1),
    rateLimit,
    queueTimeoutMs: int("queue-timeout-ms", values["queue-timeout-ms"], 1),
    requestTimeoutMs: int("request-timeout-ms", values["request-timeout-ms"], 1),
    bodyLimit: values["body-limit"] ? parseSize(values["body-limit"]) : undefined,
    bodyTimeoutMs: int("body-timeout-ms", values["body-timeout-ms"], 0),
    logPrompts: values["log-prompts"],
    shutdownTimeoutMs: int("shutdown-timeout-ms", values["shutdown-timeout-ms"], 0),
    backend,
  };
  // On a terminal, a progress bar on stderr while the weights load (the logs go to stdout).
  const bar = process.stderr.isTTY ? new ProgressBar({ label: `loading ${basename(modelPath)}` }) : undefined;
  // The backend starts first (the local one's worker loads the model) and the HTTP layer's modules
  // load meanwhile: half a second of imports no longer comes before the load.
  const starting = beginBackend(backend, {
    log,
    // The bar ends (its line too) once all weights are read, before the "ready" log line.
    onLoadProgress:
      bar &&
      ((loaded, total) => {
        bar.update(loaded, total);
        if (loaded >= total) bar.done();
      }),
  });
  let server: RunningServer;
  try {
    const { startServer } = await import("../server/server.js");
    server = await startServer({ ...serverOptions, starting });
  } catch (err) {
    starting.cancel();
    bar?.done();
    throw err;
  }
  const stop = (signal: string) => {
    log.info({ signal }, "shutting down: finishing in-flight requests");
    void server.close().then(
      () => {
        log.info("stopped");
        process.exit(0);
      },
      (err) => {
        log.error({ err: String(err) }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  try {
    await server.ready;
  } catch (err) {
    await server.close();
    throw err;
  } finally {
    bar?.done();
  }
  process.stderr.write(`spindle: serving ${server.ctx.opts.modelName} at ${server.url}\n`);
  // Keep running until a signal.
  await new Promise(() => {});
  return 0;
}
