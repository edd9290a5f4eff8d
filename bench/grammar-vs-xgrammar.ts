import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  PERCENTILE_KEYS,
  type Percentiles,
  percentiles,
  tokenizeForBench,
} from "../src/bench/grammar-bench.js";
import { readGGUF } from "../src/gguf/reader.js";
import { compileGrammar, GrammarError, grammarVocab, maskWords } from "../src/grammar/index.js";
import { type Tokenizer, tokenizerFromGGUF } from "../src/tokenizer/index.js";

/**
 * Spindle's grammar engine against xgrammar (`@mlc-ai/web-xgrammar`, its WebAssembly build), side by
 * side on `spindle bench-grammar`'s measurement (issue 19 §4/§5, MaskBench's form):
 *
 *   npm run bench:grammar-vs-xgrammar -- --vocab …/ggml-vocab-gpt-2.gguf [--data bench/grammar-schemas]
 *     [--xgr-strict-mode true|false] [--json FILE]
 *
 * xgrammar is not a dependency: the pinned version below is installed once, outside the repository,
 * with `npm install --prefix ~/.cache/spindle/xgrammar/<version> --no-save` ($SPINDLE_XGRAMMAR_CACHE
 * for another root), and loaded from there. Its package is `"type": "module"` but its lib/index.js is
 * a UMD bundle that uses `require` and `__filename`, so it loads in Node only as CommonJS: the bundle
 * is copied to xgrammar.cjs beside it and loaded with createRequire.
 *
 * Both engines get the same vocabulary: the GGUF's token strings (tokenizer.ggml.tokens) go to
 * xgrammar's TokenizerInfo with vocab type "byte_level" (GPT-2 byte-level BPE; "byte_fallback" for a
 * SentencePiece vocabulary), control tokens as "" (xgrammar never allows a token that decodes to
 * nothing; Spindle never allows a control token) and the end-of-generation tokens as its stop
 * tokens. Before timing anything the script checks that the two decode every token to the same
 * bytes (see checkVocab), and stops if they do not.
 *
 * Per schema, interleaved (which engine goes first alternates from schema to schema), on one thread:
 * compile (time to first mask: compile + matcher + the first mask, as bench-grammar counts it), then
 * each test's compact JSON, tokenized once by Spindle's tokenizer, fed token by token through both
 * matchers in lockstep: each engine's mask is computed (timed) and the token checked against it, then
 * accepted. A valid test must be accepted to its end in a state that may end (Spindle: canEnd();
 * xgrammar: its stop token accepted, then isTerminated()); an invalid one must be rejected at some
 * token or not be complete at its end. While both are still going, the two masks are compared bit for
 * bit (untimed), so a disagreement shows where it starts even when both end up with the same verdict.
 *
 * xgrammar's JSON Schema compile is called in its strictest form that matches compact JSON:
 * `compileJSONSchema(schema, anyWhitespace = false, indent = -1 (one line), separators = [",", ":"],
 * strictMode = true)`; strictMode true also forbids properties and items the schema does not name
 * (unevaluatedProperties/Items false), which JSON Schema allows by default: `--xgr-strict-mode false`
 * gives the standard reading. The matcher is GrammarMatcher with default stop tokens and
 * terminateWithoutStopToken = false. web-xgrammar has no fillNextTokenBitmask (no bitmask buffer it
 * writes into): the mask is its getNextTokenBitmask(), an async method that builds a std::vector in
 * the WebAssembly memory and returns a copy as an Int32Array; that is what is timed (an await of a
 * resolved promise and a 6 KB copy are in it; the script measures their cost apart and prints it).
 * The compiler is made with its cache off (each schema is compiled once anyway).
 */

const XGRAMMAR_VERSION = "0.1.27";

interface XgrTokenizerInfo {
  getVocabSize(): number;
  getDecodedVocabHandle(): { size(): number; get(i: number): string; delete(): void };
  dispose(): void;
}
interface XgrCompiledGrammar {
  dispose(): void;
}
interface XgrCompiler {
  compileJSONSchema(
    schema: string,
    anyWhitespace?: boolean,
    indent?: number,
    separators?: [string, string],
    strictMode?: boolean,
    maxWhitespaceCnt?: number,
  ): Promise<XgrCompiledGrammar>;
  compileBuiltinJSONGrammar(): Promise<XgrCompiledGrammar>;
  dispose(): void;
}
interface XgrMatcher {
  acceptToken(id: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
  dispose(): void;
}
interface Xgrammar {
  TokenizerInfo: {
    createTokenizerInfo(
      encodedVocab: string[],
      vocabType?: string,
      prependSpaceInTokenization?: boolean,
      vocabSize?: number,
      stopTokenIds?: number[],
    ): Promise<XgrTokenizerInfo>;
  };
  GrammarCompiler: {
    createGrammarCompiler(info: XgrTokenizerInfo, cacheEnabled?: boolean): Promise<XgrCompiler>;
  };
  GrammarMatcher: { createGrammarMatcher(compiled: XgrCompiledGrammar): Promise<XgrMatcher> };
}

/** Installs the pinned @mlc-ai/web-xgrammar once into the cache and loads it (see the header). */
function loadXgrammar(): { xgr: Xgrammar; dir: string } {
  const root = process.env.SPINDLE_XGRAMMAR_CACHE ?? join(homedir(), ".cache", "spindle", "xgrammar");
  const dir = join(root, XGRAMMAR_VERSION);
  const lib = join(dir, "node_modules", "@mlc-ai", "web-xgrammar", "lib", "index.js");
  if (!existsSync(lib)) {
    mkdirSync(dir, { recursive: true });
    process.stderr.write(`installing @mlc-ai/web-xgrammar@${XGRAMMAR_VERSION} into ${dir}\n`);
    execFileSync(
      "npm",
      [
        "install",
        "--prefix",
        dir,
        "--no-save",
        "--no-package-lock",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        `@mlc-ai/web-xgrammar@${XGRAMMAR_VERSION}`,
      ],
      { stdio: ["ignore", "inherit", "inherit"] },
    );
  }
  const installed = JSON.parse(
    readFileSync(join(dir, "node_modules", "@mlc-ai", "web-xgrammar", "package.json"), "utf8"),
  ) as { version: string };
  if (installed.version !== XGRAMMAR_VERSION)
    throw new Error(`${dir} holds web-xgrammar ${installed.version}, not ${XGRAMMAR_VERSION}`);
  const cjs = join(dir, "xgrammar.cjs");
  if (!existsSync(cjs)) copyFileSync(lib, cjs);
  const xgr = createRequire(import.meta.url)(cjs) as Xgrammar;
  return { xgr, dir };
}

// GPT-2's bytes_to_unicode: the printable characters that stand for the 256 byte values.
function byteLevelTable(): Map<number, number> {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  const m = new Map<number, number>();
  for (let i = 0; i < bs.length; i++) m.set(cs[i]!, bs[i]!);
  return m;
}

interface VocabCheck {
  tokens: number;
  control: number;
  /** Non-control tokens whose GGUF string, mapped back through bytes_to_unicode, gives Spindle's bytes. */
  byteLevelSame: number;
  byteLevelDifferent: number;
  /** Tokens not written wholly in bytes_to_unicode's characters (Spindle's bytes checked against xgrammar only). */
  notByteLevel: number;
  /** Tokens whose bytes are valid UTF-8: xgrammar's decoded string compared exactly. */
  xgrSame: number;
  xgrDifferent: number;
  /** Tokens whose bytes are not valid UTF-8 (parts of a character): xgrammar's decoded vocabulary comes back
   * through embind's std::string → JS string (UTF-8) conversion, which cannot show them; not comparable there. */
  partialUtf8: number;
  examples: string[];
}

/**
 * The same bytes on both sides. (1) Spindle's tokenBytes(id) equals the GGUF string mapped back through
 * GPT-2's bytes_to_unicode (exact, for every token; what xgrammar's "byte_level" decoder does with the
 * same strings). (2) xgrammar's own decoded vocabulary (TokenizerInfo.getDecodedVocabHandle) equals
 * Spindle's bytes read as UTF-8 for every token whose bytes are valid UTF-8.
 */
function checkVocab(tok: Tokenizer, info: XgrTokenizerInfo): VocabCheck {
  const table = byteLevelTable();
  const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  const r: VocabCheck = {
    tokens: tok.vocabSize,
    control: 0,
    byteLevelSame: 0,
    byteLevelDifferent: 0,
    notByteLevel: 0,
    xgrSame: 0,
    xgrDifferent: 0,
    partialUtf8: 0,
    examples: [],
  };
  const decoded = info.getDecodedVocabHandle();
  try {
    if (decoded.size() !== tok.vocabSize)
      throw new Error(`xgrammar's vocabulary has ${decoded.size()} tokens, Spindle's ${tok.vocabSize}`);
    for (let id = 0; id < tok.vocabSize; id++) {
      const mine = tok.tokenBytes(id, false);
      const theirs = decoded.get(id);
      if (tok.isControl(id)) {
        r.control++;
        if (mine.length !== 0 || (theirs !== "" && !tok.isEog(id))) {
          r.xgrDifferent++;
          if (r.examples.length < 8) r.examples.push(`control ${id}: ${JSON.stringify(theirs)}`);
        }
        continue;
      }
      if (tok.kind === "bpe") {
        const text = tok.tokenText(id);
        const bytes: number[] = [];
        let pure = true;
        for (const ch of text) {
          const b = table.get(ch.codePointAt(0)!);
          if (b === undefined) pure = false;
          else bytes.push(b);
        }
        if (!pure) r.notByteLevel++;
        else if (bytes.length === mine.length && bytes.every((b, i) => b === mine[i])) r.byteLevelSame++;
        else {
          r.byteLevelDifferent++;
          if (r.examples.length < 8) r.examples.push(`byte-level ${id}: ${JSON.stringify(text)}`);
        }
      }
      let utf8: string;
      try {
        utf8 = strict.decode(mine);
      } catch {
        r.partialUtf8++;
        continue;
      }
      if (utf8 === theirs) r.xgrSame++;
      else {
        r.xgrDifferent++;
        if (r.examples.length < 8)
          r.examples.push(
            `xgrammar ${id}: Spindle ${JSON.stringify(utf8)}, xgrammar ${JSON.stringify(theirs)}`,
          );
      }
    }
  } finally {
    decoded.delete();
  }
  return r;
}

interface TestCase {
  description?: string;
  data: unknown;
  valid: boolean;
}

type Engine = "spindle" | "xgrammar";
const ENGINES: Engine[] = ["spindle", "xgrammar"];

interface EngineSchema {
  compileMs?: number;
  error?: string;
  /** An exception from the engine while matching (the test counts as rejected there). */
  runtimeError?: string;
  validationErrors: number;
  invalidationErrors: number;
}

interface Disagreement {
  file: string;
  test: number;
  valid: boolean;
  tokens: number;
  /** Token index where each engine rejected (-1: accepted to the end; "end": all tokens taken but not complete). */
  spindle: number | "end";
  xgrammar: number | "end";
  /** First step where the two masks differ, and a few tokens allowed by one only. */
  firstMaskDiff?: { step: number; partialOnly: boolean; onlySpindle: string[]; onlyXgrammar: string[] };
  text: string;
  /** The text before each rejected token, and [the token]. */
  rejected: string[];
}

interface EngineTotals {
  schemas: number;
  passing: number;
  compile_errors: number;
  validation_errors: number;
  invalidation_errors: number;
  masks: number;
  mask_us: Percentiles;
  /** Over the steps where both computed a mask (compared_steps). */
  common_mask_us: Percentiles;
  mask_total_ms: number;
  compile_ms: Percentiles;
  /** Over the schemas both compile. */
  common_compile_ms: Percentiles;
  compile_total_ms: number;
  slowest_mask: Slowest;
}

interface Slowest {
  us: number;
  file: string;
  test: number;
  step: number;
}

interface Report {
  xgrammar_version: string;
  xgrammar_options: Record<string, unknown>;
  vocab: string;
  vocab_check?: VocabCheck;
  /** Why xgrammar did not run at all (then only Spindle's column has figures). */
  xgrammar_unavailable?: string;
  tests: number;
  wrapper_overhead_us: number;
  spindle: EngineTotals;
  xgrammar: EngineTotals;
  schemas: {
    file: string;
    spindle: EngineSchema;
    xgrammar: EngineSchema;
    maskDiffSteps: number;
    /** Steps where the masks differ in tokens that are whole UTF-8 (not only in parts of characters). */
    wholeDiffSteps: number;
  }[];
  disagreements: Disagreement[];
  mask_diff_steps: number;
  /** Steps where the masks differ only in tokens that are parts of a UTF-8 character. */
  partial_only_diff_steps: number;
  compared_steps: number;
}

const bit = (m: Uint32Array | Int32Array, id: number) => ((m[id >>> 5]! >>> (id & 31)) & 1) === 1;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      data: { type: "string", default: "bench/grammar-schemas" },
      vocab: { type: "string" },
      "xgr-strict-mode": { type: "string", default: "true" },
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help || !values.vocab) {
    process.stdout.write(
      "usage: tsx bench/grammar-vs-xgrammar.ts --vocab FILE.gguf [--data DIR] [--xgr-strict-mode true|false] [--json FILE]\n",
    );
    process.exitCode = values.help ? 0 : 2;
    return;
  }
  const strictMode = values["xgr-strict-mode"] !== "false";
  const xgrOptions = {
    anyWhitespace: false,
    indent: -1,
    separators: [",", ":"] as [string, string],
    strictMode,
    maxWhitespaceCnt: undefined,
  };

  const tok = tokenizerFromGGUF(readGGUF(values.vocab));
  const vocab = grammarVocab(tok);
  const words = maskWords(vocab.vocabSize);

  const stops: number[] = [];
  for (let id = 0; id < tok.vocabSize; id++) if (tok.isEog(id)) stops.push(id);
  // xgrammar, or why it does not run here: then Spindle is measured alone and the report says why.
  let xgr: Xgrammar;
  let info: XgrTokenizerInfo | undefined;
  let compiler: XgrCompiler | undefined;
  let vocabCheck: VocabCheck | undefined;
  let unavailable: string | undefined;
  try {
    const loaded = loadXgrammar();
    xgr = loaded.xgr;
    process.stderr.write(`web-xgrammar ${XGRAMMAR_VERSION} from ${loaded.dir}\n`);
    const encoded: string[] = [];
    for (let id = 0; id < tok.vocabSize; id++)
      encoded.push(tok.isControl(id) && !tok.isEog(id) ? "" : tok.tokenText(id));
    info = await xgr.TokenizerInfo.createTokenizerInfo(
      encoded,
      tok.kind === "bpe" ? "byte_level" : "byte_fallback",
      tok.kind === "spm",
      tok.vocabSize,
      stops,
    );
    vocabCheck = checkVocab(tok, info);
    if (vocabCheck.byteLevelDifferent > 0 || vocabCheck.xgrDifferent > 0)
      throw new Error(`the two engines decode the vocabulary differently: ${vocabCheck.examples.join("; ")}`);
    compiler = await xgr.GrammarCompiler.createGrammarCompiler(info, false);
  } catch (err) {
    unavailable = err instanceof Error ? err.message : String(err);
    process.stderr.write(`xgrammar does not run here, measuring Spindle alone: ${unavailable}\n`);
  }

  // Warm both before timing: Spindle builds its per-vocabulary index; xgrammar's code gets compiled
  // by V8 and its per-vocabulary tables built, with the built-in JSON grammar.
  const mask = new Uint32Array(words);
  const lastWordBits = vocab.vocabSize % 32 === 0 ? -1 : (1 << (vocab.vocabSize % 32)) - 1;
  compileGrammar({ type: "json_object" }, vocab).matcher().fillMask(mask);
  if (compiler) {
    const g = await compiler.compileBuiltinJSONGrammar();
    const m = await xgr!.GrammarMatcher.createGrammarMatcher(g);
    for (const id of tokenizeForBench(tok, '{"a":[1,2.5,"x"],"b":null}')) {
      await m.getNextTokenBitmask();
      m.acceptToken(id);
    }
    m.dispose();
    g.dispose();
  }
  // What the async wrapper and the copy of a mask cost by themselves (min of many).
  let wrapperUs = Number.POSITIVE_INFINITY;
  {
    const src = new Int32Array(words);
    const f = async () => src.slice();
    for (let i = 0; i < 2000; i++) {
      const a = performance.now();
      await f();
      wrapperUs = Math.min(wrapperUs, (performance.now() - a) * 1000);
    }
  }

  const files = readdirSync(values.data)
    .filter((f) => f.endsWith(".json"))
    .sort();
  const maskUs: Record<Engine, number[]> = { spindle: [], xgrammar: [] };
  // The masks both engines computed at the same step of the same test (the same text before them).
  const commonUs: Record<Engine, number[]> = { spindle: [], xgrammar: [] };
  const slowest: Record<Engine, Slowest> = {
    spindle: { us: 0, file: "", test: 0, step: 0 },
    xgrammar: { us: 0, file: "", test: 0, step: 0 },
  };
  const compileMs: Record<Engine, number[]> = { spindle: [], xgrammar: [] };
  const schemas: Report["schemas"] = [];
  const disagreements: Disagreement[] = [];
  let tests = 0;
  let comparedSteps = 0;
  let maskDiffSteps = 0;
  let partialOnlySteps = 0;
  // Tokens whose bytes are not valid UTF-8 by themselves (parts of a character): shown in hex.
  const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  const partial = new Uint8Array(tok.vocabSize);
  for (let id = 0; id < tok.vocabSize; id++)
    try {
      utf8.decode(tok.tokenBytes(id, true));
    } catch {
      partial[id] = 1;
    }
  const show = (ids: number[]) =>
    ids
      .slice(0, 4)
      .map((id) =>
        partial[id] || [...tok.decode([id])].some((c) => c <= "\u001f" || (c >= "\u007f" && c <= "\u009f"))
          ? `<${Buffer.from(tok.tokenBytes(id, true)).toString("hex")}>`
          : JSON.stringify(tok.decode([id])),
      )
      .concat(ids.length > 4 ? [`(${ids.length} in all)`] : []);

  for (const [si, file] of files.entries()) {
    const doc = JSON.parse(readFileSync(join(values.data, file), "utf8")) as {
      schema: unknown;
      tests?: TestCase[];
    };
    const order: Engine[] = si % 2 === 0 ? ENGINES : [...ENGINES].reverse();
    const res: Record<Engine, EngineSchema> = {
      spindle: { validationErrors: 0, invalidationErrors: 0 },
      xgrammar: { validationErrors: 0, invalidationErrors: 0 },
    };
    const row = { file, spindle: res.spindle, xgrammar: res.xgrammar, maskDiffSteps: 0, wholeDiffSteps: 0 };
    schemas.push(row);

    let spindle: ReturnType<typeof compileGrammar> | undefined;
    let xg: XgrCompiledGrammar | undefined;
    const schemaText = JSON.stringify(doc.schema);
    for (const engine of order) {
      const t0 = performance.now();
      try {
        if (engine === "spindle") {
          spindle = compileGrammar({ type: "json_schema", schema: doc.schema }, vocab);
          spindle.matcher().fillMask(mask);
        } else {
          if (!compiler) throw new Error(`not run: ${unavailable}`);
          xg = await compiler.compileJSONSchema(
            schemaText,
            xgrOptions.anyWhitespace,
            xgrOptions.indent,
            xgrOptions.separators,
            xgrOptions.strictMode,
          );
          const m = await xgr!.GrammarMatcher.createGrammarMatcher(xg);
          await m.getNextTokenBitmask();
          m.dispose();
        }
      } catch (err) {
        if (engine === "spindle" && !(err instanceof GrammarError)) throw err;
        res[engine].error = `compile: ${err instanceof Error ? err.message : String(err)}`.slice(0, 200);
        continue;
      }
      res[engine].compileMs = performance.now() - t0;
      compileMs[engine].push(res[engine].compileMs!);
    }

    for (const [ti, t] of (doc.tests ?? []).entries()) {
      tests++;
      const ids = tokenizeForBench(tok, JSON.stringify(t.data));
      const sm = spindle?.matcher();
      const xm = xg ? await xgr!.GrammarMatcher.createGrammarMatcher(xg) : undefined;
      // -2: still going; -1: took every token; k: rejected token k.
      const at: Record<Engine, number> = { spindle: sm ? -2 : 0, xgrammar: xm ? -2 : 0 };
      let firstDiff: Disagreement["firstMaskDiff"];
      for (let k = 0; k < ids.length && (at.spindle === -2 || at.xgrammar === -2); k++) {
        const id = ids[k]!;
        let xmask: Int32Array | undefined;
        const stepUs: Record<Engine, number> = { spindle: 0, xgrammar: 0 };
        for (const engine of order) {
          if (at[engine] !== -2) continue;
          const note = () => {
            if (stepUs[engine] > slowest[engine].us)
              slowest[engine] = { us: stepUs[engine], file, test: ti, step: k };
          };
          if (engine === "spindle") {
            const a = performance.now();
            sm!.fillMask(mask);
            stepUs.spindle = (performance.now() - a) * 1000;
            maskUs.spindle.push(stepUs.spindle);
            note();
          } else {
            const a = performance.now();
            try {
              xmask = await xm!.getNextTokenBitmask();
            } catch (err) {
              // A failure inside xgrammar: its verdict for this test is a rejection, and the schema fails.
              res.xgrammar.runtimeError ??= `test ${ti} token ${k}: ${err instanceof Error ? err.message : String(err)}`;
              at.xgrammar = k;
              continue;
            }
            stepUs.xgrammar = (performance.now() - a) * 1000;
            maskUs.xgrammar.push(stepUs.xgrammar);
            note();
          }
        }
        if (at.spindle === -2 && at.xgrammar === -2 && xmask) {
          comparedSteps++;
          for (const e of ENGINES) commonUs[e].push(stepUs[e]);
          const onlyS: number[] = [];
          const onlyX: number[] = [];
          for (let w = 0; w < words; w++) {
            // xgrammar sets the padding bits past the vocabulary in its last word: not compared.
            const d = (mask[w]! ^ xmask[w]!) & (w === words - 1 ? lastWordBits : -1);
            if (d === 0) continue;
            for (let b = 0; b < 32; b++)
              if ((d >>> b) & 1) (bit(mask, w * 32 + b) ? onlyS : onlyX).push(w * 32 + b);
          }
          if (onlyS.length + onlyX.length > 0) {
            maskDiffSteps++;
            row.maskDiffSteps++;
            const whole = (ids: number[]) => ids.filter((t) => !partial[t]);
            const partialOnly = whole(onlyS).length + whole(onlyX).length === 0;
            if (partialOnly) partialOnlySteps++;
            else row.wholeDiffSteps++;
            // The first step that differs in whole tokens, else the first that differs at all.
            if (!firstDiff || (firstDiff.partialOnly && !partialOnly))
              firstDiff = { step: k, partialOnly, onlySpindle: show(onlyS), onlyXgrammar: show(onlyX) };
          }
        }
        if (at.spindle === -2 && !(bit(mask, id) && sm!.accept(id))) at.spindle = k;
        if (at.xgrammar === -2 && !(bit(xmask!, id) && xm!.acceptToken(id))) at.xgrammar = k;
      }
      const verdict: Record<Engine, number | "end"> = { spindle: at.spindle, xgrammar: at.xgrammar };
      if (sm && at.spindle === -2) verdict.spindle = sm.canEnd() ? -1 : "end";
      if (xm && at.xgrammar === -2) {
        const stop = stops[0];
        verdict.xgrammar = stop !== undefined && xm.acceptToken(stop) && xm.isTerminated() ? -1 : "end";
      }
      xm?.dispose();
      for (const engine of ENGINES) {
        if (engine === "spindle" ? !sm : !xm) continue;
        const accepted = verdict[engine] === -1;
        if (t.valid && !accepted) res[engine].validationErrors++;
        else if (!t.valid && accepted) res[engine].invalidationErrors++;
      }
      if (sm && xm && (verdict.spindle === -1) !== (verdict.xgrammar === -1))
        disagreements.push({
          file,
          test: ti,
          valid: t.valid,
          tokens: ids.length,
          spindle: verdict.spindle,
          xgrammar: verdict.xgrammar,
          firstMaskDiff: firstDiff,
          text: JSON.stringify(t.data).slice(0, 100),
          rejected: [verdict.spindle, verdict.xgrammar]
            .filter((v): v is number => typeof v === "number" && v >= 0)
            .map(
              (k) => `…${tok.decode(ids.slice(Math.max(0, k - 6), k)).slice(-24)}[${tok.decode([ids[k]!])}]`,
            ),
        });
    }
    xg?.dispose();
    process.stderr.write(".");
  }
  process.stderr.write("\n");

  const totals = (engine: Engine): EngineTotals => {
    const rs = schemas.map((s) => s[engine]);
    return {
      schemas: rs.length,
      passing: rs.filter(
        (r) =>
          r.compileMs !== undefined && !r.runtimeError && r.validationErrors + r.invalidationErrors === 0,
      ).length,
      compile_errors: rs.filter((r) => r.compileMs === undefined).length,
      validation_errors: rs.reduce((a, r) => a + r.validationErrors, 0),
      invalidation_errors: rs.reduce((a, r) => a + r.invalidationErrors, 0),
      masks: maskUs[engine].length,
      mask_us: percentiles(maskUs[engine]),
      common_mask_us: percentiles(commonUs[engine]),
      mask_total_ms: maskUs[engine].reduce((a, b) => a + b, 0) / 1000,
      compile_ms: percentiles(compileMs[engine]),
      common_compile_ms: percentiles(
        schemas
          .filter((r) => r.spindle.compileMs !== undefined && r.xgrammar.compileMs !== undefined)
          .map((r) => r[engine].compileMs!),
      ),
      compile_total_ms: compileMs[engine].reduce((a, b) => a + b, 0),
      slowest_mask: slowest[engine],
    };
  };
  const report: Report = {
    xgrammar_version: XGRAMMAR_VERSION,
    xgrammar_options: xgrOptions,
    vocab: values.vocab,
    vocab_check: vocabCheck,
    xgrammar_unavailable: unavailable,
    tests,
    wrapper_overhead_us: wrapperUs,
    spindle: totals("spindle"),
    xgrammar: totals("xgrammar"),
    schemas,
    disagreements,
    mask_diff_steps: maskDiffSteps,
    partial_only_diff_steps: partialOnlySteps,
    compared_steps: comparedSteps,
  };
  compiler?.dispose();
  info?.dispose();
  if (values.json) writeFileSync(values.json, `${JSON.stringify(report, null, 1)}\n`);
  process.stdout.write(`${format(report)}\n`);
}

function format(r: Report): string {
  const s = r.spindle;
  const x = r.xgrammar;
  const v = r.vocab_check;
  const cell = (a: string | number, b: string | number) =>
    `${String(a).padStart(14)}${String(b).padStart(14)}`;
  type Which = "mask_us" | "common_mask_us" | "compile_ms" | "common_compile_ms";
  const pct = (name: string, k: keyof Percentiles, which: Which) => {
    const p = (t: EngineTotals) => t[which][k];
    const d = which.endsWith("us") ? 1 : 2;
    return `${name.padEnd(22)}${cell(p(s).toFixed(d), p(x).toFixed(d))}`;
  };
  const lines = [
    `web-xgrammar ${r.xgrammar_version}: compileJSONSchema(schema, anyWhitespace=${r.xgrammar_options.anyWhitespace}, indent=${r.xgrammar_options.indent}, separators=${JSON.stringify(r.xgrammar_options.separators)}, strictMode=${r.xgrammar_options.strictMode})`,
    ...(r.xgrammar_unavailable ? [`XGRAMMAR DID NOT RUN (Spindle alone): ${r.xgrammar_unavailable}`] : []),
    v
      ? `vocabulary ${r.vocab}: ${v.tokens} tokens, ${v.control} control; byte-level strings → Spindle's bytes ${v.byteLevelSame} same, ${v.byteLevelDifferent} different, ${v.notByteLevel} not byte-level; xgrammar's decoded vocabulary ${v.xgrSame} same, ${v.xgrDifferent} different, ${v.partialUtf8} partial UTF-8 (not comparable through embind)`
      : `vocabulary ${r.vocab}`,
    `${r.spindle.schemas} schemas, ${r.tests} tests; masks compared at ${r.compared_steps} steps, differing at ${r.mask_diff_steps} (${r.partial_only_diff_steps} of them only in tokens that are parts of a UTF-8 character, shown in hex)`,
    "",
    `${"".padEnd(22)}${cell("spindle", "xgrammar")}`,
    `${"passing".padEnd(22)}${cell(`${s.passing}/${s.schemas}`, `${x.passing}/${x.schemas}`)}`,
    `${"compile errors".padEnd(22)}${cell(s.compile_errors, x.compile_errors)}`,
    `${"validation errors".padEnd(22)}${cell(s.validation_errors, x.validation_errors)}`,
    `${"invalidation errors".padEnd(22)}${cell(s.invalidation_errors, x.invalidation_errors)}`,
    `${"masks".padEnd(22)}${cell(s.masks, x.masks)}`,
    ...PERCENTILE_KEYS.map((p) => pct(`mask µs ${p}`, p, "mask_us")),
    ...PERCENTILE_KEYS.map((p) => pct(`compile ms ${p}`, p, "compile_ms")),
    `${"sum of masks, ms".padEnd(22)}${cell(s.mask_total_ms.toFixed(1), x.mask_total_ms.toFixed(1))}`,
    `${"sum of compiles, ms".padEnd(22)}${cell(s.compile_total_ms.toFixed(1), x.compile_total_ms.toFixed(1))}`,
    `on the same ground: the ${r.compared_steps} steps where both computed a mask, the ${r.schemas.filter((c) => c.spindle.compileMs !== undefined && c.xgrammar.compileMs !== undefined).length} schemas both compile`,
    ...(["p50", "p99", "max"] as const).map((p) => pct(`  mask µs ${p}`, p, "common_mask_us")),
    ...(["p50", "p90", "max"] as const).map((p) => pct(`  compile ms ${p}`, p, "common_compile_ms")),
    `slowest mask: spindle ${s.slowest_mask.file} test ${s.slowest_mask.test} token ${s.slowest_mask.step}; xgrammar ${x.slowest_mask.file} test ${x.slowest_mask.test} token ${x.slowest_mask.step}`,
    `(web-xgrammar has no fillNextTokenBitmask: its masks are getNextTokenBitmask(), async, returning a copy out of WebAssembly memory; that wrapper and copy cost ${r.wrapper_overhead_us.toFixed(2)} µs by themselves)`,
    "",
    "per schema (S = spindle, X = xgrammar: compile ms, validation/invalidation errors; mask steps that differ: in whole tokens / in all):",
  ];
  const eng = (e: EngineSchema) =>
    e.compileMs === undefined
      ? `compile error`.padEnd(22)
      : `${e.compileMs.toFixed(1).padStart(8)} ms ${e.validationErrors}/${e.invalidationErrors}`.padEnd(22);
  for (const sc of r.schemas) {
    lines.push(
      `  ${sc.file.padEnd(36)} S ${eng(sc.spindle)} X ${eng(sc.xgrammar)} ${sc.maskDiffSteps ? `${sc.wholeDiffSteps}/${sc.maskDiffSteps}` : ""}`,
    );
    for (const e of ENGINES) {
      if (sc[e].error) lines.push(`      ${e}: ${sc[e].error}`);
      if (sc[e].runtimeError) lines.push(`      ${e}: failed while matching: ${sc[e].runtimeError}`);
    }
  }
  lines.push(
    "",
    `disagreements (a test one engine accepts and the other rejects): ${r.disagreements.length}`,
  );
  const where = (a: number | "end", n: number) =>
    a === -1 ? "accepts" : a === "end" ? `incomplete at end (${n} tokens)` : `rejects token ${a}/${n}`;
  for (const d of r.disagreements) {
    lines.push(
      `  ${d.file} test ${d.test} (${d.valid ? "valid" : "invalid"}) ${d.text}`,
      `      spindle ${where(d.spindle, d.tokens)}; xgrammar ${where(d.xgrammar, d.tokens)}: ${d.rejected.map((x) => JSON.stringify(x)).join(", ")}`,
    );
    if (d.firstMaskDiff)
      lines.push(
        `      masks first differ${d.firstMaskDiff.partialOnly ? "" : " in whole tokens"} at token ${d.firstMaskDiff.step}: only spindle allows ${d.firstMaskDiff.onlySpindle.join(" ") || "-"}; only xgrammar allows ${d.firstMaskDiff.onlyXgrammar.join(" ") || "-"}`,
      );
  }
  return lines.join("\n");
}

await main();
