import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

// Tests find models through the product resolver; default to the shared folder beside the repo.
process.env.SPINDLE_MODELS ??= resolve(import.meta.dirname, "../shared/models");

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
