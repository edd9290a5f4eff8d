/** Polls `cond` every 20 ms until it holds (true) or `ms` have passed (false, after one last look). */
export async function waitFor(cond: () => Promise<boolean> | boolean, ms: number): Promise<boolean> {
  const until = performance.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (performance.now() > until) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}
