import { describe, expect, it } from "vitest";
import {
  type AssistantDelta,
  AssistantOutput,
  type AssistantOutputOptions,
} from "../../src/chat/assistant-output.js";
import type { ParsedToolCall } from "../../src/chat/tool-format.js";

/** Call deltas joined into whole calls: the name from each call's first delta, its arguments' pieces joined. */
function joinCalls(deltas: AssistantDelta["calls"]): ParsedToolCall[] {
  const calls: ParsedToolCall[] = [];
  for (const d of deltas) {
    if (d.name !== undefined) {
      expect(d.index).toBe(calls.length);
      calls.push({ name: d.name, arguments: "" });
    }
    calls[d.index]!.arguments += d.arguments;
  }
  return calls;
}

/** Everything a reply gives, pushed in pieces of `step` characters (0: whole), plus what each push returned. */
function run(text: string, opts: AssistantOutputOptions, step = 0) {
  const out = new AssistantOutput(opts);
  const pushes: AssistantDelta[] = [];
  const pieces = step === 0 ? [text] : (text.match(new RegExp(`[\\s\\S]{1,${step}}`, "g")) ?? []);
  for (const p of pieces) pushes.push(out.push(p));
  const end = out.finish();
  const all = [...pushes, end];
  return {
    reasoning: all.map((d) => d.reasoning).join(""),
    content: all.map((d) => d.content).join(""),
    calls: joinCalls(all.flatMap((d) => d.calls)),
    pushes,
    end,
  };
}

/** The same result whatever the pieces' sizes (1 character, 3, 7, whole). */
function same(text: string, opts: AssistantOutputOptions) {
  const whole = run(text, opts);
  for (const step of [1, 3, 7]) {
    const r = run(text, opts, step);
    expect({ reasoning: r.reasoning, content: r.content, calls: r.calls }).toEqual({
      reasoning: whole.reasoning,
      content: whole.content,
      calls: whole.calls,
    });
  }
  return whole;
}

describe("AssistantOutput: Hermes / Qwen <tool_call>", () => {
  const hermes: AssistantOutputOptions = { tools: "hermes" };
  it("parses calls, keeps the text around them as content, in any chunking", () => {
    const text =
      'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>';
    const r = same(text, hermes);
    expect(r.content).toBe("Let me check.");
    // Streamed as written: the arguments' own text.
    expect(r.calls).toEqual([
      { name: "get_weather", arguments: '{"city": "Paris", "unit": "celsius"}' },
      { name: "get_time", arguments: "{}" },
    ]);
    // Another key order is parsed whole.
    const other = same('<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>', hermes);
    expect(other.calls).toEqual([{ name: "f", arguments: '{"a":1}' }]);
  });

  it("a call streams: its name once complete, then its arguments as they are written", () => {
    const out = new AssistantOutput(hermes);
    expect(out.push('<tool_call>\n{"name": "get_we').calls).toEqual([]);
    expect(out.push('ather", "arguments": {"city": "Pa').calls).toEqual([
      { index: 0, name: "get_weather", arguments: "" },
      { index: 0, arguments: '{"city": "Pa' },
    ]);
    expect(out.push('ris", "note": "a } and \\" in a string"}').calls).toEqual([
      { index: 0, arguments: 'ris", "note": "a } and \\" in a string"}' },
    ]);
    expect(out.push("}\n</tool_").calls).toEqual([]);
    const end = out.push("call>");
    expect(end).toEqual({ reasoning: "", content: "", calls: [] });
    expect(out.finish()).toEqual({ reasoning: "", content: "", calls: [] });
  });

  it("holds back a possible <tool_call> while it may be one, and releases it when it is not", () => {
    const out = new AssistantOutput(hermes);
    expect(out.push("Hello <tool").content).toBe("Hello");
    expect(out.push("box> x").content).toBe(" <toolbox> x");
    expect(out.finish().content).toBe("");
  });

  it("a call is returned as soon as its closing tag arrives", () => {
    const out = new AssistantOutput(hermes);
    expect(out.push('<tool_call>{"arguments": {"a": 1}, "name": "f"}').calls).toEqual([]);
    expect(out.push("</tool_call>").calls).toEqual([{ index: 0, name: "f", arguments: '{"a":1}' }]);
  });

  it("a call that does not parse stays content; an unclosed but complete call at the end is a call", () => {
    expect(same("<tool_call>{not json}</tool_call>", hermes)).toMatchObject({
      content: "<tool_call>{not json}</tool_call>",
      calls: [],
    });
    expect(same('<tool_call>\n{"name": "f", "arguments": {"x": "y"}}', hermes).calls).toEqual([
      { name: "f", arguments: '{"x": "y"}' },
    ]);
    expect(same('<tool_call>\n{"name": "f", "argu', hermes)).toMatchObject({
      content: '<tool_call>\n{"name": "f", "argu',
      calls: [],
    });
  });

  it("without tools the same text is all content", () => {
    const text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>';
    expect(same(text, {})).toMatchObject({ content: text, calls: [] });
  });
});

describe("AssistantOutput: Llama 3.x JSON, Mistral, generic JSON", () => {
  it("Llama 3: a whole-reply JSON call with parameters, with or without <|python_tag|>", () => {
    const r = same('{"name": "get_weather", "parameters": {"city": "Paris"}}', { tools: "llama3" });
    expect(r).toMatchObject({ content: "", calls: [{ name: "get_weather", arguments: '{"city":"Paris"}' }] });
    const t = same(
      '<|python_tag|>{"name": "search", "parameters": {"q": "x"}}; {"name": "f", "parameters": {}}',
      {
        tools: "llama3",
      },
    );
    expect(t.calls).toEqual([
      { name: "search", arguments: '{"q":"x"}' },
      { name: "f", arguments: "{}" },
    ]);
  });

  it("Llama 3: JSON that is not a call is content (held to the end), text streams at once", () => {
    const r = run('{"answer": 42}', { tools: "llama3" }, 1);
    expect(r.pushes.every((d) => d.content === "")).toBe(true);
    expect(r).toMatchObject({ content: '{"answer": 42}', calls: [] });
    const t = run("The answer is 42.", { tools: "llama3" }, 1);
    expect(t.pushes.map((d) => d.content).join("")).toBe("The answer is 42.");
  });

  it("Mistral: [TOOL_CALLS] with a JSON array, and the name[ARGS]{…} form", () => {
    const a = same(
      '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "f", "arguments": {}}]',
      {
        tools: "mistral",
      },
    );
    expect(a.calls).toEqual([
      { name: "get_weather", arguments: '{"city":"Paris"}' },
      { name: "f", arguments: "{}" },
    ]);
    const b = same('Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]f[ARGS]{}', {
      tools: "mistral",
    });
    expect(b.content).toBe("Sure.");
    expect(b.calls).toEqual([
      { name: "get_weather", arguments: '{"city":"Paris"}' },
      { name: "f", arguments: "{}" },
    ]);
  });

  it("generic JSON: an array of calls (what a tool grammar produces), {tool_calls}, one call", () => {
    expect(same('[{"name": "f", "arguments": {"a": [1, 2]}}]', { tools: "json" }).calls).toEqual([
      { name: "f", arguments: '{"a":[1,2]}' },
    ]);
    expect(same(' {"tool_calls": [{"name": "g", "arguments": {}}]}', { tools: "json" }).calls).toEqual([
      { name: "g", arguments: "{}" },
    ]);
    expect(same('{"name": "h", "arguments": "{\\"k\\": true}"}', { tools: "json" }).calls).toEqual([
      { name: "h", arguments: '{"k": true}' },
    ]);
    expect(same('[{"nom": "f"}]', { tools: "json" })).toMatchObject({ content: '[{"nom": "f"}]', calls: [] });
  });
});

describe("AssistantOutput: reasoning in <think>…</think>", () => {
  it("a leading <think> block is reasoning; the answer after it is content (its leading blank dropped)", () => {
    const r = same("<think>\nThe user wants a greeting.\n</think>\n\nHello!", { reasoning: true });
    expect(r).toMatchObject({ reasoning: "\nThe user wants a greeting.\n", content: "Hello!" });
  });

  it("a prompt that opened the block (DeepSeek-R1 style): the reply starts inside it", () => {
    const r = same("Let me think.</think>The answer.", { reasoning: true, startsThinking: true });
    expect(r).toMatchObject({ reasoning: "Let me think.", content: "The answer." });
  });

  it("no <think>: all content; cut off while thinking: all reasoning", () => {
    expect(same("Just an answer.", { reasoning: true })).toMatchObject({
      reasoning: "",
      content: "Just an answer.",
    });
    expect(same("<think>still going", { reasoning: true })).toMatchObject({
      reasoning: "still going",
      content: "",
    });
  });

  it("reasoning streams as it comes, holding back only a possible </think>", () => {
    const out = new AssistantOutput({ reasoning: true });
    expect(out.push("<think>ab")).toMatchObject({ reasoning: "ab", content: "" });
    expect(out.push("c</th")).toMatchObject({ reasoning: "c", content: "" });
    expect(out.push("ink>done")).toMatchObject({ reasoning: "", content: "done" });
  });

  it("reasoning then a tool call", () => {
    const r = same(
      '<think>I need the weather.</think>\n<tool_call>\n{"name": "w", "arguments": {"c": "P"}}\n</tool_call>',
      {
        reasoning: true,
        tools: "hermes",
      },
    );
    expect(r).toMatchObject({
      reasoning: "I need the weather.",
      content: "",
      calls: [{ name: "w", arguments: '{"c": "P"}' }],
    });
  });
});

describe("AssistantOutput: the calls of a tool grammar (a JSON array) stream as they are written", () => {
  const enforced: AssistantOutputOptions = { tools: "json", streamCalls: true };
  it("each call's name, then its arguments' fragments, for every chunking", () => {
    const text =
      '[{"name": "get_weather", "arguments": {"city": "Paris", "tags": ["a", "}"]}}, {"name":"get_time","arguments":{}}]';
    const r = same(text, enforced);
    expect(r.calls).toEqual([
      { name: "get_weather", arguments: '{"city": "Paris", "tags": ["a", "}"]}' },
      { name: "get_time", arguments: "{}" },
    ]);
    expect(r.content).toBe("");
    const chars = run(text, enforced, 1);
    // Arguments arrive in many pieces, before the reply ends.
    expect(chars.pushes.filter((d) => d.calls.some((c) => c.name === undefined)).length).toBeGreaterThan(10);
  });

  it("cut off inside a call: the call so far; nothing parseable: content", () => {
    const r = same('[{"name": "f", "arguments": {"a": "tru', enforced);
    expect(r.calls).toEqual([{ name: "f", arguments: '{"a": "tru' }]);
    expect(same('[{"na', enforced)).toMatchObject({ calls: [], content: '[{"na' });
  });
});
