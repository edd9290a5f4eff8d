/**
 * Streams tool calls written as JSON objects `{"name": "…", "arguments": …}` (or `"parameters"`),
 * one after another (separated by whitespace, commas, or inside a JSON array, as a tool grammar
 * writes them), as their text arrives: a call's name as soon as it is complete, then its arguments'
 * text (an object) in fragments as they are written, then its end. Only that key order with object
 * arguments is streamed; text of another shape is left to the caller to parse whole (`streamed`
 * stays false).
 */

export type CallPiece =
  /** A call begins: its name. */
  | { kind: "start"; name: string }
  /** More of the current call's arguments text. */
  | { kind: "args"; text: string }
  /** The current call's object closed. */
  | { kind: "end" };

const HEAD = /^\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)/;
/** Longest text to wait for a head before giving up on streaming this object. */
const MAX_HEAD = 512;

export class CallScanner {
  private buf = "";
  private state: "between" | "args" | "tail" | "off" = "between";
  private depth = 0;
  private inString = false;
  private escaped = false;
  private valueStarted = false;
  /** Whether any call was streamed. */
  streamed = false;

  /** Whether the text stopped being in the streamable shape (the caller parses it whole). */
  get off(): boolean {
    return this.state === "off";
  }

  /** Whether a call has started and not yet ended. */
  get open(): boolean {
    return this.state === "args" || this.state === "tail";
  }

  push(text: string): CallPiece[] {
    const out: CallPiece[] = [];
    if (this.state === "off") return out;
    this.buf += text;
    let args = "";
    const flushArgs = () => {
      if (args) out.push({ kind: "args", text: args });
      args = "";
    };
    while (this.buf.length > 0) {
      if (this.state === "between") {
        this.buf = this.buf.replace(/^[\s,[\]]+/, "");
        if (this.buf.length === 0) break;
        const m = HEAD.exec(this.buf);
        if (!m) {
          if (this.buf[0] !== "{" || this.buf.length > MAX_HEAD) this.state = "off";
          break;
        }
        let name: string;
        try {
          name = JSON.parse(`"${m[1]}"`) as string;
        } catch {
          this.state = "off";
          break;
        }
        out.push({ kind: "start", name });
        this.streamed = true;
        this.buf = this.buf.slice(m[0].length);
        this.state = "args";
        this.depth = 0;
        this.valueStarted = false;
        continue;
      }
      // Character by character through the arguments value, then the rest of the call object.
      let i = 0;
      for (; i < this.buf.length && (this.state === "args" || this.state === "tail"); i++) {
        const ch = this.buf[i]!;
        if (this.inString) {
          if (this.escaped) this.escaped = false;
          else if (ch === "\\") this.escaped = true;
          else if (ch === '"') this.inString = false;
          if (this.state === "args") args += ch;
          continue;
        }
        if (ch === '"') {
          this.inString = true;
          this.valueStarted = true;
          if (this.state === "args") args += ch;
          continue;
        }
        if (ch === "{" || ch === "[") {
          this.depth++;
          this.valueStarted = true;
        } else if (ch === "}" || ch === "]") {
          if (this.depth === 0) {
            // The call object closes (a scalar value, or the tail after the value).
            flushArgs();
            out.push({ kind: "end" });
            this.state = "between";
            continue;
          }
          this.depth--;
        } else if (ch === "," && this.depth === 0 && this.state === "args" && this.valueStarted) {
          // A scalar value ended; other keys may follow.
          this.state = "tail";
          continue;
        } else if (!/\s/.test(ch)) {
          this.valueStarted = true;
        } else if (this.state === "args" && !this.valueStarted) {
          continue;
        }
        if (this.state === "args") {
          args += ch;
          if (this.depth === 0 && (ch === "}" || ch === "]")) this.state = "tail";
        }
      }
      this.buf = this.buf.slice(i);
      if (this.state === "args" || this.state === "tail") break;
    }
    flushArgs();
    return out;
  }
}
