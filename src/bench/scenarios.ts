import type { WorkloadSpec } from "./workload.js";

/**
 * The named scenarios of `spindle bench --scenario` (those of the control-plane design Spindle grew
 * from), each a workload that shows one side of the prefix cache, run by default as 1000 requests at
 * concurrency 100:
 *
 * - cache-miss: every prompt is its own (a prefix of `prefixLen` tokens no other prompt has, then a
 *   suffix): the cache cannot help, the baseline;
 * - cache-hit: one long shared prefix of `prefixLen` tokens, sent once before the run (primed), then
 *   every prompt is that prefix and a suffix of its own: every request can be served from the cache;
 * - mixed-prompt: short and long prompts with partial sharing (workload.ts): half of the prompts
 *   long, from `groups` shared prefixes that are not primed, the rest short prompts of their own.
 *
 * cache-miss and cache-hit have the same prompt lengths, so they differ only in what is shared.
 */

export const SCENARIOS = ["cache-miss", "cache-hit", "mixed-prompt"] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export const SCENARIO_NUM_PROMPTS = 1000;
export const SCENARIO_CONCURRENCY = 100;

export interface ScenarioLengths {
  prefixLen: number;
  suffixLen: number;
  /** mixed-prompt: the short prompts' length. */
  shortLen: number;
  outputLen: number;
  /** mixed-prompt: the number of shared prefixes. */
  groups: number;
}

export function isScenario(s: string): s is ScenarioName {
  return (SCENARIOS as readonly string[]).includes(s);
}

/** The workload of a named scenario for `n` requests. */
export function scenarioWorkload(name: ScenarioName, n: number, l: ScenarioLengths): WorkloadSpec {
  const { prefixLen, suffixLen, outputLen } = l;
  if (name === "mixed-prompt")
    return {
      kind: "mixed-prompt",
      groups: l.groups,
      prefixLen,
      suffixLen,
      shortLen: l.shortLen,
      longFraction: 0.5,
      outputLen,
    };
  return {
    kind: "shared-prefix",
    groups: 1,
    promptsPerGroup: n,
    prefixLen,
    suffixLen,
    outputLen,
    scenario: name === "cache-hit" ? "hit" : "miss",
  };
}
