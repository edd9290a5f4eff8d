import type { Tokenizer } from "./tokenizer.js";

export interface IncrementalDecoderOptions {
  /** As in `decode`: leave control tokens out and drop a leading BOS / trailing EOS. Default false. */
  skipSpecial?: boolean;
  /**
   * The tokens continue text that was already shown (a completion after its prompt), so
   * the first token keeps its leading space. Default false: the stream is decoded as
   * `decode` decodes a whole sequence, where SentencePiece's space prefix is dropped
   * from the first token unless a BOS comes before it.
   */
  continuation?: boolean;
}

/**
 * Turns a stream of token ids into text, emitting only complete UTF-8 characters:
 * the bytes of a character split across tokens are held until it is complete, and a
 * byte sequence that cannot become a character is emitted as U+FFFD as soon as that
 * is known. push() + ... + flush() gives the same text as `decode` of all the ids.
 */
export class IncrementalDecoder {
  private readonly decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  private readonly skipSpecial: boolean;
  private removeSpace: boolean;
  private first = true;
  /** A trailing EOS that decode would drop, held until another token follows it. */
  private heldEos = false;

  constructor(
    private readonly tok: Tokenizer,
    opts: IncrementalDecoderOptions = {},
  ) {
    this.skipSpecial = opts.skipSpecial ?? false;
    this.removeSpace = tok.addSpacePrefix && !opts.continuation;
  }

  /** Adds one token; returns the text that is now complete (often "", never half a character). */
  push(id: number): string {
    const tok = this.tok;
    let text = "";
    if (this.heldEos) {
      this.heldEos = false;
      text += this.bytes(tok.eos!);
    }
    if (this.first) {
      this.first = false;
      if (this.skipSpecial && tok.addBos && id === tok.bos) {
        this.removeSpace = false;
        return text;
      }
    }
    if (this.skipSpecial && tok.addEos && id === tok.eos) {
      this.heldEos = true;
      return text;
    }
    return text + this.bytes(id);
  }

  /** Ends the stream: returns whatever is left, with an incomplete character as U+FFFD. */
  flush(): string {
    this.heldEos = false;
    return this.decoder.decode();
  }

  private bytes(id: number): string {
    let p = this.tok.tokenBytes(id, !this.skipSpecial);
    if (this.removeSpace && p.length > 0 && p[0] === 0x20) p = p.subarray(1);
    this.removeSpace = false;
    return this.decoder.decode(p, { stream: true });
  }
}
