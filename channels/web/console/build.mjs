// Builds dist/ (embedded in dingd by channels/web): one bundle of the console,
// Preact and Chart.js, its stylesheet and index.html. No source maps, no
// hashes: dingd serves the files with Cache-Control: no-cache.
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await esbuild.build({
  entryPoints: ["src/main.tsx"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "none",
  jsx: "automatic",
  jsxImportSource: "preact",
  outfile: "dist/console.js",
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/console.css", "dist/console.css");
