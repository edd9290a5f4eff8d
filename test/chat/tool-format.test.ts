import { describe, expect, it } from "vitest";
import { HERMES_TOOL_TEMPLATE } from "../../src/chat/hermes-template.js";
import { renderChat } from "../../src/chat/template.js";
import {
  detectToolFormat,
  parseJsonCalls,
  templateThinks,
  templateUsesTools,
  toolCallId,
} from "../../src/chat/tool-format.js";
import { toolPrompt } from "../../src/chat/tools-prompt.js";
import { readGGUF } from "../../src/gguf/reader.js";
import { testModel, VOCAB_PHI3 } from "../helpers/models.js";

/** The one chat template among the shared model files: phi-3's (it knows no tools, nor system or tool roles). */
function phi3Template(): string {
  const t = readGGUF(testModel(VOCAB_PHI3)).metadata.get("tokenizer.chat_template");
  expect(t?.type).toBe(8);
  return t!.value as string;
}

// Short templates written here in the way each family's templates write tool calls (the shared
// models hold no template of these families): what detection keys on is the marker each one emits.
const LLAMA3_LIKE =
  "{% for m in messages %}{% if m.role == 'ipython' or m.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>{{ m.content }}{% else %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}{% endif %}<|eot_id|>{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}";
const MISTRAL_LIKE =
  "{% for m in messages %}{% if m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | tojson }}</s>{% elif m.role == 'user' %}{% if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ m.content }}[/INST]{% else %}{{ m.content }}{% endif %}{% endfor %}";
const THINKING_LIKE =
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}";

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

const history = [
  { role: "system", content: "Be brief." },
  { role: "user", content: "Weather in Paris?" },
  {
    role: "assistant",
    content: null,
    tool_calls: [
      { id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } },
    ],
  },
  { role: "tool", tool_call_id: "call_1", content: "sunny, 21°C" },
];

describe("tool format detection from the chat template", () => {
  it("phi-3's real template knows no tools: the generic JSON format and the instruction fallback", () => {
    const t = phi3Template();
    expect(detectToolFormat(t)).toBe("json");
    expect(templateUsesTools(t)).toBe(false);
    expect(templateThinks(t)).toBe(false);
  });

  it("each family by its marker; whether a template reads `tools`; whether the model thinks", () => {
    expect(detectToolFormat(HERMES_TOOL_TEMPLATE)).toBe("hermes");
    expect(templateUsesTools(HERMES_TOOL_TEMPLATE)).toBe(true);
    expect(detectToolFormat(LLAMA3_LIKE)).toBe("llama3");
    expect(templateUsesTools(LLAMA3_LIKE)).toBe(true);
    expect(detectToolFormat(MISTRAL_LIKE)).toBe("mistral");
    expect(detectToolFormat(undefined)).toBe("json");
    expect(templateUsesTools(undefined)).toBe(false);
    // "tools" in the literal text is not the variable.
    expect(templateUsesTools("{{ messages[0].content }} tools are fun")).toBe(false);
    expect(templateThinks(THINKING_LIKE)).toBe(true);
  });

  it("ids: call_ + 24 characters, and Mistral's 9 alphanumerics", () => {
    expect(toolCallId("hermes")).toMatch(/^call_[A-Za-z0-9]{24}$/);
    expect(toolCallId("mistral")).toMatch(/^[A-Za-z0-9]{9}$/);
    expect(toolCallId("json")).not.toBe(toolCallId("json"));
  });

  it("generic JSON rejects what is not a call list", () => {
    expect(parseJsonCalls("[]")).toBeUndefined();
    expect(parseJsonCalls('{"name": 3}')).toBeUndefined();
    expect(parseJsonCalls('{"name": "f", "arguments": [1]}')).toBeUndefined();
    expect(parseJsonCalls("hello")).toBeUndefined();
  });
});

describe("tools in the prompt", () => {
  it("a template that reads tools gets them, and the call history with arguments as objects", () => {
    const p = toolPrompt(HERMES_TOOL_TEMPLATE, history, [weather]);
    expect(p.tools).toEqual([weather]);
    const text = renderChat({ template: HERMES_TOOL_TEMPLATE, messages: p.messages, tools: p.tools });
    expect(text).toContain('<tools>\n{"type": "function", "function": {"name": "get_weather"');
    expect(text).toContain(
      '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n',
    );
    expect(text).toContain("<|im_start|>user\n<tool_response>\nsunny, 21°C\n</tool_response><|im_end|>\n");
    expect(text.endsWith("<|im_start|>assistant\n")).toBe(true);
    expect(text.startsWith("<|im_start|>system\nBe brief.\n\nYou can call functions.")).toBe(true);
  });

  it("the Hermes template without tools is plain ChatML", () => {
    const text = renderChat({
      template: HERMES_TOOL_TEMPLATE,
      messages: [
        { role: "system", content: "S" },
        { role: "user", content: "U" },
      ],
    });
    expect(text).toBe(
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  it("phi-3 (no tools, no system role): the paragraph opens the first user turn, calls and results become turns it renders", () => {
    const t = phi3Template();
    const p = toolPrompt(t, history, [weather]);
    expect(p.tools).toBeUndefined();
    const text = renderChat({ template: t, messages: p.messages, bosToken: "<s>" });
    expect(text).toMatch(/^<s><\|user\|>\nYou can call these tools/);
    expect(text).toContain('{"name":"get_weather","description":"Current weather in a city","parameters":');
    expect(text).toContain('{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}');
    expect(text).toContain(
      '<|assistant|>\n{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}<|end|>',
    );
    expect(text).toContain(
      '<|user|>\n{"tool_response":{"name":"get_weather","tool_call_id":"call_1","content":"sunny, 21°C"}}<|end|>',
    );
  });

  it("ChatML (no template): the paragraph ends the system message", () => {
    const p = toolPrompt(undefined, history.slice(0, 2), [weather]);
    const text = renderChat({ messages: p.messages });
    expect(text).toMatch(/^<\|im_start\|>system\nBe brief\.\n\nYou can call these tools/);
    const q = toolPrompt(undefined, history.slice(1, 2), [weather]);
    expect(q.messages[0]!.role).toBe("system");
  });

  it("no tools and no tool history: the messages as they are", () => {
    const msgs = history.slice(0, 2);
    expect(toolPrompt(phi3Template(), msgs, undefined)).toEqual({ messages: msgs, tools: undefined });
  });
});
