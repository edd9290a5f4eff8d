import { Rng } from "../sampling/rng.js";
import { mapLimit, type PromptBuilder } from "./prompts.js";

/**
 * The prompt sets of each workload, deterministic for a seed:
 *
 * - random: independent prompts; input and output lengths drawn uniformly in
 *   [⌊L·(1−r)⌋, ⌈L·(1+r)⌉] (vLLM's `--random-range-ratio`).
 * - shared-prefix: `groups` × `promptsPerGroup` prompts; the prompts of a group
 *   share a prefix of `prefixLen` tokens and each has its own suffix of
 *   `suffixLen` tokens. Scenarios:
 *     miss  — every prompt gets a prefix of its own: the prefix cache cannot help;
 *     hit   — every group's prefix is sent once before the run (priming), so
 *             every measured request can be served from the cache;
 *     mixed — half of the groups are primed (class "hit"), the other half's
 *             prompts get prefixes of their own (class "miss").
 * - mixed-prompt: short and long prompts with partial sharing: a `longFraction` of the requests
 *   are long (one of `groups` shared prefixes of `prefixLen` tokens, then a suffix of their own,
 *   about `suffixLen` tokens; class "long"), the rest short prompts of their own of about
 *   `shortLen` tokens (class "short"). Nothing is primed: the first long prompts of a group fill
 *   the prefix cache that later ones of the group hit; short ones share nothing.
 * - copy: output that copies the input (what an edit, a summary quoting its source or an extraction
 *   writes, where speculative decoding's prompt lookup pays): a passage of random words written
 *   `copies` times, one per line, so the natural continuation is the passage once more; lengths as
 *   for random (the passage is the input length over `copies`; promptTokens counts the passages, not
 *   the newlines). `random` is its counterpart whose output copies nothing.
 * - priority: a backlog of low-priority requests, all sent at the start, plus
 *   high-priority requests that arrive by the run's load shape. `priority` is
 *   sent with each (lower = more urgent, vLLM's convention).
 *
 * Every run draws its own prompts (the seed is mixed with the run's index), so
 * no run is served from cache entries an earlier run left behind, and two
 * targets compared on the same run get the very same prompts.
 */

export type CacheScenario = "miss" | "hit" | "mixed";

export type WorkloadSpec =
  | { kind: "random"; inputLen: number; outputLen: number; rangeRatio: number }
  | { kind: "copy"; inputLen: number; outputLen: number; rangeRatio: number; copies: number }
  | {
      kind: "shared-prefix";
      groups: number;
      promptsPerGroup: number;
      prefixLen: number;
      suffixLen: number;
      outputLen: number;
      scenario: CacheScenario;
    }
  | {
      kind: "mixed-prompt";
      groups: number;
      prefixLen: number;
      suffixLen: number;
      shortLen: number;
      /** Share of long prompts, in [0, 1]. */
      longFraction: number;
      outputLen: number;
    }
  | {
      kind: "priority";
      inputLen: number;
      outputLen: number;
      rangeRatio: number;
      /** Low-priority requests sent at the start. */
      backlog: number;
      highPriority: number;
      lowPriority: number;
    };

export interface BenchItem {
  prompt: string;
  promptTokens: number;
  maxTokens: number;
  klass?: string;
  priority?: number;
  /** Sent at this offset (ms) from the run's start whatever the load shape (priority backlog). */
  fixedAtMs?: number;
  /** Sent as the request's response_format (structured output, --structured). */
  responseFormat?: Record<string, unknown>;
}

/**
 * The JSON schema a --structured request asks for: an object with required keys in order (their
 * names and punctuation are forced: jump-forward), free strings, a number and an array of strings
 * (so a model that never closes them runs to max_tokens like an unconstrained request).
 */
export const STRUCTURED_SCHEMA = {
  type: "object",
  properties: {
    title: { type: "string" },
    year: { type: "integer", minimum: 1900, maximum: 2100 },
    genre: { enum: ["fantasy", "mystery", "science fiction", "romance"] },
    tags: { type: "array", items: { type: "string" } },
    summary: { type: "string" },
  },
  required: ["title", "year", "genre", "tags", "summary"],
  additionalProperties: false,
};

/**
 * --structured: a `fraction` of the run's items (spread evenly, so every batch of a round has its
 * share) ask for STRUCTURED_SCHEMA through OpenAI's response_format; their class is "structured",
 * the others' "unconstrained" (after the workload's own class, if it has one: "hit/structured").
 */
export function markStructured(items: BenchItem[], fraction: number): void {
  if (!(fraction > 0)) return;
  items.forEach((item, i) => {
    const structured = Math.floor((i + 1) * fraction) > Math.floor(i * fraction);
    const k = structured ? "structured" : "unconstrained";
    item.klass = item.klass ? `${item.klass}/${k}` : k;
    if (structured) {
      item.responseFormat = {
        type: "json_schema",
        json_schema: { name: "story", schema: STRUCTURED_SCHEMA, strict: true },
      };
    }
  });
}

export interface RunPlan {
  /** Sent (and awaited) before the run's clock starts; not measured (prefix priming). */
  prime: BenchItem[];
  items: BenchItem[];
}

/** Uniform integer in [lo, hi]. */
export function randInt(rng: Rng, lo: number, hi: number): number {
  return lo + Math.floor(rng.next() * (hi - lo + 1));
}

/** A length drawn like vLLM's random dataset: uniform in [⌊L(1−r)⌋, ⌈L(1+r)⌉], at least 1. */
export function drawLength(rng: Rng, len: number, rangeRatio: number): number {
  const lo = Math.max(1, Math.floor(len * (1 - rangeRatio)));
  const hi = Math.max(lo, Math.ceil(len * (1 + rangeRatio)));
  return randInt(rng, lo, hi);
}

/** In-place Fisher–Yates shuffle. */
export function shuffle<T>(rng: Rng, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

const CONCURRENT_TOKENIZE = 8;

/**
 * The prompts of one run. `runIndex` makes each run's prompts its own; `n` is the number of
 * shaped requests (priority: high-priority arrivals, the backlog comes on top).
 */
export async function planRun(
  spec: WorkloadSpec,
  builder: PromptBuilder,
  seed: number,
  runIndex: number,
  n: number,
): Promise<RunPlan> {
  const rng = new Rng(BigInt(seed) * 1_000_003n + BigInt(runIndex) * 7919n + 17n);
  const childSeed = () => (BigInt(rng.nextU32()) << 32n) | BigInt(rng.nextU32());
  const build = async (lens: Array<{ seed: bigint; tokens: number }>) =>
    mapLimit(lens, CONCURRENT_TOKENIZE, (x) => builder.build(x.seed, x.tokens));
  const buildSome = async (lens: Array<{ seed: bigint; tokens: number } | undefined>) =>
    mapLimit(lens, CONCURRENT_TOKENIZE, (x) =>
      x ? builder.build(x.seed, x.tokens) : Promise.resolve(undefined),
    );

  if (spec.kind === "random" || spec.kind === "priority" || spec.kind === "copy") {
    const count = spec.kind === "priority" ? spec.backlog + n : n;
    const copies = spec.kind === "copy" ? spec.copies : 1;
    const lens = Array.from({ length: count }, () => ({
      seed: childSeed(),
      tokens: Math.max(1, Math.round(drawLength(rng, spec.inputLen, spec.rangeRatio) / copies)),
      out: drawLength(rng, spec.outputLen, spec.rangeRatio),
    }));
    const prompts = await build(lens);
    const items: BenchItem[] = prompts.map((p, i) => ({
      prompt: copies > 1 ? `${Array(copies).fill(p.text).join("\n")}\n` : p.text,
      promptTokens: p.tokens * copies,
      maxTokens: lens[i]!.out,
    }));
    if (spec.kind === "priority") {
      for (let i = 0; i < items.length; i++) {
        const low = i < spec.backlog;
        items[i]!.klass = low ? "low" : "high";
        items[i]!.priority = low ? spec.lowPriority : spec.highPriority;
        if (low) items[i]!.fixedAtMs = 0;
      }
    }
    return { prime: [], items };
  }

  if (spec.kind === "mixed-prompt") {
    // Lengths vary by half either way, so short and long are each a spread, not one size.
    const draws = Array.from({ length: n }, () => {
      const long = rng.next() < spec.longFraction;
      return {
        long,
        group: long ? randInt(rng, 0, spec.groups - 1) : -1,
        seed: childSeed(),
        tokens: drawLength(rng, long ? spec.suffixLen : spec.shortLen, 0.5),
      };
    });
    const groupSeeds = Array.from({ length: spec.groups }, () => childSeed());
    const used = new Set(draws.filter((d) => d.long).map((d) => d.group));
    const prefixes = await buildSome(
      groupSeeds.map((s, g) => (used.has(g) ? { seed: s, tokens: spec.prefixLen } : undefined)),
    );
    const own = await build(draws);
    const items: BenchItem[] = draws.map((d, i) => {
      const p = own[i]!;
      const prefix = d.long ? prefixes[d.group]! : undefined;
      return {
        prompt: prefix ? `${prefix.text}\n${p.text}` : p.text,
        promptTokens: (prefix?.tokens ?? 0) + p.tokens,
        maxTokens: spec.outputLen,
        klass: d.long ? "long" : "short",
      };
    });
    return { prime: [], items };
  }

  // shared-prefix
  const total = Math.min(n, spec.groups * spec.promptsPerGroup);
  const groupOf = shuffle(
    rng,
    Array.from({ length: spec.groups * spec.promptsPerGroup }, (_, i) => i % spec.groups),
  ).slice(0, total);
  const primed = (g: number) =>
    spec.scenario === "hit" || (spec.scenario === "mixed" && g < Math.ceil(spec.groups / 2));
  const groupSeeds = Array.from({ length: spec.groups }, () => childSeed());
  const ownSeeds = groupOf.map(() => childSeed());
  const suffixSeeds = groupOf.map(() => childSeed());
  const primeSuffixSeeds = groupSeeds.map(() => childSeed());
  const prefixes = await buildSome(
    groupSeeds.map((s, g) => (primed(g) ? { seed: s, tokens: spec.prefixLen } : undefined)),
  );
  const own = await buildSome(
    groupOf.map((g, i) => (primed(g) ? undefined : { seed: ownSeeds[i]!, tokens: spec.prefixLen })),
  );
  const suffixes = await build(suffixSeeds.map((s) => ({ seed: s, tokens: spec.suffixLen })));
  const items: BenchItem[] = groupOf.map((g, i) => {
    const prefix = primed(g) ? prefixes[g]! : own[i]!;
    return {
      prompt: `${prefix.text}\n${suffixes[i]!.text}`,
      promptTokens: prefix.tokens + suffixes[i]!.tokens,
      maxTokens: spec.outputLen,
      klass: primed(g) ? "hit" : "miss",
    };
  });
  const primeGroups = [...new Set(groupOf)].filter(primed).sort((a, b) => a - b);
  const primeSuffixes = await build(primeGroups.map((g) => ({ seed: primeSuffixSeeds[g]!, tokens: 1 })));
  const prime = primeGroups.map((g, i) => ({
    prompt: `${prefixes[g]!.text}\n${primeSuffixes[i]!.text}`,
    promptTokens: prefixes[g]!.tokens + primeSuffixes[i]!.tokens,
    maxTokens: 1,
  }));
  return { prime, items };
}
