/**
 * An incremental Server-Sent Events parser: bytes arrive in arbitrary pieces
 * (an event may be split across TCP reads, a read may hold several events, a
 * CRLF may be split between two reads), and complete events come out with the
 * `data:` lines joined by "\n", as the EventSource spec says. Only `data` is
 * kept; comments (":" lines) and other fields are skipped.
 */
export class SseParser {
  private readonly decoder = new TextDecoder("utf-8");
  private buf = "";
  private data: string[] = [];
  private hasData = false;

  /** Feeds a piece of the stream; returns the data of every event it completed. */
  push(chunk: Uint8Array | string): string[] {
    this.buf += typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    return this.drain(false);
  }

  /** The stream ended: returns an event left without its closing blank line, if any. */
  end(): string[] {
    this.buf += this.decoder.decode();
    const out = this.drain(true);
    if (this.buf.length > 0) {
      this.line(this.buf);
      this.buf = "";
    }
    if (this.hasData) out.push(this.take());
    return out;
  }

  private drain(final: boolean): string[] {
    const out: string[] = [];
    let start = 0;
    for (;;) {
      let i = start;
      while (i < this.buf.length && this.buf[i] !== "\n" && this.buf[i] !== "\r") i++;
      if (i >= this.buf.length) break;
      // A "\r" at the very end may be the first half of "\r\n": wait for the next piece.
      if (this.buf[i] === "\r" && i + 1 >= this.buf.length && !final) break;
      const line = this.buf.slice(start, i);
      start = i + (this.buf[i] === "\r" && this.buf[i + 1] === "\n" ? 2 : 1);
      if (line.length === 0) {
        if (this.hasData) out.push(this.take());
      } else {
        this.line(line);
      }
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  private line(line: string): void {
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field !== "data") return;
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    this.data.push(value);
    this.hasData = true;
  }

  private take(): string {
    const d = this.data.join("\n");
    this.data = [];
    this.hasData = false;
    return d;
  }
}
