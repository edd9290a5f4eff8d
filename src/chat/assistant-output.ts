import { partialTail } from "../sampling/stop.js";
import { CallScanner } from "./call-scanner.js";
import {
  HERMES_CLOSE,
  HERMES_OPEN,
  LLAMA_PYTHON_TAG,
  MISTRAL_TOOL_CALLS,
  type ParsedToolCall,
  parseHermesCall,
  parseJsonCalls,
  parseLlamaCalls,
  parseMistralCalls,
  type ToolFormat,
} from "./tool-format.js";

/**
 * An assistant reply as it is generated, split into what a chat client sees: reasoning (the
 * `<think>…</think>` block of thinking models: OpenAI-compatible servers send it as
 * `reasoning_content`), content, and tool calls in the model's format (tool-format.ts). Text is
 * pushed as it is decoded; each push returns what is now certain. Text that may still become a
 * marker (`<tool_call>`, `</think>`) or a tool call (a reply that opens with `{` in the JSON
 * formats) is held back, as stop strings are, until it is known. Calls come as deltas: a call's
 * index and name first, then its arguments' text. Hermes calls written `{"name": …, "arguments":
 * {…}}` and the calls of a tool grammar (`streamCalls`) stream as they are written (call-scanner.ts);
 * other calls come whole once complete. At the end, `finish()` settles what was held: a tool call
 * that does not parse is returned as the content it was.
 */

export interface AssistantOutputOptions {
  /** Parse tool calls in this format; undefined: every byte after the reasoning is content. */
  tools?: ToolFormat;
  /** The model thinks first: a leading `<think>…</think>` is reasoning. */
  reasoning?: boolean;
  /** The prompt already opened the thinking block (it ends with `<think>`): the reply starts inside it. */
  startsThinking?: boolean;
  /** The reply is a JSON array of calls (a tool grammar enforces it): stream them as they are written. */
  streamCalls?: boolean;
}

/** Part of a tool call: the first delta of call `index` has its name, later ones more arguments text. */
export interface ToolCallDelta {
  index: number;
  name?: string;
  arguments: string;
}

export interface AssistantDelta {
  reasoning: string;
  content: string;
  /** Tool call deltas of this push, in order. */
  calls: ToolCallDelta[];
}

const THINK_OPEN = "<think>";
const THINK_CLOSE = "</think>";

export class AssistantOutput {
  private readonly format: ToolFormat | undefined;
  /** Reasoning: "maybe" until the reply shows whether it opens with <think>. */
  private think: "maybe" | "in" | "done";
  private thinkBuf = "";
  /** Drop whitespace right after </think> (the answer starts on its own). */
  private trimLead = false;
  /** Tool calls: where the content stands. */
  private state: "undecided" | "text" | "call" | "json" = "undecided";
  private buf = "";
  /** Trailing whitespace of the content, sent once more text follows (dropped at the end after a call). */
  private blank = "";
  private callCount = 0;
  /** The calls of a Hermes block or of a tool grammar's reply, as they stream. */
  private scanner = new CallScanner();
  /** The text given to the scanner (parsed whole when it did not stream). */
  private scanned = "";
  private readonly streamCalls: boolean;
  private out: AssistantDelta = { reasoning: "", content: "", calls: [] };

  constructor(opts: AssistantOutputOptions = {}) {
    this.format = opts.tools;
    this.streamCalls = opts.streamCalls === true && opts.tools !== undefined;
    this.think = !opts.reasoning ? "done" : opts.startsThinking ? "in" : "maybe";
  }

  /** Whether any tool call was returned. */
  get hasCalls(): boolean {
    return this.callCount > 0;
  }

  push(text: string): AssistantDelta {
    this.out = { reasoning: "", content: "", calls: [] };
    if (this.think === "done") this.content(text);
    else this.reason(text);
    return this.out;
  }

  /** The end of the reply: whatever was held back, settled. */
  finish(): AssistantDelta {
    this.out = { reasoning: "", content: "", calls: [] };
    if (this.think === "in") this.out.reasoning += this.thinkBuf;
    else if (this.think === "maybe") this.content(this.thinkBuf);
    this.thinkBuf = "";
    this.think = "done";
    this.settle();
    if (this.callCount === 0) this.out.content += this.blank;
    this.blank = "";
    return this.out;
  }

  private reason(text: string): void {
    this.thinkBuf += text;
    if (this.think === "maybe") {
      const lead = this.thinkBuf.trimStart();
      if (lead.startsWith(THINK_OPEN)) {
        this.think = "in";
        this.thinkBuf = lead.slice(THINK_OPEN.length);
      } else if (THINK_OPEN.startsWith(lead)) {
        return;
      } else {
        this.think = "done";
        const all = this.thinkBuf;
        this.thinkBuf = "";
        this.content(all);
        return;
      }
    }
    const end = this.thinkBuf.indexOf(THINK_CLOSE);
    if (end >= 0) {
      this.out.reasoning += this.thinkBuf.slice(0, end);
      const rest = this.thinkBuf.slice(end + THINK_CLOSE.length);
      this.thinkBuf = "";
      this.think = "done";
      this.trimLead = true;
      this.content(rest);
      return;
    }
    const hold = partialTail(this.thinkBuf, [THINK_CLOSE]);
    this.out.reasoning += this.thinkBuf.slice(0, this.thinkBuf.length - hold);
    this.thinkBuf = this.thinkBuf.slice(this.thinkBuf.length - hold);
  }

  /** Content; trailing whitespace waits for more text (it is dropped at the end of a reply that called tools). */
  private emit(text: string): void {
    const end = text.trimEnd().length;
    if (end > 0) {
      this.out.content += this.blank + text.slice(0, end);
      this.blank = "";
    }
    this.blank += text.slice(end);
  }

  private call(c: ParsedToolCall): void {
    this.out.calls.push({ index: this.callCount++, name: c.name, arguments: c.arguments });
    this.blank = "";
  }

  /** Text of calls in the scanner's shape: deltas as they stream. */
  private scan(text: string): void {
    this.scanned += text;
    for (const p of this.scanner.push(text)) {
      if (p.kind === "start") {
        this.out.calls.push({ index: this.callCount++, name: p.name, arguments: "" });
        this.blank = "";
      } else if (p.kind === "args") {
        this.out.calls.push({ index: this.callCount - 1, arguments: p.text });
      }
    }
  }

  /** The scanned text is complete: unless it streamed, it is parsed whole (or it is content, `asText`). */
  private endScan(
    parse: (text: string) => ParsedToolCall[] | undefined,
    asText: (text: string) => string,
  ): void {
    const text = this.scanned;
    const streamed = this.scanner.streamed;
    this.scanner = new CallScanner();
    this.scanned = "";
    if (streamed) return;
    const calls = parse(text);
    if (calls) for (const c of calls) this.call(c);
    else this.emit(asText(text));
  }

  private content(text: string): void {
    if (this.trimLead) {
      text = text.replace(/^\s+/, "");
      if (text.length === 0) return;
      this.trimLead = false;
    }
    if (this.format === undefined) {
      this.out.content += text;
      return;
    }
    if (this.streamCalls) {
      this.scan(text);
      return;
    }
    this.buf += text;
    switch (this.format) {
      case "hermes":
        this.hermes();
        return;
      case "mistral":
        this.mistral();
        return;
      default:
        this.wholeJson();
    }
  }

  /** `<tool_call>…</tool_call>` blocks anywhere in the text. */
  private hermes(): void {
    for (;;) {
      if (this.state === "call") {
        const end = this.buf.indexOf(HERMES_CLOSE);
        const ready = end >= 0 ? end : this.buf.length - partialTail(this.buf, [HERMES_CLOSE]);
        this.scan(this.buf.slice(0, ready));
        this.buf = this.buf.slice(ready);
        if (end < 0) return;
        this.endScan(hermesCalls, (body) => HERMES_OPEN + body + HERMES_CLOSE);
        this.buf = this.buf.slice(HERMES_CLOSE.length);
        this.state = "text";
        continue;
      }
      const at = this.buf.indexOf(HERMES_OPEN);
      if (at >= 0) {
        this.emit(this.buf.slice(0, at));
        this.buf = this.buf.slice(at + HERMES_OPEN.length);
        this.state = "call";
        continue;
      }
      const hold = partialTail(this.buf, [HERMES_OPEN]);
      this.emit(this.buf.slice(0, this.buf.length - hold));
      this.buf = this.buf.slice(this.buf.length - hold);
      return;
    }
  }

  /** Text, then `[TOOL_CALLS]` and calls to the end. */
  private mistral(): void {
    if (this.state === "call") return;
    const at = this.buf.indexOf(MISTRAL_TOOL_CALLS);
    if (at >= 0) {
      this.emit(this.buf.slice(0, at));
      this.buf = this.buf.slice(at + MISTRAL_TOOL_CALLS.length);
      this.state = "call";
      return;
    }
    const hold = partialTail(this.buf, [MISTRAL_TOOL_CALLS]);
    this.emit(this.buf.slice(0, this.buf.length - hold));
    this.buf = this.buf.slice(this.buf.length - hold);
  }

  /** Llama 3 and generic JSON: a reply that opens with `{`, `[` (or `<|python_tag|>`) may be calls, held to the end. */
  private wholeJson(): void {
    if (this.state === "text") {
      this.emit(this.buf);
      this.buf = "";
      return;
    }
    if (this.state !== "undecided") return;
    const lead = this.buf.trimStart();
    if (lead.length === 0) return;
    const llama = this.format === "llama3";
    if (llama && lead.startsWith(LLAMA_PYTHON_TAG)) {
      this.buf = lead.slice(LLAMA_PYTHON_TAG.length);
      this.state = "call";
    } else if (llama && LLAMA_PYTHON_TAG.startsWith(lead)) {
      return;
    } else if (lead[0] === "{" || lead[0] === "[") {
      this.state = "json";
    } else {
      this.state = "text";
      this.emit(this.buf);
      this.buf = "";
    }
  }

  /** At the end: the held text becomes calls, or content when it does not parse. */
  private settle(): void {
    if (this.streamCalls) {
      this.endScan(parseJsonCalls, (text) => text);
      return;
    }
    if (this.format === "hermes" && this.state === "call") {
      // An unclosed block: what arrived of it, then the rest held back for a possible closing tag.
      this.scan(this.buf);
      this.buf = "";
      this.state = "text";
      this.endScan(hermesCalls, (body) => HERMES_OPEN + body);
      return;
    }
    const held = this.buf;
    this.buf = "";
    if (held.length === 0 && this.state !== "call") return;
    let calls: ParsedToolCall[] | undefined;
    let asText = held;
    switch (this.state) {
      case "call":
        if (this.format === "mistral") {
          calls = parseMistralCalls(held);
          asText = MISTRAL_TOOL_CALLS + held;
        } else {
          calls = parseLlamaCalls(held);
          asText = LLAMA_PYTHON_TAG + held;
        }
        break;
      case "json":
        calls = this.format === "llama3" ? parseLlamaCalls(held) : parseJsonCalls(held);
        break;
      default:
    }
    this.state = "text";
    if (calls) for (const c of calls) this.call(c);
    else this.emit(asText);
  }
}

/** The body of one Hermes block, whole: one call. */
function hermesCalls(body: string): ParsedToolCall[] | undefined {
  const c = parseHermesCall(body);
  return c && [c];
}
