import { Rng } from "../sampling/rng.js";
import type { TokenCounter } from "./target.js";

/**
 * Random prompt text of a wanted length in tokens, made of random common
 * English words. With the target's tokenizer (its /tokenize) the length is
 * exact: a few round trips find the longest run of words that fits, then
 * one-token filler words make up the rest. Without one it is an estimate from
 * a tokens-per-word ratio (English BPE: about 1.3), which the benchmark can
 * calibrate from the server's usage counts.
 */

// biome-ignore format: a word list reads best packed
const WORDS = [
  "the", "a", "and", "to", "of", "in", "was", "he", "she", "it", "they", "we", "you", "that", "with",
  "for", "on", "at", "by", "from", "up", "out", "into", "over", "after", "before", "under", "again",
  "day", "time", "way", "year", "night", "house", "tree", "park", "river", "sky", "sun", "moon", "star",
  "dog", "cat", "bird", "fish", "boy", "girl", "mom", "dad", "friend", "teacher", "king", "queen",
  "ball", "book", "box", "car", "boat", "cake", "apple", "flower", "garden", "door", "window", "road",
  "happy", "sad", "big", "small", "little", "red", "blue", "green", "old", "new", "good", "bad", "kind",
  "quick", "slow", "bright", "dark", "warm", "cold", "soft", "loud", "quiet", "funny", "brave", "shy",
  "went", "saw", "said", "looked", "played", "ran", "jumped", "found", "made", "gave", "took", "wanted",
  "liked", "loved", "helped", "asked", "told", "thought", "felt", "smiled", "laughed", "walked", "came",
  "go", "see", "play", "run", "jump", "find", "make", "give", "take", "want", "like", "love", "help",
  "one", "two", "three", "many", "some", "every", "all", "more", "most", "very", "so", "too", "then",
  "there", "here", "when", "where", "what", "who", "how", "why", "because", "but", "or", "not", "no",
  "yes", "now", "soon", "always", "never", "together", "away", "around", "home", "school", "water",
  "food", "music", "story", "game", "toy", "hat", "shoe", "bed", "chair", "table", "hill", "forest",
  "sea", "rain", "snow", "wind", "cloud", "light", "morning", "evening", "world", "name", "hand",
];

/** One-token padding; "the" is a single token in practically every vocabulary. */
const FILLER = "the";

/** An endless stream of random words from a seeded generator. */
export class WordStream {
  private readonly rng: Rng;
  private readonly words: string[] = [];
  constructor(seed: number | bigint) {
    this.rng = new Rng(seed);
  }
  /** The first n words, joined by spaces. */
  text(n: number): string {
    while (this.words.length < n) this.words.push(WORDS[this.rng.nextU32() % WORDS.length]!);
    return this.words.slice(0, n).join(" ");
  }
}

export interface BuiltPrompt {
  text: string;
  /** Token count: measured with the tokenizer, else the estimate. */
  tokens: number;
  /** Whether `tokens` was measured and equals the wanted length. */
  exact: boolean;
}

export class PromptBuilder {
  /** Tokens per word, refined by every measurement. */
  tokensPerWord: number;
  private measuredTokens = 0;
  private measuredWords = 0;

  constructor(
    private readonly counter?: TokenCounter,
    tokensPerWord = 1.3,
  ) {
    this.tokensPerWord = tokensPerWord;
  }

  get hasTokenizer(): boolean {
    return this.counter !== undefined;
  }

  /** Feeds an outside measurement (e.g. a server's usage.prompt_tokens) into the ratio. */
  calibrate(words: number, tokens: number): void {
    if (words <= 0 || tokens <= 0) return;
    this.measuredWords += words;
    this.measuredTokens += tokens;
    this.tokensPerWord = this.measuredTokens / this.measuredWords;
  }

  /** Number of words estimated to make `tokens` tokens. */
  wordsFor(tokens: number): number {
    return Math.max(1, Math.round(tokens / this.tokensPerWord));
  }

  /** A prompt of `target` tokens (≥ 1) from the words of `seed`. */
  async build(seed: number | bigint, target: number): Promise<BuiltPrompt> {
    const words = new WordStream(seed);
    const want = Math.max(1, Math.round(target));
    const count = this.counter;
    if (!count) {
      return { text: words.text(this.wordsFor(want)), tokens: want, exact: false };
    }
    // Longest prefix of the word stream with at most `want` tokens (a few guided probes).
    let n = this.wordsFor(want);
    let best = { n: 0, c: 0 };
    let over = Number.POSITIVE_INFINITY;
    for (let iter = 0; iter < 8; iter++) {
      const c = await count(words.text(n));
      this.calibrate(n, c);
      if (c <= want) {
        if (n > best.n) best = { n, c };
        if (c === want) break;
      } else {
        over = Math.min(over, n);
      }
      const step = Math.max(1, Math.round(Math.abs(want - c) / this.tokensPerWord));
      let next = c < want ? n + step : n - step;
      if (next >= over) next = over - 1;
      if (next <= best.n) next = best.n + 1;
      if (next >= over || next < 1) break;
      n = next;
    }
    let text = best.n > 0 ? words.text(best.n) : "";
    let c = best.c;
    // Make up the rest with one-token words, checking the total.
    for (let tries = 0; tries < 4 && c !== want; tries++) {
      const missing = want - c;
      if (missing > 0) {
        const padded = `${text}${text ? " " : ""}${Array(missing).fill(FILLER).join(" ")}`;
        const pc = await count(padded);
        if (pc <= want) {
          text = padded;
          c = pc;
        } else break;
      } else break;
    }
    if (text === "") {
      text = FILLER;
      c = await count(text);
    }
    return { text, tokens: c, exact: c === want };
  }
}

/** Runs `fn` over `items` with at most `limit` calls in flight, keeping the order of results. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (x: T, i: number) => Promise<R>,
) {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
