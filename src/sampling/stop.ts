/**
 * Incremental stop-string detection on decoded text.
 *
 * Text that might be the beginning of a stop string is held back until it is known not to be;
 * when a stop string completes, `emit` is the text before it (the stop string itself is never
 * emitted, as in the OpenAI API) and `stopped` is true. After that, push() emits nothing.
 * When several stop strings match, the one that starts earliest wins (then the shortest).
 * Matching is on UTF-16 code units of exactly the given strings (no normalisation).
 */
export interface StopPush {
  /** Text that is safe to send to the client now. */
  emit: string;
  /** True once a stop string has completed (this push or an earlier one). */
  stopped: boolean;
}

export class StopMatcher {
  private readonly stops: string[];
  private readonly maxLen: number;
  private held = "";
  private done = false;
  /** The stop string that ended the text, once stopped (for `stop_reason`). */
  matched: string | undefined;

  /** Empty stop strings are ignored (they would match before any text). */
  constructor(stops: readonly string[]) {
    this.stops = [...new Set(stops.filter((s) => s.length > 0))];
    this.maxLen = this.stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  get stopped(): boolean {
    return this.done;
  }

  push(text: string): StopPush {
    if (this.done) return { emit: "", stopped: true };
    if (this.stops.length === 0) return { emit: text, stopped: false };
    const buf = this.held + text;

    // Earliest complete stop string. Everything before the held tail was already emitted and
    // can start no stop string, so buf (held tail + new text) is all that needs searching.
    let at = -1;
    let which = "";
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at || (i === at && s.length < which.length))) {
        at = i;
        which = s;
      }
    }
    if (at >= 0) {
      this.done = true;
      this.matched = which;
      this.held = "";
      return { emit: buf.slice(0, at), stopped: true };
    }

    // Hold back the longest tail of buf that is a proper prefix of some stop string.
    const hold = partialTail(buf, this.stops, this.maxLen);
    this.held = buf.slice(buf.length - hold);
    return { emit: buf.slice(0, buf.length - hold), stopped: false };
  }

  /** Releases held text (end of generation without a stop string). Returns "" once stopped. */
  flush(): string {
    const out = this.done ? "" : this.held;
    this.held = "";
    return out;
  }
}

/**
 * Length of the longest suffix of `buf` that is a proper prefix of one of `strings` (`maxLen`: the
 * longest of them): the text to hold back while it may still become one of them. Shared by stop
 * strings and the markers of chat output (tool calls, reasoning).
 */
export function partialTail(buf: string, strings: readonly string[], maxLen = longest(strings)): number {
  for (let len = Math.min(buf.length, maxLen - 1); len > 0; len--) {
    const tail = buf.slice(buf.length - len);
    for (const s of strings) {
      if (s.length > len && s.startsWith(tail)) return len;
    }
  }
  return 0;
}

const longest = (strings: readonly string[]) => strings.reduce((m, s) => Math.max(m, s.length), 0);
