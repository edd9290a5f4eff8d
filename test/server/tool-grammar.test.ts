import { describe, expect, it } from "vitest";
import { tokenizeForBench } from "../../src/bench/grammar-bench.js";
import { parseJsonCalls } from "../../src/chat/tool-format.js";
import { type CompiledGrammar, compileGrammar, GrammarError, maskWords } from "../../src/grammar/index.js";
import { parseToolRequest, toolGrammar, toolStructuredOutput } from "../../src/server/tool-request.js";
import { ajvValidator, bit, loadVocab, randomWalk, rng } from "../grammar/helpers.js";
import { VOCAB_GPT2 } from "../helpers/models.js";

/**
 * The grammar of an enforced tool call (tool-request.ts), compiled by the real grammar engine on the
 * GPT-2 vocabulary: it takes exactly the JSON arrays of calls whose arguments validate against their
 * tool's parameters, and every reply a random walk through its masks writes parses (as the chat
 * route parses it) into calls whose arguments ajv accepts.
 */

const { tok, vocab } = loadVocab(VOCAB_GPT2);
const mask = new Uint32Array(maskWords(vocab.vocabSize));

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", minLength: 1, maxLength: 12 },
        unit: { enum: ["celsius", "fahrenheit"] },
        days: { type: "integer", minimum: 1, maximum: 7 },
      },
      required: ["city"],
      additionalProperties: false,
    },
  },
};
const tree = {
  type: "function",
  function: {
    name: "plant",
    parameters: {
      type: "object",
      properties: { root: { $ref: "#/$defs/node" } },
      required: ["root"],
      additionalProperties: false,
      $defs: {
        node: {
          type: "object",
          properties: {
            label: { enum: ["a", "b"] },
            kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 },
          },
          required: ["label"],
          additionalProperties: false,
        },
      },
    },
  },
};
const noParams = { type: "function", function: { name: "ping" } };
const tools = [weather, tree, noParams];
const params: Record<string, unknown> = {
  get_weather: weather.function.parameters,
  plant: tree.function.parameters,
  ping: { type: "object", properties: {}, additionalProperties: false },
};

function grammar(body: Record<string, unknown>): CompiledGrammar {
  return compileGrammar(toolGrammar(parseToolRequest({ tools, ...body })!)!, vocab);
}

/** Whether the grammar takes `text` whole, each token checked against its mask. */
function takes(g: CompiledGrammar, text: string): boolean {
  const m = g.matcher();
  for (const id of tokenizeForBench(tok, text)) {
    m.fillMask(mask);
    if (!bit(mask, id)) return false;
    expect(m.accept(id)).toBe(true);
  }
  return m.canEnd();
}

describe("the tool-call grammar, compiled", () => {
  it("takes calls valid against their tool, and nothing else", () => {
    const g = grammar({ tool_choice: "required" });
    expect(takes(g, '[{"name":"get_weather","arguments":{"city":"Paris","days":3}}]')).toBe(true);
    expect(
      takes(
        g,
        '[{"name":"ping","arguments":{}},{"name":"plant","arguments":{"root":{"label":"a","kids":[{"label":"b"}]}}}]',
      ),
    ).toBe(true);
    expect(takes(g, "[]")).toBe(false);
    expect(takes(g, '[{"name":"get_weather","arguments":{"days":3}}]')).toBe(false); // city is required
    expect(takes(g, '[{"name":"get_weather","arguments":{"city":"Paris","days":9}}]')).toBe(false);
    expect(takes(g, '[{"name":"get_time","arguments":{}}]')).toBe(false);
    expect(takes(g, '[{"name":"ping","arguments":{"x":1}}]')).toBe(false);
    expect(takes(g, '[{"name":"plant","arguments":{"root":{"label":"c"}}}]')).toBe(false);
  });

  it("a named function without parallel calls: one call, to it", () => {
    const g = grammar({
      tool_choice: { type: "function", function: { name: "ping" } },
      parallel_tool_calls: false,
    });
    expect(takes(g, '[{"name":"ping","arguments":{}}]')).toBe(true);
    expect(takes(g, '[{"name":"ping","arguments":{}},{"name":"ping","arguments":{}}]')).toBe(false);
    expect(takes(g, '[{"name":"get_weather","arguments":{"city":"x"}}]')).toBe(false);
  });

  it("random walks through its masks: every reply parses into calls whose arguments ajv accepts", () => {
    const r = rng(19);
    const validators = Object.fromEntries(Object.entries(params).map(([k, s]) => [k, ajvValidator(s)]));
    const g = grammar({ tool_choice: "required", parallel_tool_calls: false });
    let finished = 0;
    for (let run = 0; run < 40; run++) {
      const m = g.matcher();
      const ids = randomWalk(m, vocab, r, 300);
      if (ids === undefined) continue;
      finished++;
      const text = tok.decode(ids);
      const calls = parseJsonCalls(text);
      expect(calls, text).toBeDefined();
      expect(calls!.length).toBe(1);
      for (const c of calls!) expect(validators[c.name]!(JSON.parse(c.arguments)), text).toBe(true);
    }
    expect(finished).toBeGreaterThan(20);
  }, 120_000);

  it("a parameters schema it cannot enforce fails to compile, naming the keyword", () => {
    const odd = {
      type: "function",
      function: { name: "odd", parameters: { type: "object", patternProperties: {} } },
    };
    const spec = toolGrammar(parseToolRequest({ tools: [odd], tool_choice: "required" })!)!;
    expect(() => compileGrammar(spec, vocab)).toThrow(GrammarError);
    try {
      compileGrammar(spec, vocab);
    } catch (e) {
      expect((e as GrammarError).field).toBe("schema.items.properties.arguments.patternProperties");
    }
  });
});

describe("tool_choice auto: the triggered tool grammar", () => {
  const auto = (body: Record<string, unknown> = {}) => parseToolRequest({ tools, ...body })!;

  it("engages at the format's trigger (Hermes, Mistral), not for formats without one", () => {
    expect(toolGrammar(auto(), "hermes")).toMatchObject({
      type: "triggered",
      trigger: "<tool_call>",
      end: "</tool_call>",
    });
    expect(toolGrammar(auto({ parallel_tool_calls: false }), "hermes")).toMatchObject({ maxSegments: 1 });
    expect(toolGrammar(auto(), "mistral")).toMatchObject({ type: "triggered", trigger: "[TOOL_CALLS]" });
    expect(toolGrammar(auto(), "llama3")).toBeUndefined();
    expect(toolGrammar(auto(), "json")).toBeUndefined();
    expect(toolGrammar(auto(), undefined)).toBeUndefined();
  });

  it("compiles: free text, then calls valid against their tool", () => {
    const g = compileGrammar(toolGrammar(auto(), "hermes")!, vocab);
    expect(takes(g, 'Sure. <tool_call>\n{"name":"ping","arguments":{}}\n</tool_call>')).toBe(true);
    expect(
      takes(g, '<tool_call>{"name":"get_weather","arguments":{"city":"Paris","days":9}}</tool_call>'),
    ).toBe(false);
    expect(takes(g, "no call at all")).toBe(true);
  });

  it("a parameters schema the compiler refuses leaves auto free instead of failing the request", () => {
    const odd = {
      type: "function",
      function: { name: "odd", parameters: { type: "object", patternProperties: {} } },
    };
    const r = parseToolRequest({ tools: [odd] })!;
    expect(toolStructuredOutput(r, "hermes")).toBeUndefined();
    expect(toolStructuredOutput(parseToolRequest({ tools })!, "hermes")?.spec.type).toBe("triggered");
  });
});
