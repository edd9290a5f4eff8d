/**
 * SentencePiece (BPE-by-score) tokenization as llama.cpp does it: start from one
 * symbol per code point, repeatedly merge the adjacent pair whose concatenation is
 * the highest-scoring vocabulary entry (ties: leftmost first), then emit each
 * symbol's token, or its UTF-8 bytes as <0xNN> tokens when it is not in the vocab.
 *
 * The input is already normalised by the caller (space prefix, spaces → ▁).
 */
import { Heap } from "./heap.js";
import type { Vocab } from "./vocab.js";

interface Bigram {
  left: number;
  right: number;
  score: number;
  /** Length of the merged text when the bigram was queued; stale entries no longer add up to it. */
  size: number;
}

const before = (a: Bigram, b: Bigram) => a.score > b.score || (a.score === b.score && a.left < b.left);

export class SpmEncoder {
  private readonly byteTokens: (number | undefined)[] = new Array(256);

  constructor(private readonly vocab: Vocab) {
    for (let b = 0; b < 256; b++) {
      const hex = b.toString(16).toUpperCase().padStart(2, "0");
      const id =
        vocab.tokenToId.get(`<0x${hex}>`) ??
        (b < 0x80 ? vocab.tokenToId.get(String.fromCharCode(b)) : undefined);
      this.byteTokens[b] = id ?? vocab.unk;
    }
  }

  encode(text: string, out: number[]): void {
    const { tokenToId, scores, maxTokenLength } = this.vocab;
    // One symbol per code point: start offset and length in UTF-16 units, and a doubly linked list.
    const start: number[] = [];
    for (let i = 0; i < text.length; ) {
      start.push(i);
      const c = text.charCodeAt(i);
      i += c >= 0xd800 && c <= 0xdbff && i + 1 < text.length ? 2 : 1;
    }
    const n = start.length;
    if (n === 0) return;
    const len = new Int32Array(n);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      len[i] = (i + 1 < n ? start[i + 1]! : text.length) - start[i]!;
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }

    const queue = new Heap<Bigram>(before);
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const size = len[left]! + len[right]!;
      if (size > maxTokenLength) return;
      const s = start[left]!;
      const id = tokenToId.get(text.slice(s, s + size));
      if (id === undefined) return;
      queue.push({ left, right, score: scores[id]!, size });
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);

    for (let b = queue.pop(); b !== undefined; b = queue.pop()) {
      const { left, right } = b;
      if (len[left] === 0 || len[right] === 0 || len[left]! + len[right]! !== b.size) continue;
      len[left]! += len[right]!;
      len[right] = 0;
      next[left] = next[right]!;
      if (next[right]! >= 0) prev[next[right]!] = left;
      tryAdd(prev[left]!, left);
      tryAdd(left, next[left]!);
    }

    for (let i = 0; i !== -1; i = next[i]!) {
      const piece = text.slice(start[i]!, start[i]! + len[i]!);
      const id = tokenToId.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const byte of Buffer.from(piece, "utf8")) {
        const bt = this.byteTokens[byte];
        if (bt !== undefined) out.push(bt);
      }
    }
  }
}
