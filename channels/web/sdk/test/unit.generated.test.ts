import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

const pkg = resolve(import.meta.dirname, "..");

test("src/gen is what protoc-gen-es makes of channels/socket/pb/ding.proto (npm run generate)", async () => {
  const out = await mkdtemp(join(tmpdir(), "ding-sdk-gen-"));
  try {
    const template = JSON.stringify({ version: "v2", plugins: [{ local: "protoc-gen-es", out, opt: "target=ts" }] });
    await promisify(execFile)(join(pkg, "node_modules/.bin/buf"), ["generate", "--template", template, "../../socket/pb"], {
      cwd: pkg,
      env: { ...process.env, PATH: `${join(pkg, "node_modules/.bin")}:${process.env.PATH}` },
    });
    assert.equal(await readFile(join(out, "ding_pb.ts"), "utf8"), await readFile(join(pkg, "src/gen/ding_pb.ts"), "utf8"));
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
