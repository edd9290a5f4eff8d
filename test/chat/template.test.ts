import { describe, expect, it } from "vitest";
import { CHATML_TEMPLATE, type ChatMessage, flattenContent, renderChat } from "../../src/chat/template.js";
import { SpindleError } from "../../src/errors.js";
import { readGGUF } from "../../src/gguf/reader.js";
import { testModel, VOCAB_PHI3 } from "../helpers/models.js";

const conversation: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Hi" },
  { role: "assistant", content: "Hello!" },
  { role: "user", content: "Name a color." },
];

function phi3(): { template: string; bos: string; eos: string } {
  const f = readGGUF(testModel(VOCAB_PHI3));
  const tokens = f.get("tokenizer.ggml.tokens") as string[];
  return {
    template: f.getString("tokenizer.chat_template"),
    bos: tokens[f.getNumber("tokenizer.ggml.bos_token_id")]!,
    eos: tokens[f.getNumber("tokenizer.ggml.eos_token_id")]!,
  };
}

function thrown(f: () => unknown): SpindleError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SpindleError);
    return e as SpindleError;
  }
  throw new Error("did not throw");
}

describe("renderChat with the phi-3 template from the GGUF", () => {
  it("renders system + user + assistant + user exactly", () => {
    const { template, bos, eos } = phi3();
    expect(bos).toBe("<s>");
    // phi-3's template starts with bos_token, drops system messages, and always ends a user turn
    // with the assistant header (it ignores add_generation_prompt).
    const out = renderChat({ template, messages: conversation, bosToken: bos, eosToken: eos });
    expect(out).toBe(
      "<s><|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nName a color.<|end|>\n<|assistant|>\n",
    );
    expect(renderChat({ template, messages: conversation, bosToken: bos, addGenerationPrompt: false })).toBe(
      out,
    );
  });

  it("renders flattened content parts the same as a string", () => {
    const { template, bos } = phi3();
    const parts: ChatMessage[] = [
      {
        role: "user",
        content: [
          { type: "text", text: "Name" },
          { type: "text", text: "a color." },
        ],
      },
    ];
    expect(renderChat({ template, messages: parts, bosToken: bos })).toBe(
      "<s><|user|>\nName\na color.<|end|>\n<|assistant|>\n",
    );
  });
});

describe("ChatML fallback", () => {
  it("is used when there is no template, with the generation prompt by default", () => {
    const out = renderChat({ messages: conversation });
    expect(out).toBe(
      "<|im_start|>system\nYou are terse.<|im_end|>\n" +
        "<|im_start|>user\nHi<|im_end|>\n" +
        "<|im_start|>assistant\nHello!<|im_end|>\n" +
        "<|im_start|>user\nName a color.<|im_end|>\n" +
        "<|im_start|>assistant\n",
    );
    expect(renderChat({ template: "", messages: conversation })).toBe(out);
    expect(renderChat({ template: CHATML_TEMPLATE, messages: conversation })).toBe(out);
  });

  it("without the generation prompt", () => {
    expect(renderChat({ messages: [{ role: "user", content: "x" }], addGenerationPrompt: false })).toBe(
      "<|im_start|>user\nx<|im_end|>\n",
    );
  });
});

describe("content parts", () => {
  it("text parts are joined with newlines; strings and null pass through", () => {
    expect(
      flattenContent([
        { type: "text", text: "a" },
        { type: "text", text: "b" },
      ]),
    ).toBe("a\nb");
    expect(flattenContent([])).toBe("");
    expect(flattenContent("plain")).toBe("plain");
    expect(flattenContent(null)).toBeNull();
  });

  it("a non-text part is an error naming its type", () => {
    const messages = [
      { role: "user", content: "hi" },
      {
        role: "user",
        content: [
          { type: "text", text: "what is this?" },
          { type: "image_url", image_url: { url: "http://x/y.png" } },
        ],
      },
    ] as unknown as ChatMessage[];
    const e = thrown(() => renderChat({ messages }));
    expect(e.message).toBe(
      'messages[1] has a content part of type "image_url": only "text" parts are supported',
    );
    expect(
      thrown(() => flattenContent([{ type: "text" }] as unknown as ChatMessage["content"])).message,
    ).toMatch(/without a string "text"/);
  });

  it("other message fields and template variables reach the template", () => {
    const template =
      "{% for m in messages %}{{ m.role }}:{{ m.content if m.content is not none else '-' }}" +
      "{% if m.tool_calls %}[{{ m.tool_calls[0].name }}]{% endif %};{% endfor %}" +
      "{{ tools | length }}|{{ flavour }}|{{ eos_token }}";
    const out = renderChat({
      template,
      messages: [
        { role: "assistant", content: null, tool_calls: [{ name: "lookup" }] },
        { role: "tool", content: "42" },
      ],
      tools: [{ type: "function" }, { type: "function" }],
      eosToken: "</s>",
      extra: { flavour: "mint", eos_token: "ignored" },
    });
    expect(out).toBe("assistant:-[lookup];tool:42;2|mint|</s>");
  });
});

describe("template errors", () => {
  it("a syntax error is a one-line SpindleError", () => {
    for (const template of [
      "{% for m in messages %}{{ m.content }}",
      "{{ messages[0 }}",
      "{% if %}x{% endif %}",
    ]) {
      const e = thrown(() => renderChat({ template, messages: conversation }));
      expect(e.message).toMatch(/^chat template has a syntax error: \S/);
      expect(e.message).not.toContain("\n");
    }
    expect(
      thrown(() => renderChat({ template: "{% for m in messages %}x", messages: conversation })).message,
    ).toBe("chat template has a syntax error: the template ends inside an unclosed block or expression");
  });

  it("raise_exception and runtime failures name the problem", () => {
    const template =
      "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}" +
      "{% endif %}{{ m.content }}{% endfor %}";
    const e = thrown(() => renderChat({ template, messages: conversation }));
    expect(e.message).toBe("chat template failed to render: System role not supported");
    expect(e.code).toBe("chat_template_error");
    const nullContent = thrown(() =>
      renderChat({ template: phi3().template, messages: [{ role: "user", content: null }] }),
    );
    expect(nullContent.message).toMatch(/^chat template failed to render: .+/);
  });
});
