import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

// Tests find models through the product resolver; default to the shared folder beside the repo.
process.env.SPINDLE_MODELS ??= resolve(import.meta.dirname, "../shared/models");
// One kernel thread per model unless a test asks for more: test files already run two at a time on
// CI's two cores, and spinning kernel threads would only fight over them.
process.env.SPINDLE_THREADS ??= "1";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Model tests are CPU-bound; two cores on CI.
    pool: "forks",
    maxWorkers: 2,
  },
});
