/**
 * Byte-level BPE (GPT-2 style) as llama.cpp does it: pre-tokenize the text into
 * words, write each word's UTF-8 bytes as GPT-2's printable byte characters, then
 * merge adjacent symbols by merge rank (lowest first, ties leftmost first) until no
 * ranked pair is left. Results per word are cached, since words repeat a lot.
 */
import { Heap } from "./heap.js";
import { RegexSplitter } from "./pretokenize.js";
import { BYTE_TO_CHAR } from "./unicode.js";
import type { Vocab } from "./vocab.js";

interface Bigram {
  left: number;
  right: number;
  rank: number;
  /** Symbol lengths when queued: a merge on either side makes the entry stale. */
  leftLen: number;
  rightLen: number;
}

const before = (a: Bigram, b: Bigram) => a.rank < b.rank || (a.rank === b.rank && a.left < b.left);

const CACHE_LIMIT = 1 << 16;

export class BpeEncoder {
  private readonly splitter: RegexSplitter;
  private readonly merges: Map<string, number>;
  private readonly ignoreMerges: boolean;
  private cache = new Map<string, readonly number[]>();

  constructor(private readonly vocab: Vocab) {
    this.splitter = new RegexSplitter(vocab.preConfig!.regexes);
    this.merges = vocab.merges!;
    this.ignoreMerges = vocab.preConfig!.ignoreMerges;
  }

  /** The pre-tokenizer's words for `text` (before byte encoding). */
  words(text: string): string[] {
    return this.splitter.split(text);
  }

  encode(text: string, out: number[]): void {
    for (const word of this.splitter.split(text)) {
      const encoded = byteEncode(word);
      let ids = this.cache.get(encoded);
      if (ids === undefined) {
        ids = this.encodeWord(encoded);
        if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
        this.cache.set(encoded, ids);
      }
      for (const id of ids) out.push(id);
    }
  }

  /** Merges one byte-encoded word. Every byte character is one UTF-16 unit. */
  private encodeWord(word: string): number[] {
    const { tokenToId } = this.vocab;
    const n = word.length;
    if (n === 0) return [];
    if (this.ignoreMerges || n === 1) {
      const id = tokenToId.get(word);
      if (id !== undefined) return [id];
    }
    const len = new Int32Array(n).fill(1);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const queue = new Heap<Bigram>(before);
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const leftLen = len[left]!;
      const rightLen = len[right]!;
      const rank = this.merges.get(
        `${word.slice(left, left + leftLen)} ${word.slice(right, right + rightLen)}`,
      );
      if (rank !== undefined) queue.push({ left, right, rank, leftLen, rightLen });
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);
    for (let b = queue.pop(); b !== undefined; b = queue.pop()) {
      const { left, right } = b;
      if (len[left] !== b.leftLen || len[right] !== b.rightLen || len[right] === 0) continue;
      len[left]! += len[right]!;
      len[right] = 0;
      next[left] = next[right]!;
      if (next[right]! >= 0) prev[next[right]!] = left;
      tryAdd(prev[left]!, left);
      tryAdd(left, next[left]!);
    }
    const ids: number[] = [];
    for (let i = 0; i !== -1; i = next[i]!) {
      const piece = word.slice(i, i + len[i]!);
      const id = tokenToId.get(piece);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      // Not in the vocab: fall back to single characters; only ASCII ones can be tokens on their own.
      for (let k = 0; k < piece.length; k++) {
        if (piece.charCodeAt(k) >= 0x80) continue;
        const cid = tokenToId.get(piece[k]!);
        if (cid !== undefined) ids.push(cid);
      }
    }
    return ids;
  }
}

/** A word's UTF-8 bytes as GPT-2 byte characters. */
export function byteEncode(word: string): string {
  let ascii = true;
  for (let i = 0; i < word.length; i++) {
    if (word.charCodeAt(i) > 0x7f) {
      ascii = false;
      break;
    }
  }
  let out = "";
  if (ascii) {
    for (let i = 0; i < word.length; i++) out += BYTE_TO_CHAR[word.charCodeAt(i)];
    return out;
  }
  for (const b of Buffer.from(word, "utf8")) out += BYTE_TO_CHAR[b];
  return out;
}
