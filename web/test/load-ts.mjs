// Import a TypeScript module from web/src in Node: esbuild bundles it in memory
// and the result is imported from a data: URL (no build output on disk).
import { build } from "esbuild";

export async function importTs(entry) {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    format: "esm",
    platform: "neutral",
    write: false,
    logLevel: "silent",
  });
  const code = result.outputFiles[0].text;
  return import("data:text/javascript;base64," + Buffer.from(code).toString("base64"));
}
