// Build the browser client into web/dist/: index.html and one bundled app.js.
// Run from anywhere: node web/build.mjs [OUTDIR] (needs `npm ci` at the repository root);
// OUTDIR defaults to web/dist.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const web = dirname(fileURLToPath(import.meta.url));
const dist = resolve(process.argv[2] ?? join(web, "dist"));
mkdirSync(dist, { recursive: true });
await build({
  entryPoints: [join(web, "src", "main.ts")],
  outfile: join(dist, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["chrome120", "firefox128", "safari17"],
  minify: true,
  sourcemap: true,
  logLevel: "warning",
});
copyFileSync(join(web, "index.html"), join(dist, "index.html"));
console.log(`built ${dist}`);
