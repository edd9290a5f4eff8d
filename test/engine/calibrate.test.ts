import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  CALIBRATION_SHAPES,
  type CalibrationPoint,
  calibrate,
  fitCost,
  shapeFits,
} from "../../src/engine/calibrate.js";
import { DEFAULT_SIM_COST, type SimCost, SimRunner, simStepMs } from "../../src/engine/sim-runner.js";
import { SpindleError } from "../../src/errors.js";
import { GGMLType } from "../../src/gguf/types.js";
import { loadModel } from "../../src/model/model.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { Rng } from "../../src/sampling/rng.js";
import { Sampler } from "../../src/sampling/sampler.js";
import { runCli } from "../helpers/cli.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * The simulated runner's cost model and its calibration against the real runner:
 * `fitCost` on synthetic points (exact, noisy, one outlier, non-negativity), `calibrate` on
 * stories260K and on a short-context synthesized model, and `spindle calibrate` in-process.
 */

const dir = tempDir();
const KEYS = ["baseMs", "perPrefillTokenMs", "perDecodeSeqMs", "perAttendedTokenMs"] as const;

/** The step a point stands for, as `simStepMs` sees it. */
const stepItems = (p: Pick<CalibrationPoint, "prefillTokens" | "decodeSeqs" | "context">) => [
  ...(p.prefillTokens > 0 ? [{ tokens: new Array<number>(p.prefillTokens).fill(0), pos: 0 }] : []),
  ...Array.from({ length: p.decodeSeqs }, () => ({ tokens: [0], pos: p.context })),
];

/** One point per standard shape, timed by the cost model itself (times `noise(i)` if given). */
function pointsFor(cost: SimCost, noise: (i: number) => number = () => 1): CalibrationPoint[] {
  return CALIBRATION_SHAPES.map((s, i) => {
    const p = { prefillTokens: s.prefill, decodeSeqs: s.decode, context: s.context };
    return { ...p, measuredMs: simStepMs(cost, stepItems(p)) * noise(i) };
  });
}

const truthMs = (cost: SimCost, p: CalibrationPoint) => simStepMs(cost, stepItems(p));

const COSTS: Record<string, SimCost> = {
  default: DEFAULT_SIM_COST,
  // What stories260K measures on one core: attention is a large share of a long prefill.
  stories260K: { baseMs: 0.48, perPrefillTokenMs: 0.45, perDecodeSeqMs: 0.42, perAttendedTokenMs: 0.003 },
  "no base": { baseMs: 0, perPrefillTokenMs: 0.3, perDecodeSeqMs: 1.5, perAttendedTokenMs: 0.001 },
};

afterEach(() => vi.restoreAllMocks());

describe("fitCost", () => {
  for (const [name, cost] of Object.entries(COSTS)) {
    it(`recovers the coefficients of exact points (${name})`, () => {
      const fit = fitCost(pointsFor(cost));
      for (const k of KEYS) {
        if (cost[k] === 0) expect(fit[k], k).toBe(0);
        else expect(Math.abs(fit[k] / cost[k] - 1), k).toBeLessThan(1e-6);
      }
    });
  }

  it("recovers them from a subset of the shapes too (a short-context model's)", () => {
    const pts = pointsFor(COSTS.stories260K!).filter((p) => p.context + 1 <= 256);
    expect(pts.length).toBeLessThan(CALIBRATION_SHAPES.length);
    const fit = fitCost(pts);
    for (const k of KEYS) expect(Math.abs(fit[k] / COSTS.stories260K![k] - 1), k).toBeLessThan(1e-6);
  });

  it("stays close under ±5% multiplicative noise", () => {
    // Each point is off by up to 5%, so no fit can promise better than about 5% per step; averaging
    // over 11 points keeps the fitted step times within that (worst seen over 500 seeds: 6.5%), so
    // 10% is the bound. Per coefficient, only those that carry a large share of the steps they appear
    // in are identifiable to that level (per prefill token, per decoding sequence: worst seen 11%);
    // the base (under a millisecond against steps of up to ~100 ms) and DEFAULT_SIM_COST's attention
    // term (a few % of each step) are not, and are checked only through the step times.
    for (const [name, cost] of Object.entries(COSTS)) {
      for (let seed = 1; seed <= 50; seed++) {
        const rng = new Rng(seed);
        const noise = CALIBRATION_SHAPES.map(() => 1 + 0.1 * (rng.next() - 0.5));
        const pts = pointsFor(cost, (i) => noise[i]!);
        const fit = fitCost(pts);
        for (const k of KEYS) expect(fit[k], `${name} seed ${seed} ${k}`).toBeGreaterThanOrEqual(0);
        for (const p of pts) {
          const err = Math.abs(truthMs(fit, p) / truthMs(cost, p) - 1);
          expect(err, `${name} seed ${seed} ${JSON.stringify(p)}`).toBeLessThan(0.1);
        }
        for (const k of ["perPrefillTokenMs", "perDecodeSeqMs"] as const) {
          expect(Math.abs(fit[k] / cost[k] - 1), `${name} seed ${seed} ${k}`).toBeLessThan(0.2);
        }
      }
    }
  });

  it("fits relative error: one slow long prefill does not throw the small decode steps off", () => {
    // Seen on a loaded 2-core machine: the 256-token prefill timed at 1.7x its usual time. A plain
    // least-squares fit is decided by that one big point and put the decode steps 60-140% off.
    for (const [name, cost] of Object.entries(COSTS)) {
      const pts = pointsFor(cost, (i) => (CALIBRATION_SHAPES[i]!.prefill === 256 ? 1.7 : 1));
      const fit = fitCost(pts);
      for (const p of pts.filter((q) => q.prefillTokens === 0)) {
        const err = Math.abs(truthMs(fit, p) / truthMs(cost, p) - 1);
        expect(err, `${name} ${JSON.stringify(p)}`).toBeLessThan(0.15);
      }
    }
  });

  it("is the non-negative least-squares optimum (KKT conditions), zeroing a coefficient when needed", () => {
    // Residual r_k = (fitted_k - measured_k) / measured_k; gradient g_j = Σ r_k f_kj / measured_k.
    // At the constrained optimum: g_j = 0 where coefficient j > 0, g_j >= 0 where it is 0.
    const cost = COSTS["no base"]!;
    let zeroed = 0;
    for (let seed = 1; seed <= 50; seed++) {
      const rng = new Rng(1000 + seed);
      const pts = pointsFor(cost, () => 1 + 0.1 * (rng.next() - 0.5));
      const fit = fitCost(pts);
      const features = pts.map((p) => [
        1,
        p.prefillTokens,
        p.decodeSeqs,
        simStepMs(
          { baseMs: 0, perPrefillTokenMs: 0, perDecodeSeqMs: 0, perAttendedTokenMs: 1 },
          stepItems(p),
        ),
      ]);
      const r = pts.map((p) => (truthMs(fit, p) - p.measuredMs) / p.measuredMs);
      KEYS.forEach((k, j) => {
        const col = pts.map((p, i) => features[i]![j]! / p.measuredMs);
        const norm = Math.sqrt(col.reduce((s, v) => s + v * v, 0));
        const g = col.reduce((s, v, i) => s + v * r[i]!, 0) / norm;
        if (fit[k] > 0) expect(Math.abs(g), `seed ${seed} ${k}`).toBeLessThan(1e-9);
        else expect(g, `seed ${seed} ${k}`).toBeGreaterThan(-1e-9);
      });
      if (fit.baseMs === 0) zeroed++;
    }
    // Both branches were exercised: with a true base of 0, noise pushes the free fit's base below 0 often.
    expect(zeroed).toBeGreaterThan(0);
    expect(zeroed).toBeLessThan(50);
  });

  it("refuses an empty set of points", () => {
    expect(() => fitCost([])).toThrow(SpindleError);
  });
});

describe("calibrate on the real runner", () => {
  const model = loadModel(testModel(STORIES_260K));

  it("stories260K: non-negative coefficients, a finite point per shape, a fit within 60% on average", () => {
    const c = calibrate(model, 1);
    for (const k of KEYS) {
      expect(Number.isFinite(c.cost[k]), k).toBe(true);
      expect(c.cost[k], k).toBeGreaterThanOrEqual(0);
    }
    // Context 2048: every standard shape fits, and each is measured once, in order.
    const shapes = CALIBRATION_SHAPES.filter((s) => shapeFits(s, model.config.contextLength));
    expect(shapes).toHaveLength(CALIBRATION_SHAPES.length);
    expect(c.points.map((p) => [p.prefillTokens, p.decodeSeqs, p.context])).toEqual(
      shapes.map((s) => [s.prefill, s.decode, s.context]),
    );
    for (const p of c.points) {
      expect(Number.isFinite(p.measuredMs) && p.measuredMs > 0, JSON.stringify(p)).toBe(true);
      expect(p.fittedMs).toBeCloseTo(simStepMs(c.cost, stepItems(p)), 9);
    }
    // relError is the mean of |fitted - measured| / measured over the 11 shapes. The cost model is
    // linear in four features and the reference kernels are close to that (about 6-8% on a quiet
    // machine), but each point here is a single timing on a possibly shared 2-core CI machine, where
    // one step can take 1.5-2x its usual time (GC, the other test worker). The fit weighs points by
    // relative error, so one such point moves the mean by a few percent; 60% fails only when the
    // model's terms do not match what was timed (a wrong feature, a unit slip, a broken solver).
    expect(c.relError).toBeGreaterThanOrEqual(0);
    expect(c.relError).toBeLessThan(0.6);
    // The KV pool is what the largest shape needs (8 sequences x 33 blocks at context 512), not
    // 2048 tokens x 24 sequences: that sizing took gigabytes on a real model.
    expect(c.kvBlocks).toBe(8 * Math.ceil(513 / 16));
  });

  it("a short-context model: only the shapes that fit its context are measured", () => {
    const out = join(dir, "ctx256.gguf");
    synthModel({
      arch: "llama",
      shape: { ...SHAPES.tiny!, contextLength: 256 },
      type: GGMLType.F32,
      vocabPath: testModel(STORIES_260K),
      out,
    });
    const c = calibrate(loadModel(out), 1);
    const fits = CALIBRATION_SHAPES.filter((s) => s.prefill <= 256 && (s.decode === 0 || s.context < 256));
    expect(fits.length).toBeGreaterThanOrEqual(4);
    expect(fits.length).toBeLessThan(CALIBRATION_SHAPES.length);
    expect(c.points.map((p) => [p.prefillTokens, p.decodeSeqs, p.context])).toEqual(
      fits.map((s) => [s.prefill, s.decode, s.context]),
    );
    for (const p of c.points) expect(Number.isFinite(p.measuredMs) && p.measuredMs > 0).toBe(true);
    for (const k of KEYS) expect(c.cost[k], k).toBeGreaterThanOrEqual(0);
  });

  it("refuses a context too short to fit four coefficients, and a repeat count below 1", () => {
    const out = join(dir, "ctx64.gguf");
    synthModel({
      arch: "llama",
      shape: { ...SHAPES.tiny!, contextLength: 64 },
      type: GGMLType.F32,
      vocabPath: testModel(STORIES_260K),
      out,
    });
    expect(() => calibrate(loadModel(out), 1)).toThrow(/too short to calibrate/);
    expect(() => calibrate(model, 0)).toThrow(SpindleError);
  });
});

describe("spindle calibrate", () => {
  it("prints the four coefficients as one JSON object that a SimRunner takes", async () => {
    const r = await runCli(["calibrate", "--model", "stories260K", "--repeats", "1"]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines).toHaveLength(1);
    const cost = JSON.parse(lines[0]!) as SimCost;
    expect(Object.keys(cost).sort()).toEqual([...KEYS].sort());
    for (const k of KEYS) {
      expect(typeof cost[k], k).toBe("number");
      expect(cost[k], k).toBeGreaterThanOrEqual(0);
    }
    // The per-shape table and the fit's error go to stderr.
    expect(r.stderr.match(/^prefill .* measured .* fitted .*$/gm)).toHaveLength(CALIBRATION_SHAPES.length);
    expect(r.stderr).toMatch(/mean relative error of the fit: [\d.]+%/);

    const sim = new SimRunner({ numBlocks: 64, cost });
    expect(sim.cost).toEqual(cost);
    const sampler = new Sampler({ temperature: 0 }, sim.vocabSize);
    const items = [
      {
        tokens: [1, 2, 3],
        pos: 0,
        blockTable: [0],
        logits: "last" as const,
        sampler,
        history: [],
        seqKey: 1,
      },
      { tokens: [4], pos: 20, blockTable: [1, 2], logits: "last" as const, sampler, history: [], seqKey: 2 },
    ];
    const step = sim.execute(items);
    expect(step.simulatedMs).toBeCloseTo(simStepMs(cost, items), 12);
    expect(Number.isFinite(step.simulatedMs)).toBe(true);
    expect(step.samples).toHaveLength(2);
  });

  it("a bad repeat count is a one-line error", async () => {
    const r = await runCli(["calibrate", "--model", "stories260K", "--repeats", "0"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^spindle: repeats must be a positive integer, got 0\n$/);
  });
});
