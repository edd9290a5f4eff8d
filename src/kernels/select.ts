import { SpindleError } from "../errors.js";
import type { Kernels } from "./kernels.js";
import { referenceKernels } from "./reference.js";
import { createWasmKernels, createWasmKernelsSync, wasmKernelsBuilt } from "./wasm-kernels.js";

/** Names of the kernel sets, for `loadModel(path, { kernels: await selectKernels(name) })`. */
export const KERNEL_NAMES = ["reference", "wasm"] as const;
export type KernelName = (typeof KERNEL_NAMES)[number];

/**
 * The kernel set of this name: "reference" (plain TypeScript, the oracle) or "wasm" (WebAssembly
 * SIMD: matmul, attention and the elementwise ops; embedding lookup from the reference). A "wasm"
 * set owns its WebAssembly memory (weights, activations, KV pools), so ask for a fresh one per model.
 */
export async function selectKernels(name: KernelName): Promise<Kernels> {
  switch (name) {
    case "reference":
      return referenceKernels;
    case "wasm":
      return createWasmKernels();
    default:
      throw new SpindleError(
        `unknown kernels "${String(name)}" (choose one of: ${KERNEL_NAMES.join(", ")})`,
        "bad_kernels",
      );
  }
}

/**
 * The kernels a model gets when none are named: $SPINDLE_KERNELS if set, else "wasm" when the
 * WebAssembly module is built (npm run build / npm test build it), else "reference".
 */
export function defaultKernelsName(): KernelName {
  const env = process.env.SPINDLE_KERNELS;
  if (env !== undefined && env !== "") {
    if (!(KERNEL_NAMES as readonly string[]).includes(env)) {
      throw new SpindleError(
        `SPINDLE_KERNELS="${env}" is not one of: ${KERNEL_NAMES.join(", ")}`,
        "bad_kernels",
      );
    }
    return env as KernelName;
  }
  return wasmKernelsBuilt() ? "wasm" : "reference";
}

/** selectKernels, synchronously: a fresh kernel set of this name. */
export function selectKernelsSync(name: KernelName = defaultKernelsName()): Kernels {
  return name === "wasm" ? createWasmKernelsSync() : referenceKernels;
}
