import { StopMatcher } from "../sampling/stop.js";
import { IncrementalDecoder } from "../tokenizer/decoder.js";
import type { Tokenizer } from "../tokenizer/index.js";

/**
 * A request's generated tokens turned into the text its client sees: decoded
 * incrementally (never half a character), with stop strings applied (the stop
 * string and anything after it are never sent). Used by the engine and by the
 * backends that produce token ids themselves (llamacpp).
 */
export class TextOutput {
  private readonly decoder: IncrementalDecoder;
  private readonly stop: StopMatcher | undefined;

  constructor(tok: Tokenizer, stop: readonly string[] | undefined) {
    this.decoder = new IncrementalDecoder(tok, { continuation: true });
    this.stop = stop && stop.length > 0 ? new StopMatcher(stop) : undefined;
  }

  /** The stop string that ended the text, once one did. */
  get matchedStop(): string | undefined {
    return this.stop?.matched;
  }

  /** One generated token: the text now safe to send, and whether a stop string just completed. */
  push(token: number): { text: string; stopped: boolean } {
    const piece = this.decoder.push(token);
    if (!this.stop) return { text: piece, stopped: false };
    const r = this.stop.push(piece);
    return { text: r.emit, stopped: r.stopped };
  }

  /** At the end (not after a stop string): the text held back (a partial character, a possible stop-string prefix). */
  flush(): string {
    const tail = this.decoder.flush();
    if (!this.stop) return tail;
    const r = this.stop.push(tail);
    return r.emit + (r.stopped ? "" : this.stop.flush());
  }
}
