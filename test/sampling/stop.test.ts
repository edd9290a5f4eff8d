import { describe, expect, it } from "vitest";
import { StopMatcher } from "../../src/sampling/stop.js";

/** Pushes pieces; returns what was emitted by each push, and the final state. */
function feed(stops: string[], pieces: string[]) {
  const m = new StopMatcher(stops);
  const emits: string[] = [];
  let stopped = false;
  for (const p of pieces) {
    const r = m.push(p);
    emits.push(r.emit);
    stopped = r.stopped;
  }
  return { m, emits, stopped, text: emits.join("") };
}

describe("StopMatcher", () => {
  it("finds a stop string split across pushes and emits only the text before it", () => {
    const { emits, stopped, m } = feed(["lo Wo"], ["Hel", "lo W", "orld"]);
    // "l" could start "lo Wo": held; with "lo W" the held "l" is released, "lo W" held; "orld" completes it.
    expect(emits).toEqual(["He", "l", ""]);
    expect(stopped).toBe(true);
    expect(m.matched).toBe("lo Wo");
    expect(m.flush()).toBe("");
    expect(m.push("more")).toEqual({ emit: "", stopped: true });
  });

  it("holds a possible prefix back, then releases it when the text diverges", () => {
    const { emits, stopped, m } = feed(["STOP"], ["abc S", "T", "x", "yz"]);
    expect(emits).toEqual(["abc ", "", "STx", "yz"]);
    expect(stopped).toBe(false);
    expect(m.flush()).toBe("");
  });

  it("flush releases held text at the end", () => {
    const { emits, m } = feed(["</answer>"], ["42 </ans"]);
    expect(emits).toEqual(["42 "]);
    expect(m.flush()).toBe("</ans");
    expect(m.flush()).toBe("");
  });

  it("a stop string in the middle of one push", () => {
    const { emits, stopped } = feed(["\n\n"], ["one\n\ntwo"]);
    expect(emits).toEqual(["one"]);
    expect(stopped).toBe(true);
  });

  it("stop at the very start", () => {
    expect(feed(["User:"], ["User:", " hi"]).emits).toEqual(["", ""]);
    const { emits, stopped } = feed(["User:"], ["Us", "er: hi"]);
    expect(emits).toEqual(["", ""]);
    expect(stopped).toBe(true);
  });

  it("two stop strings where one is a prefix of the other: the earlier-completing shorter one wins", () => {
    // "ab" completes first; text before it is emitted.
    const a = feed(["abc", "ab"], ["x a", "b", "c"]);
    expect(a.text).toBe("x ");
    expect(a.stopped).toBe(true);
    expect(a.m.matched).toBe("ab");
    // Only the longer one: "ab" is held until "c" (or something else) arrives.
    const b = feed(["abc"], ["x a", "b", "d"]);
    expect(b.emits).toEqual(["x ", "", "abd"]);
  });

  it("overlapping candidates: a failed partial match can hide the start of a real one", () => {
    // "aab": after "aa" + "a" the held "aa" fails but its tail "aa" is still a prefix.
    const a = feed(["aab"], ["a", "a", "a", "b", "zzz"]);
    expect(a.text).toBe("a");
    expect(a.stopped).toBe(true);
    const b = feed(["abab"], ["ab", "ab", "ab"]);
    expect(b.text).toBe("");
    const c = feed(["abac"], ["ab", "ab", "ac"]);
    expect(c.emits).toEqual(["", "ab", ""]);
    expect(c.stopped).toBe(true);
  });

  it("several stop strings: the earliest match wins, whichever comes first in the list", () => {
    const r = feed(["world", "lo"], ["hello world"]);
    expect(r.text).toBe("hel");
    expect(r.m.matched).toBe("lo");
    // a prefix of one candidate held while another completes later in the buffer
    const s = feed(["xyz", "yq"], ["ax", "yq"]);
    expect(s.text).toBe("ax");
    expect(s.m.matched).toBe("yq");
  });

  it("an empty list passes text straight through, holding nothing", () => {
    const { emits, stopped, m } = feed([], ["a", "b<", "|end"]);
    expect(emits).toEqual(["a", "b<", "|end"]);
    expect(stopped).toBe(false);
    expect(m.flush()).toBe("");
    expect(feed([""], ["abc"]).emits).toEqual(["abc"]); // empty stop strings are ignored
  });

  it("unicode: multi-unit characters and emoji split across pushes", () => {
    const a = feed(["🛑"], ["ok 🛑 no"]);
    expect(a.text).toBe("ok ");
    // Surrogate halves arriving separately (a decoder should not do this, but matching still works).
    const b = feed(["😀end"], ["é\uD83D", "\uDE00en", "d!"]);
    expect(b.emits).toEqual(["é", "", ""]);
    expect(b.stopped).toBe(true);
    const c = feed(["ß-Ende"], ["Fuß-En", "gel"]);
    expect(c.emits).toEqual(["Fu", "ß-Engel"]);
  });

  it("streaming one character at a time gives the same text as one push", () => {
    const text = "The answer is 42.\n###\nThe next question";
    for (const stops of [["###"], ["\n#", "question"], ["nope"], ["42", "answer is 4"]]) {
      const whole = feed(stops, [text]);
      const chars = feed(stops, [...text]);
      expect(chars.text + chars.m.flush()).toBe(whole.text + whole.m.flush());
      expect(chars.stopped).toBe(whole.stopped);
    }
  });
});
