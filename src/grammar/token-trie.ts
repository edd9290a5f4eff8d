import type { GrammarVocab } from "./constraint.js";

/**
 * The vocabulary as a trie of token byte strings, laid out in depth-first order: node `i` adds byte
 * `byte[i]` at depth `depth[i]` (1 = first byte), its subtree is nodes i+1 … skip[i]-1, and the
 * tokens whose bytes end there are tokIds[tokStart[i] … tokStart[i+1]-1]. A mask walks it once,
 * skipping every subtree the automaton rejects at its root. Control tokens and tokens without
 * bytes are left out (they are never allowed inside a grammar). `below` holds, for each node, the
 * bytes that occur anywhere under it (8 words of 32 bits a node), so a walk that stands in a
 * position every such byte leaves unchanged takes the whole subtree at once.
 */
export class TokenTrie {
  readonly byte: Uint8Array;
  readonly depth: Uint16Array;
  readonly skip: Int32Array;
  readonly tokStart: Int32Array;
  readonly tokIds: Int32Array;
  readonly below: Int32Array;
  readonly maxDepth: number;
  /** Every token's bytes (empty for control tokens). */
  readonly bytes: Uint8Array[];
  readonly vocabSize: number;

  constructor(vocabSize: number, bytes: Uint8Array[], ids: number[]) {
    this.vocabSize = vocabSize;
    this.bytes = bytes;
    ids.sort((x, y) => compareBytes(bytes[x]!, bytes[y]!) || x - y);
    const nodeByte: number[] = [];
    const nodeDepth: number[] = [];
    const tokAt: number[] = []; // node index of each sorted token
    const path: number[] = []; // node index at each depth of the current path
    let prev: Uint8Array = new Uint8Array(0);
    let maxDepth = 0;
    for (const id of ids) {
      const b = bytes[id]!;
      let common = 0;
      while (common < b.length && common < prev.length && b[common] === prev[common]) common++;
      path.length = common;
      for (let d = common; d < b.length; d++) {
        path.push(nodeByte.length);
        nodeByte.push(b[d]!);
        nodeDepth.push(d + 1);
      }
      tokAt.push(path[b.length - 1]!);
      if (b.length > maxDepth) maxDepth = b.length;
      prev = b;
    }
    const n = nodeByte.length;
    this.byte = Uint8Array.from(nodeByte);
    this.depth = Uint16Array.from(nodeDepth);
    this.maxDepth = maxDepth;
    const skip = new Int32Array(n);
    const open: number[] = [];
    for (let i = 0; i < n; i++) {
      while (open.length > 0 && nodeDepth[open[open.length - 1]!]! >= nodeDepth[i]!) skip[open.pop()!] = i;
      open.push(i);
    }
    for (const i of open) skip[i] = n;
    this.skip = skip;
    // tokens per node, in CSR form (sorted tokens visit nodes in increasing order)
    const start = new Int32Array(n + 1);
    for (const node of tokAt) start[node + 1]!++;
    for (let i = 0; i < n; i++) start[i + 1]! += start[i]!;
    this.tokStart = start;
    const fill = start.slice(0, n);
    const tokIds = new Int32Array(ids.length);
    for (let k = 0; k < ids.length; k++) tokIds[fill[tokAt[k]!]!++] = ids[k]!;
    this.tokIds = tokIds;
    // Bytes under each node: its children's bytes and what lies under them (children follow their
    // parent in depth-first order, so a reverse pass sees every child first).
    const below = new Int32Array(n * 8);
    for (let i = n - 1; i >= 0; i--)
      for (let c = i + 1; c < skip[i]!; c = skip[c]!) {
        below[i * 8 + (this.byte[c]! >>> 5)]! |= 1 << (this.byte[c]! & 31);
        for (let w = 0; w < 8; w++) below[i * 8 + w]! |= below[c * 8 + w]!;
      }
    this.below = below;
  }

  get nodes(): number {
    return this.byte.length;
  }
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

/** Printable ASCII but `"` and `\\`: the bytes that leave most string-like grammar positions where they are. */
export const isPlainByte = (b: number): boolean => b >= 0x20 && b <= 0x7e && b !== 0x22 && b !== 0x5c;

/** Plain tokens longer than this stay in the walked trie (the run of plain bytes is checked up to it). */
export const PLAIN_RUN = 16;

/**
 * A vocabulary prepared for masks: the trie of all tokens, and, split out, the short tokens made
 * only of plain bytes (as masks by length) and the trie of the others. At a position from which
 * any plain bytes are allowed for a while (inside a JSON string, a length-bounded one, a `.*`),
 * those plain tokens are allowed without walking them, and only the other trie is walked.
 */
export interface VocabIndex {
  all: TokenTrie;
  rest: TokenTrie;
  plainMask: Uint32Array;
  /** Length of the longest plain token. */
  maxPlain: number;
  /** The plain tokens of at most `len` bytes (len < maxPlain), as a mask; built on first use. */
  plainUpTo(len: number): Uint32Array;
}

const indexes = new WeakMap<GrammarVocab, VocabIndex>();

/** The index of a vocabulary, built once per GrammarVocab object. */
export function vocabIndex(vocab: GrammarVocab): VocabIndex {
  let v = indexes.get(vocab);
  if (!v) {
    const n = vocab.vocabSize;
    const bytes: Uint8Array[] = [];
    const ids: number[] = [];
    const restIds: number[] = [];
    const plainMask = new Uint32Array((n + 31) >>> 5);
    for (let id = 0; id < n; id++) {
      const b = vocab.isControl(id) || vocab.eogTokens.has(id) ? new Uint8Array(0) : vocab.tokenBytes(id);
      bytes.push(b);
      if (b.length === 0) continue;
      ids.push(id);
      if (b.length <= PLAIN_RUN && b.every(isPlainByte)) plainMask[id >>> 5]! |= 1 << (id & 31);
      else restIds.push(id);
    }
    let maxPlain = 0;
    const byLen: number[][] = [];
    for (let id = 0; id < n; id++) {
      if (!((plainMask[id >>> 5]! >>> (id & 31)) & 1)) continue;
      const len = bytes[id]!.length;
      if (len > maxPlain) maxPlain = len;
      (byLen[len] ??= []).push(id);
    }
    const upTo: Uint32Array[] = [];
    const plainUpTo = (len: number): Uint32Array => {
      if (len >= maxPlain) return plainMask;
      let m = upTo[len];
      if (!m) {
        m = len === 0 ? new Uint32Array(plainMask.length) : plainUpTo(len - 1).slice();
        for (const id of byLen[len] ?? []) m[id >>> 5]! |= 1 << (id & 31);
        upTo[len] = m;
      }
      return m;
    };
    v = {
      all: new TokenTrie(n, bytes, ids),
      rest: new TokenTrie(n, bytes, restIds),
      plainMask,
      maxPlain,
      plainUpTo,
    };
    indexes.set(vocab, v);
  }
  return v;
}
