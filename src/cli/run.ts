import { basename } from "node:path";
import { createInterface, type Interface } from "node:readline";
import { type Backend, startBackend } from "../backends/index.js";
import type { ChatMessage } from "../chat/template.js";
import { SpindleError } from "../errors.js";
import { ensureModel } from "../model/default-model.js";
import { modelFileFacts } from "../model/model-facts.js";
import { ProgressBar } from "../progress.js";
import type { SamplingParams } from "../sampling/params.js";
import { chatPrompt } from "../server/chat-prompt.js";
import type { LoadedModel } from "../server/context.js";
import { command } from "./options.js";

/**
 * `spindle run MODEL [PROMPT]`: a chat in the terminal, as `ollama run`. The model runs in this
 * process on the engine (the `local` backend: the engine worker, paged KV, one sequence), each
 * turn rendered with the model's chat template by the server's own `chatPrompt`, so a
 * conversation here is token for token what /v1/chat/completions would see.
 *
 * - With a prompt (arguments, or stdin when it is not a terminal) it prints the answer and exits.
 * - Otherwise it reads messages at a `>>> ` prompt and streams each answer, keeping the
 *   conversation. `"""` starts and ends a multi-line message; /bye (or Ctrl-D) exits; /clear
 *   forgets the conversation; /? lists the commands. Ctrl-C stops the answer being written (what
 *   was written stays in the history) and, at an empty prompt, says how to exit, as Ollama does.
 * - When the conversation outgrows the context, the oldest turns are left out (the system
 *   message stays), as Ollama does, and a note on stderr says so.
 */

/** The context `run` gives a chat unless --ctx-size says otherwise (Ollama's default), at most the model's. */
export const RUN_DEFAULT_CTX = 4096;

export const RUN = command({
  name: "run",
  usage: 'spindle run MODEL ["PROMPT"] [--system S] [--temperature T] [--ctx-size N] [options]',
  summary: `Chats with a model in the terminal, as \`ollama run\` does: the answer streams as it is generated,
with the model's chat template, and the conversation is kept until you leave. With a PROMPT (or text
piped on stdin) it prints one answer and exits. MODEL is a path, a model name or a Hugging Face
repository (hf.co/owner/repo[:QUANT], owner/repo:QUANT, owner/repo/file.gguf), pulled on first use.

In the chat: """ starts and ends a multi-line message, /clear forgets the conversation, /bye or
Ctrl-D exits, and Ctrl-C stops the answer being written.`,
  options: {
    system: { type: "string", arg: "S", description: "a system message that opens the conversation" },
    temperature: {
      type: "string",
      arg: "T",
      default: "0.8",
      description: "sampling temperature; 0 is greedy (always the most likely token)",
    },
    "top-k": {
      type: "string",
      arg: "K",
      default: "40",
      description: "sample from the K most likely tokens only",
    },
    "top-p": {
      type: "string",
      arg: "P",
      default: "0.9",
      description: "sample from the smallest set of tokens whose probability reaches P",
    },
    seed: {
      type: "string",
      arg: "S",
      description: "seed of the sampler's random numbers, for repeatable answers",
    },
    "max-tokens": {
      type: "string",
      short: "n",
      arg: "N",
      description: "most tokens in one answer (default: what the context leaves)",
    },
    "ctx-size": {
      type: "string",
      short: "c",
      arg: "N",
      description: `tokens of conversation the model sees, sizing the KV cache (default ${RUN_DEFAULT_CTX}, at most the model's context)`,
    },
    threads: {
      type: "string",
      arg: "N",
      description: "kernel threads a large matmul is split over (default: the cores; also $SPINDLE_THREADS)",
    },
    verbose: { type: "boolean", description: "after each answer, print token counts and speed on stderr" },
  },
  allowPositionals: true,
});

function num(name: string, v: string | undefined, check: (n: number) => boolean): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!check(n)) throw new SpindleError(`--${name}: bad value "${v}"`);
  return n;
}

interface Out {
  write(s: string): unknown;
}

/** One conversation with the engine: the history, how each turn is rendered and streamed. */
class Chat {
  readonly messages: ChatMessage[] = [];
  private current: { abort(): void } | undefined;

  constructor(
    private readonly model: LoadedModel,
    private readonly system: string | undefined,
    private readonly sampling: Partial<SamplingParams>,
    private readonly maxTokens: number | undefined,
    private readonly verbose: boolean,
  ) {
    this.clear();
  }

  clear(): void {
    this.messages.length = 0;
    if (this.system !== undefined) this.messages.push({ role: "system", content: this.system });
  }

  get answering(): boolean {
    return this.current !== undefined;
  }

  /** Stops the answer being written; true when there was one. */
  interrupt(): boolean {
    if (!this.current) return false;
    this.current.abort();
    return true;
  }

  /** Sends a user message and streams the answer to `out`; the answer joins the history. */
  async send(text: string, out: Out, err: Out): Promise<void> {
    this.messages.push({ role: "user", content: text });
    const ctx = this.model.info.contextLength;
    let prompt = chatPrompt(this.model, { messages: this.messages });
    // Leave out the oldest turns (never the system message or the new one) until some room is left.
    let dropped = 0;
    while (prompt.ids.length >= ctx) {
      const first = this.messages.findIndex((m) => m.role !== "system");
      if (first < 0 || first === this.messages.length - 1) {
        this.messages.pop();
        throw new SpindleError(
          `the message is ${prompt.ids.length} tokens, more than the context of ${ctx}; raise --ctx-size or send less`,
        );
      }
      this.messages.splice(first, this.messages[first + 1]?.role === "assistant" ? 2 : 1);
      dropped++;
      prompt = chatPrompt(this.model, { messages: this.messages });
    }
    if (dropped > 0)
      err.write(
        `(the oldest ${dropped} turn(s) no longer fit in the context of ${ctx} tokens and were left out)\n`,
      );
    const room = ctx - prompt.ids.length;
    const stream = this.model.backend.submit({
      prompt: prompt.ids,
      maxTokens: Math.min(room, this.maxTokens ?? room),
      sampling: this.sampling,
    });
    this.current = stream;
    let answer = "";
    try {
      for await (const ev of stream) {
        if (ev.text.length > 0) {
          answer += ev.text;
          out.write(ev.text);
        }
        if (ev.finish) {
          const f = ev.finish;
          if (f.reason === "error") throw new SpindleError(f.message ?? "generation failed");
          if (this.verbose) {
            const t = f.times;
            const secs =
              t.firstToken !== undefined && t.lastToken !== undefined
                ? (t.lastToken - t.firstToken) / 1000
                : 0;
            const rate =
              secs > 0 && f.completionTokens > 1 ? ((f.completionTokens - 1) / secs).toFixed(1) : "-";
            err.write(
              `\n(prompt ${f.promptTokens} tokens, ${f.cachedTokens} cached; answer ${f.completionTokens} tokens, ${rate} tok/s; ${f.reason})`,
            );
          }
        }
      }
    } finally {
      this.current = undefined;
      this.messages.push({ role: "assistant", content: answer });
    }
  }
}

export async function runCommand(args: string[]): Promise<number> {
  const parsed = RUN.parse(args);
  if (!parsed) return 0;
  const { values: v, positionals } = parsed;
  const [modelArg, ...words] = positionals;
  if (modelArg === undefined) {
    process.stderr.write(`spindle run: which model?\n${RUN.help()}\n`);
    return 2;
  }
  const sampling: Partial<SamplingParams> = {
    temperature: num("temperature", v.temperature, (n) => n >= 0),
    topK: num("top-k", v["top-k"], (n) => Number.isInteger(n) && n >= 0),
    topP: num("top-p", v["top-p"], (n) => n > 0 && n <= 1),
  };
  const seed = num("seed", v.seed, Number.isInteger);
  if (seed !== undefined) sampling.seed = seed;
  const maxTokens = num("max-tokens", v["max-tokens"], (n) => Number.isInteger(n) && n >= 1);
  const ctxSize = num("ctx-size", v["ctx-size"], (n) => Number.isInteger(n) && n >= 1);
  if (v.threads !== undefined) {
    process.env.SPINDLE_THREADS = String(num("threads", v.threads, (n) => Number.isInteger(n) && n >= 1));
  }

  // One-shot: the prompt from the arguments, or everything piped on stdin.
  let oneShot: string | undefined = words.length > 0 ? words.join(" ") : undefined;
  if (oneShot === undefined && !process.stdin.isTTY) {
    oneShot = await readAll(process.stdin);
    if (oneShot === "")
      throw new SpindleError(
        "nothing to answer: stdin was empty (give a prompt, or run it in a terminal to chat)",
      );
  }

  const modelPath = await ensureModel(modelArg);
  // On a terminal, a progress bar while the engine reads the weights.
  const bar = process.stderr.isTTY ? new ProgressBar({ label: `loading ${basename(modelPath)}` }) : undefined;
  let backend: Backend;
  try {
    backend = await startBackend(
      {
        kind: "local",
        modelPath,
        // One conversation: one sequence, and a KV cache that holds its whole context.
        contextLength:
          ctxSize ?? Math.min(RUN_DEFAULT_CTX, modelFileFacts(modelPath).contextLength ?? Infinity),
        options: { maxNumSeqs: 1 },
      },
      { onLoadProgress: (loaded, total) => bar?.update(loaded, total) },
    );
  } finally {
    bar?.done();
  }
  for (const w of backend.info.warnings ?? []) process.stderr.write(`spindle: ${w}\n`);
  const model: LoadedModel = {
    backend,
    info: backend.info,
    tokenizer: backend.tokenizer,
    chatTemplate: backend.info.chatTemplate,
    modelPath,
  };
  const chat = new Chat(model, v.system, sampling, maxTokens, v.verbose === true);
  try {
    if (oneShot !== undefined) return await runOnce(chat, oneShot);
    return await interactive(chat);
  } finally {
    await backend.close();
  }
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  let s = "";
  for await (const chunk of stream) s += String(chunk);
  return s.trim();
}

async function runOnce(chat: Chat, prompt: string): Promise<number> {
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
    chat.interrupt();
  };
  process.on("SIGINT", onSigint);
  try {
    await chat.send(prompt, process.stdout, process.stderr);
    process.stdout.write("\n");
    return interrupted ? 130 : 0;
  } finally {
    process.removeListener("SIGINT", onSigint);
  }
}

const HELP = `Available commands:
  /clear          forget the conversation so far
  /bye            exit (Ctrl-D too)
  /?, /help       this help
  """             begin and end a multi-line message

Ctrl-C stops the answer being written.
`;

/**
 * Lines typed at the prompt → messages: a line is a message, except that a line beginning with
 * `"""` opens a block that runs to a line ending with `"""` (on the same line or a later one), as
 * in Ollama; the block's lines are joined with newlines.
 */
export class MessageReader {
  private block: string[] | undefined;

  get inBlock(): boolean {
    return this.block !== undefined;
  }

  reset(): void {
    this.block = undefined;
  }

  /** The message `line` completes (trimmed), or undefined while a block is open. */
  push(line: string): string | undefined {
    if (this.block === undefined) {
      const t = line.trimStart();
      if (!t.startsWith('"""')) return line.trim();
      const rest = t.slice(3);
      if (rest.length >= 3 && rest.endsWith('"""')) return rest.slice(0, -3).trim();
      this.block = [rest];
      return undefined;
    }
    const end = line.trimEnd().endsWith('"""');
    this.block.push(end ? line.trimEnd().slice(0, -3) : line);
    if (!end) return undefined;
    const message = this.block.join("\n").trim();
    this.block = undefined;
    return message;
  }
}

/** The `>>> ` loop: lines become messages (`"""` blocks joined), commands are handled, answers stream. */
async function interactive(chat: Chat): Promise<number> {
  const out = process.stdout;
  const rl: Interface = createInterface({
    input: process.stdin,
    output: process.stdout,
    terminal: process.stdin.isTTY === true,
    prompt: ">>> ",
  });
  const reader = new MessageReader();
  rl.on("SIGINT", () => {
    if (chat.interrupt()) return; // the answer loop writes the newline and the next prompt
    const typing = rl.line.length > 0 || reader.inBlock;
    reader.reset();
    // Ctrl-C at the prompt: drop what was typed, as a shell does.
    out.write(typing ? "^C\n" : "\nUse Ctrl + d or /bye to exit.\n");
    (rl as unknown as { line: string; cursor: number }).line = "";
    (rl as unknown as { cursor: number }).cursor = 0;
    rl.setPrompt(">>> ");
    rl.prompt();
  });
  rl.prompt();
  for await (const line of rl) {
    const message = reader.push(line);
    rl.setPrompt(reader.inBlock ? "... " : ">>> ");
    if (message === undefined || message === "") {
      rl.prompt();
      continue;
    }
    if (message.startsWith("/")) {
      const cmd = message.split(/\s+/)[0]!;
      if (cmd === "/bye" || cmd === "/exit") break;
      if (cmd === "/clear") {
        chat.clear();
        out.write("Cleared session context\n");
      } else if (cmd === "/?" || cmd === "/help") {
        out.write(HELP);
      } else {
        out.write(`Unknown command '${cmd}'. Type /? for help\n`);
      }
      rl.prompt();
      continue;
    }
    try {
      await chat.send(message, out, process.stderr);
    } catch (err) {
      if (!(err instanceof SpindleError)) throw err;
      process.stderr.write(`spindle: ${err.message}`);
    }
    out.write("\n\n");
    rl.prompt();
  }
  rl.close();
  if (process.stdin.isTTY) out.write("\n");
  return 0;
}
