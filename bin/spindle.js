#!/usr/bin/env node
// The `spindle` command. Runs the compiled CLI from dist/ (built by `npm run build`).
import module from "node:module";

// V8's compiled code of Spindle's and its dependencies' modules, cached on disk (in the OS's temporary
// folder; keyed by each file's contents): a server starts about 0.1 s sooner. NODE_DISABLE_COMPILE_CACHE=1 turns it off.
module.enableCompileCache?.();
const { main } = await import("../dist/cli/main.js");
process.exitCode = await main(process.argv.slice(2));
