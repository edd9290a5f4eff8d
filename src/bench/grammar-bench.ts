import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  compileGrammar,
  GrammarError,
  type GrammarVocab,
  grammarVocab,
  maskWords,
} from "../grammar/index.js";
import type { Tokenizer } from "../tokenizer/index.js";

/**
 * `spindle bench-grammar`: MaskBench's measurement on a folder of JSON Schema test files
 * (`{"description", "meta", "schema", "tests": [{"description", "data", "valid"}]}`). Each schema
 * is compiled (time to first mask: compile plus the first mask); each test's `data` is written as
 * compact JSON, tokenized, and fed token by token through a matcher, each token checked against the
 * mask computed before it (time per mask). A valid instance must be accepted to its end, where the
 * grammar may end; an invalid one must be rejected at some token (or not be complete at its end).
 */

export interface Percentiles {
  p50: number;
  p75: number;
  p90: number;
  p99: number;
  max: number;
}

/** Percentiles' keys, in the order the tables print them. */
export const PERCENTILE_KEYS = ["p50", "p75", "p90", "p99", "max"] as const;

export interface SchemaResult {
  file: string;
  passing: boolean;
  compileMs?: number;
  /** Why it failed: the compile error, or the first wrong test. */
  error?: string;
  validationErrors: number;
  invalidationErrors: number;
  timeout: boolean;
}

export interface GrammarBenchReport {
  schemas: number;
  passing: number;
  compile_errors: number;
  validation_errors: number;
  invalidation_errors: number;
  timeouts: number;
  /** Tests in all, and masks computed. */
  tests: number;
  masks: number;
  mask_us: Percentiles;
  compile_ms: Percentiles;
  results: SchemaResult[];
}

export interface GrammarBenchOptions {
  /** Budget per test (ms) before it counts as a timeout; default 10 s. */
  testTimeoutMs?: number;
}

interface TestCase {
  description?: string;
  data: unknown;
  valid: boolean;
}

export function percentiles(xs: number[]): Percentiles {
  if (xs.length === 0) return { p50: 0, p75: 0, p90: 0, p99: 0, max: 0 };
  const s = Float64Array.from(xs).sort();
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { p50: at(0.5), p75: at(0.75), p90: at(0.9), p99: at(0.99), max: s[s.length - 1]! };
}

/** Token ids of `text` as the vocabulary's tokenizer writes it (SentencePiece: without its leading space). */
export function tokenizeForBench(tok: Tokenizer, text: string): number[] {
  if (tok.kind === "bpe") return tok.encode(text, { addSpecial: false, parseSpecial: false });
  // SentencePiece would add a leading space: take the longest matching token at each byte instead.
  const bytes = new TextEncoder().encode(text);
  const byText = new Map<string, number>();
  for (let id = 0; id < tok.vocabSize; id++) {
    if (tok.isControl(id)) continue;
    const b = tok.tokenBytes(id);
    if (b.length > 0 && !byText.has(Buffer.from(b).toString("latin1")))
      byText.set(Buffer.from(b).toString("latin1"), id);
  }
  const s = Buffer.from(bytes).toString("latin1");
  const out: number[] = [];
  for (let i = 0; i < s.length; ) {
    let len = Math.min(32, s.length - i);
    while (len > 0 && !byText.has(s.slice(i, i + len))) len--;
    if (len === 0) throw new Error(`no token for byte ${s.charCodeAt(i)}`);
    out.push(byText.get(s.slice(i, i + len))!);
    i += len;
  }
  return out;
}

export function runGrammarBench(
  dir: string,
  tok: Tokenizer,
  opts: GrammarBenchOptions = {},
): GrammarBenchReport {
  const vocab: GrammarVocab = grammarVocab(tok);
  const testTimeout = opts.testTimeoutMs ?? 10_000;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort();
  const maskUs: number[] = [];
  const compileMs: number[] = [];
  const results: SchemaResult[] = [];
  const mask = new Uint32Array(maskWords(vocab.vocabSize));
  // Build the vocabulary's index before timing anything (it is per vocabulary, not per schema).
  compileGrammar({ type: "json_object" }, vocab).matcher().fillMask(mask);
  let tests = 0;
  for (const file of files) {
    const doc = JSON.parse(readFileSync(join(dir, file), "utf8")) as { schema: unknown; tests?: TestCase[] };
    const r: SchemaResult = {
      file,
      passing: false,
      validationErrors: 0,
      invalidationErrors: 0,
      timeout: false,
    };
    results.push(r);
    let compiled: ReturnType<typeof compileGrammar>;
    const t0 = performance.now();
    try {
      compiled = compileGrammar({ type: "json_schema", schema: doc.schema }, vocab);
      compiled.matcher().fillMask(mask);
    } catch (err) {
      if (!(err instanceof GrammarError)) throw err;
      r.error = `compile: ${err.message}`;
      r.timeout = /longer than .* ms/.test(err.reason);
      continue;
    }
    r.compileMs = performance.now() - t0;
    compileMs.push(r.compileMs);
    for (const [i, t] of (doc.tests ?? []).entries()) {
      tests++;
      const ids = tokenizeForBench(tok, JSON.stringify(t.data));
      const m = compiled.matcher();
      const start = performance.now();
      let rejectedAt = -1;
      for (let k = 0; k < ids.length; k++) {
        const id = ids[k]!;
        const a = performance.now();
        m.fillMask(mask);
        maskUs.push((performance.now() - a) * 1000);
        const allowed = ((mask[id >>> 5]! >>> (id & 31)) & 1) === 1;
        if (!allowed || !m.accept(id)) {
          rejectedAt = k;
          break;
        }
        if (performance.now() - start > testTimeout) {
          r.timeout = true;
          break;
        }
      }
      const accepted = rejectedAt < 0 && m.canEnd();
      if (t.valid && !accepted) {
        r.validationErrors++;
        r.error ??= `test ${i} (valid) rejected${rejectedAt >= 0 ? ` at token ${rejectedAt} ${JSON.stringify(tok.decode(ids.slice(0, rejectedAt + 1)).slice(-40))}` : " at its end (incomplete)"}`;
      } else if (!t.valid && accepted) {
        r.invalidationErrors++;
        r.error ??= `test ${i} (invalid) accepted: ${JSON.stringify(t.data).slice(0, 80)}`;
      }
    }
    r.passing = r.validationErrors === 0 && r.invalidationErrors === 0 && !r.timeout;
  }
  return {
    schemas: results.length,
    passing: results.filter((r) => r.passing).length,
    compile_errors: results.filter((r) => r.compileMs === undefined && !r.timeout).length,
    validation_errors: results.reduce((a, r) => a + r.validationErrors, 0),
    invalidation_errors: results.reduce((a, r) => a + r.invalidationErrors, 0),
    timeouts: results.filter((r) => r.timeout).length,
    tests,
    masks: maskUs.length,
    mask_us: percentiles(maskUs),
    compile_ms: percentiles(compileMs),
    results,
  };
}

/** The report as a text table (and the failing schemas with their first reason). */
export function formatGrammarBench(r: GrammarBenchReport): string {
  const pct = (x: number) => `${((100 * x) / Math.max(1, r.schemas)).toFixed(1)}%`;
  const row = (name: string, p: Percentiles, d: number) =>
    `${name.padEnd(12)}${PERCENTILE_KEYS.map((k) => p[k].toFixed(d).padStart(10)).join("")}`;
  const lines = [
    `schemas ${r.schemas}  tests ${r.tests}  masks ${r.masks}`,
    `passing              ${String(r.passing).padStart(6)}  ${pct(r.passing)}`,
    `compile errors       ${String(r.compile_errors).padStart(6)}  ${pct(r.compile_errors)}`,
    `validation errors    ${String(r.validation_errors).padStart(6)}  (valid instances rejected)`,
    `invalidation errors  ${String(r.invalidation_errors).padStart(6)}  (invalid instances accepted)`,
    `timeouts             ${String(r.timeouts).padStart(6)}`,
    "",
    `${"".padEnd(12)}${PERCENTILE_KEYS.map((x) => x.padStart(10)).join("")}`,
    row("mask µs", r.mask_us, 1),
    row("compile ms", r.compile_ms, 2),
  ];
  const failing = r.results.filter((x) => !x.passing);
  if (failing.length > 0) {
    lines.push("", "not passing:");
    for (const f of failing) lines.push(`  ${f.file}: ${f.error ?? "?"}`);
  }
  return lines.join("\n");
}
