import { type ChatMessage, renderChat } from "../chat/template.js";
import type { LoadedModel } from "./context.js";

/**
 * Renders a conversation with the model's chat template (ChatML without one) and tokenizes it:
 * the one place every chat route (OpenAI's /v1/chat/completions, Ollama's /api/chat and templated
 * /api/generate, /tokenize's `messages`) turns messages into prompt tokens. `addGenerationPrompt`
 * (default true) ends the text with the assistant's turn opening.
 */
export function chatPrompt(
  model: LoadedModel,
  r: { messages: ChatMessage[]; templateVars?: Record<string, unknown> | undefined },
  opts: { addGenerationPrompt?: boolean } = {},
): { text: string; ids: number[] } {
  const tok = model.tokenizer;
  const bosText = tok.bos !== undefined ? tok.tokenText(tok.bos) : "";
  const eosText = tok.eos !== undefined ? tok.tokenText(tok.eos) : "";
  const text = renderChat({
    template: model.chatTemplate,
    messages: r.messages,
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
