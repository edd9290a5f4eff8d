import { renderChat } from "../chat/template.js";
import type { LoadedModel } from "./context.js";
import type { ChatRequest } from "./openai-schema.js";

/** Renders the conversation with the model's template (ChatML without one) and tokenizes it. */
export function chatPrompt(model: LoadedModel, r: Pick<ChatRequest, "messages" | "templateVars">) {
  const tok = model.tokenizer;
  const bosText = tok.bos !== undefined ? tok.tokenText(tok.bos) : "";
  const eosText = tok.eos !== undefined ? tok.tokenText(tok.eos) : "";
  const text = renderChat({
    template: model.chatTemplate,
    messages: r.messages,
    bosToken: bosText,
    eosToken: eosText,
    addGenerationPrompt: true,
    extra: r.templateVars,
  });
  let ids = tok.encode(text, { addSpecial: false, parseSpecial: true });
  // Templates that write {{ bos_token }} themselves get no second one.
  if (tok.addBos && tok.bos !== undefined && !(bosText.length > 0 && text.startsWith(bosText))) {
    ids = [tok.bos, ...ids];
  }
  return { text, ids };
}
