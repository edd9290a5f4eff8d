import { describe, expect, it } from "vitest";
import { tokenizeForBench } from "../../src/bench/grammar-bench.js";
import { compileGrammar, GrammarError, maskWords } from "../../src/grammar/index.js";
import { VOCAB_GPT2, VOCAB_SPM } from "../helpers/models.js";
import { ajvValidator, allowedTokens, bit, loadVocab, randomWalk, rng, schemaFiles } from "./helpers.js";

const UNSUPPORTED: Record<string, string> = {
  "unsupported-multipleof.json": "schema.properties.qty.multipleOf",
  "unsupported-pattern-properties.json": "schema.patternProperties",
  "unsupported-unique.json": "schema.uniqueItems",
};

describe.each([VOCAB_GPT2, VOCAB_SPM])("JSON Schema on %s", (vocabName) => {
  const { tok, vocab } = loadVocab(vocabName);
  const mask = new Uint32Array(maskWords(vocab.vocabSize));

  it("accepts every valid instance to its end and rejects every invalid one (ajv is the oracle)", () => {
    let checked = 0;
    for (const f of schemaFiles()) {
      if (UNSUPPORTED[f.file]) {
        expect(() => compileGrammar({ type: "json_schema", schema: f.schema }, vocab), f.file).toThrow(
          GrammarError,
        );
        continue;
      }
      const validate = ajvValidator(f.schema);
      const g = compileGrammar({ type: "json_schema", schema: f.schema }, vocab);
      for (const t of f.tests) {
        expect(validate(t.data), `${f.file} ${t.description}: label`).toBe(t.valid);
        const m = g.matcher();
        let ok = true;
        for (const id of tokenizeForBench(tok, JSON.stringify(t.data))) {
          m.fillMask(mask);
          const allowed = bit(mask, id);
          const accepted = m.accept(id);
          expect(accepted, `${f.file} ${t.description}: mask and accept agree`).toBe(allowed);
          if (!accepted) {
            ok = false;
            break;
          }
        }
        expect(ok && m.canEnd(), `${f.file} ${t.description}`).toBe(t.valid);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(150);
  }, 300_000);

  it("names the unsupported keyword in the error's field", () => {
    for (const f of schemaFiles()) {
      const field = UNSUPPORTED[f.file];
      if (!field) continue;
      try {
        compileGrammar({ type: "json_schema", schema: f.schema }, vocab);
        expect.unreachable();
      } catch (err) {
        expect(err).toBeInstanceOf(GrammarError);
        expect((err as GrammarError).field).toBe(field);
      }
    }
  });

  it("random walks through the masks produce only instances ajv accepts", () => {
    const r = rng(vocabName.length);
    let finished = 0;
    for (const f of schemaFiles()) {
      if (UNSUPPORTED[f.file]) continue;
      const validate = ajvValidator(f.schema);
      const g = compileGrammar({ type: "json_schema", schema: f.schema }, vocab);
      for (let run = 0; run < 2; run++) {
        const m = g.matcher();
        const ids = randomWalk(m, vocab, r, 200);
        if (ids === undefined) continue;
        finished++;
        const text = tok.decode(ids);
        const data = JSON.parse(text);
        expect(validate(data), `${f.file}: ${text}`).toBe(true);
      }
    }
    expect(finished).toBeGreaterThan(30);
  }, 300_000);

  it("masks equal a token-by-token check at random positions (brute force on a sample of tokens)", () => {
    const r = rng(7);
    const sample = Array.from({ length: 500 }, () => Math.floor(r() * vocab.vocabSize));
    for (const id of [...vocab.eogTokens]) sample.push(id);
    for (const f of schemaFiles().slice(0, 12)) {
      if (UNSUPPORTED[f.file]) continue;
      const g = compileGrammar({ type: "json_schema", schema: f.schema }, vocab);
      const valid = f.tests.find((t) => t.valid)!;
      const ids = tokenizeForBench(tok, JSON.stringify(valid.data));
      const m = g.matcher();
      for (const [k, id] of ids.entries()) {
        if (k % 4 === 0) {
          m.fillMask(mask);
          for (const t of sample) {
            const c = m.clone();
            expect(bit(mask, t), `${f.file} token ${t} at ${k}`).toBe(c.accept(t));
          }
          // every token the sample says is allowed also keeps the bytes alive one by one
          for (const t of sample.filter((x) => bit(mask, x) && !vocab.eogTokens.has(x)).slice(0, 50)) {
            const c = m.clone();
            expect(c.accept(t)).toBe(true);
          }
        }
        expect(m.accept(id)).toBe(true);
      }
    }
  }, 300_000);
});

describe("the matcher's contract", () => {
  const { tok, vocab } = loadVocab(VOCAB_GPT2);
  const mask = new Uint32Array(maskWords(vocab.vocabSize));
  const eog = [...vocab.eogTokens][0]!;
  const schema = {
    type: "object",
    properties: { name: { type: "string" }, age: { type: "integer", minimum: 0, maximum: 150 } },
    required: ["name", "age"],
    additionalProperties: false,
  };

  it("allows end of generation exactly when the text is complete, and terminates after a closed object", () => {
    const g = compileGrammar({ type: "json_schema", schema }, vocab);
    const m = g.matcher();
    const ids = tok.encode('{"name":"Al","age":7}', { addSpecial: false });
    for (const id of ids) {
      m.fillMask(mask);
      expect(bit(mask, eog)).toBe(m.canEnd());
      expect(m.canEnd()).toBe(false);
      expect(m.accept(eog)).toBe(false);
      expect(m.accept(id)).toBe(true);
    }
    expect(m.canEnd()).toBe(true);
    expect(m.isTerminated()).toBe(true);
    m.fillMask(mask);
    expect(allowedTokens(mask, vocab.vocabSize)).toEqual([...vocab.eogTokens].sort((a, b) => a - b));
    expect(m.accept(eog)).toBe(true);
    expect(m.isTerminated()).toBe(true);
    m.fillMask(mask);
    expect(allowedTokens(mask, vocab.vocabSize)).toEqual([]);
  });

  it("a number may go on: complete but not terminated", () => {
    const m = compileGrammar({ type: "json_schema", schema: { type: "integer" } }, vocab).matcher();
    expect(m.accept(tok.encode("12", { addSpecial: false })[0]!)).toBe(true);
    expect(m.canEnd()).toBe(true);
    expect(m.isTerminated()).toBe(false);
  });

  it("forces the only continuation (jump-forward) as tokens of the vocabulary", () => {
    const m = compileGrammar({ type: "json_schema", schema }, vocab).matcher();
    const forced = m.forcedTokens(16);
    expect(tok.decode(forced)).toBe('{"name":"');
    for (const t of forced) expect(m.accept(t)).toBe(true);
    expect(m.forcedTokens(16)).toEqual([]); // a string's content is free
    for (const t of tok.encode('Al"', { addSpecial: false })) expect(m.accept(t)).toBe(true);
    expect(tok.decode(m.forcedTokens(16))).toBe(',"age":');
    expect(m.forcedTokens(1)).toHaveLength(1);
  });

  it("rollback and clone restore positions exactly", () => {
    const g = compileGrammar({ type: "json_schema", schema }, vocab);
    const ids = tok.encode('{"name":"Bob","age":42}', { addSpecial: false });
    const m = g.matcher();
    const masks: Uint32Array[] = [];
    for (const id of ids) {
      m.fillMask(mask);
      masks.push(mask.slice());
      expect(m.accept(id)).toBe(true);
    }
    expect(m.accept(eog)).toBe(true);
    const copy = m.clone();
    m.rollback(1); // the end token
    expect(m.isTerminated()).toBe(true); // the object is closed
    m.rollback(4);
    m.fillMask(mask);
    expect(mask).toEqual(masks[ids.length - 4]);
    expect(copy.isTerminated()).toBe(true);
    copy.fillMask(mask);
    expect(allowedTokens(mask, vocab.vocabSize)).toEqual([]);
    const c2 = m.clone();
    expect(c2.accept(ids[ids.length - 4]!)).toBe(true);
    m.fillMask(mask);
    expect(mask).toEqual(masks[ids.length - 4]); // the clone's step left m where it was
    m.rollback(ids.length - 4);
    m.fillMask(mask);
    expect(mask).toEqual(masks[0]);
    expect(() => m.rollback(1)).toThrow(RangeError);
  });

  it("refuses control tokens and unknown ids without moving", () => {
    const m = compileGrammar({ type: "json_object" }, vocab).matcher();
    expect(m.accept(-1)).toBe(false);
    expect(m.accept(vocab.vocabSize)).toBe(false);
    expect(m.accept(tok.encode("x", { addSpecial: false })[0]!)).toBe(false);
    expect(m.accept(tok.encode("{", { addSpecial: false })[0]!)).toBe(true);
  });
});
