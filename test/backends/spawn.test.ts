import { readFileSync, rmSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseCommand, Supervisor, splitCommandLine } from "../../src/backends/spawn.js";
import { freePort } from "../../src/net.js";

// The --spawn supervisor on real processes: small Node HTTP servers started through the command
// line, killed, restarted, stopped.

describe("splitCommandLine", () => {
  it("splits like a shell, without one", () => {
    expect(splitCommandLine("llama-server  -m model.gguf --port 8081")).toEqual([
      "llama-server",
      "-m",
      "model.gguf",
      "--port",
      "8081",
    ]);
    expect(splitCommandLine(`a 'b c' "d \\"e\\" $f" g\\ h '' "" i'j'k`)).toEqual([
      "a",
      "b c",
      'd "e" $f',
      "g h",
      "",
      "",
      "ijk",
    ]);
    expect(splitCommandLine("a \\\n b\t\nc")).toEqual(["a", "b", "c"]);
    expect(() => splitCommandLine("a 'b")).toThrow("unterminated ' quote");
    expect(parseCommand("A=1 B='x y' prog --flag")).toEqual({
      file: "prog",
      args: ["--flag"],
      env: { A: "1", B: "x y" },
    });
    expect(() => parseCommand("  ")).toThrow("no command to run");
  });
});

/** A Node HTTP server on $PORT that answers /health after `delayMs`, as a command line. */
function serverCommand(port: number, delayMs = 0, extra = ""): string {
  const js = `const http=require("http");${extra}setTimeout(()=>http.createServer((q,s)=>{s.end(q.url==="/health"?"ok":"{}")}).listen(+process.env.PORT,"127.0.0.1"),${delayMs})`;
  return `PORT=${port} '${process.execPath}' -e '${js}'`;
}

/** Whether a process runs (a zombie, dead but not yet reaped by whoever adopted it, does not). */
function alive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

const once = <T>(sup: Supervisor, event: string) =>
  new Promise<T>((resolve) => sup.once(event, (v: T) => resolve(v)));

describe("Supervisor", () => {
  it("starts the server, waits for its health, restarts it after a kill, stops it", async () => {
    const port = await freePort();
    const sup = new Supervisor({
      command: serverCommand(port, 300),
      url: `http://127.0.0.1:${port}/v1`,
      backoff: { initialMs: 100 },
      pollMs: 50,
    });
    const t0 = performance.now();
    await sup.start();
    // It waited for the server to listen (300 ms after its start).
    expect(performance.now() - t0).toBeGreaterThanOrEqual(300);
    expect((await fetch(`http://127.0.0.1:${port}/health`)).status).toBe(200);
    const pid = sup.pid!;
    expect(sup.status()).toMatchObject({ state: "ready", pid, restarts: 0 });

    const restarted = once<number>(sup, "restart");
    const ready = once<number>(sup, "ready");
    const killedAt = performance.now();
    process.kill(pid, "SIGKILL");
    expect(await restarted).toBe(100);
    const newPid = await ready;
    expect(performance.now() - killedAt).toBeGreaterThanOrEqual(100 + 300);
    expect(newPid).not.toBe(pid);
    expect(sup.status()).toMatchObject({
      state: "ready",
      pid: newPid,
      restarts: 1,
      last_exit: { code: null, signal: "SIGKILL" },
    });

    await sup.stop();
    expect(alive(newPid)).toBe(false);
    expect(sup.status().state).toBe("stopped");
    await expect(fetch(`http://127.0.0.1:${port}/health`)).rejects.toThrow();
  });

  it("backs off exponentially while the server keeps dying, and gives up at the start timeout", async () => {
    const port = await freePort();
    const sup = new Supervisor({
      command: `'${process.execPath}' -e 'console.error("cannot load the model"); process.exit(3)'`,
      url: `http://127.0.0.1:${port}`,
      // Room for four restarts even when starting a process takes most of a second (a loaded machine).
      startTimeoutMs: 5000,
      backoff: { initialMs: 100, maxMs: 400 },
    });
    const delays: number[] = [];
    const spawns: number[] = [];
    sup.on("restart", (d: number) => delays.push(d));
    sup.on("spawn", () => spawns.push(performance.now()));
    await expect(sup.start()).rejects.toThrow(
      /did not answer at http:\/\/127\.0\.0\.1:\d+ within 5000 ms; it exited \(code 3\); its last output: cannot load the model/,
    );
    expect(delays.slice(0, 4)).toEqual([100, 200, 400, 400]);
    for (let i = 1; i < Math.min(spawns.length, 4); i++) {
      expect(spawns[i]! - spawns[i - 1]!).toBeGreaterThanOrEqual(delays[i - 1]! - 5);
    }
    // Stopped: no restart after the failure.
    const n = spawns.length;
    await new Promise((r) => setTimeout(r, 500));
    expect(spawns.length).toBe(n);
    expect(sup.status().state).toBe("stopped");
  });

  it("a program that does not exist fails at once", async () => {
    const sup = new Supervisor({ command: "spindle-no-such-program --port 1", url: "http://127.0.0.1:1" });
    const t0 = performance.now();
    await expect(sup.start()).rejects.toThrow(/cannot run "spindle-no-such-program": .*ENOENT/);
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  it("stop() kills a server that ignores SIGTERM, and what it started, leaving no process behind", async () => {
    const port = await freePort();
    // The server ignores SIGTERM and starts a child of its own that would outlive it.
    const extra = `process.on("SIGTERM",()=>{});const c=require("child_process").spawn(process.execPath,["-e","setInterval(()=>{},1000)"],{stdio:"ignore"});require("fs").writeFileSync(process.env.PIDFILE,String(c.pid));`;
    const pidFile = `${process.env.TMPDIR ?? "/tmp"}/spindle-spawn-test-${port}.pid`;
    const sup = new Supervisor({
      command: `PIDFILE=${pidFile} ${serverCommand(port, 0, extra)}`,
      url: `http://127.0.0.1:${port}`,
      stopTimeoutMs: 300,
      pollMs: 50,
    });
    await sup.start();
    const pid = sup.pid!;
    const grandchild = Number(readFileSync(pidFile, "utf8"));
    rmSync(pidFile);
    expect(alive(pid) && alive(grandchild)).toBe(true);
    const t0 = performance.now();
    await sup.stop();
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
    expect(alive(pid)).toBe(false);
    await new Promise((r) => setTimeout(r, 50));
    expect(alive(grandchild)).toBe(false);
  });
});
