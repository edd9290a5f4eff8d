/**
 * Spindle's own tool-aware chat template in the Hermes style (ChatML turns; tools listed in the
 * system turn inside `<tools>…</tools>`; calls written `<tool_call>{"name": …, "arguments": …}</tool_call>`;
 * results fed back inside `<tool_response>…</tool_response>` in a user turn), written for
 * `spindle synth-model --chat-template hermes`, so a synthesized model knows tools the way Hermes
 * and Qwen models do. Every piece of output text is a string expression, so Jinja's whitespace
 * control never eats a newline the format needs.
 */
export const HERMES_TOOL_TEMPLATE = [
  "{%- set ns = namespace(system='', first=0) -%}",
  "{%- if messages and messages[0].role == 'system' -%}{%- set ns.system = messages[0].content -%}{%- set ns.first = 1 -%}{%- endif -%}",
  "{%- if tools -%}",
  "{{- '<|im_start|>system\\n' -}}",
  "{%- if ns.system -%}{{- ns.system + '\\n\\n' -}}{%- endif -%}",
  "{{- 'You can call functions. Their signatures, as JSON Schema, are inside <tools></tools>:\\n<tools>\\n' -}}",
  "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}",
  '{{- \'</tools>\\n\\nTo call a function, write its name and arguments as a JSON object inside <tool_call></tool_call> tags:\\n<tool_call>\\n{"name": <function name>, "arguments": <arguments object>}\\n</tool_call><|im_end|>\\n\' -}}',
  "{%- elif ns.system -%}",
  "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' -}}",
  "{%- endif -%}",
  "{%- for message in messages -%}",
  "{%- if loop.index0 >= ns.first -%}",
  "{%- if message.role == 'tool' -%}",
  "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' -}}",
  "{%- elif message.role == 'assistant' -%}",
  "{{- '<|im_start|>assistant\\n' -}}",
  "{%- if message.content -%}{{- message.content -}}{%- endif -%}",
  "{%- if message.tool_calls -%}{%- for call in message.tool_calls -%}",
  "{%- if message.content or not loop.first -%}{{- '\\n' -}}{%- endif -%}",
  "{{- '<tool_call>\\n{\"name\": ' + (call.function.name | tojson) + ', \"arguments\": ' + (call.function.arguments | tojson) + '}\\n</tool_call>' -}}",
  "{%- endfor -%}{%- endif -%}",
  "{{- '<|im_end|>\\n' -}}",
  "{%- else -%}",
  "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}",
  "{%- endif -%}",
  "{%- endif -%}",
  "{%- endfor -%}",
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
].join("\n");

/** Chat templates `spindle synth-model --chat-template NAME` can write. */
export const SYNTH_CHAT_TEMPLATES: Record<string, string> = { hermes: HERMES_TOOL_TEMPLATE };
