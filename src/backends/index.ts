import type { Logger } from "pino";
import type { ModelEngineInit, SimEngineInit } from "../engine/engine-protocol.js";
import type { Backend, BackendKind } from "./backend.js";
import { startEngineBackend } from "./engine-backend.js";
import type { SlotQueueOptions } from "./slot-queue.js";

export type { Backend, BackendInfo, BackendKind, QueueState } from "./backend.js";
export { BACKEND_KINDS } from "./backend.js";

/** How a gateway backend (llamacpp, openai) orders the requests waiting for a slot. */
export type QueuePolicy = Partial<SlotQueueOptions>;

/** The in-process engine on a model (the default). */
export type LocalBackendInit = Omit<ModelEngineInit, "kind"> & { kind: "local" };

/** The in-process engine with the simulated runner; the tokenizer (and context length) come from `modelPath`. */
export type SimBackendInit = Omit<SimEngineInit, "kind" | "sim"> & {
  kind: "sim";
  /** A GGUF whose tokenizer, chat template and context length the simulator takes (weights are not read). */
  modelPath: string;
  sim?: Partial<SimEngineInit["sim"]>;
};

/** llama.cpp in process through node-llama-cpp. */
export interface LlamaCppBackendInit extends QueuePolicy {
  kind: "llamacpp";
  modelPath: string;
  /** Sequences decoded together in llama.cpp's context (default 8). */
  parallel?: number;
  /** llama.cpp threads, or "auto" (default): the faster of 1 and the core count, measured at load. */
  threads?: number | "auto";
  /** Context per sequence, tokens (default: the model's, at most 4096). */
  contextLength?: number;
}

/** One or more upstream OpenAI-compatible servers. */
export interface OpenAIBackendInit extends QueuePolicy {
  kind: "openai";
  /** The GGUF of the model the upstream serves: Spindle tokenizes and applies the chat template itself. */
  modelPath: string;
  /** Base URLs (http://host:port, with or without /v1). */
  upstreams: string[];
  /** Requests in flight per upstream (default 8). */
  upstreamConcurrency?: number;
  /** The model name to send upstream (default: the first id the upstream lists at /v1/models). */
  upstreamModel?: string;
  /** Bearer key for the upstream. */
  upstreamApiKey?: string;
  /** A command line that starts the upstream server (one upstream): started, health-checked, restarted, stopped. */
  spawn?: string;
  /** How often upstream health is checked (default 2000 ms). */
  healthIntervalMs?: number;
}

export type BackendInit = LocalBackendInit | SimBackendInit | LlamaCppBackendInit | OpenAIBackendInit;

export interface StartBackendOptions {
  /** Where backends log what happens outside requests (upstream health, a spawned server's restarts). */
  log?: Logger;
  /** The local backend: called while the engine reads the weights (bytes loaded, of total), for a progress bar. */
  onLoadProgress?: (loaded: number, total: number) => void;
  /** The local and sim backends: aborting it while the model loads stops the engine and the start rejects. */
  signal?: AbortSignal;
}

/** A backend being started, and how to call its start off. */
export interface StartingBackend {
  /** Resolves once it can take requests; a failure is the awaiter's to report. */
  backend: Promise<Backend>;
  /** Stops a local or sim engine mid-load (the start then rejects) and closes a backend already up. Idempotent. */
  cancel(): void;
}

/** startBackend, cancellable: for a caller that may give up before the backend is up (a server that cannot listen). */
export function beginBackend(
  init: BackendInit,
  opts: Omit<StartBackendOptions, "signal"> = {},
): StartingBackend {
  const abort = new AbortController();
  const backend = startBackend(init, { ...opts, signal: abort.signal });
  backend.catch(() => {});
  return {
    backend,
    cancel: () => {
      abort.abort();
      void backend.then((b) => b.close()).catch(() => {});
    },
  };
}

/** Starts the backend `init` names; resolves once it can take requests. */
export async function startBackend(init: BackendInit, opts: StartBackendOptions = {}): Promise<Backend> {
  switch (init.kind) {
    case "local":
    case "sim":
      // Imported up front, not on demand: the engine worker is spawned before this returns, so
      // `spindle serve` loads the model while the HTTP layer's modules load.
      return startEngineBackend(init, { onLoadProgress: opts.onLoadProgress, signal: opts.signal });
    case "llamacpp": {
      const { startLlamaCppBackend } = await import("./llamacpp-backend.js");
      return startLlamaCppBackend(init);
    }
    case "openai": {
      const { startOpenAIBackend } = await import("./openai-backend.js");
      return startOpenAIBackend({ ...init, log: opts.log });
    }
    default:
      throw new Error(`unknown backend ${String((init as { kind: BackendKind }).kind)}`);
  }
}
