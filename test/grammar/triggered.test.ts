import { describe, expect, it } from "vitest";
import { tokenizeForBench } from "../../src/bench/grammar-bench.js";
import {
  type CompiledGrammar,
  compileGrammar,
  GrammarError,
  type GrammarSpec,
} from "../../src/grammar/index.js";
import { VOCAB_GPT2 } from "../helpers/models.js";
import { ajvValidator, loadVocab, randomWalk, rng, takesText } from "./helpers.js";

const { tok, vocab } = loadVocab(VOCAB_GPT2);

/** Whether the grammar takes `text` whole, each token checked against its mask. */
const takes = (g: CompiledGrammar, text: string): boolean => takesText(g, tok, text);

const callSchema = {
  type: "object",
  properties: {
    name: { const: "get_weather" },
    arguments: {
      type: "object",
      properties: {
        city: { type: "string", maxLength: 12 },
        days: { type: "integer", minimum: 1, maximum: 7 },
      },
      required: ["city"],
      additionalProperties: false,
    },
  },
  required: ["name", "arguments"],
  additionalProperties: false,
};
const hermes = (maxSegments?: number): GrammarSpec => ({
  type: "triggered",
  trigger: "<tool_call>",
  end: "</tool_call>",
  schema: callSchema,
  ...(maxSegments === undefined ? {} : { maxSegments }),
});
const call = (args: unknown) =>
  `<tool_call>\n${JSON.stringify({ name: "get_weather", arguments: args })}\n</tool_call>`;

describe("triggered grammars (free text; JSON after the trigger)", () => {
  const g = compileGrammar(hermes(), vocab);

  it("takes any text without the trigger, partial triggers included", () => {
    for (const s of ["", "Hello there.", "a < b and <tool is fine", "ends in <tool_cal", "<<<", "日本語 ✓"]) {
      if (s === "") expect(g.matcher().canEnd()).toBe(true);
      else expect(takes(g, s), s).toBe(true);
    }
  });

  it("takes valid calls between texts and refuses invalid ones once the trigger is written", () => {
    expect(takes(g, call({ city: "Paris" }))).toBe(true);
    expect(takes(g, `Let me check. ${call({ city: "Oslo", days: 3 })} done ${call({ city: "Rome" })}`)).toBe(
      true,
    );
    expect(takes(g, `<${call({ city: "Paris" })}`)).toBe(true);
    expect(takes(g, call({ town: "Paris" }))).toBe(false);
    expect(takes(g, call({ city: "Paris", days: 9 }))).toBe(false);
    expect(takes(g, call({ city: "a very long city name" }))).toBe(false);
    expect(takes(g, "<tool_call>not json</tool_call>")).toBe(false);
    // A call begun must be finished.
    expect(takes(g, '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}')).toBe(false);
  });

  it("maxSegments bounds the calls", () => {
    const one = compileGrammar(hermes(1), vocab);
    expect(takes(one, `a ${call({ city: "Oslo" })} b`)).toBe(true);
    expect(takes(one, `${call({ city: "Oslo" })}${call({ city: "Rome" })}`)).toBe(false);
  });

  it("every random walk's calls validate against the schema (ajv)", () => {
    const valid = ajvValidator(callSchema);
    const r = rng(19);
    let calls = 0;
    for (let w = 0; w < 40; w++) {
      const m = g.matcher();
      // Start inside a call half the time, so walks reach the JSON as well as the text.
      if (w % 2 === 0) for (const id of tokenizeForBench(tok, "<tool_call>")) expect(m.accept(id)).toBe(true);
      const ids = randomWalk(m, vocab, r, 400);
      if (!ids) continue;
      const text = (w % 2 === 0 ? "<tool_call>" : "") + tok.decode(ids);
      for (const seg of text.split("<tool_call>").slice(1)) {
        const body = seg.slice(0, seg.indexOf("</tool_call>"));
        expect(valid(JSON.parse(body)), body).toBe(true);
        calls++;
      }
    }
    expect(calls).toBeGreaterThan(5);
  });

  it("refuses an empty trigger and a bad schema, naming the field", () => {
    expect(() => compileGrammar({ ...hermes(), trigger: "" } as GrammarSpec, vocab)).toThrow(GrammarError);
    try {
      compileGrammar(
        { ...hermes(), schema: { type: "object", propertyNames: { pattern: "x" } } } as GrammarSpec,
        vocab,
      );
      expect.unreachable();
    } catch (err) {
      expect((err as GrammarError).field).toMatch(/^schema/);
    }
  });
});
