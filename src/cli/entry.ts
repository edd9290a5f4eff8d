// The `spindle` command run from source (tests, development): `node --import tsx src/cli/entry.ts serve …`.
// bin/spindle.js does the same with the compiled CLI in dist/.
import { main } from "./main.js";

process.exitCode = await main(process.argv.slice(2));
