import { type ChatMessage, renderChat } from "../chat/template.js";
import { toolPrompt } from "../chat/tools-prompt.js";
import type { LoadedModel } from "./context.js";

/**
 * Renders a conversation with the model's chat template (ChatML without one) and tokenizes it:
 * the one place every chat route (OpenAI's /v1/chat/completions, Ollama's /api/chat and templated
 * /api/generate, /tokenize's `messages`) turns messages into prompt tokens. `addGenerationPrompt`
 * (default true) ends the text with the assistant's turn opening. `tools` (OpenAI's function tools)
 * reach the model through the template's `tools` variable, or the instruction fallback when the
 * template does not read it (src/chat/tools-prompt.ts).
 */
export function chatPrompt(
  model: LoadedModel,
  r: {
    messages: ChatMessage[];
    templateVars?: Record<string, unknown> | undefined;
    tools?: readonly unknown[] | undefined;
  },
  opts: { addGenerationPrompt?: boolean } = {},
): { text: string; ids: number[] } {
  const tok = model.tokenizer;
  const bosText = tok.bos !== undefined ? tok.tokenText(tok.bos) : "";
  const eosText = tok.eos !== undefined ? tok.tokenText(tok.eos) : "";
  const withTools = toolPrompt(model.chatTemplate, r.messages, r.tools);
  const text = renderChat({
    template: model.chatTemplate,
    messages: withTools.messages,
    tools: withTools.tools,
    bosToken: bosText,
    eosToken: eosText,
    addGenerationPrompt: opts.addGenerationPrompt ?? true,
    extra: r.templateVars,
  });
  let ids = tok.encode(text, { addSpecial: false, parseSpecial: true });
  // Templates that write {{ bos_token }} themselves get no second one.
  if (tok.addBos && tok.bos !== undefined && !(bosText.length > 0 && text.startsWith(bosText))) {
    ids = [tok.bos, ...ids];
  }
  return { text, ids };
}
